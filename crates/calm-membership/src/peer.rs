//! A member's identity: node id, network address and rejoin generation.

use std::net::SocketAddr;

use calm_types::NodeId;
use serde::{Deserialize, Serialize};

/// The identity one running calm process has in the SWIM cluster.
///
/// foca's `Identity::addr` is the [`NodeId`]: the table holds at most one
/// identity per node, and a newer identity of the same node replaces the
/// older one. `generation` tells the two apart. SWIM never lets an identity
/// declared down come back, so a node that restarts, or learns it was
/// declared down, must return with a higher generation
/// ([`foca::Identity::renew`] adds one).
///
/// Driver contract: on every process start, pick a generation higher than
/// any this node used before (a persisted counter, or the boot wall-clock
/// time in milliseconds when clocks are sane).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// The node this identity belongs to.
    pub node: NodeId,
    /// Where the node receives membership datagrams.
    pub addr: SocketAddr,
    /// Which life of the node this is; higher wins.
    pub generation: u64,
}

impl Peer {
    /// The identity to [`join`](crate::Membership::join) through when only a
    /// seed's node id and address are known: foca accepts a join announce
    /// addressed to any generation of the node.
    pub fn seed(node: NodeId, addr: SocketAddr) -> Self {
        Self {
            node,
            addr,
            generation: 0,
        }
    }
}

impl foca::Identity for Peer {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        // At u64::MAX there is no higher generation to win with; foca then
        // reports the node defunct and the operator restarts it.
        let generation = self.generation.checked_add(1)?;
        Some(Self {
            generation,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // The later life of the node wins. Equal generations at different
        // addresses are a misconfiguration (two processes, one node id); the
        // address breaks the tie so that every member keeps the same one.
        (self.generation, self.addr) > (adversary.generation, adversary.addr)
    }
}
