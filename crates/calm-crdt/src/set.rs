//! G-Set and 2P-Set: sets joined by union.
//!
//! A G-Set only grows. A 2P-Set (Shapiro et al., "A comprehensive study of
//! CRDTs", §3.3.2) pairs an added set with a removed set of tombstones; an
//! element is present while added and not removed. Because the removed set
//! also only grows, **a removed element can never be re-added**: the
//! tombstone outlives every later add. Where elements must come back, use the
//! add-wins OR-Set instead. Tombstones are kept forever, so a 2P-Set's size
//! is bounded only by the number of distinct elements ever added.

use std::collections::BTreeSet;
use std::fmt::Debug;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::DeltaCrdt;

/// A grow-only set: add is the only mutator and join is union.
///
/// ```
/// use calm_crdt::{DeltaCrdt, GSet};
///
/// let mut a = GSet::default();
/// let mut b = GSet::default();
/// a.apply_delta(&a.add("x".to_string()));
/// b.apply_delta(&b.add("y".to_string()));
/// a.join(&b);
/// assert!(a.contains(&"x".to_string()) && a.contains(&"y".to_string()));
/// assert_eq!(a.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GSet<T: Ord> {
    elements: BTreeSet<T>,
}

impl<T: Ord> Default for GSet<T> {
    // Written by hand because the derive would demand `T: Default`.
    fn default() -> Self {
        Self {
            elements: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Clone> GSet<T> {
    /// An empty set (the bottom state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta that adds `element`: the singleton set, or the bottom state
    /// when the element is already present (the optimal delta, `{e} \ S`).
    pub fn add(&self, element: T) -> Self {
        let mut delta = Self::new();
        if !self.elements.contains(&element) {
            delta.elements.insert(element);
        }
        delta
    }

    /// Whether `element` has been added.
    pub fn contains(&self, element: &T) -> bool {
        self.elements.contains(element)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.elements.iter()
    }
}

impl<T> DeltaCrdt for GSet<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    /// The elements.
    type Value = BTreeSet<T>;

    fn value(&self) -> BTreeSet<T> {
        self.elements.clone()
    }

    fn join(&mut self, other: &Self) {
        self.elements.extend(other.elements.iter().cloned());
    }
}

/// Why a 2P-Set mutator refused. Mutators take `&self`, so nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TwoPSetError {
    /// The element was removed once, and a 2P-Set never re-adds a removed
    /// element. Nothing changed.
    #[error(
        "element was removed and a 2P-Set can never re-add it; use an OR-Set for re-addable elements"
    )]
    Removed,
    /// The element has not been added at this replica, and a 2P-Set removes
    /// only elements it has seen added. Nothing changed.
    #[error("element has not been added at this replica; a 2P-Set removes only after an add")]
    Absent,
}

/// A two-phase set: add, then at most one effective remove per element.
///
/// Invariant (checked on decode): every removed element was added, because a
/// remove is only issued after its add was observed and its delta carries
/// the add too.
///
/// ```
/// use calm_crdt::{DeltaCrdt, TwoPSet, TwoPSetError};
///
/// let mut set = TwoPSet::default();
/// set.apply_delta(&set.add(7).expect("never removed"));
/// set.apply_delta(&set.remove(7).expect("added above"));
/// assert!(!set.contains(&7));
/// // The tombstone is permanent.
/// assert_eq!(set.add(7), Err(TwoPSetError::Removed));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoPSet<T: Ord> {
    added: BTreeSet<T>,
    /// Tombstones: a subset of `added`.
    removed: BTreeSet<T>,
}

impl<T: Ord> Default for TwoPSet<T> {
    // Written by hand because the derive would demand `T: Default`.
    fn default() -> Self {
        Self {
            added: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Clone> TwoPSet<T> {
    /// An empty set (the bottom state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta that adds `element`, or [`TwoPSetError::Removed`] if it
    /// carries a tombstone here. Adding a present element returns the bottom
    /// state. An add issued concurrently with a remove elsewhere is accepted
    /// here and then loses to the tombstone when the remove arrives.
    pub fn add(&self, element: T) -> Result<Self, TwoPSetError> {
        if self.removed.contains(&element) {
            return Err(TwoPSetError::Removed);
        }
        let mut delta = Self::new();
        if !self.added.contains(&element) {
            delta.added.insert(element);
        }
        Ok(delta)
    }

    /// The delta that removes `element`, or [`TwoPSetError::Absent`] if this
    /// replica has not seen it added. The delta carries the add as well, so
    /// that a replica receiving the remove first still holds a valid state.
    /// Removing an already removed element returns the bottom state.
    pub fn remove(&self, element: T) -> Result<Self, TwoPSetError> {
        if !self.added.contains(&element) {
            return Err(TwoPSetError::Absent);
        }
        let mut delta = Self::new();
        if !self.removed.contains(&element) {
            delta.added.insert(element.clone());
            delta.removed.insert(element);
        }
        Ok(delta)
    }

    /// Whether `element` is present: added and not removed.
    pub fn contains(&self, element: &T) -> bool {
        self.added.contains(element) && !self.removed.contains(element)
    }

    /// Whether `element` carries a tombstone, so can never be added again.
    pub fn is_removed(&self, element: &T) -> bool {
        self.removed.contains(element)
    }

    /// The present elements in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.added.difference(&self.removed)
    }
}

impl<T> DeltaCrdt for TwoPSet<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    /// The present elements: added minus removed.
    type Value = BTreeSet<T>;

    fn value(&self) -> BTreeSet<T> {
        self.iter().cloned().collect()
    }

    fn join(&mut self, other: &Self) {
        self.added.extend(other.added.iter().cloned());
        self.removed.extend(other.removed.iter().cloned());
    }

    fn validate(&self) -> Result<(), String> {
        match self.removed.iter().find(|&e| !self.added.contains(e)) {
            Some(e) => Err(format!("2P-Set tombstone {e:?} has no matching add")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::laws::{
        Convergence, NetworkFaults, check_converged, check_delta_is_join, check_join_laws,
    };

    /// 1,000 cases from a fixed seed, so that a failure replays exactly.
    fn law_config() -> ProptestConfig {
        crate::causal::testkit::config(0x7365_7473)
    }

    /// One scripted operation: (replica, is_remove, element). A small element
    /// domain makes adds, removes and refused re-adds collide often.
    type Op = (usize, bool, u8);

    fn script() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec((0usize..5, any::<bool>(), 0u8..8), 0..40)
    }

    /// Runs `ops` on a 2P-Set; returns the run, the acknowledged adds and the
    /// acknowledged removes.
    fn run_two_phase(
        replicas: usize,
        seed: u64,
        ops: &[Op],
    ) -> (Convergence<TwoPSet<u8>>, BTreeSet<u8>, BTreeSet<u8>) {
        let mut run = Convergence::<TwoPSet<u8>>::new(replicas, seed, NetworkFaults::default());
        let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
        for &(at, remove, e) in ops {
            let acked = run.apply(at, |s, _| {
                if remove {
                    s.remove(e).ok()
                } else {
                    s.add(e).ok()
                }
            });
            if acked {
                if remove {
                    removed.insert(e)
                } else {
                    added.insert(e)
                };
            }
        }
        (run, added, removed)
    }

    fn run_grow_only(
        replicas: usize,
        seed: u64,
        ops: &[Op],
    ) -> (Convergence<GSet<u8>>, BTreeSet<u8>) {
        let mut run = Convergence::<GSet<u8>>::new(replicas, seed, NetworkFaults::default());
        let mut added = BTreeSet::new();
        for &(at, _, e) in ops {
            run.apply(at, |s, _| Some(s.add(e)));
            added.insert(e);
        }
        (run, added)
    }

    proptest! {
        #![proptest_config(law_config())]

        // Delta-state CRDTs (Almeida et al.) §3: join is a semilattice join.
        #[test]
        fn set_joins_are_semilattice_joins(seed: u64, ops in script()) {
            let (run, _, _) = run_two_phase(3, seed, &ops);
            prop_assert_eq!(check_join_laws(run.replica(0), run.replica(1), run.replica(2)), Ok(()));
            let (run, _) = run_grow_only(3, seed, &ops);
            prop_assert_eq!(check_join_laws(run.replica(0), run.replica(1), run.replica(2)), Ok(()));
        }

        // Delta-state CRDTs §4: a delta mutator's result joins into any state.
        #[test]
        fn set_deltas_are_joins(seed: u64, ops in script(), e in 0u8..8) {
            let (run, _, _) = run_two_phase(3, seed, &ops);
            for delta in [run.replica(1).add(e), run.replica(1).remove(e)].into_iter().flatten() {
                prop_assert_eq!(check_delta_is_join(run.replica(0), &delta), Ok(()));
            }
            let (run, _) = run_grow_only(3, seed, &ops);
            prop_assert_eq!(check_delta_is_join(run.replica(0), &run.replica(1).add(e)), Ok(()));
        }

        // Sequential specification: the converged 2P-Set holds exactly the
        // acknowledged adds minus the acknowledged removes.
        #[test]
        fn two_phase_set_converges_to_adds_minus_removes(
            replicas in 3usize..=5, seed: u64, ops in script(),
        ) {
            let (run, added, removed) = run_two_phase(replicas, seed, &ops);
            let settled = run.settle();
            prop_assert_eq!(check_converged(&settled), Ok(()));
            let expected: BTreeSet<u8> = added.difference(&removed).copied().collect();
            prop_assert_eq!(settled[0].value(), expected);
        }

        #[test]
        fn grow_only_set_converges_to_every_add(replicas in 3usize..=5, seed: u64, ops in script()) {
            let (run, added) = run_grow_only(replicas, seed, &ops);
            let settled = run.settle();
            prop_assert_eq!(check_converged(&settled), Ok(()));
            prop_assert_eq!(settled[0].value(), added);
        }
    }

    #[test]
    fn a_removed_element_can_never_be_re_added() {
        let key = String::from("k");
        let mut here = TwoPSet::new();
        here.apply_delta(&here.add(key.clone()).unwrap());
        let remove = here.remove(key.clone()).unwrap();
        // A concurrent re-add elsewhere is accepted there but loses on join.
        let mut there = here.clone();
        here.apply_delta(&remove);
        assert_eq!(here.add(key.clone()), Err(TwoPSetError::Removed));
        there.apply_delta(&there.add(key.clone()).unwrap());
        there.apply_delta(&remove);
        assert!(!there.contains(&key) && there.is_removed(&key));
    }

    #[test]
    fn remove_is_refused_before_the_add_is_seen() {
        assert_eq!(TwoPSet::<u8>::new().remove(1), Err(TwoPSetError::Absent));
    }

    #[test]
    fn decode_rejects_a_tombstone_without_its_add() {
        let state = TwoPSet {
            added: BTreeSet::new(),
            removed: BTreeSet::from([3u8]),
        };
        assert!(matches!(
            TwoPSet::<u8>::decode(&state.encode()),
            Err(calm_types::codec::DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn planted_remove_without_add_fails_the_decode_check_of_the_law_harness() {
        // A broken remove whose delta omits the add: the receiving replica
        // holds a state that no longer round-trips through decode.
        let broken_delta = TwoPSet {
            added: BTreeSet::new(),
            removed: BTreeSet::from([1u8]),
        };
        assert!(
            check_delta_is_join(&broken_delta, &TwoPSet::new())
                .is_err_and(|e| e.contains("failed to decode"))
        );
    }
}
