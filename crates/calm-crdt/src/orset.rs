//! The add-wins observed-remove set (OR-Set), with no tombstones.
//!
//! Almeida, Shoker, Baquero, "Delta State Replicated Data Types", the
//! add-wins OR-Set: a [`DotMap`] from each element to the [`DotSet`] of the
//! adds still visible for it, plus a [`CausalContext`]. An add tags the
//! element with a fresh dot and supersedes the element's dots it has seen; a
//! remove is a delta carrying only context (the element's observed dots), so
//! it leaves nothing behind per element, and the context compacts into a
//! version vector once the dots are contiguous.

use std::collections::BTreeSet;
use std::fmt::Debug;

use calm_types::NodeId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::DeltaCrdt;
use crate::causal::{
    CausalContext, CausalCrdt, DotMap, DotSet, DotStore, join_causal, validate_causal,
};

/// An add-wins observed-remove set.
///
/// Semantics: an element is present while some add of it has not been
/// observed by a remove. A remove only removes the adds its replica had
/// seen, so an add concurrent with a remove survives it (add wins), and a
/// remove that has seen every add removes the element on every replica it
/// reaches. Mutators return deltas; join them locally and ship them.
///
/// ```
/// use calm_crdt::{DeltaCrdt, OrSet};
/// use calm_types::NodeId;
///
/// let (a, b) = (NodeId(1), NodeId(2));
/// let mut left = OrSet::new();
/// left.join(&left.add(a, 'x'));
/// let mut right = left.clone();
///
/// // Concurrently: `left` removes 'x' while `right` adds it again.
/// left.join(&left.remove(&'x'));
/// right.join(&right.add(b, 'x'));
///
/// left.join(&right);
/// assert!(left.contains(&'x')); // add wins
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Ord + Deserialize<'de>"))]
pub struct OrSet<T> {
    /// Element → the dots of its adds not yet observed by a remove.
    entries: DotMap<T, DotSet>,
    /// Every dot this state has seen.
    context: CausalContext,
}

impl<T> Default for OrSet<T> {
    fn default() -> Self {
        Self {
            entries: DotMap::default(),
            context: CausalContext::default(),
        }
    }
}

impl<T> OrSet<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta of `node` adding `element`: a fresh dot for it, and a
    /// context that also covers the element's current dots, which the new
    /// one supersedes (so an element carries at most one dot per node).
    pub fn add(&self, node: NodeId, element: T) -> Self {
        let dot = self.context.next_dot(node);
        let mut context = self.observed(&element);
        context.insert(dot);
        let mut entries = DotMap::new();
        entries.insert(element, [dot].into_iter().collect());
        Self { entries, context }
    }

    /// The delta of removing `element`: only the dots of the adds this
    /// replica has seen, as context. An absent element gives the bottom.
    pub fn remove(&self, element: &T) -> Self {
        Self {
            entries: DotMap::new(),
            context: self.observed(element),
        }
    }

    /// The delta of removing every element this replica has seen.
    pub fn clear(&self) -> Self {
        let mut context = CausalContext::new();
        self.entries.for_each_dot(&mut |dot| context.insert(dot));
        Self {
            entries: DotMap::new(),
            context,
        }
    }

    /// Whether `element` is present.
    pub fn contains(&self, element: &T) -> bool {
        self.entries.get(element).is_some()
    }

    /// The present elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.entries.keys()
    }

    /// How many elements are present.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no element is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The dots of `element`'s visible adds, as a context.
    fn observed(&self, element: &T) -> CausalContext {
        self.entries
            .get(element)
            .map(|dots| dots.iter().collect())
            .unwrap_or_default()
    }
}

impl<T> DeltaCrdt for OrSet<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    type Value = BTreeSet<T>;

    fn value(&self) -> BTreeSet<T> {
        Self::read(&self.entries)
    }

    fn join(&mut self, other: &Self) {
        join_causal(
            &mut self.entries,
            &mut self.context,
            &other.entries,
            &other.context,
        );
    }

    fn validate(&self) -> Result<(), String> {
        validate_causal(&self.entries, &self.context)
    }
}

impl<T> CausalCrdt for OrSet<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    type Store = DotMap<T, DotSet>;

    fn from_parts(store: Self::Store, context: CausalContext) -> Self {
        Self {
            entries: store,
            context,
        }
    }

    fn into_parts(self) -> (Self::Store, CausalContext) {
        (self.entries, self.context)
    }

    fn store(&self) -> &Self::Store {
        &self.entries
    }

    fn context(&self) -> &CausalContext {
        &self.context
    }

    fn read(store: &Self::Store) -> BTreeSet<T> {
        store.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use calm_clock::Dot;
    use calm_types::codec;
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use std::collections::BTreeMap;

    use super::*;
    use crate::causal::testkit::{self, REPLICAS, check_reached, config, converge, node, reach};
    use crate::laws::check_join_laws;

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8),
        Remove(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6).prop_map(Op::Add),
            3 => (0u8..6).prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]
    }

    fn run(set: &OrSet<u8>, node: NodeId, op: &Op) -> Option<OrSet<u8>> {
        Some(match op {
            Op::Add(element) => set.add(node, *element),
            Op::Remove(element) => set.remove(element),
            Op::Clear => set.clear(),
        })
    }

    fn joined<T: DeltaCrdt>(a: &T, b: &T) -> T {
        let mut out = a.clone();
        out.join(b);
        out
    }

    /// The operations the set specification checks use, so that a
    /// deliberately broken set goes through the very same checks.
    trait SetSpec: DeltaCrdt {
        fn add_by(&self, node: NodeId, element: u8) -> Self;
        fn remove_of(&self, element: u8) -> Self;
        fn has(&self, element: u8) -> bool;
    }

    impl SetSpec for OrSet<u8> {
        fn add_by(&self, node: NodeId, element: u8) -> Self {
            self.add(node, element)
        }
        fn remove_of(&self, element: u8) -> Self {
            self.remove(&element)
        }
        fn has(&self, element: u8) -> bool {
            self.contains(&element)
        }
    }

    /// Add wins: `a` (acting as `a_node`) adds `element` while `b`
    /// concurrently removes it; merged either way, the element is present.
    fn check_add_wins<S: SetSpec>(a: &S, a_node: NodeId, b: &S, element: u8) -> Result<(), String> {
        let a_after = joined(a, &a.add_by(a_node, element));
        let b_after = joined(b, &b.remove_of(element));
        for merged in [joined(&a_after, &b_after), joined(&b_after, &a_after)] {
            if !merged.has(element) {
                return Err(format!(
                    "a concurrent remove beat the add of {element}: {merged:?}"
                ));
            }
        }
        Ok(())
    }

    /// Observed remove: a remove issued by a replica that has joined every
    /// replica removes `element` wherever it arrives, even when stale copies
    /// of the old states arrive after it (late anti-entropy).
    fn check_observed_remove<S: SetSpec>(replicas: &[S], element: u8) -> Result<(), String> {
        let everything = replicas.iter().fold(S::default(), |acc, r| joined(&acc, r));
        let remove = everything.remove_of(element);
        for (index, replica) in replicas.iter().enumerate() {
            let mut state = joined(replica, &remove);
            for stale in replicas {
                state.join(stale);
            }
            if state.has(element) {
                return Err(format!(
                    "replica {index} still holds {element} after a remove that saw every add"
                ));
            }
        }
        Ok(())
    }

    // Delta-CRDT paper, add-wins OR-Set: an add concurrent with a remove
    // survives it.
    #[test]
    fn concurrent_add_and_remove_of_the_same_element_keeps_it() {
        let mut left = OrSet::new();
        left.join(&left.add(node(0), 7u8));
        let right = left.clone();
        check_add_wins(&left, node(0), &right, 7).unwrap();
        // Also when the remover had never seen the element at all.
        check_add_wins(&left, node(0), &OrSet::new(), 7).unwrap();
    }

    // No tombstones: a remove's delta is context only, and applying it
    // leaves no entry behind for the element.
    #[test]
    fn a_remove_delta_carries_only_the_observed_dots() {
        let mut set = OrSet::new();
        set.join(&set.add(node(0), 1u8)); // dot 1
        set.join(&set.add(node(0), 2u8)); // dot 2
        set.join(&set.add(node(0), 1u8)); // dot 3, superseding dot 1
        let remove = set.remove(&1);
        assert!(remove.is_empty());
        assert_eq!(
            remove.context().cloud().collect::<Vec<_>>(),
            [Dot::new(node(0), 3)]
        );
        assert_eq!(remove.context().vector().count(), 0);
        set.join(&remove);
        assert_eq!(set.value(), BTreeSet::from([2]));
        assert_eq!(
            set.store().len(),
            1,
            "no entry remains for the removed element"
        );
        assert_eq!(set.context().vector().collect::<Vec<_>>(), [(node(0), 3)]);
        assert_eq!(set.context().cloud_len(), 0);
    }

    // An add supersedes the dots of the element it has seen, so an element
    // carries at most one dot per node however often it is re-added.
    #[test]
    fn re_adding_an_element_replaces_its_observed_dots() {
        let mut set = OrSet::new();
        for _ in 0..5 {
            set.join(&set.add(node(0), 3u8));
        }
        let dots: Vec<Dot> = set.store().get(&3).expect("3 was added").iter().collect();
        assert_eq!(dots, [Dot::new(node(0), 5)]);
        assert_eq!(set.context().vector().collect::<Vec<_>>(), [(node(0), 5)]);
    }

    /// The postcard layout of an `OrSet<u8>`, spelt with plain collections so
    /// that a test can write states the API would never produce.
    type RawSet = (BTreeMap<u8, Vec<Dot>>, (BTreeMap<NodeId, u64>, Vec<Dot>));

    fn raw(entries: &[(u8, &[Dot])], vector: &[(u64, u64)], cloud: &[Dot]) -> Vec<u8> {
        let entries = entries
            .iter()
            .map(|(e, dots)| (*e, dots.to_vec()))
            .collect();
        let vector = vector.iter().map(|&(n, top)| (NodeId(n), top)).collect();
        codec::encode::<RawSet>(&(entries, (vector, cloud.to_vec())))
    }

    fn check_decode(bytes: Vec<u8>, accepted: bool) {
        let decoded = OrSet::<u8>::decode(&bytes);
        assert_eq!(decoded.is_ok(), accepted, "{decoded:?}");
    }

    // Untrusted bytes cannot produce a state breaking the causal invariants.
    #[test]
    fn decode_rejects_states_that_break_the_causal_invariants() {
        let d = |n, c| Dot::new(NodeId(n), c);
        check_decode(raw(&[(1, &[d(1, 1)])], &[(1, 1)], &[]), true);
        check_decode(raw(&[(1, &[d(1, 3)])], &[(1, 1)], &[d(1, 3)]), true);
        check_decode(raw(&[(1, &[d(1, 2)])], &[(1, 1)], &[]), false); // dot not in the context
        check_decode(raw(&[(1, &[])], &[(1, 1)], &[]), false); // bottom entry
        check_decode(
            raw(&[(1, &[d(1, 1)]), (2, &[d(1, 1)])], &[(1, 1)], &[]),
            false,
        ); // dot twice
        check_decode(raw(&[(1, &[d(1, 0)])], &[(1, 1)], &[]), false); // counter 0
        check_decode(raw(&[], &[(1, 0)], &[]), false); // zero vector entry
        check_decode(raw(&[], &[(1, 1)], &[d(1, 2)]), false); // cloud contiguous with vector
        check_decode(raw(&[], &[(1, 3)], &[d(1, 2)]), false); // cloud covered by vector
        check_decode(raw(&[], &[(1, u64::MAX)], &[]), false); // counter beyond the bound
        check_decode(raw(&[], &[], &[d(1, u64::MAX)]), false);
    }

    /// An OR-Set whose join forgets the other side's causal context: the
    /// planted violation the checks above must catch.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct ForgetfulSet(OrSet<u8>);

    impl DeltaCrdt for ForgetfulSet {
        type Value = BTreeSet<u8>;
        fn value(&self) -> BTreeSet<u8> {
            self.0.value()
        }
        fn join(&mut self, other: &Self) {
            self.0
                .entries
                .join_store(&self.0.context, &other.0.entries, &other.0.context);
        }
    }

    impl SetSpec for ForgetfulSet {
        fn add_by(&self, node: NodeId, element: u8) -> Self {
            Self(self.0.add(node, element))
        }
        fn remove_of(&self, element: u8) -> Self {
            Self(self.0.remove(&element))
        }
        fn has(&self, element: u8) -> bool {
            self.0.contains(&element)
        }
    }

    #[test]
    fn a_join_that_forgets_the_context_fails_the_law_check() {
        // A state built by the correct join: one element, its dot in the context.
        let mut set = OrSet::new();
        set.join(&set.add(node(0), 1u8));
        let a = ForgetfulSet(set);
        let err = check_join_laws(&a, &ForgetfulSet::default(), &a).unwrap_err();
        assert!(err.contains("not commutative"), "{err}");
    }

    #[test]
    fn a_join_that_forgets_the_context_fails_the_observed_remove_check() {
        let mut first = ForgetfulSet::default();
        first.join(&first.add_by(node(0), 1));
        let mut second = ForgetfulSet::default();
        second.join(&first);
        let err = check_observed_remove(&[first.clone(), second.clone()], 1).unwrap_err();
        assert!(err.contains("still holds 1"), "{err}");
        // The correct set passes the same check on the same history.
        let mut first = OrSet::new();
        first.join(&first.add(node(0), 1u8));
        let second = joined(&OrSet::new(), &first);
        check_observed_remove(&[first, second], 1).unwrap();
    }

    /// Joins `delta` at replica `at` and puts it in flight to the others.
    fn ship<T: DeltaCrdt>(
        replicas: &mut [T],
        in_flight: &mut Vec<(usize, T)>,
        at: usize,
        delta: T,
    ) {
        replicas[at].join(&delta);
        let others = (0..replicas.len()).filter(|&to| to != at);
        in_flight.extend(others.map(|to| (to, delta.clone())));
    }

    // Bounded metadata: adds and removes leave no tombstones, and once every
    // delta has arrived the context is a plain version vector.
    #[test]
    fn metadata_stays_bounded_after_100_000_add_remove_cycles() {
        let mut rng = StdRng::seed_from_u64(0x5e7);
        let mut replicas = vec![OrSet::<u64>::new(); 3];
        let mut in_flight: Vec<(usize, OrSet<u64>)> = Vec::new();
        let mut cloud_max = 0;
        for _ in 0..100_000 {
            let element = rng.random_range(0..10);
            let adder = rng.random_range(0..3);
            let add = replicas[adder].add(node(adder), element);
            ship(&mut replicas, &mut in_flight, adder, add);
            let remover = rng.random_range(0..3);
            let remove = replicas[remover].remove(&element);
            ship(&mut replicas, &mut in_flight, remover, remove);
            // Deliver in random order, keeping a bounded window in flight so
            // that gaps (and hence dot clouds) form and close continually.
            while in_flight.len() > 12 {
                let (to, delta) = in_flight.swap_remove(rng.random_range(0..in_flight.len()));
                replicas[to].join(&delta);
            }
            cloud_max = replicas
                .iter()
                .map(|r| r.context().cloud_len())
                .max()
                .unwrap_or(0)
                .max(cloud_max);
        }
        while !in_flight.is_empty() {
            let (to, delta) = in_flight.swap_remove(rng.random_range(0..in_flight.len()));
            replicas[to].join(&delta);
        }
        assert!(
            replicas.iter().all(|r| r == &replicas[0]),
            "replicas diverged"
        );
        let settled = &replicas[0];
        assert_eq!(
            settled.context().cloud_len(),
            0,
            "the context is fully compacted"
        );
        assert_eq!(
            settled.context().vector().count(),
            3,
            "one vector entry per node"
        );
        assert!(
            cloud_max <= 12,
            "the cloud never outgrows the in-flight window: {cloud_max}"
        );
        let bytes = settled.encode().len();
        assert!(
            bytes < 256,
            "10 elements and 3 nodes encode in {bytes} bytes"
        );
    }

    proptest! {
        #![proptest_config(config(0x0125_e701))]
        #[test]
        fn join_laws_hold_on_reachable_states(steps in testkit::steps(op(), 40)) {
            let reached = reach(&steps, run);
            check_reached(&reached).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(config(0x0125_e702))]
        #[test]
        fn replicas_converge_under_loss_duplication_and_reordering(
            seed in any::<u64>(),
            replicas in 3usize..=5,
            ops in proptest::collection::vec((any::<usize>(), op()), 0..60),
        ) {
            converge(seed, replicas, &ops, run).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(config(0x0125_e703))]
        #[test]
        fn an_add_concurrent_with_a_remove_wins(
            steps in testkit::steps(op(), 30),
            adder in 0..REPLICAS,
            offset in 1..REPLICAS,
            element in 0u8..6,
        ) {
            // The remover is another replica: it cannot have seen the
            // adder's next dot, so the two operations are concurrent.
            let reached = reach(&steps, run);
            let remover = (adder + offset) % REPLICAS;
            let (a, b) = (&reached.replicas[adder], &reached.replicas[remover]);
            check_add_wins(a, node(adder), b, element).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(config(0x0125_e704))]
        #[test]
        fn a_remove_that_saw_every_add_removes_the_element_everywhere(
            steps in testkit::steps(op(), 30),
            element in 0u8..6,
        ) {
            let reached = reach(&steps, run);
            check_observed_remove(&reached.replicas, element).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(config(0x0125_e705))]
        #[test]
        fn decoding_arbitrary_bytes_never_yields_a_misbehaving_state(
            body in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut bytes = vec![codec::FORMAT_VERSION];
            bytes.extend(body);
            if let Ok(set) = OrSet::<u8>::decode(&bytes) {
                check_join_laws(&set, &set, &OrSet::new()).map_err(TestCaseError::fail)?;
                let mut grown = joined(&set, &set.add(node(0), 1));
                prop_assert!(grown.contains(&1));
                grown.join(&grown.remove(&1));
                prop_assert!(!grown.contains(&1));
            }
        }
    }
}
