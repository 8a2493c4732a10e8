//! The causal context and the dot stores every causal CRDT is built from.
//!
//! Almeida, Shoker and Baquero ("Delta State Replicated Data Types") build
//! the OR-Set, the MV-Register and the OR-Map from one pattern: a *dot store*
//! holding the dots of the events that are still visible, paired with a
//! *causal context* holding every dot the replica has ever seen. A dot that
//! one side has seen but no longer stores was removed there; a dot one side
//! has not seen is new to it. That single rule, applied by [`DotStore::join_store`],
//! gives observed-remove semantics without per-element tombstones: a removal
//! leaves only its dots in the context, and the context stays small because
//! [`CausalContext::compact`] folds contiguous dots into a version vector.
//!
//! The three dot stores of the paper are [`DotSet`], [`DotFun`] and
//! [`DotMap`]; [`CausalCrdt`] is the embedding trait that lets an OR-Map hold
//! any causal CRDT as a value, sharing the map's causal context.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use calm_clock::Dot;
use calm_types::NodeId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::DeltaCrdt;

/// The largest dot counter a decoded state may carry.
///
/// Half the `u64` range: a replica derives its next dot as "largest counter
/// seen + 1", so bounding what the network may claim keeps that addition far
/// from overflow (2^63 further local events would be needed).
pub const DOT_COUNTER_MAX: u64 = u64::MAX / 2;

/// Every dot a replica has seen: a compact version vector plus the "dot
/// cloud" of dots beyond it.
///
/// Canonical form, kept by every method: the vector has no zero entry, and
/// no cloud dot is covered by or contiguous with the vector (such dots are
/// folded in by [`compact`](Self::compact)). Two contexts holding the same
/// dots are therefore equal as values, which is what makes joins of causal
/// CRDTs comparable with `==`.
///
/// ```
/// use calm_clock::Dot;
/// use calm_crdt::CausalContext;
/// use calm_types::NodeId;
///
/// let n1 = NodeId(1);
/// let mut context = CausalContext::new();
/// context.insert(Dot::new(n1, 2)); // a gap: dot 1 is missing
/// assert_eq!(context.cloud_len(), 1);
/// context.insert(Dot::new(n1, 1)); // the gap closes and both fold in
/// assert_eq!(context.cloud_len(), 0);
/// assert!(context.contains(Dot::new(n1, 2)));
/// assert_eq!(context.next_dot(n1), Dot::new(n1, 3));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    /// `node → n`: every dot `(node, 1..=n)` has been seen.
    vector: BTreeMap<NodeId, u64>,
    /// Dots seen beyond the vector, none contiguous with it.
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// An empty context: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.frontier(dot.node) || self.cloud.contains(&dot)
    }

    /// The largest counter seen from `node`, in the vector or the cloud.
    pub fn max_counter(&self, node: NodeId) -> u64 {
        let beyond = self
            .cloud
            .range(Dot::new(node, 0)..=Dot::new(node, u64::MAX))
            .next_back()
            .map_or(0, |dot| dot.counter);
        self.frontier(node).max(beyond)
    }

    /// The dot `node`'s next event takes: one past the largest it has seen.
    ///
    /// Pure: the mutator that uses the dot puts it in its delta's context,
    /// and joining the delta locally records it. A node sees all of its own
    /// events, so the dot is fresh as long as its state survives restarts.
    pub fn next_dot(&self, node: NodeId) -> Dot {
        // Decoded counters are at most DOT_COUNTER_MAX and local events add
        // one at a time, so this cannot overflow.
        Dot::new(node, self.max_counter(node) + 1)
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        if self.contains(dot) {
            return;
        }
        self.cloud.insert(dot);
        self.fold_node(dot.node);
    }

    /// Joins `other` into this context: afterwards it holds the dots of both.
    pub fn join(&mut self, other: &Self) {
        for (&node, &top) in &other.vector {
            if top > 0 {
                let entry = self.vector.entry(node).or_insert(0);
                *entry = (*entry).max(top);
            }
        }
        if !other.cloud.is_empty() || !self.cloud.is_empty() {
            self.cloud.extend(other.cloud.iter().copied());
            self.compact();
        }
    }

    /// Folds every cloud dot contiguous with the vector into it, and drops
    /// cloud dots the vector already covers. Joins and inserts call it, so on
    /// a context built through this API it never changes anything.
    pub fn compact(&mut self) {
        // The cloud iterates by node, then counter, so one pass sees each
        // node's dots in ascending order and a run folds as it goes.
        for dot in std::mem::take(&mut self.cloud) {
            let top = self.frontier(dot.node);
            if dot.counter <= top {
                continue;
            }
            if dot.counter == top + 1 {
                self.vector.insert(dot.node, dot.counter);
            } else {
                self.cloud.insert(dot);
            }
        }
    }

    /// The compact version vector: `(node, n)` means dots `1..=n` of `node`
    /// have been seen.
    pub fn vector(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.vector.iter().map(|(&node, &top)| (node, top))
    }

    /// The dots seen beyond the vector, in order.
    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }

    /// How many dots sit in the cloud. Zero once every gap is filled.
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.vector.is_empty() && self.cloud.is_empty()
    }

    /// Checks the canonical form, for contexts decoded from untrusted bytes.
    pub fn validate(&self) -> Result<(), String> {
        for (&node, &top) in &self.vector {
            if top == 0 {
                return Err(format!("causal context has a zero vector entry for {node}"));
            }
            if top > DOT_COUNTER_MAX {
                return Err(format!(
                    "causal context entry {node}:{top} exceeds DOT_COUNTER_MAX"
                ));
            }
        }
        for dot in &self.cloud {
            if dot.counter > DOT_COUNTER_MAX {
                return Err(format!("cloud dot {dot:?} exceeds DOT_COUNTER_MAX"));
            }
            if dot.counter <= self.frontier(dot.node) + 1 {
                return Err(format!(
                    "cloud dot {dot:?} is covered by or contiguous with the vector"
                ));
            }
        }
        Ok(())
    }

    /// The vector entry for `node`, zero when absent.
    fn frontier(&self, node: NodeId) -> u64 {
        self.vector.get(&node).copied().unwrap_or(0)
    }

    /// Folds `node`'s cloud dots that continue its vector entry.
    fn fold_node(&mut self, node: NodeId) {
        let mut top = self.frontier(node);
        while self.cloud.remove(&Dot::new(node, top + 1)) {
            top += 1;
        }
        if top > 0 {
            self.vector.insert(node, top);
        }
    }
}

impl FromIterator<Dot> for CausalContext {
    fn from_iter<I: IntoIterator<Item = Dot>>(dots: I) -> Self {
        let mut context = Self::new();
        for dot in dots {
            context.insert(dot);
        }
        context
    }
}

/// A dot store: the part of a causal CRDT that holds the visible events,
/// joined relative to the causal contexts of both sides.
///
/// The join rule (the paper's, for every store): a dot survives if both sides
/// store it, or if the side that lacks it has not seen it. A dot one side has
/// seen but dropped was removed there, and the removal wins over the stale
/// copy; a dot one side has not seen is a concurrent addition, and survives.
pub trait DotStore: Clone + Default + PartialEq + Debug + Serialize + DeserializeOwned {
    /// Whether the store holds no dot (the bottom of its lattice).
    fn is_bottom(&self) -> bool;

    /// Calls `visit` once for every dot the store holds.
    fn for_each_dot(&self, visit: &mut dyn FnMut(Dot));

    /// Joins `(other, other_context)` into `(self, context)`, where `context`
    /// is this store's causal context. The contexts themselves are joined by
    /// the caller afterwards.
    fn join_store(&mut self, context: &CausalContext, other: &Self, other_context: &CausalContext);

    /// Checks shape invariants serde cannot express (e.g. a map entry that is
    /// bottom), for stores decoded from untrusted bytes.
    fn validate_shape(&self) -> Result<(), String>;
}

/// A causal CRDT: a dot store paired with a causal context.
///
/// This is the embedding contract of [`OrMap`](crate::OrMap): the map keeps
/// each value's store under its key and one context for all of them, and
/// runs a value's own mutators on a view built with [`from_parts`](Self::from_parts),
/// so nested dots are fresh across the whole map.
pub trait CausalCrdt: DeltaCrdt {
    /// The dot store holding this type's visible events.
    type Store: DotStore;

    /// Builds a state from its parts. The caller upholds the invariant that
    /// every dot of `store` is in `context`; untrusted bytes go through
    /// [`DeltaCrdt::decode`] instead, which checks it.
    fn from_parts(store: Self::Store, context: CausalContext) -> Self;

    /// Splits a state into its store and its context.
    fn into_parts(self) -> (Self::Store, CausalContext);

    /// The dot store.
    fn store(&self) -> &Self::Store;

    /// The causal context.
    fn context(&self) -> &CausalContext;

    /// What a store reads as; [`DeltaCrdt::value`] is `read(self.store())`.
    fn read(store: &Self::Store) -> Self::Value;
}

/// Joins one causal CRDT's parts into another's: stores first, relative to
/// the contexts before the join, then the contexts.
pub(crate) fn join_causal<S: DotStore>(
    store: &mut S,
    context: &mut CausalContext,
    other: &S,
    other_context: &CausalContext,
) {
    store.join_store(context, other, other_context);
    context.join(other_context);
}

/// Checks the invariants of a causal state decoded from untrusted bytes: a
/// canonical context, a well-shaped store, and every stored dot real, unique
/// and covered by the context. A dot outside the context would be dropped
/// by the next join with a replica that removed nothing, breaking
/// idempotence; a duplicated dot would name two events.
pub(crate) fn validate_causal<S: DotStore>(
    store: &S,
    context: &CausalContext,
) -> Result<(), String> {
    context.validate()?;
    store.validate_shape()?;
    let mut seen = BTreeSet::new();
    let mut problem = None;
    store.for_each_dot(&mut |dot| {
        if problem.is_some() {
            return;
        }
        if dot.counter == 0 {
            problem = Some(format!(
                "stored dot {dot:?} has counter 0; counters start at 1"
            ));
        } else if !seen.insert(dot) {
            problem = Some(format!("dot {dot:?} is stored twice"));
        } else if !context.contains(dot) {
            problem = Some(format!(
                "stored dot {dot:?} is not covered by the causal context"
            ));
        }
    });
    problem.map_or(Ok(()), Err)
}

/// A set of dots: the store of a flag or of one OR-Set element.
///
/// ```
/// use calm_clock::Dot;
/// use calm_crdt::DotSet;
/// use calm_types::NodeId;
///
/// let dots: DotSet = [Dot::new(NodeId(1), 1)].into_iter().collect();
/// assert!(dots.contains(Dot::new(NodeId(1), 1)));
/// assert_eq!(dots.len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DotSet(BTreeSet<Dot>);

impl DotSet {
    /// An empty dot set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a dot.
    pub fn insert(&mut self, dot: Dot) {
        self.0.insert(dot);
    }

    /// Whether the set holds `dot`.
    pub fn contains(&self, dot: Dot) -> bool {
        self.0.contains(&dot)
    }

    /// The dots, in order.
    pub fn iter(&self) -> impl Iterator<Item = Dot> + '_ {
        self.0.iter().copied()
    }

    /// How many dots the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Dot> for DotSet {
    fn from_iter<I: IntoIterator<Item = Dot>>(dots: I) -> Self {
        Self(dots.into_iter().collect())
    }
}

impl DotStore for DotSet {
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, visit: &mut dyn FnMut(Dot)) {
        self.0.iter().copied().for_each(visit);
    }

    fn join_store(&mut self, context: &CausalContext, other: &Self, other_context: &CausalContext) {
        // (s ∩ s') ∪ (s \ c') ∪ (s' \ c)
        self.0
            .retain(|&dot| other.0.contains(&dot) || !other_context.contains(dot));
        for &dot in &other.0 {
            if !context.contains(dot) {
                self.0.insert(dot);
            }
        }
    }

    fn validate_shape(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A map from dots to values: the store of an MV-Register (one value per
/// concurrent write) or of a dot-based counter (one contribution per node).
///
/// A dot names one event, so honest replicas always agree on its value. If
/// two states disagree anyway (a faulty sender), the join keeps the larger
/// value so that it stays commutative.
///
/// ```
/// use calm_clock::Dot;
/// use calm_crdt::DotFun;
/// use calm_types::NodeId;
///
/// let mut versions = DotFun::new();
/// versions.insert(Dot::new(NodeId(1), 1), "draft");
/// assert_eq!(versions.get(Dot::new(NodeId(1), 1)), Some(&"draft"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>"))]
pub struct DotFun<V>(BTreeMap<Dot, V>);

impl<V> Default for DotFun<V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<V> DotFun<V> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `dot` to `value`.
    pub fn insert(&mut self, dot: Dot, value: V) {
        self.0.insert(dot, value);
    }

    /// The value of `dot`, if stored.
    pub fn get(&self, dot: Dot) -> Option<&V> {
        self.0.get(&dot)
    }

    /// The entries, in dot order.
    pub fn iter(&self) -> impl Iterator<Item = (Dot, &V)> + '_ {
        self.0.iter().map(|(&dot, value)| (dot, value))
    }

    /// How many dots are stored.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V> DotStore for DotFun<V>
where
    V: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, visit: &mut dyn FnMut(Dot)) {
        self.0.keys().copied().for_each(visit);
    }

    fn join_store(&mut self, context: &CausalContext, other: &Self, other_context: &CausalContext) {
        self.0.retain(|&dot, value| match other.0.get(&dot) {
            Some(theirs) => {
                if *theirs > *value {
                    *value = theirs.clone();
                }
                true
            }
            None => !other_context.contains(dot),
        });
        for (&dot, value) in &other.0 {
            if !context.contains(dot) && !self.0.contains_key(&dot) {
                self.0.insert(dot, value.clone());
            }
        }
    }

    fn validate_shape(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A map from keys to nested dot stores: the store of an OR-Set (element →
/// [`DotSet`]) and of an OR-Map (key → the value's store).
///
/// A key is present exactly while its store holds a dot: the join drops
/// entries that become bottom, so a removed key leaves nothing behind but
/// its dots in the shared context.
///
/// ```
/// use calm_clock::Dot;
/// use calm_crdt::{DotMap, DotSet};
/// use calm_types::NodeId;
///
/// let mut entries = DotMap::new();
/// entries.insert("k", [Dot::new(NodeId(1), 1)].into_iter().collect::<DotSet>());
/// entries.insert("empty", DotSet::new()); // bottom: not stored
/// assert_eq!(entries.len(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, S: Serialize",
    deserialize = "K: Ord + Deserialize<'de>, S: Deserialize<'de>"
))]
pub struct DotMap<K, S>(BTreeMap<K, S>);

impl<K, S> Default for DotMap<K, S> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<K: Ord, S: DotStore> DotMap<K, S> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `store` under `key`; a bottom store removes the key instead,
    /// keeping the map canonical.
    pub fn insert(&mut self, key: K, store: S) {
        if store.is_bottom() {
            self.0.remove(&key);
        } else {
            self.0.insert(key, store);
        }
    }

    /// The store under `key`.
    pub fn get(&self, key: &K) -> Option<&S> {
        self.0.get(key)
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> + '_ {
        self.0.iter()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.0.keys()
    }

    /// How many keys are present.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K, S> DotStore for DotMap<K, S>
where
    K: Ord + Clone + Debug + Serialize + DeserializeOwned,
    S: DotStore,
{
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, visit: &mut dyn FnMut(Dot)) {
        for store in self.0.values() {
            store.for_each_dot(visit);
        }
    }

    fn join_store(&mut self, context: &CausalContext, other: &Self, other_context: &CausalContext) {
        // Keys only this side holds still join with the other side's bottom:
        // their dots that the other side has seen were removed there. This
        // visits every key, so a join costs O(|self| + |other|) even when
        // `other` is a one-key delta.
        let bottom = S::default();
        for (key, store) in &mut self.0 {
            let theirs = other.0.get(key).unwrap_or(&bottom);
            store.join_store(context, theirs, other_context);
        }
        for (key, theirs) in &other.0 {
            if self.0.contains_key(key) {
                continue;
            }
            let mut store = S::default();
            store.join_store(context, theirs, other_context);
            if !store.is_bottom() {
                self.0.insert(key.clone(), store);
            }
        }
        self.0.retain(|_, store| !store.is_bottom());
    }

    fn validate_shape(&self) -> Result<(), String> {
        for (key, store) in &self.0 {
            if store.is_bottom() {
                return Err(format!("map entry {key:?} holds no dot"));
            }
            store.validate_shape()?;
        }
        Ok(())
    }
}

/// Shared scaffolding for the causal CRDTs' property tests: seeded proptest
/// configuration, random reachable states, and the convergence run.
#[cfg(test)]
pub(crate) mod testkit {
    use std::fmt::Debug;

    use calm_types::NodeId;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    use super::CausalCrdt;
    use crate::DeltaCrdt;
    use crate::laws::{
        Convergence, NetworkFaults, check_converged, check_delta_is_join, check_join_laws,
    };

    /// Replicas in a reachable-state scenario.
    pub(crate) const REPLICAS: usize = 3;

    /// A seeded configuration running 1,000 cases, the count CI runs.
    /// `PROPTEST_CASES` lowers it while iterating locally.
    pub(crate) fn config(seed: u64) -> Config {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(1000);
        Config {
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            ..Config::with_cases(cases)
        }
    }

    /// The node id replica `replica` acts as.
    pub(crate) fn node(replica: usize) -> NodeId {
        NodeId(replica as u64 + 1)
    }

    /// One step of a scenario that builds reachable states.
    #[derive(Debug, Clone)]
    pub(crate) enum Step<O> {
        /// A replica runs an operation; its delta joins locally and is kept.
        Mutate { replica: usize, op: O },
        /// A kept delta (index modulo the count) reaches a replica.
        Deliver { delta: usize, replica: usize },
        /// A replica joins another replica's whole state.
        Sync { from: usize, to: usize },
    }

    /// Scenarios of up to `max_len` steps over [`REPLICAS`] replicas.
    pub(crate) fn steps<O: Debug + Clone + 'static>(
        op: impl Strategy<Value = O> + 'static,
        max_len: usize,
    ) -> impl Strategy<Value = Vec<Step<O>>> {
        let step = prop_oneof![
            3 => (0..REPLICAS, op).prop_map(|(replica, op)| Step::Mutate { replica, op }),
            2 => (any::<usize>(), 0..REPLICAS).prop_map(|(delta, replica)| Step::Deliver { delta, replica }),
            1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
        ];
        proptest::collection::vec(step, 0..max_len)
    }

    /// The states a scenario reached: each replica's, and every delta made.
    pub(crate) struct Reached<T> {
        pub(crate) replicas: Vec<T>,
        pub(crate) deltas: Vec<T>,
    }

    /// Runs a scenario; `mutate` is the operation as the acting node runs it.
    pub(crate) fn reach<T: DeltaCrdt, O>(
        steps: &[Step<O>],
        mutate: impl Fn(&T, NodeId, &O) -> Option<T>,
    ) -> Reached<T> {
        let mut replicas = vec![T::default(); REPLICAS];
        let mut deltas: Vec<T> = Vec::new();
        for step in steps {
            match step {
                Step::Mutate { replica, op } => {
                    if let Some(delta) = mutate(&replicas[*replica], node(*replica), op) {
                        replicas[*replica].apply_delta(&delta);
                        deltas.push(delta);
                    }
                }
                Step::Deliver { delta, replica } if !deltas.is_empty() => {
                    let delta = deltas[delta % deltas.len()].clone();
                    replicas[*replica].apply_delta(&delta);
                }
                Step::Deliver { .. } => {}
                Step::Sync { from, to } => {
                    let from = replicas[*from].clone();
                    replicas[*to].join(&from);
                }
            }
        }
        Reached { replicas, deltas }
    }

    /// The join laws on the reached replicas and on mixes of deltas and
    /// replicas, and delta-is-join (with the encode round trip) for every
    /// delta against every replica.
    pub(crate) fn check_reached<T: DeltaCrdt>(reached: &Reached<T>) -> Result<(), String> {
        let [a, b, c] = &reached.replicas[..] else {
            return Err(format!("expected {REPLICAS} replicas"));
        };
        check_join_laws(a, b, c)?;
        if let (Some(first), Some(last)) = (reached.deltas.first(), reached.deltas.last()) {
            check_join_laws(first, b, last)?;
            check_join_laws(a, last, first)?;
        }
        for delta in &reached.deltas {
            for state in &reached.replicas {
                check_delta_is_join(state, delta)?;
            }
            check_delta_is_join(delta, a)?;
        }
        Ok(())
    }

    /// A convergence run under the harness's default faults; after settling
    /// the replicas must be equal and every causal context fully compacted
    /// (every dot made reached every replica, so no gap can remain).
    pub(crate) fn converge<T: CausalCrdt, O>(
        seed: u64,
        replicas: usize,
        ops: &[(usize, O)],
        mutate: impl Fn(&T, NodeId, &O) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        let mut run = Convergence::<T>::new(replicas, seed, NetworkFaults::default());
        for (replica, op) in ops {
            run.apply(*replica, |state, at| mutate(state, node(at), op));
        }
        let settled = run.settle();
        check_converged(&settled)?;
        match settled.iter().find(|state| state.context().cloud_len() > 0) {
            Some(state) => Err(format!(
                "a settled context kept a dot cloud: {:?}",
                state.context()
            )),
            None => Ok(settled),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::testkit::config;
    use super::*;

    fn dots() -> impl Strategy<Value = BTreeSet<Dot>> {
        proptest::collection::btree_set(
            (1u64..4, 1u64..12).prop_map(|(n, c)| Dot::new(NodeId(n), c)),
            0..24,
        )
    }

    fn context_of(dots: &BTreeSet<Dot>) -> CausalContext {
        dots.iter().copied().collect()
    }

    fn joined(a: &CausalContext, b: &CausalContext) -> CausalContext {
        let mut out = a.clone();
        out.join(b);
        out
    }

    #[test]
    fn next_dot_counts_past_the_cloud() {
        let n = NodeId(1);
        let context: CausalContext = [Dot::new(n, 1), Dot::new(n, 4)].into_iter().collect();
        assert_eq!(context.vector().collect::<Vec<_>>(), [(n, 1)]);
        assert_eq!(context.cloud().collect::<Vec<_>>(), [Dot::new(n, 4)]);
        assert_eq!(context.next_dot(n), Dot::new(n, 5));
        assert_eq!(context.next_dot(NodeId(2)), Dot::new(NodeId(2), 1));
        assert!(!context.contains(Dot::new(n, 2)));
    }

    proptest! {
        #![proptest_config(config(0xc0_0001))]
        // Canonical form: the same dots give the same context whatever the
        // order or grouping they arrive in, and membership is exact.
        #[test]
        fn a_context_is_canonical_and_exact(
            all in dots(),
            split in any::<proptest::sample::Index>(),
        ) {
            let context = context_of(&all);
            prop_assert_eq!(context.validate(), Ok(()));
            let dots: Vec<Dot> = all.iter().copied().collect();
            let cut = if dots.is_empty() { 0 } else { split.index(dots.len()) };
            let reversed: CausalContext = dots.iter().rev().copied().collect();
            let halves = joined(&context_of(&dots[..cut].iter().copied().collect()),
                &context_of(&dots[cut..].iter().copied().collect()));
            prop_assert_eq!(&reversed, &context);
            prop_assert_eq!(&halves, &context);
            for n in 1..4 {
                for c in 0..14 {
                    let dot = Dot::new(NodeId(n), c);
                    prop_assert_eq!(context.contains(dot), c == 0 || all.contains(&dot));
                }
            }
            // Fully contiguous histories leave no cloud at all.
            let prefix: CausalContext = (1..=5).map(|c| Dot::new(NodeId(1), c)).collect();
            prop_assert_eq!(prefix.cloud_len(), 0);
        }

        // The context join is a semilattice join (the union of dot sets).
        #[test]
        fn context_join_is_commutative_associative_and_idempotent(
            a in dots(), b in dots(), c in dots(),
        ) {
            let (a, b, c) = (context_of(&a), context_of(&b), context_of(&c));
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
            prop_assert_eq!(joined(&a, &a), a.clone());
            prop_assert_eq!(joined(&a, &CausalContext::new()), a);
        }
    }
}
