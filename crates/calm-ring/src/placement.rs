//! The `Placement` trait shared by the ring and rendezvous hashing, and the
//! sloppy preference list both of them return.

use calm_types::NodeId;

use crate::hash::KeyHash;

/// Where keys live: the natural owners of a key, its sloppy preference list,
/// and each member's share of the key space.
///
/// Implemented by [`Ring`](crate::Ring) (consistent hashing with virtual
/// nodes) and [`Rendezvous`](crate::Rendezvous) (highest random weight), so a
/// keyspace can choose either. The trait is object safe (`is_down` is a
/// `&dyn Fn`), so the choice can be made at run time from configuration.
///
/// Every method is a pure function of the membership and its arguments: the
/// same placement answers the same question the same way on every node.
pub trait Placement {
    /// The members, in the order the placement keeps them (join order for a
    /// ring, ascending id for rendezvous).
    fn members(&self) -> &[NodeId];

    /// The sloppy preference list of `key`: up to `n` distinct physical nodes
    /// that are not down, in preference order, each marked with the natural
    /// owner it stands in for (Dynamo §4.6, hinted handoff).
    ///
    /// Asking for more nodes than are up is not an error: the list holds
    /// every up node there is, and the caller compares its length with the
    /// write quorum it needs. `is_down` is called at most once per member.
    fn preference_list(
        &self,
        key: KeyHash,
        n: usize,
        is_down: &dyn Fn(NodeId) -> bool,
    ) -> PreferenceList;

    /// The first `n` distinct nodes for `key` regardless of health: the
    /// natural owners (all members if there are fewer than `n`).
    fn owners(&self, key: KeyHash, n: usize) -> Vec<NodeId> {
        self.preference_list(key, n, &|_| false).owners
    }

    /// The first natural owner of `key`, or `None` for an empty membership.
    fn primary(&self, key: KeyHash) -> Option<NodeId> {
        self.owners(key, 1).first().copied()
    }

    /// Each member's share of the 64-bit key space as primary owner.
    fn ownership(&self) -> Ownership;
}

/// One entry of a [`PreferenceList`]: a node to send a replica to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The node that should receive the replica. Never a node marked down.
    pub node: NodeId,
    /// `None` if `node` is itself a natural owner; otherwise the down natural
    /// owner this fallback holds a hint for, to hand the data back when that
    /// owner recovers.
    pub stands_in_for: Option<NodeId>,
}

/// A key's natural owners and the up nodes that serve it now.
///
/// `replicas` lists the up natural owners first (in preference order), then
/// one fallback for each down owner: the i-th fallback stands in for the i-th
/// down owner. Its length is `min(n, up members)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreferenceList {
    /// The first `n` distinct nodes in preference order, up or down.
    pub owners: Vec<NodeId>,
    /// The nodes to use, none of them down, each with the owner it replaces.
    pub replicas: Vec<Replica>,
}

impl PreferenceList {
    /// The nodes to contact, in preference order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().map(|r| r.node)
    }

    /// The hinted entries as `(fallback, owner it stands in for)` pairs.
    pub fn hints(&self) -> impl Iterator<Item = (NodeId, NodeId)> + '_ {
        self.replicas
            .iter()
            .filter_map(|r| r.stands_in_for.map(|owner| (r.node, owner)))
    }
}

/// Each member's share of the key space as primary owner, sorted by node id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ownership {
    /// `(node, fraction)` pairs; the fractions sum to 1 for a non-empty
    /// membership.
    pub shares: Vec<(NodeId, f64)>,
}

impl Ownership {
    /// The share of `node`, or `None` if it is not a member.
    pub fn share(&self, node: NodeId) -> Option<f64> {
        self.shares
            .binary_search_by_key(&node, |&(n, _)| n)
            .ok()
            .map(|i| self.shares[i].1)
    }

    /// The largest share divided by the mean share: 1.0 is perfect balance.
    /// Returns 1.0 for an empty membership, which has nothing to balance.
    pub fn max_over_mean(&self) -> f64 {
        if self.shares.is_empty() {
            return 1.0;
        }
        let max = self.shares.iter().map(|&(_, s)| s).fold(0.0, f64::max);
        let mean = self.shares.iter().map(|&(_, s)| s).sum::<f64>() / self.shares.len() as f64;
        max / mean
    }
}

/// Builds a sloppy preference list from distinct nodes offered in preference
/// order. Shared by both placements so that they agree on what "sloppy" means.
pub(crate) struct SloppyWalk<'a> {
    n: usize,
    is_down: &'a dyn Fn(NodeId) -> bool,
    list: PreferenceList,
    /// Natural owners found down, in preference order, waiting for a fallback.
    down_owners: Vec<NodeId>,
    /// How many of `down_owners` already have a fallback.
    fallbacks: usize,
}

impl<'a> SloppyWalk<'a> {
    pub(crate) fn new(n: usize, is_down: &'a dyn Fn(NodeId) -> bool) -> Self {
        SloppyWalk {
            n,
            is_down,
            list: PreferenceList::default(),
            down_owners: Vec::new(),
            fallbacks: 0,
        }
    }

    /// True once the list holds `n` replicas; offer nothing more after that.
    pub(crate) fn is_complete(&self) -> bool {
        self.list.replicas.len() == self.n
    }

    /// Offers the next node in preference order. The caller guarantees that
    /// no node is offered twice. Returns [`Self::is_complete`].
    pub(crate) fn offer(&mut self, node: NodeId) -> bool {
        debug_assert!(!self.is_complete(), "offer after the list is complete");
        let down = (self.is_down)(node);
        if self.list.owners.len() < self.n {
            self.list.owners.push(node);
            if down {
                self.down_owners.push(node);
            } else {
                self.list.replicas.push(Replica {
                    node,
                    stands_in_for: None,
                });
            }
        } else if !down {
            // Owners are complete and the list is not, so replicas hold every
            // up owner plus `fallbacks` fallbacks, fewer than n: hence
            // `fallbacks < down_owners.len()` and the index is in bounds.
            let owner = self.down_owners[self.fallbacks];
            self.fallbacks += 1;
            self.list.replicas.push(Replica {
                node,
                stands_in_for: Some(owner),
            });
        }
        self.is_complete()
    }

    pub(crate) fn finish(self) -> PreferenceList {
        self.list
    }
}
