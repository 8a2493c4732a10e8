//! etcd's v3 gRPC API (`KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`,
//! and the `v3lock` and `v3election` services) over a [`Coordinated`]
//! backend, as etcd 3.4 and 3.5 serve it (`server/etcdserver/api/v3rpc`).
//!
//! The services own only the gRPC surface: request validation with etcd's
//! exact errors before the backend sees anything ([`EtcdError`]), the
//! streams (watch ids, keep-alives, snapshot chunks), and the lock and
//! election recipes, which etcd runs as a client of its own KV and which
//! here are small async functions over the backend's range, txn and watch.
//! Everything else passes through: the backend fills every header and
//! answers with etcd's own errors.
//!
//! [`routes`] serves them all on one [`Routes`], beside `calm.v1` if
//! [`add_routes`] is handed that router: the gRPC paths do not collide.

pub mod backend;
mod cluster;
mod concurrency;
mod election;
pub mod error;
pub mod forward;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::cluster_server::ClusterServer;
use calm_proto::etcd::etcdserverpb::kv_server::KvServer;
use calm_proto::etcd::etcdserverpb::lease_server::LeaseServer;
use calm_proto::etcd::etcdserverpb::maintenance_server::MaintenanceServer;
use calm_proto::etcd::etcdserverpb::watch_server::WatchServer;
use calm_proto::etcd::v3electionpb::election_server::ElectionServer;
use calm_proto::etcd::v3lockpb::lock_server::LockServer;
use tonic::service::Routes;

pub use backend::{Coordinated, WatchEvents};
pub use error::EtcdError;

/// The bounds of the etcd API, with etcd's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most compares, success ops or failure ops one txn may hold
    /// (etcd's `--max-txn-ops`, 128); a nested txn gets what its parent
    /// leaves.
    pub txn_ops_max: usize,
    /// The largest write request accepted, encoded (etcd's
    /// `--max-request-bytes`, 1.5 MiB). gRPC refuses messages larger than
    /// this plus etcd's 512 KiB of overhead before decoding them; a watch
    /// that asked for fragments gets its responses split at this size.
    pub request_bytes_max: usize,
    /// Responses queued to one watch or observe stream whose client reads
    /// slowly; when full, the stream stops reading the backend's events
    /// until the client catches up.
    pub stream_responses_queued_max: usize,
    /// The blob bytes in one snapshot response (etcd sends 32 KiB).
    pub snapshot_chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            txn_ops_max: 128,
            request_bytes_max: 1536 * 1024,
            stream_responses_queued_max: 128,
            snapshot_chunk_bytes: 32 * 1024,
        }
    }
}

impl Limits {
    /// The largest gRPC message a service decodes: etcd's
    /// `maxRequestBytes + grpcOverheadBytes`.
    fn decoding_bytes_max(&self) -> usize {
        const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
        self.request_bytes_max.saturating_add(GRPC_OVERHEAD_BYTES)
    }
}

/// etcd's seven services on a new router, all over `backend`.
pub fn routes<B: Coordinated>(backend: Arc<B>, limits: Limits) -> Routes {
    add_routes(Routes::default(), backend, limits)
}

/// `routes` with etcd's seven services added, all over `backend`: hand it
/// the `calm.v1` router to serve both APIs on one port.
pub fn add_routes<B: Coordinated>(routes: Routes, backend: Arc<B>, limits: Limits) -> Routes {
    let bytes_max = limits.decoding_bytes_max();
    routes
        .add_service(
            KvServer::new(kv::KvService::new(Arc::clone(&backend), limits))
                .max_decoding_message_size(bytes_max),
        )
        .add_service(
            WatchServer::new(watch::WatchService::new(Arc::clone(&backend), limits))
                .max_decoding_message_size(bytes_max),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService::new(Arc::clone(&backend)))
                .max_decoding_message_size(bytes_max),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(Arc::clone(&backend)))
                .max_decoding_message_size(bytes_max),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService::new(
                Arc::clone(&backend),
                limits,
            ))
            .max_decoding_message_size(bytes_max),
        )
        .add_service(
            LockServer::new(lock::LockService::new(Arc::clone(&backend)))
                .max_decoding_message_size(bytes_max),
        )
        .add_service(
            ElectionServer::new(election::ElectionService::new(backend, limits))
                .max_decoding_message_size(bytes_max),
        )
}
