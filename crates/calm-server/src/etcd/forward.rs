//! Forwarding: a node outside the coordinated keyspace's membership (not
//! one of the 3 or 5 voters, nor a learner) passes every etcd API call on
//! to a voter's client port as it came, so that clients may use any node's
//! endpoint, as the brief asks ("other nodes forward").
//!
//! The forward is a proxy of whole gRPC calls at the HTTP/2 level, not a
//! re-issue of each method: request and response bodies stream through
//! unchanged, so watches, lease keep-alives and snapshots are forwarded
//! with no code of their own, and a status the voter answers reaches the
//! client as the voter sent it. A forwarded call carries the
//! [`FORWARDED_HEADER`] and is never forwarded again, so a stale view of
//! the membership cannot bounce a call between nodes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

use super::Coordinated;

/// Marks a call one node forwarded to another.
pub const FORWARDED_HEADER: &str = "calm-forwarded";

/// How long the answer to "where do calls go" is reused before the node is
/// asked again: membership changes are rare, and asking on every call
/// would cost a member a trip through its event loop per request.
const TARGET_TTL: Duration = Duration::from_secs(1);

/// The gRPC services that are etcd's (paths `/package.Service/Method`).
const ETCD_PACKAGES: [&str; 3] = ["/etcdserverpb.", "/v3lockpb.", "/v3electionpb."];

/// `routes` with etcd's calls forwarded while `backend` names a target;
/// calm.v1's calls are never touched.
pub fn forwarding<B: Coordinated>(routes: Routes, backend: Arc<B>) -> Routes {
    let forwarder = Arc::new(Forwarder {
        backend,
        target: Mutex::new(None),
        channel: Mutex::new(None),
    });
    let layer = axum::middleware::from_fn_with_state(forwarder, forward::<B>);
    Routes::from(routes.into_axum_router().layer(layer))
}

/// The cached target and the channel to it. std mutexes, not tokio ones:
/// nothing awaits while one is held.
struct Forwarder<B> {
    backend: Arc<B>,
    /// When the target was last asked for, and the answer.
    target: Mutex<Option<(Instant, Option<SocketAddr>)>>,
    /// One HTTP/2 connection to the current target, shared by every call.
    channel: Mutex<Option<(SocketAddr, Channel)>>,
}

impl<B: Coordinated> Forwarder<B> {
    async fn target(&self) -> Option<SocketAddr> {
        if let Some((asked, target)) = *self.target.lock().unwrap()
            && asked.elapsed() < TARGET_TTL
        {
            return target;
        }
        let target = self.backend.forward_target().await;
        *self.target.lock().unwrap() = Some((Instant::now(), target));
        target
    }

    /// The channel to `target`, connected lazily (and reconnected by tonic
    /// after a failure).
    fn channel(&self, target: SocketAddr) -> Channel {
        let mut cached = self.channel.lock().unwrap();
        match &*cached {
            Some((to, channel)) if *to == target => channel.clone(),
            _ => {
                // An address always makes a valid URI.
                let endpoint = Endpoint::from_shared(format!("http://{target}"))
                    .expect("a socket address is a valid URI")
                    .tcp_nodelay(true);
                let channel = endpoint.connect_lazy();
                *cached = Some((target, channel.clone()));
                channel
            }
        }
    }
}

async fn forward<B: Coordinated>(
    State(forwarder): State<Arc<Forwarder<B>>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let etcd = ETCD_PACKAGES.iter().any(|p| path.starts_with(p));
    if !etcd || request.headers().contains_key(FORWARDED_HEADER) {
        return next.run(request).await;
    }
    let Some(target) = forwarder.target().await else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .insert(FORWARDED_HEADER, HeaderValue::from_static("etcd"));
    let request = axum::http::Request::from_parts(parts, tonic::body::Body::new(body));
    let mut channel = forwarder.channel(target);
    let answer = async {
        std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
        channel.call(request).await
    };
    match answer.await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(error) => {
            let status = tonic::Status::unavailable(format!(
                "calm: this node is not a member of the coordinated keyspace and could not \
                 forward to {target}: {error}"
            ));
            status.into_http()
        }
    }
}
