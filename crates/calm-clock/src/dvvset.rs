//! Dotted version vector sets: one key's sibling values and the causal
//! history that decides which of them a write supersedes.
//!
//! Preguiça, Baquero, Almeida, Fonte, Gonçalves, "Dotted Version Vectors:
//! Logical Clocks for Optimistic Replication" (2010), in the compact
//! per-key form Riak stores (`dvvset`). A plain version vector per value
//! either loses concurrent writes or, with client ids, grows with history;
//! tagging each value with the dot of the write that made it lets a replica
//! drop exactly the values a writer had read, so the number of siblings is
//! bounded by the number of concurrent writers.
//!
//! Representation: for each coordinating node, a counter `n` (the history
//! contains that node's dots `1..=n`) and the values still alive, which are
//! always that node's *latest* dots `n-k+1..=n`. They are contiguous because
//! a node stamps writes from its own state, which already holds every earlier
//! dot of that node, and a context (a version vector) that saw a dot saw all
//! earlier dots of the same node. That is what makes the structure compact:
//! no per-value dot is stored.

use std::collections::BTreeMap;

use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Dot, VersionVector};

/// The causally tracked sibling values of one key.
///
/// Server-side use, as in a Dynamo-style store:
/// * a read returns [`values`](Self::values) and the context
///   [`join`](Self::join);
/// * a write carries the context its client read (empty for a blind write)
///   and is applied with [`update`](Self::update) at the coordinating node,
///   which stamps it with that node's next dot;
/// * replicas exchange whole sets and combine them with [`sync`](Self::sync).
///
/// Assumption shared with every DVV implementation: a dot names one value
/// everywhere. It holds because only the coordinating node mints its dots,
/// from its own state. Replicas that disagree on a dot's value (corrupt or
/// forged data) still sync into a valid set, but which value wins is then
/// unspecified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DvvSetRaw<V>")]
#[serde(bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>"))]
pub struct DvvSet<V> {
    entries: BTreeMap<NodeId, Entry<V>>,
}

/// One coordinating node's part of a [`DvvSet`].
///
/// Invariant: `1 <= counter`, `values.len() <= counter`; `values` is ordered
/// oldest first and `values[i]` carries the dot
/// `counter - values.len() + 1 + i`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry<V> {
    counter: u64,
    values: Vec<V>,
}

/// The wire shape of [`DvvSet`], validated before it becomes one.
#[derive(Deserialize)]
#[serde(bound(deserialize = "V: Deserialize<'de>"))]
struct DvvSetRaw<V> {
    entries: BTreeMap<NodeId, Entry<V>>,
}

impl<V> TryFrom<DvvSetRaw<V>> for DvvSet<V> {
    type Error = String;

    fn try_from(raw: DvvSetRaw<V>) -> Result<Self, String> {
        for (&node, entry) in &raw.entries {
            if entry.counter == 0 {
                return Err(format!("DVV-set entry for {node} has counter 0"));
            }
            crate::wire::check_counter("DVV-set", entry.counter)?;
            if entry.values.len() as u64 > entry.counter {
                return Err(format!(
                    "DVV-set entry for {node} holds {} values but only {} dots",
                    entry.values.len(),
                    entry.counter
                ));
            }
        }
        Ok(Self {
            entries: raw.entries,
        })
    }
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> DvvSet<V> {
    /// A key that was never written: no values, empty history.
    pub const fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }

    /// Applies a write of `value`, coordinated by `node`, from a client that
    /// read `context` (empty for a blind write). Returns the write's dot.
    ///
    /// Every value whose dot `context` contains is discarded (the client saw
    /// it, so the write supersedes it); every other value survives as a
    /// sibling. The new value gets `node`'s next dot, so it is concurrent
    /// with the survivors and newer than everything in `context`.
    pub fn update(&mut self, context: &VersionVector, node: NodeId, value: V) -> Dot {
        self.discard(context);
        let entry = self.entries.entry(node).or_insert_with(Entry::empty);
        // Decoding refuses counters above COUNTER_MAX, so wrapping would need
        // 2^62 writes coordinated by one node.
        entry.counter = entry
            .counter
            .checked_add(1)
            .expect("DVV-set counters stay far below u64::MAX: decode caps them at COUNTER_MAX");
        entry.values.push(value);
        Dot::new(node, entry.counter)
    }

    /// Discards every value whose dot `context` contains and joins `context`
    /// into the history, so that the discarded values cannot come back
    /// through a later [`sync`](Self::sync) with a replica that still has them.
    pub fn discard(&mut self, context: &VersionVector) {
        for (node, seen) in context {
            self.entries
                .entry(node)
                .or_insert_with(Entry::empty)
                .forget_through(seen);
        }
    }

    /// The causal context to hand a client with the values: the version
    /// vector of everything this set has seen, discarded values included.
    pub fn join(&self) -> VersionVector {
        let mut context = VersionVector::new();
        for (&node, entry) in &self.entries {
            context.raise(node, entry.counter);
        }
        context
    }

    /// The sibling values, by coordinating node and, within one node, oldest
    /// first.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.values().flat_map(|entry| entry.values.iter())
    }

    /// The sibling values with the dot of the write that made each.
    pub fn dotted_values(&self) -> impl Iterator<Item = (Dot, &V)> + '_ {
        self.entries.iter().flat_map(|(&node, entry)| {
            let oldest = entry.floor() + 1;
            (oldest..)
                .zip(&entry.values)
                .map(move |(counter, value)| (Dot::new(node, counter), value))
        })
    }

    /// The number of sibling values.
    pub fn size(&self) -> usize {
        self.entries.values().map(|entry| entry.values.len()).sum()
    }

    /// Merges another replica's set for the same key: the histories are
    /// joined, and a value survives if both sides still hold it or one side
    /// holds it and the other never saw it.
    ///
    /// Commutative, associative and idempotent, so replicas converge however
    /// anti-entropy and read repair deliver sets.
    pub fn sync(&mut self, other: &Self)
    where
        V: Clone,
    {
        for (&node, theirs) in &other.entries {
            match self.entries.get_mut(&node) {
                Some(ours) => ours.sync(theirs),
                None => {
                    self.entries.insert(node, theirs.clone());
                }
            }
        }
    }

    /// Encodes the set with the shared versioned codec.
    pub fn encode(&self) -> Vec<u8>
    where
        V: Serialize,
    {
        codec::encode(self)
    }

    /// Decodes a set from untrusted bytes. Never panics. An entry with
    /// counter 0, a counter above [`COUNTER_MAX`](crate::COUNTER_MAX), or more
    /// values than its counter has dots is [`DecodeError::Invalid`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError>
    where
        V: DeserializeOwned,
    {
        crate::wire::decode_validated::<DvvSetRaw<V>, Self>(bytes)
    }
}

impl<V> Entry<V> {
    const fn empty() -> Self {
        Self {
            counter: 0,
            values: Vec::new(),
        }
    }

    /// The newest of this node's dots that is no longer alive: the values
    /// carry dots `floor + 1 ..= counter`.
    fn floor(&self) -> u64 {
        // values.len() <= counter is the entry invariant, so no underflow.
        self.counter - self.values.len() as u64
    }

    /// Drops the values whose dots are `<= seen` and joins `seen` into the
    /// history. The alive values are the newest dots, so the stale ones are a
    /// prefix of the oldest-first list.
    fn forget_through(&mut self, seen: u64) {
        let len = self.values.len() as u64;
        let stale = seen.saturating_sub(self.floor()).min(len);
        // stale <= len, and len came from a usize.
        self.values.drain(..stale as usize);
        self.counter = self.counter.max(seen);
    }

    /// Riak's per-entry `merge`: the larger counter wins the history; alive
    /// dots are those above both floors, which are a suffix of the side with
    /// the larger counter (dots above the smaller counter were never seen by
    /// the other side, so they stay alive).
    fn sync(&mut self, theirs: &Self)
    where
        V: Clone,
    {
        let floor = self.floor().max(theirs.floor());
        if theirs.counter > self.counter {
            // floor >= theirs.floor(), so keep <= theirs.values.len().
            let keep = (theirs.counter - floor) as usize;
            self.values = theirs.values[theirs.values.len() - keep..].to_vec();
            self.counter = theirs.counter;
        } else {
            // self.counter >= both floors, and floor >= self.floor().
            let keep = (self.counter - floor) as usize;
            let stale = self.values.len() - keep;
            self.values.drain(..stale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    /// A set's observable state: its history and its dotted values.
    type State = (Vec<(NodeId, u64)>, Vec<(Dot, &'static str)>);

    fn state(set: &DvvSet<&'static str>) -> State {
        (
            set.join().iter().collect(),
            set.dotted_values().map(|(dot, &v)| (dot, v)).collect(),
        )
    }

    fn dot(node: NodeId, counter: u64) -> Dot {
        Dot::new(node, counter)
    }

    fn written(
        base: &DvvSet<&'static str>,
        context: &VersionVector,
        node: NodeId,
        value: &'static str,
    ) -> DvvSet<&'static str> {
        let mut out = base.clone();
        out.update(context, node, value);
        out
    }

    #[test]
    fn update_supersedes_what_the_context_saw_and_keeps_the_rest() {
        // Riak dvvset.erl update_test, with the same scenario.
        let empty = VersionVector::new();
        let a0 = written(&DvvSet::new(), &empty, A, "v1");
        assert_eq!(state(&a0), (vec![(A, 1)], vec![(dot(A, 1), "v1")]));
        let a1 = written(&a0, &a0.join(), A, "v2");
        assert_eq!(state(&a1), (vec![(A, 2)], vec![(dot(A, 2), "v2")]));
        let a2 = written(&a1, &a1.join(), B, "v3");
        assert_eq!(state(&a2), (vec![(A, 2), (B, 1)], vec![(dot(B, 1), "v3")]));
        // A write that read only a0 leaves a1's value as a sibling.
        let a3 = written(&a1, &a0.join(), B, "v4");
        assert_eq!(
            state(&a3),
            (
                vec![(A, 2), (B, 1)],
                vec![(dot(A, 2), "v2"), (dot(B, 1), "v4")]
            )
        );
        let a4 = written(&a1, &a0.join(), A, "v5");
        assert_eq!(
            state(&a4),
            (vec![(A, 3)], vec![(dot(A, 2), "v2"), (dot(A, 3), "v5")])
        );
    }

    #[test]
    fn a_write_with_a_stale_context_keeps_only_what_it_did_not_see() {
        // Riak dvvset.erl syn_update_test: Mary writes v1 and v2 blind, Peter
        // writes v3 having read only v1; v3 replaces v1, v2 stays a sibling.
        let mut set = DvvSet::new();
        set.update(&VersionVector::new(), A, "v1");
        let peter_read = set.join();
        set.update(&VersionVector::new(), A, "v2");
        assert_eq!(set.values().copied().collect::<Vec<_>>(), vec!["v1", "v2"]);
        set.update(&peter_read, A, "v3");
        assert_eq!(
            state(&set),
            (vec![(A, 3)], vec![(dot(A, 2), "v2"), (dot(A, 3), "v3")])
        );
    }

    #[test]
    fn sync_drops_values_one_side_has_superseded() {
        // Riak dvvset.erl sync_test: W saw a1 but holds nothing; Z holds a1
        // and a2. Merged, a1 is gone (W superseded it) and a2 stays.
        let mut w = DvvSet::new();
        let mut a1 = VersionVector::new();
        a1.increment(A);
        w.discard(&a1);
        let mut z = DvvSet::new();
        z.update(&VersionVector::new(), A, "v1");
        z.update(&VersionVector::new(), A, "v2");
        let mut wz = w.clone();
        wz.sync(&z);
        let mut zw = z.clone();
        zw.sync(&w);
        assert_eq!(state(&wz), (vec![(A, 2)], vec![(dot(A, 2), "v2")]));
        assert_eq!(wz, zw);
    }

    #[test]
    fn sync_keeps_values_from_different_coordinators_side_by_side() {
        let mut base = DvvSet::new();
        base.update(&VersionVector::new(), A, "v1");
        base.update(&base.join(), A, "v2");
        let at_b = written(&base, &base.join(), B, "v3");
        let at_c = written(&base, &base.join(), C, "v3");
        let mut merged = at_b.clone();
        merged.sync(&at_c);
        assert_eq!(
            state(&merged),
            (
                vec![(A, 2), (B, 1), (C, 1)],
                vec![(dot(B, 1), "v3"), (dot(C, 1), "v3")]
            )
        );
        assert_eq!(merged.size(), 2);
    }

    #[test]
    fn decoding_rejects_more_values_than_dots() {
        let mut set = DvvSet::new();
        set.update(&VersionVector::new(), A, 7u32);
        assert_eq!(DvvSet::decode(&set.encode()), Ok(set));
        // Counter 1 but two values: the second would need dot (A, 0).
        let forged = DvvSetRaw {
            entries: [(
                A,
                Entry {
                    counter: 1,
                    values: vec![7u32, 8],
                },
            )]
            .into(),
        };
        let bytes = codec::encode(&forged.entries);
        assert!(matches!(
            DvvSet::<u32>::decode(&bytes),
            Err(DecodeError::Invalid(_))
        ));
        let zero = codec::encode(&BTreeMap::from([(A, Entry::<u32>::empty())]));
        assert!(matches!(
            DvvSet::<u32>::decode(&zero),
            Err(DecodeError::Invalid(_))
        ));
        // Nested inside another message, the serde path refuses it too.
        assert!(codec::decode::<DvvSet<u32>>(&bytes).is_err());
    }
}
