//! The seam between the client-facing services and the node: what the gRPC
//! API and the HTTP admin endpoints need from a running node.
//!
//! The node's event loop implements [`Backend`] through
//! [`crate::node::NodeHandle`]; tests implement it over a single in-process
//! replica, so the services are tested without sockets between nodes.

use std::future::Future;
use std::net::SocketAddr;

use calm_membership::MemberState;
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
