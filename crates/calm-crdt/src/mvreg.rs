//! The multi-value register (MV-Register): concurrent writes survive as
//! siblings.
//!
//! Almeida, Shoker, Baquero, "Delta State Replicated Data Types", the
//! MV-Register: a [`DotFun`] from the dot of each visible write to its value,
//! plus a [`CausalContext`]. A write takes a fresh dot and puts every dot it
//! has seen in its delta's context, so it supersedes exactly the writes it
//! observed; writes it did not observe stay as siblings until a later write
//! sees them. Siblings are therefore bounded by concurrent writers, not by
//! history.

use std::collections::BTreeSet;
use std::fmt::Debug;

use calm_types::NodeId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::DeltaCrdt;
use crate::causal::{CausalContext, CausalCrdt, DotFun, join_causal, validate_causal};

/// A multi-value register.
///
/// Semantics: reading gives the values of every write not superseded by a
/// write that observed it. A write supersedes everything its replica had
/// seen, so sequential writes leave one value and concurrent writes leave
/// one value each. [`clear`](Self::clear) resets the register the same way.
///
/// ```
/// use calm_crdt::{DeltaCrdt, MvRegister};
/// use calm_types::NodeId;
///
/// let (a, b) = (NodeId(1), NodeId(2));
/// let mut left = MvRegister::new();
/// let mut right = MvRegister::new();
/// left.join(&left.write(a, 1));
/// right.join(&right.write(b, 2));
///
/// left.join(&right);
/// assert_eq!(left.values().copied().collect::<Vec<_>>(), [1, 2]); // siblings
///
/// left.join(&left.write(a, 3)); // saw both, supersedes both
/// assert_eq!(left.values().copied().collect::<Vec<_>>(), [3]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
pub struct MvRegister<T> {
    /// The dot of each visible write → the value it wrote.
    versions: DotFun<T>,
    /// Every dot this state has seen.
    context: CausalContext,
}

impl<T> Default for MvRegister<T> {
    fn default() -> Self {
        Self {
            versions: DotFun::default(),
            context: CausalContext::default(),
        }
    }
}

impl<T> MvRegister<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    /// An empty register: no write yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta of `node` writing `value`: one fresh dot for it, and a
    /// context covering every visible write, which it supersedes.
    pub fn write(&self, node: NodeId, value: T) -> Self {
        let dot = self.context.next_dot(node);
        let mut context = self.observed();
        context.insert(dot);
        let mut versions = DotFun::new();
        versions.insert(dot, value);
        Self { versions, context }
    }

    /// The delta of resetting the register: every visible write is
    /// superseded and none replaces it. A concurrent write survives.
    pub fn clear(&self) -> Self {
        Self {
            versions: DotFun::new(),
            context: self.observed(),
        }
    }

    /// The values of the visible writes, in the order of their dots. Two
    /// concurrent writes of equal values both appear.
    pub fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.versions.iter().map(|(_, value)| value)
    }

    /// How many writes are visible: 0 before the first, 1 without
    /// concurrency, more with concurrent writers.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no write is visible.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The dots of the visible writes, as a context.
    fn observed(&self) -> CausalContext {
        self.versions.iter().map(|(dot, _)| dot).collect()
    }
}

impl<T> DeltaCrdt for MvRegister<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    type Value = BTreeSet<T>;

    fn value(&self) -> BTreeSet<T> {
        Self::read(&self.versions)
    }

    fn join(&mut self, other: &Self) {
        join_causal(
            &mut self.versions,
            &mut self.context,
            &other.versions,
            &other.context,
        );
    }

    fn validate(&self) -> Result<(), String> {
        validate_causal(&self.versions, &self.context)
    }
}

impl<T> CausalCrdt for MvRegister<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    type Store = DotFun<T>;

    fn from_parts(store: Self::Store, context: CausalContext) -> Self {
        Self {
            versions: store,
            context,
        }
    }

    fn into_parts(self) -> (Self::Store, CausalContext) {
        (self.versions, self.context)
    }

    fn store(&self) -> &Self::Store {
        &self.versions
    }

    fn context(&self) -> &CausalContext {
        &self.context
    }

    fn read(store: &Self::Store) -> BTreeSet<T> {
        store.iter().map(|(_, value)| value.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::causal::testkit::{self, check_reached, config, converge, node, reach};

    #[derive(Debug, Clone)]
    enum Op {
        Write(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![5 => any::<u8>().prop_map(Op::Write), 1 => Just(Op::Clear)]
    }

    fn run(register: &MvRegister<u8>, node: NodeId, op: &Op) -> Option<MvRegister<u8>> {
        Some(match op {
            Op::Write(value) => register.write(node, *value),
            Op::Clear => register.clear(),
        })
    }

    fn joined<T: DeltaCrdt>(a: &T, b: &T) -> T {
        let mut out = a.clone();
        out.join(b);
        out
    }

    /// A register whose join keeps every version it meets, ignoring what
    /// the other side superseded: the planted violation.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct HoardingRegister(MvRegister<u8>);

    impl DeltaCrdt for HoardingRegister {
        type Value = BTreeSet<u8>;
        fn value(&self) -> BTreeSet<u8> {
            self.0.value()
        }
        fn join(&mut self, other: &Self) {
            for (dot, value) in other.0.versions.iter() {
                self.0.versions.insert(dot, *value);
            }
            self.0.context.join(&other.0.context);
        }
    }

    /// The register operations the specification check uses.
    trait RegisterSpec: DeltaCrdt<Value = BTreeSet<u8>> {
        fn write_by(&self, node: NodeId, value: u8) -> Self;
    }

    impl RegisterSpec for MvRegister<u8> {
        fn write_by(&self, node: NodeId, value: u8) -> Self {
            self.write(node, value)
        }
    }

    impl RegisterSpec for HoardingRegister {
        fn write_by(&self, node: NodeId, value: u8) -> Self {
            Self(self.0.write(node, value))
        }
    }

    /// MV-Register specification: writes made concurrently on every replica
    /// all survive the merge; a write that saw them leaves only itself, even
    /// after the concurrent states are merged in again.
    fn check_concurrent_then_superseding<R: RegisterSpec>(replicas: &[R]) -> Result<(), String> {
        let written: Vec<R> = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| joined(r, &r.write_by(node(i), 100 + i as u8)))
            .collect();
        let merged = written.iter().fold(R::default(), |acc, r| joined(&acc, r));
        let expected: BTreeSet<u8> = (0..replicas.len()).map(|i| 100 + i as u8).collect();
        if merged.value() != expected {
            return Err(format!(
                "concurrent writes: expected {expected:?}, read {:?}",
                merged.value()
            ));
        }
        let mut last = joined(&merged, &merged.write_by(node(0), 7));
        for stale in &written {
            last.join(stale);
        }
        if last.value() != BTreeSet::from([7]) {
            return Err(format!(
                "a write that saw every sibling left {:?}",
                last.value()
            ));
        }
        Ok(())
    }

    #[test]
    fn concurrent_writes_are_all_kept_and_a_later_write_leaves_one_value() {
        check_concurrent_then_superseding(&[
            MvRegister::new(),
            MvRegister::new(),
            MvRegister::new(),
        ])
        .unwrap();
    }

    #[test]
    fn a_clear_concurrent_with_a_write_keeps_the_write() {
        let mut left = MvRegister::new();
        left.join(&left.write(node(0), 1u8));
        let mut right = left.clone();
        left.join(&left.clear());
        assert!(left.is_empty());
        right.join(&right.write(node(1), 2));
        left.join(&right);
        assert_eq!(left.value(), BTreeSet::from([2]));
    }

    #[test]
    fn a_join_that_ignores_superseded_writes_fails_the_specification() {
        let replicas = vec![HoardingRegister::default(); 3];
        let err = check_concurrent_then_superseding(&replicas).unwrap_err();
        assert!(err.contains("saw every sibling"), "{err}");
    }

    proptest! {
        #![proptest_config(config(0x3e9_0001))]
        #[test]
        fn join_laws_hold_on_reachable_states(steps in testkit::steps(op(), 40)) {
            check_reached(&reach(&steps, run)).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(config(0x3e9_0002))]
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
        #![proptest_config(config(0x3e9_0003))]
        #[test]
        fn concurrent_writes_survive_until_a_write_sees_them(steps in testkit::steps(op(), 30)) {
            let reached = reach(&steps, run);
            check_concurrent_then_superseding(&reached.replicas).map_err(TestCaseError::fail)?;
        }
    }
}
