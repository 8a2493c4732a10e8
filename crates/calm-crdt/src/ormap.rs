//! The observed-remove map (OR-Map) with nested causal CRDT values, and the
//! dot-based counter that can live inside it.
//!
//! Almeida, Shoker, Baquero, "Delta State Replicated Data Types", the OR-Map
//! over a [`DotMap`]: each key holds the dot store of a nested causal CRDT,
//! and one [`CausalContext`] covers the whole map. Nested mutators run on a
//! view of the value built with the map's context (the [`CausalCrdt`]
//! embedding), so their dots are fresh map-wide and their deltas join into
//! the map unchanged. Removing a key is, as for the OR-Set, a delta of
//! context only. Riak's maps embed their values the same way.
//!
//! The G-Counter and PN-Counter keep per-node totals without dots, so a map
//! could not reset them by context; [`CausalCounter`] is the dot-based
//! counter for map fields.

use std::collections::BTreeMap;
use std::fmt::Debug;

use calm_types::NodeId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::DeltaCrdt;
use crate::causal::{
    CausalContext, CausalCrdt, DotFun, DotMap, DotStore, join_causal, validate_causal,
};

/// An observed-remove map whose values are causal CRDTs: [`OrSet`](crate::OrSet),
/// [`MvRegister`](crate::MvRegister), [`CausalCounter`] or another `OrMap`.
///
/// Semantics (observed-remove, "reset"):
/// * A key is present while its value holds at least one dot. A value whose
///   nested mutations remove every dot (e.g. an emptied nested set) takes
///   the key out of the map.
/// * [`remove`](Self::remove) resets the value to what its replica had
///   observed: every observed dot goes. An update concurrent with the
///   removal keeps the key, holding only that update's effect (update wins);
///   for a [`CausalCounter`] the effect is the updating node's whole
///   contribution, see its docs.
/// * A key removed and later updated again starts from an empty value: the
///   old dots are in the context, so stale copies cannot resurrect them.
///
/// ```
/// use calm_crdt::{DeltaCrdt, OrMap, OrSet};
/// use calm_types::NodeId;
///
/// let (a, b) = (NodeId(1), NodeId(2));
/// let tags = String::from("tags");
/// let mut left: OrMap<String, OrSet<u8>> = OrMap::new();
/// left.join(&left.update(tags.clone(), |set| set.add(a, 1)));
/// let mut right = left.clone();
///
/// // Concurrently: `left` removes the field, `right` adds to it.
/// left.join(&left.remove(&tags));
/// right.join(&right.update(tags.clone(), |set| set.add(b, 2)));
///
/// left.join(&right);
/// let set = left.field(&tags).expect("the concurrent update keeps the field");
/// assert_eq!(set.iter().copied().collect::<Vec<_>>(), [2]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Ord + Deserialize<'de>"))]
pub struct OrMap<K, V: CausalCrdt> {
    /// Key → the dot store of its value.
    fields: DotMap<K, V::Store>,
    /// Every dot this state has seen, in any field.
    context: CausalContext,
}

impl<K, V: CausalCrdt> Default for OrMap<K, V> {
    fn default() -> Self {
        Self {
            fields: DotMap::default(),
            context: CausalContext::default(),
        }
    }
}

impl<K, V> OrMap<K, V>
where
    K: Ord + Clone + Debug + Serialize + DeserializeOwned,
    V: CausalCrdt,
{
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta of updating `key`'s value with one of the value's own
    /// mutators. `mutate` receives the current value (empty if absent),
    /// carrying the map's context, and returns the value's delta.
    pub fn update(&self, key: K, mutate: impl FnOnce(&V) -> V) -> Self {
        let view = self.view(&key);
        Self::wrap(key, mutate(&view))
    }

    /// [`update`](Self::update) for fallible nested mutators (e.g. a counter
    /// increment that would overflow). On error no delta exists.
    pub fn try_update<E>(
        &self,
        key: K,
        mutate: impl FnOnce(&V) -> Result<V, E>,
    ) -> Result<Self, E> {
        let view = self.view(&key);
        Ok(Self::wrap(key, mutate(&view)?))
    }

    /// The delta of removing `key`: only the dots its value holds here, as
    /// context. An absent key gives the bottom.
    pub fn remove(&self, key: &K) -> Self {
        let mut context = CausalContext::new();
        if let Some(store) = self.fields.get(key) {
            store.for_each_dot(&mut |dot| context.insert(dot));
        }
        Self {
            fields: DotMap::new(),
            context,
        }
    }

    /// The delta of removing every key this replica has seen.
    pub fn clear(&self) -> Self {
        let mut context = CausalContext::new();
        self.fields.for_each_dot(&mut |dot| context.insert(dot));
        Self {
            fields: DotMap::new(),
            context,
        }
    }

    /// The value under `key`, as a state carrying the map's context (so its
    /// own mutators can run on it, as in [`update`](Self::update)).
    pub fn field(&self, key: &K) -> Option<V> {
        self.fields
            .get(key)
            .map(|store| V::from_parts(store.clone(), self.context.clone()))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.fields.get(key).is_some()
    }

    /// The present keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.fields.keys()
    }

    /// How many keys are present.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The value under `key` (empty if absent) with the map's whole context,
    /// so nested mutators draw dots fresh across every field.
    fn view(&self, key: &K) -> V {
        let store = self.fields.get(key).cloned().unwrap_or_default();
        V::from_parts(store, self.context.clone())
    }

    /// A nested delta placed under `key`: its store under the key, its
    /// context as the map's.
    fn wrap(key: K, delta: V) -> Self {
        let (store, context) = delta.into_parts();
        let mut fields = DotMap::new();
        fields.insert(key, store);
        Self { fields, context }
    }
}

impl<K, V> DeltaCrdt for OrMap<K, V>
where
    K: Ord + Clone + Debug + Serialize + DeserializeOwned,
    V: CausalCrdt,
{
    type Value = BTreeMap<K, V::Value>;

    fn value(&self) -> Self::Value {
        Self::read(&self.fields)
    }

    fn join(&mut self, other: &Self) {
        join_causal(
            &mut self.fields,
            &mut self.context,
            &other.fields,
            &other.context,
        );
    }

    fn validate(&self) -> Result<(), String> {
        validate_causal(&self.fields, &self.context)
    }
}

impl<K, V> CausalCrdt for OrMap<K, V>
where
    K: Ord + Clone + Debug + Serialize + DeserializeOwned,
    V: CausalCrdt,
{
    type Store = DotMap<K, V::Store>;

    fn from_parts(store: Self::Store, context: CausalContext) -> Self {
        Self {
            fields: store,
            context,
        }
    }

    fn into_parts(self) -> (Self::Store, CausalContext) {
        (self.fields, self.context)
    }

    fn store(&self) -> &Self::Store {
        &self.fields
    }

    fn context(&self) -> &CausalContext {
        &self.context
    }

    fn read(store: &Self::Store) -> Self::Value {
        store
            .iter()
            .map(|(key, value)| (key.clone(), V::read(value)))
            .collect()
    }
}

/// Why a [`CausalCounter`] mutator produced no delta.
///
/// ```
/// use calm_crdt::{CausalCounter, CausalCounterError};
/// use calm_types::NodeId;
///
/// let counter = CausalCounter::new();
/// let refused = counter.increment(NodeId(1), u64::MAX);
/// assert_eq!(refused, Err(CausalCounterError::Overflow { node: NodeId(1) }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CausalCounterError {
    /// The acting node's contribution would leave the `i64` range. Nothing
    /// changed: no delta was produced.
    #[error("the contribution of {node} would leave the i64 range")]
    Overflow {
        /// The node whose contribution would overflow.
        node: NodeId,
    },
}

/// A dot-based PN-counter that can be reset by observed-remove, so that it
/// can be a field of an [`OrMap`] (the causal counter of the delta-CRDT
/// reference implementation).
///
/// Each node's contribution (its increments minus its decrements, an `i64`)
/// sits under one dot; a node's next increment or decrement replaces that
/// dot with a fresh one holding the new contribution. The value is the sum
/// of the contributions, an `i128` so that it cannot overflow.
///
/// Reset semantics: [`reset`](Self::reset) (or removing the map field)
/// clears every contribution it observed. A concurrent increment by node `n`
/// survives, and carries `n`'s *whole* contribution as of that increment,
/// including the part the reset had observed: one dot per node keeps the
/// metadata bounded, and the survivor's dot cannot tell which part of its
/// total the reset saw. Contributions of nodes that did not update
/// concurrently are cleared exactly. Getting exactly the concurrent effect
/// would take one dot per increment.
///
/// ```
/// use calm_crdt::{CausalCounter, DeltaCrdt};
/// use calm_types::NodeId;
///
/// let mut hits = CausalCounter::new();
/// hits.join(&hits.increment(NodeId(1), 5).expect("far from overflow"));
/// hits.join(&hits.decrement(NodeId(2), 2).expect("far from overflow"));
/// assert_eq!(hits.value(), 3);
/// hits.join(&hits.reset());
/// assert_eq!(hits.value(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalCounter {
    /// One dot per contributing node → that node's contribution.
    contributions: DotFun<i64>,
    /// Every dot this state has seen.
    context: CausalContext,
}

impl CausalCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta of `node` adding `amount`.
    pub fn increment(&self, node: NodeId, amount: u64) -> Result<Self, CausalCounterError> {
        self.shift(node, i128::from(amount))
    }

    /// The delta of `node` subtracting `amount`.
    pub fn decrement(&self, node: NodeId, amount: u64) -> Result<Self, CausalCounterError> {
        self.shift(node, -i128::from(amount))
    }

    /// The delta of resetting the counter: every observed contribution goes.
    pub fn reset(&self) -> Self {
        Self {
            contributions: DotFun::new(),
            context: self.observed(|_| true),
        }
    }

    /// `node`'s current contribution.
    pub fn contribution(&self, node: NodeId) -> i128 {
        Self::sum(
            self.contributions
                .iter()
                .filter(|(dot, _)| dot.node == node),
        )
    }

    /// Replaces `node`'s dots with one fresh dot holding its contribution
    /// moved by `amount`. Sums run in `i128`: a decoded state may hold
    /// several dots per node, and no sum of `i64`s overflows it.
    fn shift(&self, node: NodeId, amount: i128) -> Result<Self, CausalCounterError> {
        let total = i64::try_from(self.contribution(node) + amount)
            .map_err(|_| CausalCounterError::Overflow { node })?;
        let dot = self.context.next_dot(node);
        let mut context = self.observed(|observed| observed == node);
        context.insert(dot);
        let mut contributions = DotFun::new();
        contributions.insert(dot, total);
        Ok(Self {
            contributions,
            context,
        })
    }

    /// The dots of the contributions of the nodes `keep` selects.
    fn observed(&self, keep: impl Fn(NodeId) -> bool) -> CausalContext {
        self.contributions
            .iter()
            .map(|(dot, _)| dot)
            .filter(|dot| keep(dot.node))
            .collect()
    }

    fn sum<'a>(entries: impl Iterator<Item = (calm_clock::Dot, &'a i64)>) -> i128 {
        entries.map(|(_, &value)| i128::from(value)).sum()
    }
}

impl DeltaCrdt for CausalCounter {
    type Value = i128;

    fn value(&self) -> i128 {
        Self::read(&self.contributions)
    }

    fn join(&mut self, other: &Self) {
        join_causal(
            &mut self.contributions,
            &mut self.context,
            &other.contributions,
            &other.context,
        );
    }

    fn validate(&self) -> Result<(), String> {
        validate_causal(&self.contributions, &self.context)
    }
}

impl CausalCrdt for CausalCounter {
    type Store = DotFun<i64>;

    fn from_parts(store: Self::Store, context: CausalContext) -> Self {
        Self {
            contributions: store,
            context,
        }
    }

    fn into_parts(self) -> (Self::Store, CausalContext) {
        (self.contributions, self.context)
    }

    fn store(&self) -> &Self::Store {
        &self.contributions
    }

    fn context(&self) -> &CausalContext {
        &self.context
    }

    fn read(store: &Self::Store) -> i128 {
        Self::sum(store.iter())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::causal::testkit::{self, REPLICAS, check_reached, config, converge, node, reach};
    use crate::{MvRegister, OrSet};

    type Tags = OrMap<u8, OrSet<u8>>;
    type Nested = OrMap<u8, OrMap<u8, MvRegister<u8>>>;
    type Tally = OrMap<u8, CausalCounter>;

    fn joined<T: DeltaCrdt>(a: &T, b: &T) -> T {
        let mut out = a.clone();
        out.join(b);
        out
    }

    fn tags_of(map: &Tags, key: u8) -> Option<BTreeSet<u8>> {
        map.value().remove(&key)
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Add to / remove from the nested set (or write / clear the nested
        /// register, or increment / reset the nested counter) under a key.
        Grow(u8, u8),
        Shrink(u8, u8),
        RemoveKey(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0u8..3, 0u8..4).prop_map(|(k, x)| Op::Grow(k, x)),
            2 => (0u8..3, 0u8..4).prop_map(|(k, x)| Op::Shrink(k, x)),
            2 => (0u8..3).prop_map(Op::RemoveKey),
            1 => Just(Op::Clear),
        ]
    }

    fn run_tags(map: &Tags, node: NodeId, op: &Op) -> Option<Tags> {
        Some(match *op {
            Op::Grow(key, x) => map.update(key, |set| set.add(node, x)),
            Op::Shrink(key, x) => map.update(key, |set| set.remove(&x)),
            Op::RemoveKey(key) => map.remove(&key),
            Op::Clear => map.clear(),
        })
    }

    fn run_nested(map: &Nested, node: NodeId, op: &Op) -> Option<Nested> {
        Some(match *op {
            Op::Grow(key, x) => {
                map.update(key, |inner| inner.update(x % 2, |reg| reg.write(node, x)))
            }
            Op::Shrink(key, x) => map.update(key, |inner| inner.remove(&(x % 2))),
            Op::RemoveKey(key) => map.remove(&key),
            Op::Clear => map.clear(),
        })
    }

    fn run_tally(map: &Tally, node: NodeId, op: &Op) -> Option<Tally> {
        match *op {
            Op::Grow(key, x) => map
                .try_update(key, |c| c.increment(node, u64::from(x)))
                .ok(),
            Op::Shrink(key, x) => map
                .try_update(key, |c| c.decrement(node, u64::from(x)))
                .ok(),
            Op::RemoveKey(key) => Some(map.remove(&key)),
            Op::Clear => Some(map.clear()),
        }
    }

    fn run_counter(counter: &CausalCounter, node: NodeId, op: &Op) -> Option<CausalCounter> {
        match *op {
            Op::Grow(_, x) => counter.increment(node, u64::from(x)).ok(),
            Op::Shrink(_, x) => counter.decrement(node, u64::from(x)).ok(),
            Op::RemoveKey(_) | Op::Clear => Some(counter.reset()),
        }
    }

    /// Observed-remove map specification, with `a` and `b` two replicas
    /// where `b` has seen all of `a`:
    /// * update wins: `a` adds `x` under `key` while `b` removes `key`; the
    ///   merge holds `key` with exactly `{x}`, the concurrent update's effect;
    /// * no resurrection: after the removal is merged, re-adding `y` gives
    ///   exactly `{y}`, even when the old states arrive again.
    fn check_update_wins_without_resurrection(
        a: &Tags,
        a_node: NodeId,
        b: &Tags,
        key: u8,
        x: u8,
        y: u8,
    ) -> Result<(), String> {
        let b = joined(b, a);
        let a_after = joined(a, &a.update(key, |set| set.add(a_node, x)));
        let b_after = joined(&b, &b.remove(&key));
        let merged = joined(&a_after, &b_after);
        if tags_of(&merged, key) != Some(BTreeSet::from([x])) {
            return Err(format!(
                "update-wins: expected {{{x}}} under {key}, read {:?}",
                tags_of(&merged, key)
            ));
        }
        let removed = joined(&merged, &merged.remove(&key));
        let mut readded = joined(&removed, &removed.update(key, |set| set.add(a_node, y)));
        for stale in [a, &b, &a_after, &b_after] {
            readded.join(stale);
        }
        if tags_of(&readded, key) != Some(BTreeSet::from([y])) {
            return Err(format!(
                "resurrection: expected {{{y}}} under {key}, read {:?}",
                tags_of(&readded, key)
            ));
        }
        Ok(())
    }

    #[test]
    fn an_update_concurrent_with_a_field_removal_keeps_only_the_update() {
        let mut shared = Tags::new();
        shared.join(&shared.update(1, |set| set.add(node(0), 10)));
        shared.join(&shared.update(1, |set| set.add(node(0), 11)));
        check_update_wins_without_resurrection(&shared, node(0), &shared, 1, 12, 13).unwrap();
        check_update_wins_without_resurrection(&shared, node(0), &Tags::new(), 1, 10, 10).unwrap();
    }

    #[test]
    fn emptying_a_nested_value_removes_its_key() {
        let mut map = Tags::new();
        map.join(&map.update(4, |set| set.add(node(0), 1)));
        assert!(map.contains_key(&4));
        map.join(&map.update(4, |set| set.remove(&1)));
        assert!(!map.contains_key(&4));
        assert!(map.is_empty());
    }

    #[test]
    fn nested_maps_reset_only_what_the_removal_observed() {
        let mut left = Nested::new();
        left.join(&left.update(1, |inner| inner.update(0, |reg| reg.write(node(0), 5))));
        let mut right = left.clone();
        left.join(&left.remove(&1));
        right.join(&right.update(1, |inner| inner.update(1, |reg| reg.write(node(1), 6))));
        left.join(&right);
        let inner = left
            .field(&1)
            .expect("the concurrent nested update keeps the key");
        assert_eq!(inner.value(), BTreeMap::from([(1, BTreeSet::from([6]))]));
    }

    #[test]
    fn an_mv_register_field_keeps_the_write_concurrent_with_its_removal() {
        let mut left: OrMap<u8, MvRegister<u8>> = OrMap::new();
        left.join(&left.update(0, |reg| reg.write(node(0), 1)));
        let mut right = left.clone();
        left.join(&left.remove(&0));
        right.join(&right.update(0, |reg| reg.write(node(1), 2)));
        right.join(&left);
        assert_eq!(right.value(), BTreeMap::from([(0, BTreeSet::from([2]))]));
    }

    // The counter's documented reset semantics: contributions the reset saw
    // are cleared, except that a concurrently updating node keeps its whole
    // contribution.
    #[test]
    fn a_counter_reset_keeps_a_concurrent_increment_with_its_nodes_contribution() {
        let mut left = Tally::new();
        left.join(&left.try_update(0, |c| c.increment(node(0), 5)).unwrap());
        left.join(&left.try_update(0, |c| c.increment(node(1), 3)).unwrap());
        let mut right = left.clone();
        left.join(&left.remove(&0));
        right.join(&right.try_update(0, |c| c.increment(node(1), 2)).unwrap());
        left.join(&right);
        // Node 0's 5 is gone; node 1 keeps 3 + 2.
        assert_eq!(left.value(), BTreeMap::from([(0, 5)]));
    }

    #[test]
    fn a_counter_refuses_an_overflowing_update_without_a_delta() {
        let node = node(0);
        let mut counter = CausalCounter::new();
        assert_eq!(
            counter.increment(node, u64::MAX),
            Err(CausalCounterError::Overflow { node })
        );
        counter.join(&counter.increment(node, i64::MAX as u64).unwrap());
        assert_eq!(
            counter.increment(node, 1),
            Err(CausalCounterError::Overflow { node })
        );
        counter.join(&counter.decrement(node, u64::MAX).unwrap());
        assert_eq!(counter.value(), i128::from(i64::MAX) - i128::from(u64::MAX));
        assert_eq!(
            counter.decrement(node, 1),
            Err(CausalCounterError::Overflow { node })
        );
        let map = Tally::new();
        assert!(map.try_update(0, |c| c.increment(node, u64::MAX)).is_err());
    }

    #[test]
    fn a_counter_keeps_one_dot_per_node() {
        let mut counter = CausalCounter::new();
        for amount in 1..=10 {
            counter.join(&counter.increment(node(amount % 2), amount as u64).unwrap());
        }
        assert_eq!(counter.value(), 55);
        assert_eq!(counter.store().len(), 2);
        assert_eq!(counter.contribution(node(1)), 1 + 3 + 5 + 7 + 9);
    }

    #[test]
    fn decode_rejects_a_nested_dot_outside_the_maps_context() {
        let mut map = Tags::new();
        map.join(&map.update(0, |set| set.add(node(0), 1)));
        let (store, _) = map.clone().into_parts();
        let orphan = Tags::from_parts(store, CausalContext::new());
        assert!(Tags::decode(&orphan.encode()).is_err());
        assert_eq!(Tags::decode(&map.encode()), Ok(map));
    }

    proptest! {
        #![proptest_config(config(0x0a9a_0001))]
        #[test]
        fn join_laws_hold_on_reachable_states(steps in testkit::steps(op(), 40)) {
            check_reached(&reach(&steps, run_tags)).map_err(TestCaseError::fail)?;
            check_reached(&reach(&steps, run_nested)).map_err(TestCaseError::fail)?;
            check_reached(&reach(&steps, run_tally)).map_err(TestCaseError::fail)?;
            check_reached(&reach(&steps, run_counter)).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(config(0x0a9a_0002))]
        #[test]
        fn replicas_converge_under_loss_duplication_and_reordering(
            seed in any::<u64>(),
            replicas in 3usize..=5,
            ops in proptest::collection::vec((any::<usize>(), op()), 0..60),
        ) {
            converge(seed, replicas, &ops, run_tags).map_err(TestCaseError::fail)?;
            converge(seed, replicas, &ops, run_nested).map_err(TestCaseError::fail)?;
            converge(seed, replicas, &ops, run_tally).map_err(TestCaseError::fail)?;
            converge(seed, replicas, &ops, run_counter).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(config(0x0a9a_0003))]
        #[test]
        fn an_update_wins_over_a_concurrent_removal_and_nothing_resurrects(
            steps in testkit::steps(op(), 30),
            updater in 0..REPLICAS,
            offset in 1..REPLICAS,
            (key, x, y) in (0u8..3, 0u8..4, 0u8..4),
        ) {
            let reached = reach(&steps, run_tags);
            let remover = (updater + offset) % REPLICAS;
            let (a, b) = (&reached.replicas[updater], &reached.replicas[remover]);
            check_update_wins_without_resurrection(a, node(updater), b, key, x, y)
                .map_err(TestCaseError::fail)?;
        }
    }
}
