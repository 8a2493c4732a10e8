//! The HTTP admin endpoints, served on their own port (`listen-admin`) so
//! that scrapers and probes never compete with client traffic:
//!
//! | path       | answer                                                        |
//! |------------|---------------------------------------------------------------|
//! | `/metrics` | the Prometheus registry in OpenMetrics text                   |
//! | `/livez`   | `200 ok` while the process runs (Kubernetes' liveness probe)  |
//! | `/readyz`  | `200 ok` if the node serves requests, else `503` and a reason |
//! | `/health`  | etcd's `{"health":"true"}`, or `"false"` and a reason (`503`) |
//! | `/status`  | the node's [`NodeStatus`] as JSON                             |
//!
//! Any other path is `404`. The endpoints only read: none changes the node.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::backend::{Backend, NodeStatus};
use crate::metrics::Metrics;

/// The content type of prometheus-client's text encoder: OpenMetrics 1.0.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why `/readyz` and `/health` refuse: [`NodeStatus::ready`] is false only
/// while the node has not joined its cluster or is shutting down.
const NOT_READY_REASON: &str = "node is not serving: not yet joined, or shutting down";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// What every handler reads.
struct Admin<B> {
    backend: Arc<B>,
    metrics: Arc<Metrics>,
}

// By hand: a derive would require `B: Clone`, but only the `Arc`s are cloned.
impl<B> Clone for Admin<B> {
    fn clone(&self) -> Self {
        Admin {
            backend: Arc::clone(&self.backend),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The admin endpoints over `backend` and `metrics`.
pub fn router<B: Backend>(backend: Arc<B>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text::<B>))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz::<B>))
        .route("/health", get(health::<B>))
        .route("/status", get(status::<B>))
        .fallback(not_found)
        .with_state(Admin { backend, metrics })
}

/// Serves the admin endpoints on `listener` until `shutdown` completes,
/// then stops accepting and returns once open requests are answered.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(backend, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text<B: Backend>(State(admin): State<Admin<B>>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        admin.metrics.encode(),
    )
        .into_response()
}

async fn livez() -> Response {
    text(StatusCode::OK, "ok")
}

async fn readyz<B: Backend>(State(admin): State<Admin<B>>) -> Response {
    if admin.backend.status().ready {
        text(StatusCode::OK, "ok")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, NOT_READY_REASON)
    }
}

async fn health<B: Backend>(State(admin): State<Admin<B>>) -> Response {
    // etcd answers `/health` with the strings "true" and "false", not JSON
    // booleans; monitoring written for etcd expects exactly that.
    let (code, body) = if admin.backend.status().ready {
        (StatusCode::OK, serde_json::json!({ "health": "true" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "health": "false", "reason": NOT_READY_REASON }),
        )
    };
    json(code, &body)
}

async fn status<B: Backend>(State(admin): State<Admin<B>>) -> Response {
    let status: NodeStatus = admin.backend.status();
    json(StatusCode::OK, &status)
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found")
}

fn text(code: StatusCode, body: &'static str) -> Response {
    (code, [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], body).into_response()
}

/// Pretty-printed, unlike axum's `Json`: people read these with `curl`.
fn json(code: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => (code, [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode an admin response");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the response",
            )
        }
    }
}
