//! What nodes gossip besides SWIM: the ring log, and a directory of each
//! node's addresses.
//!
//! Both are state-based CRDTs exchanged push-pull on the `Ring` channel: a
//! node sends its whole state to a few peers each round, and a receiver
//! whose state the message does not cover answers with its own. Both are
//! small (one entry per node ever in the cluster).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use calm_ring::RingLog;
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

/// Where a node can be reached, as the node itself announced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// The peer (transport) address.
    pub peer: SocketAddr,
    /// The client (gRPC) address.
    pub client: SocketAddr,
    /// Which start of the node wrote this entry (its boot time in ms); the
    /// higher version wins, so a restarted node's new addresses replace the
    /// old ones.
    pub version: u64,
}

/// Every node's addresses. Only a node writes its own entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    entries: BTreeMap<NodeId, Addresses>,
}

impl Directory {
    /// Sets `node`'s entry if `addresses` is newer than the one held.
    /// Returns whether the directory changed.
    pub fn update(&mut self, node: NodeId, addresses: Addresses) -> bool {
        match self.entries.get(&node) {
            Some(held) if held.version >= addresses.version => false,
            _ => {
                self.entries.insert(node, addresses);
                true
            }
        }
    }

    /// Joins `other` into this directory; returns whether it changed.
    pub fn merge(&mut self, other: &Directory) -> bool {
        let mut changed = false;
        for (&node, &addresses) in &other.entries {
            changed |= self.update(node, addresses);
        }
        changed
    }

    /// Whether this directory holds every entry of `other`, as new or newer.
    pub fn covers(&self, other: &Directory) -> bool {
        other.entries.iter().all(|(node, theirs)| {
            self.entries
                .get(node)
                .is_some_and(|ours| ours.version >= theirs.version)
        })
    }

    /// `node`'s addresses, if known.
    pub fn get(&self, node: NodeId) -> Option<Addresses> {
        self.entries.get(&node).copied()
    }

    /// Every entry, by node id.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, Addresses)> + '_ {
        self.entries
            .iter()
            .map(|(&node, &addresses)| (node, addresses))
    }
}

/// One gossip message: the sender's ring log and directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingGossip {
    /// The ring's join and leave history.
    pub log: RingLog,
    /// Every node's addresses.
    pub directory: Directory,
}

impl RingGossip {
    /// The message's bytes: a `calm_types::codec` envelope.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a peer's message; garbage is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<RingGossip, DecodeError> {
        codec::decode(bytes)
    }

    /// Joins `other` into this state; returns whether anything changed.
    pub fn merge(&mut self, other: &RingGossip) -> bool {
        let log = self.log.merge(&other.log);
        let directory = self.directory.merge(&other.directory);
        log || directory
    }

    /// Whether this state already holds everything in `other`.
    pub fn covers(&self, other: &RingGossip) -> bool {
        self.log.covers(&other.log) && self.directory.covers(&other.directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(port: u16, version: u64) -> Addresses {
        Addresses {
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            client: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            version,
        }
    }

    #[test]
    fn a_restarted_nodes_newer_addresses_replace_the_old_in_any_order() {
        let mut old_first = Directory::default();
        old_first.update(NodeId(1), addresses(7000, 1));
        old_first.update(NodeId(1), addresses(8000, 2));
        let mut new_first = Directory::default();
        new_first.update(NodeId(1), addresses(8000, 2));
        assert!(!new_first.update(NodeId(1), addresses(7000, 1)));
        assert_eq!(old_first, new_first);
        assert_eq!(new_first.get(NodeId(1)), Some(addresses(8000, 2)));
    }

    #[test]
    fn push_pull_converges_and_then_says_nothing_changed() {
        let mut a = RingGossip::default();
        a.log.join(NodeId(1));
        a.directory.update(NodeId(1), addresses(7000, 1));
        let mut b = RingGossip::default();
        b.log.join(NodeId(2));
        b.directory.update(NodeId(2), addresses(7100, 1));
        assert!(!b.covers(&a));
        assert!(b.merge(&a));
        // b now covers a, so a learns from b's answer and the exchange ends.
        assert!(a.merge(&b));
        assert_eq!(a, b);
        assert!(!a.merge(&b));
        assert!(a.covers(&b) && b.covers(&a));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let bytes = RingGossip::default().encode();
        assert_eq!(RingGossip::decode(&bytes), Ok(RingGossip::default()));
        assert!(RingGossip::decode(&[0xff, 1, 2]).is_err());
        assert!(RingGossip::decode(&bytes[..1]).is_err());
    }
}
