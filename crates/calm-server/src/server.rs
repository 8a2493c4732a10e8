//! A whole `calm node`: the data store, the node's cores, the gRPC client
//! port and the HTTP admin port, started from a [`NodeConfig`] and stopped
//! gracefully.
//!
//! Shutdown order: the node reports not ready, the client port stops
//! taking requests and finishes the open ones, the node syncs, leaves the
//! cluster through gossip and drains its peer queues, and the admin port
//! closes last so probes see the whole sequence.

use std::net::SocketAddr;
use std::sync::Arc;

use calm_membership::MembershipConfig;
use calm_ring::RingConfig;
use calm_storage::{DiskEngine, Limits, StorageError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::node::{self, NodeHandle, NodeOptions, StartError};

/// The data store's file inside the data directory.
const STORE_FILE: &str = "calm.redb";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The data store could not be opened.
    #[error("cannot open the data store: {0}")]
    Storage(#[from] StorageError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        /// Which port.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The node's cores could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// A running node and its ports.
pub struct RunningServer {
    node: NodeHandle,
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop_client: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    client_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

/// Opens the store, starts the node and serves both ports. Must run on a
/// multi-threaded tokio runtime.
pub async fn start(config: &NodeConfig) -> Result<RunningServer, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let storage = DiskEngine::open(config.data_dir.join(STORE_FILE), store_limits())?;
    let node_id = node::node_identity(&storage, config.node_id)?;
    let client = listen("client", config.listen_client).await?;
    let admin = listen("admin", config.listen_admin).await?;
    let client_addr = config.advertise_client.unwrap_or(local_addr(&client));
    let options = NodeOptions {
        node: node_id,
        cluster: config.cluster.clone(),
        peer_listen: config.listen_peer,
        peer_advertise: config.advertise_peer,
        client_advertise: client_addr,
        seeds: config.seeds.clone(),
        replica: config.replica_config(node_id),
        membership: MembershipConfig::default(),
        ring: RingConfig::default(),
        anti_entropy_interval_ms: config.anti_entropy_interval_ms,
        sync_max_delay_ms: config.sync_max_delay_ms,
        shutdown_grace_ms: config.shutdown_grace_ms,
        coordination: config.coordination_options(node_id),
        quorum: config.quorum_options(),
    };
    let metrics = Arc::new(Metrics::new());
    let node = node::start(options, storage, Arc::clone(&metrics)).await?;
    let admin_addr = local_addr(&admin);
    let backend = Arc::new(node.clone());
    let (stop_client, client_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let client_task = tokio::spawn({
        let (backend, metrics) = (Arc::clone(&backend), Arc::clone(&metrics));
        async move {
            if let Err(error) = crate::api::serve_routes(
                client,
                client_routes(backend, metrics),
                stopped(client_stopped),
            )
            .await
            {
                tracing::error!(%error, "the client port failed");
            }
        }
    });
    let admin_task = tokio::spawn(async move {
        if let Err(error) =
            crate::admin::serve(admin, backend, metrics, stopped(admin_stopped)).await
        {
            tracing::error!(%error, "the admin port failed");
        }
    });
    tracing::info!(
        node = %node_id,
        client = %client_addr,
        peer = %node.peer_addr(),
        admin = %admin_addr,
        "serving"
    );
    Ok(RunningServer {
        node,
        client_addr,
        admin_addr,
        stop_client,
        stop_admin,
        client_task,
        admin_task,
    })
}

impl RunningServer {
    /// The client (gRPC) address clients and peers use.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The admin (HTTP) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The peer address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.node.peer_addr()
    }

    /// The node, as the services see it.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// Stops gracefully (see the module docs for the order).
    pub async fn stop(self) {
        let _ = self.stop_client.send(true);
        let _ = self.client_task.await;
        self.node.shutdown().await;
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
    }
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { what, addr, source })
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    // Invariant: a bound TCP listener has a local address.
    listener.local_addr().expect("a bound listener's address")
}

/// Completes when the flag turns true (or its sender is gone).
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// calm.v1 and etcd's v3 services on one router: `etcdctl --endpoints`
/// takes the same addresses as `calm`.
fn client_routes(backend: Arc<NodeHandle>, metrics: Arc<Metrics>) -> tonic::service::Routes {
    let routes = crate::api::routes(Arc::clone(&backend), metrics);
    let routes = crate::etcd::add_routes(routes, Arc::clone(&backend), Default::default());
    // A node outside the keyspace's membership passes etcd calls on.
    crate::etcd::forward::forwarding(routes, backend)
}

/// The store's bounds. One batch must hold a single Raft entry's whole
/// effect, which can be large (a lease revoke deleting every key on the
/// lease, a compaction, a snapshot restore), so batches may be far larger
/// than the storage crate's defaults.
fn store_limits() -> Limits {
    Limits {
        batch_ops_max: 4_000_000,
        batch_bytes_max: 1024 * 1024 * 1024,
        ..Limits::default()
    }
}
