//! The ring log: the ordered history of explicit joins and leaves that a
//! [`Ring`] is built from, kept as a state-based CRDT so it can be gossiped.
//!
//! A ring is a function of its join history (see [`Ring`]), so every node
//! must replay the same joins and leaves in the same order. Until the
//! coordinated keyspace orders ring changes, the log orders them by a
//! Lamport position: a change is stamped one above the highest position the
//! node has seen, and changes are replayed by (position, join before leave,
//! node id). Two changes made concurrently may share a position; the node id
//! breaks the tie, so all nodes that hold the same entries build the same
//! ring, whatever order the entries arrived in.
//!
//! Rules a driver keeps, because the log cannot check them:
//! * A node joins the ring only itself, and only once it has merged the log
//!   of the cluster it joins (or it founds the cluster): a join stamped
//!   before the log is known would be replayed early and reshuffle keys.
//! * A node is in the ring at most once: after it leaves, its id is spent;
//!   it returns under a new id.
//! * Liveness never touches the log (liveness is not ownership).
//!
//! ```
//! use calm_ring::{Placement, RingConfig, RingLog};
//! use calm_types::NodeId;
//!
//! // Two nodes found a cluster at once; a third joins after learning the log.
//! let mut a = RingLog::default();
//! a.join(NodeId(1));
//! let mut b = RingLog::default();
//! b.join(NodeId(2));
//! a.merge(&b);
//! let mut c = a.clone();
//! c.join(NodeId(3));
//! b.merge(&c);
//! a.merge(&b);
//! assert_eq!(a, b);
//! let ring = a.ring(RingConfig::default())?;
//! assert_eq!(ring.members(), &[NodeId(1), NodeId(2), NodeId(3)]);
//! # Ok::<(), calm_ring::PlacementError>(())
//! ```

use std::collections::BTreeMap;

use calm_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::{PlacementError, Ring, RingConfig};

/// One node's changes: when it joined the ring and, if it has, when it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingEntry {
    /// The Lamport position of the join.
    pub joined_at: u64,
    /// The Lamport position of the leave, if the node left.
    pub left_at: Option<u64>,
}

impl RingEntry {
    /// The join of two records of the same node: the earliest stamp of each
    /// change (a node stamps its own join once, so the two agree in
    /// practice; taking the minimum makes the merge a lattice join anyway).
    fn merged(self, other: RingEntry) -> RingEntry {
        let left_at = match (self.left_at, other.left_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        RingEntry {
            joined_at: self.joined_at.min(other.joined_at),
            left_at,
        }
    }
}

/// The gossiped history of ring joins and leaves. Merge is commutative,
/// associative and idempotent, so nodes converge on one log and one ring.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingLog {
    entries: BTreeMap<NodeId, RingEntry>,
}

/// One change in replay order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    // Declared in replay order for equal positions: joins before leaves.
    Join,
    Leave,
}

impl RingLog {
    /// Stamps `node`'s join one above every position seen. Returns whether
    /// the log changed (false if `node` is already in it, joined or left).
    pub fn join(&mut self, node: NodeId) -> bool {
        if self.entries.contains_key(&node) {
            return false;
        }
        let joined_at = self.position() + 1;
        self.entries.insert(
            node,
            RingEntry {
                joined_at,
                left_at: None,
            },
        );
        true
    }

    /// Stamps `node`'s leave one above every position seen. Returns whether
    /// the log changed (false if `node` never joined or already left).
    pub fn leave(&mut self, node: NodeId) -> bool {
        let position = self.position() + 1;
        match self.entries.get_mut(&node) {
            Some(entry) if entry.left_at.is_none() => {
                entry.left_at = Some(position);
                true
            }
            _ => false,
        }
    }

    /// Joins `other` into this log. Returns whether this log changed.
    pub fn merge(&mut self, other: &RingLog) -> bool {
        let mut changed = false;
        for (&node, &theirs) in &other.entries {
            let merged = match self.entries.get(&node) {
                Some(&ours) => ours.merged(theirs),
                None => theirs,
            };
            if self.entries.insert(node, merged) != Some(merged) {
                changed = true;
            }
        }
        changed
    }

    /// Whether every change in `other` is already in this log.
    pub fn covers(&self, other: &RingLog) -> bool {
        let mut merged = self.clone();
        !merged.merge(other)
    }

    /// The highest position stamped so far (0 for an empty log).
    pub fn position(&self) -> u64 {
        self.entries
            .values()
            .flat_map(|e| std::iter::once(e.joined_at).chain(e.left_at))
            .max()
            .unwrap_or(0)
    }

    /// `node`'s entry, if it ever joined.
    pub fn entry(&self, node: NodeId) -> Option<RingEntry> {
        self.entries.get(&node).copied()
    }

    /// Whether `node` joined and has not left.
    pub fn is_member(&self, node: NodeId) -> bool {
        self.entries
            .get(&node)
            .is_some_and(|entry| entry.left_at.is_none())
    }

    /// Every node that ever joined, with its entry, by node id.
    pub fn entries(&self) -> impl Iterator<Item = (NodeId, RingEntry)> + '_ {
        self.entries.iter().map(|(&node, &entry)| (node, entry))
    }

    /// Replays the log into a ring: every change in (position, join before
    /// leave, node id) order.
    pub fn ring(&self, config: RingConfig) -> Result<Ring, PlacementError> {
        let mut changes: Vec<(u64, Change, NodeId)> = Vec::with_capacity(self.entries.len());
        for (&node, entry) in &self.entries {
            changes.push((entry.joined_at, Change::Join, node));
            if let Some(left_at) = entry.left_at {
                changes.push((left_at, Change::Leave, node));
            }
        }
        changes.sort_unstable();
        let mut ring = Ring::new(config, &[])?;
        for (_, change, node) in changes {
            match change {
                Change::Join => ring.add_node(node)?,
                Change::Leave => ring.remove_node(node)?,
            }
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Placement;

    fn config() -> RingConfig {
        RingConfig {
            vnodes_per_node: 16,
            ..RingConfig::default()
        }
    }

    #[test]
    fn sequential_joins_build_the_ring_of_their_order() {
        let mut log = RingLog::default();
        for node in [3, 1, 2] {
            assert!(log.join(NodeId(node)));
        }
        assert!(!log.join(NodeId(1)), "a second join changes nothing");
        let expected = Ring::new(config(), &[NodeId(3), NodeId(1), NodeId(2)]).unwrap();
        assert_eq!(log.ring(config()).unwrap(), expected);
    }

    #[test]
    fn a_late_joiner_is_appended_after_the_founders() {
        // Founders joined concurrently (same position); a node that learned
        // the log first joins after them, so no founder's tokens move.
        let mut a = RingLog::default();
        a.join(NodeId(9));
        let mut b = RingLog::default();
        b.join(NodeId(4));
        a.merge(&b);
        let before = a.ring(config()).unwrap();
        a.join(NodeId(1));
        let after = a.ring(config()).unwrap();
        let mut expected = before.clone();
        expected.add_node(NodeId(1)).unwrap();
        assert_eq!(after, expected);
        assert_eq!(before.members(), &[NodeId(4), NodeId(9)]);
    }

    #[test]
    fn a_leave_removes_the_node_and_spends_its_id() {
        let mut log = RingLog::default();
        log.join(NodeId(1));
        log.join(NodeId(2));
        assert!(log.leave(NodeId(2)));
        assert!(!log.leave(NodeId(2)));
        assert!(
            !log.leave(NodeId(7)),
            "a node that never joined cannot leave"
        );
        assert!(!log.join(NodeId(2)), "a departed id does not rejoin");
        assert!(!log.is_member(NodeId(2)));
        assert_eq!(log.ring(config()).unwrap().members(), &[NodeId(1)]);
    }

    fn arbitrary_log() -> impl Strategy<Value = RingLog> {
        proptest::collection::btree_map(0u64..12, (1u64..20, proptest::option::of(0u64..20)), 0..8)
            .prop_map(|entries| RingLog {
                entries: entries
                    .into_iter()
                    .map(|(node, (joined_at, leave))| {
                        let left_at = leave.map(|l| joined_at + l);
                        (NodeId(node), RingEntry { joined_at, left_at })
                    })
                    .collect(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        // The merge is a semilattice join, so gossip converges in any order.
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in arbitrary_log(), b in arbitrary_log(), c in arbitrary_log()
        ) {
            let join = |x: &RingLog, y: &RingLog| { let mut z = x.clone(); z.merge(y); z };
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &a), a.clone());
            prop_assert!(join(&a, &b).covers(&a));
        }

        // Nodes that hold the same entries build the same ring, whatever
        // order they learned them in.
        #[test]
        fn merge_order_does_not_change_the_ring(a in arbitrary_log(), b in arbitrary_log()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(ab.ring(config()).unwrap(), ba.ring(config()).unwrap());
        }
    }
}
