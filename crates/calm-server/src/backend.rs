//! The seam between the client-facing services and the node: what the gRPC
//! API and the HTTP admin endpoints need from a running node.
//!
//! The node's event loop implements [`Backend`] through
//! [`crate::node::NodeHandle`]; tests implement it over a single in-process
//! replica, so the services are tested without sockets between nodes.

use std::future::Future;
use std::net::SocketAddr;

use calm_membership::MemberState;
use calm_replica::coordinator::{CoordinatorError, Level, Overrides};
use calm_replica::kv::{KvError, KvObject};
use calm_replica::{Ack, Operation, ReplicaError};
use calm_types::NodeId;
use serde::Serialize;

/// Why a node could not answer a request.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The replica refused or failed the request; see the variant for
    /// whether anything changed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The node is starting or shutting down and takes no requests; nothing
    /// changed. Retryable on another node.
    #[error("node unavailable: {0}")]
    Unavailable(&'static str),
    /// A request of the `one`/`quorum`/`all` levels was refused or failed;
    /// see the variant for whether anything changed.
    #[error(transparent)]
    Kv(#[from] KvRefusal),
}

/// Why a request of the `one`/`quorum`/`all` levels did not succeed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum KvRefusal {
    /// The key, value or context was refused, or the write would leave too
    /// many siblings. Nothing changed.
    #[error(transparent)]
    Object(#[from] KvError),
    /// The coordinator refused or failed the request; see the variant.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// A write must be coordinated by one of the key's natural owners
    /// (it mints the write's dot from the object it keeps), and this node is
    /// not one. Nothing changed; `owners` lists the up owners to send it to,
    /// empty if every owner is down.
    #[error("this node does not own the key; its up owners are {owners:?}")]
    NotOwner {
        /// The key's up natural owners, in preference order.
        owners: Vec<NodeId>,
    },
    /// The coordinating node's store failed before anything was sent;
    /// the write may be on its disk.
    #[error("storage: {0}")]
    Storage(String),
}

/// One request of the `one`/`quorum`/`all` levels, as the API hands it to
/// the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCall {
    /// The key.
    pub key: Vec<u8>,
    /// What to do.
    pub op: KvOp,
    /// How many replicas must answer.
    pub level: Level,
    /// Per-request overrides of N, R and W.
    pub overrides: Overrides,
}

/// The operation of a [`KvCall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Read every sibling from R replicas.
    Get,
    /// Write `value`, superseding what `context` saw (empty: a blind write).
    Put {
        /// The value.
        value: Vec<u8>,
        /// The context of the read this write follows.
        context: Vec<u8>,
    },
    /// Write a tombstone, superseding what `context` saw.
    Delete {
        /// The context of the read this delete follows.
        context: Vec<u8>,
    },
}

/// What a successful [`KvCall`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvAnswer {
    /// A put or delete reached W replicas; `object` is what the
    /// coordinating owner holds after it (returned to the client with its
    /// context).
    Written {
        /// The coordinating owner's object after the write.
        object: KvObject,
        /// Acks before the reply.
        acks: usize,
        /// How many of them were hints.
        hinted: usize,
    },
    /// The merge of R replicas' objects.
    Read {
        /// The merged object.
        object: KvObject,
        /// Replies merged.
        replies: usize,
    },
}
/// One member as `calm members` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberInfo {
    /// The member's node id.
    pub node: NodeId,
    /// Its peer address.
    pub peer_addr: SocketAddr,
    /// Its client (gRPC) address, once this node has learned it.
    pub client_addr: Option<SocketAddr>,
    /// What this node believes of its liveness.
    #[serde(serialize_with = "state_name")]
    pub state: MemberState,
    /// Its SWIM incarnation.
    pub incarnation: u16,
    /// Its share of the key space as a primary owner, 0.0 to 1.0; 0.0 if it
    /// holds no ring tokens.
    pub ownership: f64,
}

/// The lowercase name of a member state: `alive`, `suspect`, `dead`, `left`.
pub fn state_label(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "dead",
        MemberState::Left => "left",
    }
}

fn state_name<S: serde::Serializer>(state: &MemberState, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state_label(*state))
}

/// A node's state for `/status` and `Cluster.Status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeStatus {
    /// This node.
    pub node: NodeId,
    /// The cluster name peers must share.
    pub cluster: String,
    /// calm's version.
    pub version: &'static str,
    /// The client (gRPC) address.
    pub client_addr: SocketAddr,
    /// The peer address.
    pub peer_addr: SocketAddr,
    /// Whether the node serves requests (joined and not shutting down).
    pub ready: bool,
    /// Seconds since the node started.
    pub uptime_seconds: u64,
    /// Keys this node holds a replica of.
    pub keys: u64,
    /// The longest key accepted, in bytes.
    pub key_bytes_max: u64,
    /// The longest element, value or field name accepted, in bytes.
    pub payload_bytes_max: u64,
    /// The member table, this node included.
    pub members: Vec<MemberInfo>,
    /// The coordination tax paid since the node started, per level.
    pub tax: Vec<LevelTax>,
    /// Durable commits of the node's store since it started.
    pub fsyncs: u64,
    /// Peer messages sent since the node started, by channel.
    pub messages_sent: std::collections::BTreeMap<String, u64>,
}

/// The coordination one level cost on one node (see `calm.v1.LevelTax`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LevelTax {
    /// `local`, `one`, `quorum`, `all`, `linearizable` or `serializable`.
    pub level: &'static str,
    /// Requests this node coordinated at the level.
    pub requests: u64,
    /// Network round trips on their critical paths, summed (forwards
    /// included, counted by the forwarding node).
    pub round_trips: u64,
    /// The median latency of the level's recent requests here, in ms.
    pub latency_p50_ms: f64,
    /// Their 99th percentile, in ms.
    pub latency_p99_ms: f64,
}

/// What the client-facing services need from a node.
pub trait Backend: Send + Sync + 'static {
    /// Runs one `local`-level operation on this node's replica and waits for
    /// its reply: for a write, after it is durable.
    fn submit(
        &self,
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<Ack, BackendError>> + Send;

    /// Runs one CRDT operation at `level`, coordinated by this node among
    /// the key's owners, and waits for its reply: for a write, after `w`
    /// owners hold it durably; for a read, after `r` owners' states are
    /// merged. A backend without those levels keeps this default, which
    /// refuses.
    fn submit_at(
        &self,
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
        level: Level,
    ) -> impl Future<Output = Result<Ack, BackendError>> + Send {
        let _ = (key, op, token, level);
        std::future::ready(Err(BackendError::Unavailable(
            "this node does not serve the one, quorum and all levels",
        )))
    }

    /// Runs one request of the `one`/`quorum`/`all` levels, coordinated by
    /// this node, and waits for its outcome. A backend without those levels
    /// keeps this default, which refuses.
    fn kv(&self, call: KvCall) -> impl Future<Output = Result<KvAnswer, BackendError>> + Send {
        let _ = call;
        std::future::ready(Err(BackendError::Unavailable(
            "this node does not serve the one, quorum and all levels",
        )))
    }

    /// This node's id.
    fn node(&self) -> NodeId;

    /// Where `node` serves clients, if known; used to forward a request to a
    /// replica when this node holds none.
    fn client_addr(&self, node: NodeId) -> Option<SocketAddr>;

    /// The current member table.
    fn members(&self) -> Vec<MemberInfo>;

    /// The node's status.
    fn status(&self) -> NodeStatus;
}
