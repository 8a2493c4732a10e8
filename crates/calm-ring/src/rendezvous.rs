//! Rendezvous (highest-random-weight) placement: no tokens, one weight per
//! member per key.

use calm_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::PlacementError;
use crate::hash::{KeyHash, rendezvous_weight};
use crate::placement::{Ownership, Placement, PreferenceList, SloppyWalk};
use crate::ring::check_nodes_max;

/// How large a rendezvous membership may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RendezvousConfig {
    /// The most members accepted; 1..=[`NODES_MAX`](crate::NODES_MAX).
    pub nodes_max: usize,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig { nodes_max: 4096 }
    }
}

/// Rendezvous hashing (Thaler and Ravishankar 1996): a key's preference
/// order is the members sorted by [`rendezvous_weight`], highest first.
///
/// Compared with the [`Ring`](crate::Ring) it needs no state beyond the
/// member set (placement is a function of the set, not of its history) and
/// balances as well as the hash is uniform, but a lookup costs O(members)
/// hashes instead of a binary search. Adding a member moves exactly the keys
/// it now wins; removing one moves only its keys, each to its runner-up, so
/// they spread evenly over all remaining members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    config: RendezvousConfig,
    /// Members in ascending id order, so equal sets give equal values.
    members: Vec<NodeId>,
}

impl Rendezvous {
    /// A placement over `members` (any order). Errors on an out-of-bounds
    /// config, a duplicate node, or more than `nodes_max` members.
    pub fn new(config: RendezvousConfig, members: &[NodeId]) -> Result<Self, PlacementError> {
        check_nodes_max(config.nodes_max)?;
        if members.len() > config.nodes_max {
            return Err(PlacementError::TooManyNodes {
                count: members.len(),
                max: config.nodes_max,
            });
        }
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(PlacementError::DuplicateNode(w[0]));
        }
        Ok(Rendezvous {
            config,
            members: sorted,
        })
    }

    /// Adds `node`. On error the placement is unchanged.
    pub fn add_node(&mut self, node: NodeId) -> Result<(), PlacementError> {
        let at = match self.members.binary_search(&node) {
            Ok(_) => return Err(PlacementError::DuplicateNode(node)),
            Err(at) => at,
        };
        if self.members.len() >= self.config.nodes_max {
            return Err(PlacementError::TooManyNodes {
                count: self.members.len() + 1,
                max: self.config.nodes_max,
            });
        }
        self.members.insert(at, node);
        Ok(())
    }

    /// Removes `node`. On error the placement is unchanged.
    pub fn remove_node(&mut self, node: NodeId) -> Result<(), PlacementError> {
        let at = self
            .members
            .binary_search(&node)
            .map_err(|_| PlacementError::UnknownNode(node))?;
        self.members.remove(at);
        Ok(())
    }

    /// The `k` members with the highest weight for `key`, highest first; ties
    /// (equal 64-bit weights) go to the higher node id. Kept as a short sorted
    /// list, so a lookup is O(members · log k) when, as usual, few members
    /// beat the current k-th.
    fn top(&self, key: KeyHash, k: usize) -> Vec<(u64, NodeId)> {
        let mut top: Vec<(u64, NodeId)> = Vec::with_capacity(k + 1);
        for &node in &self.members {
            let candidate = (rendezvous_weight(key, node), node);
            if top.len() == k && top.last().is_some_and(|&last| candidate <= last) {
                continue;
            }
            let at = top.partition_point(|&entry| entry > candidate);
            top.insert(at, candidate);
            top.truncate(k);
        }
        top
    }
}

impl Placement for Rendezvous {
    fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Offers members in descending weight. Only the top n are ranked at
    /// first; each time down owners exhaust them, twice as many are ranked
    /// (a prefix of a longer ranking is the shorter ranking, so nothing is
    /// offered twice).
    fn preference_list(
        &self,
        key: KeyHash,
        n: usize,
        is_down: &dyn Fn(NodeId) -> bool,
    ) -> PreferenceList {
        let mut walk = SloppyWalk::new(n, is_down);
        if self.members.is_empty() || walk.is_complete() {
            return walk.finish();
        }
        let mut ranked = n.min(self.members.len());
        let mut offered = 0;
        loop {
            let top = self.top(key, ranked);
            for &(_, node) in &top[offered..] {
                if walk.offer(node) {
                    return walk.finish();
                }
            }
            offered = top.len();
            if ranked == self.members.len() {
                return walk.finish();
            }
            ranked = (ranked * 2).min(self.members.len());
        }
    }

    fn primary(&self, key: KeyHash) -> Option<NodeId> {
        self.members
            .iter()
            .map(|&node| (rendezvous_weight(key, node), node))
            .max()
            .map(|(_, node)| node)
    }

    /// Each member's share is 1/N: weights are independent and identically
    /// distributed per key, so every member is equally likely to win. There
    /// are no arcs to measure; the tests check sampled keys against this.
    fn ownership(&self) -> Ownership {
        let share = 1.0 / self.members.len() as f64;
        Ownership {
            shares: self.members.iter().map(|&node| (node, share)).collect(),
        }
    }
}
