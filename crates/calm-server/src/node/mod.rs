//! One node's cores on the tokio runtime: the membership, replica and
//! anti-entropy cores, the peer transport, timers and the group commit.
//!
//! [`start`] opens the node and spawns its event loop, one task that owns
//! every core, so no core needs a lock. Clients reach it through the
//! [`NodeHandle`] (the [`Backend`] of the gRPC services), which sends
//! commands over a bounded channel and reads a view the loop publishes.

pub mod anti_entropy;
mod coordination;
mod etcd;
mod event_loop;
pub mod gossip;
mod meta;
mod quorum;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calm_membership::{MembershipConfig, MembershipError};
use calm_replica::coordinator::Level;
use calm_replica::{Ack, Operation, ReplicaConfig};
use calm_ring::{PlacementError, RingConfig};
use calm_storage::{DiskEngine, StorageError};
use calm_transport::{BindError, Transport, TransportConfig};
use calm_types::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Backend, BackendError, KvAnswer, KvCall, MemberInfo, NodeStatus};
use crate::metrics::Metrics;

pub use coordination::CoordinationOptions;
pub use meta::{NODE_ID_MAX, node_identity};
pub use quorum::QuorumOptions;

/// Commands waiting for the loop; beyond it, callers wait (backpressure).
const COMMAND_QUEUE_MAX: usize = 4096;

/// Everything a node needs to start, resolved from the configuration.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id.
    pub node: NodeId,
    /// The cluster name peers must share.
    pub cluster: String,
    /// Where the peer transport listens.
    pub peer_listen: SocketAddr,
    /// The peer address others dial; the bound address if `None`.
    pub peer_advertise: Option<SocketAddr>,
    /// The client address others forward requests to.
    pub client_advertise: SocketAddr,
    /// Peer addresses of existing members to join through; empty to found
    /// a cluster.
    pub seeds: Vec<SocketAddr>,
    /// The replica's bounds.
    pub replica: ReplicaConfig,
    /// SWIM timing and bounds.
    pub membership: MembershipConfig,
    /// The ring's shape.
    pub ring: RingConfig,
    /// How often anti-entropy runs a round with one peer; 0 disables it.
    pub anti_entropy_interval_ms: u64,
    /// How long a write may wait for others to share its sync; 0 syncs as
    /// soon as the loop has drained what is ready.
    pub sync_max_delay_ms: u64,
    /// How long shutdown waits for queued peer messages to be written.
    pub shutdown_grace_ms: u64,
    /// The coordinated keyspace (Raft, etcd API); `None` runs without it.
    /// A node serves it only if it is one of the voters.
    pub coordination: Option<CoordinationOptions>,
    /// The `one`/`quorum`/`all` levels' keyspace settings.
    pub quorum: QuorumOptions,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data store failed to open, read or sync.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The peer listener could not be bound.
    #[error("peer transport: {0}")]
    Bind(#[from] BindError),
    /// The membership configuration broke a bound.
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
    /// The ring configuration or the persisted ring log is invalid.
    #[error("ring: {0}")]
    Ring(#[from] PlacementError),
    /// The data directory belongs to another node or holds an unreadable
    /// record.
    #[error("data directory: {0}")]
    Meta(String),
    /// The coordinated keyspace could not be opened from storage.
    #[error("coordinated keyspace: {0}")]
    Coordination(String),
}

/// A request for the event loop.
enum Command {
    Submit {
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
        /// `None` for `local`.
        level: Option<Level>,
        reply: oneshot::Sender<Result<Ack, BackendError>>,
    },
    Etcd(coordination::EtcdCommand),
    Kv(quorum::KvCommand),
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// What the loop publishes for readers outside it.
#[derive(Clone, Debug, Default)]
struct View {
    members: Vec<MemberInfo>,
    client_addrs: Vec<(NodeId, SocketAddr)>,
    keys: u64,
}

/// State shared between the loop and its handles.
#[derive(Debug)]
struct Shared {
    node: NodeId,
    cluster: String,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    started: Instant,
    key_bytes_max: u64,
    payload_bytes_max: u64,
    ready: AtomicBool,
    /// The node's metrics, for the coordination tax `/status` reports.
    metrics: Arc<Metrics>,
    /// A std Mutex, not a tokio one: it is held only to copy the view in or
    /// out, never across an await.
    view: Mutex<View>,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A cloneable handle to a running node: the [`Backend`] of its services.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// Opens the node on `storage` and spawns its event loop on the current
/// tokio runtime (which must be multi-threaded: the loop syncs to disk in
/// place).
pub async fn start(
    options: NodeOptions,
    storage: DiskEngine,
    metrics: Arc<Metrics>,
) -> Result<NodeHandle, StartError> {
    let generation = meta::next_generation(&storage)?;
    let transport_config =
        TransportConfig::new(options.node, &options.cluster, options.peer_listen);
    let (transport, inbound) = Transport::bind(transport_config).await?;
    let peer_addr = options.peer_advertise.unwrap_or(transport.local_addr());
    let shared = Arc::new(Shared {
        node: options.node,
        cluster: options.cluster.clone(),
        client_addr: options.client_advertise,
        peer_addr,
        started: Instant::now(),
        key_bytes_max: options.replica.key_bytes_max as u64,
        payload_bytes_max: options.replica.payload_bytes_max as u64,
        ready: AtomicBool::new(false),
        metrics: Arc::clone(&metrics),
        view: Mutex::new(View::default()),
    });
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_MAX);
    let core = event_loop::Core::open(
        options,
        storage,
        transport,
        peer_addr,
        generation,
        Arc::clone(&shared),
        metrics,
    )?;
    tokio::spawn(core.run(receiver, inbound));
    Ok(NodeHandle { commands, shared })
}

impl NodeHandle {
    /// The peer address this node advertises.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    /// Stops the node gracefully: answers what it can, syncs, leaves the
    /// cluster through gossip and drains the peer queues. Returns once the
    /// loop has ended.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// Whether the node serves requests.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Runs one CRDT operation on the event loop, at `level` (`None`:
    /// `local`), and waits for its reply.
    async fn crdt(
        &self,
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
        level: Option<Level>,
    ) -> Result<Ack, BackendError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Submit {
            key,
            op,
            token,
            level,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| BackendError::Unavailable("the node is shutting down"))?;
        answer
            .await
            .map_err(|_| BackendError::Unavailable("the node stopped before answering"))?
    }
}

impl Backend for NodeHandle {
    async fn submit(
        &self,
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
    ) -> Result<Ack, BackendError> {
        self.crdt(key, op, token, None).await
    }

    async fn submit_at(
        &self,
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
        level: Level,
    ) -> Result<Ack, BackendError> {
        self.crdt(key, op, token, Some(level)).await
    }

    async fn kv(&self, call: KvCall) -> Result<KvAnswer, BackendError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Kv(quorum::KvCommand { call, reply });
        self.commands
            .send(command)
            .await
            .map_err(|_| BackendError::Unavailable("the node is shutting down"))?;
        answer
            .await
            .map_err(|_| BackendError::Unavailable("the node stopped before answering"))?
    }

    fn node(&self) -> NodeId {
        self.shared.node
    }

    fn client_addr(&self, node: NodeId) -> Option<SocketAddr> {
        let view = self.shared.view();
        view.client_addrs
            .iter()
            .find(|(n, _)| *n == node)
            .map(|&(_, addr)| addr)
    }

    fn members(&self) -> Vec<MemberInfo> {
        self.shared.view().members.clone()
    }

    fn status(&self) -> NodeStatus {
        let view = self.shared.view().clone();
        NodeStatus {
            node: self.shared.node,
            cluster: self.shared.cluster.clone(),
            version: env!("CARGO_PKG_VERSION"),
            client_addr: self.shared.client_addr,
            peer_addr: self.shared.peer_addr,
            ready: self.is_ready(),
            uptime_seconds: self.shared.started.elapsed().as_secs(),
            keys: view.keys,
            key_bytes_max: self.shared.key_bytes_max,
            payload_bytes_max: self.shared.payload_bytes_max,
            members: view.members,
            tax: self.shared.metrics.tax(),
            fsyncs: self.shared.metrics.fsyncs.get(),
            messages_sent: self.shared.metrics.messages_sent(),
        }
    }
}

/// `ms` as a `Duration`.
fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
