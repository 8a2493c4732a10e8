//! Version vectors: per-node event counters that capture causal history
//! exactly, and the four-way causal comparison between two of them.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use crate::Dot;

/// How two causal histories relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Causality {
    /// The left history is a strict subset of the right: left happened before.
    Before,
    /// The left history is a strict superset of the right: left happened after.
    After,
    /// The histories are the same.
    Equal,
    /// Each history has an event the other lacks: neither saw the other.
    Concurrent,
}

impl Causality {
    /// The relation seen from the other side: `a.compare(b)` is
    /// `b.compare(a).inverse()`.
    pub const fn inverse(self) -> Self {
        match self {
            Causality::Before => Causality::After,
            Causality::After => Causality::Before,
            other => other,
        }
    }
}

/// A version vector: for each node, how many of its events are in this
/// causal history (node `n` at `k` means dots `(n, 1..=k)` are included).
///
/// Canonical: a node with counter 0 is absent, so two vectors describing the
/// same history are `==`. The derived `Eq`, the serialized form and decoding
/// all rely on that. `PartialOrd` is the causal order: `a < b` iff `a`
/// happened before `b`, and concurrent vectors are incomparable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "VersionVectorRaw")]
pub struct VersionVector {
    entries: BTreeMap<NodeId, u64>,
}

/// The wire shape of [`VersionVector`], validated before it becomes one.
#[derive(Deserialize)]
struct VersionVectorRaw {
    entries: BTreeMap<NodeId, u64>,
}

impl TryFrom<VersionVectorRaw> for VersionVector {
    type Error = String;

    fn try_from(raw: VersionVectorRaw) -> Result<Self, String> {
        for (&node, &counter) in &raw.entries {
            if counter == 0 {
                return Err(format!(
                    "version vector entry for {node} is 0; zero entries are omitted"
                ));
            }
            crate::wire::check_counter("version vector", counter)?;
        }
        Ok(Self {
            entries: raw.entries,
        })
    }
}

impl VersionVector {
    /// The empty history.
    pub const fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }

    /// How many of `node`'s events this history includes (0 if none).
    pub fn counter(&self, node: NodeId) -> u64 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    /// Records a new event at `node` and returns its dot.
    pub fn increment(&mut self, node: NodeId) -> Dot {
        let counter = self.entries.entry(node).or_insert(0);
        // Decoding refuses counters above COUNTER_MAX, so wrapping would need
        // 2^62 local events at one node.
        *counter = counter.checked_add(1).expect(
            "version vector counters stay far below u64::MAX: decode caps them at COUNTER_MAX",
        );
        Dot::new(node, *counter)
    }

    /// Whether the event `dot` is part of this history.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.counter(dot.node)
    }

    /// Joins `other` into this history: the pointwise maximum, which is the
    /// least upper bound of the two in the causal order.
    pub fn merge(&mut self, other: &Self) {
        for (&node, &theirs) in &other.entries {
            let ours = self.entries.entry(node).or_insert(0);
            *ours = (*ours).max(theirs);
        }
    }

    /// Whether this history includes every event of `other` (`self ≥ other`
    /// pointwise). Not strict: a vector dominates itself. `a.dominates(b)` is
    /// `a.compare(b)` being `After` or `Equal`.
    pub fn dominates(&self, other: &Self) -> bool {
        other
            .entries
            .iter()
            .all(|(&node, &theirs)| self.counter(node) >= theirs)
    }

    /// How this history relates to `other`.
    pub fn compare(&self, other: &Self) -> Causality {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The `(node, counter)` entries in node order, zero entries omitted.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().map(|(&node, &counter)| (node, counter))
    }

    /// The number of nodes with at least one event in this history.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether this is the empty history.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Raises `node`'s entry to at least `counter`; used by the DVV-set to
    /// absorb a context without going through a public constructor that
    /// would have to validate.
    pub(crate) fn raise(&mut self, node: NodeId, counter: u64) {
        if counter > 0 {
            let ours = self.entries.entry(node).or_insert(0);
            *ours = (*ours).max(counter);
        }
    }

    /// Encodes the vector with the shared versioned codec.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a vector from untrusted bytes. Never panics. An entry of 0
    /// (non-canonical) or above [`COUNTER_MAX`](crate::COUNTER_MAX) is
    /// [`DecodeError::Invalid`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::wire::decode_validated::<VersionVectorRaw, Self>(bytes)
    }
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Before => Some(Ordering::Less),
            Causality::Equal => Some(Ordering::Equal),
            Causality::After => Some(Ordering::Greater),
            Causality::Concurrent => None,
        }
    }
}

impl<'a> IntoIterator for &'a VersionVector {
    type Item = (NodeId, u64);
    type IntoIter = std::iter::Map<
        std::collections::btree_map::Iter<'a, NodeId, u64>,
        fn((&'a NodeId, &'a u64)) -> (NodeId, u64),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(&node, &counter)| (node, counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vector from `(node, counter)` pairs, built by incrementing.
    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        let mut out = VersionVector::new();
        for &(node, counter) in pairs {
            for _ in 0..counter {
                out.increment(NodeId(node));
            }
        }
        out
    }

    fn check_compare(a: &[(u64, u64)], b: &[(u64, u64)], expected: Causality) {
        let (a, b) = (vv(a), vv(b));
        assert_eq!(a.compare(&b), expected, "{a:?} vs {b:?}");
        assert_eq!(b.compare(&a), expected.inverse(), "{b:?} vs {a:?}");
    }

    #[test]
    fn compare_names_all_four_relations() {
        check_compare(&[], &[], Causality::Equal);
        check_compare(&[(1, 2)], &[(1, 2)], Causality::Equal);
        check_compare(&[], &[(1, 1)], Causality::Before);
        check_compare(&[(1, 1)], &[(1, 2), (2, 1)], Causality::Before);
        check_compare(&[(1, 3)], &[(1, 2)], Causality::After);
        check_compare(&[(1, 2)], &[(2, 1)], Causality::Concurrent);
        check_compare(&[(1, 2), (2, 1)], &[(1, 1), (2, 2)], Causality::Concurrent);
    }

    #[test]
    fn increment_names_the_next_dot_and_contains_sees_all_earlier_ones() {
        let mut v = VersionVector::new();
        assert_eq!(v.increment(NodeId(4)), Dot::new(NodeId(4), 1));
        assert_eq!(v.increment(NodeId(4)), Dot::new(NodeId(4), 2));
        assert!(v.contains(Dot::new(NodeId(4), 1)));
        assert!(v.contains(Dot::new(NodeId(4), 2)));
        assert!(!v.contains(Dot::new(NodeId(4), 3)));
        assert!(!v.contains(Dot::new(NodeId(5), 1)));
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![(NodeId(4), 2)]);
        assert_eq!((&v).into_iter().count(), v.len());
    }

    #[test]
    fn merge_is_the_pointwise_maximum_and_partial_ord_is_causal() {
        let mut a = vv(&[(1, 3), (2, 1)]);
        let b = vv(&[(2, 4), (3, 1)]);
        assert_eq!(a.partial_cmp(&b), None);
        a.merge(&b);
        assert_eq!(a, vv(&[(1, 3), (2, 4), (3, 1)]));
        assert!(b < a);
    }

    #[test]
    fn decoding_rejects_zero_and_oversized_entries() {
        let v = vv(&[(1, 3), (9, 1)]);
        assert_eq!(VersionVector::decode(&v.encode()), Ok(v));
        for counter in [0, crate::COUNTER_MAX + 1] {
            let raw: BTreeMap<NodeId, u64> = [(NodeId(1), counter)].into();
            let bytes = codec::encode(&raw);
            assert!(
                matches!(VersionVector::decode(&bytes), Err(DecodeError::Invalid(_))),
                "{counter}"
            );
            assert!(codec::decode::<VersionVector>(&bytes).is_err(), "{counter}");
        }
    }
}
