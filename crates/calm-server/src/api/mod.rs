//! calm's client API: the `calm.v1` gRPC services (Counter, Set, Register,
//! Map, BoundedCounter, Kv, Cluster) over a [`Backend`].
//!
//! Protobuf stops here: each service converts its generated request into
//! one core [`calm_replica::Operation`] and the core's reply back into a
//! generated response, by hand. Every data RPC takes one path (`call.rs`):
//! check the level, key and token; submit the operation; on success build
//! the response header; on `NotReplica` or `CatchUpTimeout` forward the
//! request to a replica (`forward.rs`); otherwise map the error to the
//! status code and typed detail of the `.proto` file's error table
//! (`error.rs`). Every RPC, data or cluster, is counted and timed in
//! [`Metrics`].

mod bounded;
mod call;
mod cluster;
mod counter;
mod error;
mod forward;
mod kv;
mod map;
mod register;
mod set;

use std::future::Future;
use std::sync::Arc;

use calm_proto::calm::v1::bounded_counter_server::BoundedCounterServer;
use calm_proto::calm::v1::cluster_server::ClusterServer;
use calm_proto::calm::v1::counter_server::CounterServer;
use calm_proto::calm::v1::kv_server::KvServer;
use calm_proto::calm::v1::map_server::MapServer;
use calm_proto::calm::v1::register_server::RegisterServer;
use calm_proto::calm::v1::set_server::SetServer;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::backend::Backend;
use crate::metrics::Metrics;

pub use forward::{FORWARD_TIMEOUT, FORWARDED_HEADER};

/// The seven `calm.v1` services on one router, all over `backend`, counting
/// into `metrics`. Other services (etcd's) may be added to the same routes
/// to share the port.
pub fn routes<B: Backend>(backend: Arc<B>, metrics: Arc<Metrics>) -> Routes {
    let api = Arc::new(call::Api::new(backend, metrics));
    Routes::new(CounterServer::new(counter::CounterService(Arc::clone(
        &api,
    ))))
    .add_service(SetServer::new(set::SetService(Arc::clone(&api))))
    .add_service(RegisterServer::new(register::RegisterService(Arc::clone(
        &api,
    ))))
    .add_service(MapServer::new(map::MapService(Arc::clone(&api))))
    .add_service(BoundedCounterServer::new(bounded::BoundedService(
        Arc::clone(&api),
    )))
    .add_service(KvServer::new(kv::KvService(Arc::clone(&api))))
    .add_service(ClusterServer::new(cluster::ClusterService(api)))
}

/// Serves [`routes`] on `listener` (already bound, so the caller knows the
/// port before anything is served) until `shutdown` completes; in-flight
/// requests are then answered before it returns.
pub async fn serve<B: Backend>(
    listener: tokio::net::TcpListener,
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_routes(listener, routes(backend, metrics), shutdown).await
}

/// Serves any `routes` (calm.v1 and etcd's services together, say) as
/// [`serve`] does.
pub async fn serve_routes(
    listener: tokio::net::TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // Requests are small and latency-bound: do not let Nagle hold them.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
