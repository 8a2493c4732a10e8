//! G-Counter and PN-Counter: per-node increment entries joined by maximum.
//!
//! Each node only ever writes its own entry, and only upwards, so the join of
//! two states is the entry-wise maximum and the value is the sum of entries
//! (Shapiro et al., "A comprehensive study of CRDTs", §3.1.1–3.1.2). The
//! delta of an increment is the acting node's single new entry.
//!
//! Overflow: an entry is a `u64`. An increment that would take the acting
//! node's entry past `u64::MAX` is refused with [`CounterOverflow`], so an
//! acknowledged increment is never silently lost. Sums across entries can
//! still exceed `u64::MAX` (many nodes, or a hostile peer's state that decoded
//! fine); [`GCounter`]'s value saturates there rather than wrapping, and
//! [`PnCounter`] sums in `u128` and reads as an exact `i128`.

use std::collections::BTreeMap;

use calm_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::DeltaCrdt;

/// Why an increment was refused: the acting node's entry would pass
/// `u64::MAX`. Mutators take `&self`, so nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("counter entry of {node} is {entry}; adding {requested} would pass u64::MAX")]
pub struct CounterOverflow {
    /// The node whose entry would overflow.
    pub node: NodeId,
    /// That entry's current value.
    pub entry: u64,
    /// The amount the caller asked to add.
    pub requested: u64,
}

/// A grow-only counter: one monotone entry per node, read as their sum.
///
/// Mutators take `&self` and return the delta; the caller joins it locally
/// (with [`DeltaCrdt::apply_delta`]) and ships it.
///
/// ```
/// use calm_crdt::{DeltaCrdt, GCounter};
/// use calm_types::NodeId;
///
/// let mut a = GCounter::default();
/// let mut b = GCounter::default();
/// let delta = a.increment(NodeId(1), 5).expect("a fresh entry cannot overflow");
/// a.apply_delta(&delta);
/// b.apply_delta(&b.increment(NodeId(2), 2).expect("a fresh entry cannot overflow"));
/// b.apply_delta(&delta); // shipped from a
/// a.join(&b);
/// assert_eq!((a.value(), b.value()), (7, 7));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GCounter {
    /// Increments per node. A node with no increments has no entry, so that
    /// equal counters are equal structurally (checked by `validate`).
    entries: BTreeMap<NodeId, u64>,
}

impl GCounter {
    /// A counter at zero (the bottom state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta that adds `n` to `node`'s entry: that single entry at its
    /// new value. Adding zero returns the bottom state, which changes nothing.
    pub fn increment(&self, node: NodeId, n: u64) -> Result<Self, CounterOverflow> {
        if n == 0 {
            return Ok(Self::default());
        }
        let entry = self.entry(node);
        let next = entry.checked_add(n).ok_or(CounterOverflow {
            node,
            entry,
            requested: n,
        })?;
        Ok(Self {
            entries: BTreeMap::from([(node, next)]),
        })
    }

    /// The increments `node` has made, as far as this replica has seen.
    pub fn entry(&self, node: NodeId) -> u64 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    /// The exact sum of all entries. A `u128` cannot overflow here: that would
    /// take 2^64 entries, more than memory holds.
    fn total(&self) -> u128 {
        self.entries.values().map(|&v| u128::from(v)).sum()
    }
}

impl DeltaCrdt for GCounter {
    /// The sum of all entries, saturating at `u64::MAX` (see the module doc).
    type Value = u64;

    fn value(&self) -> u64 {
        u64::try_from(self.total()).unwrap_or(u64::MAX)
    }

    fn join(&mut self, other: &Self) {
        for (&node, &count) in &other.entries {
            let entry = self.entries.entry(node).or_insert(0);
            *entry = (*entry).max(count);
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self.entries.iter().find(|&(_, &count)| count == 0) {
            Some((node, _)) => Err(format!(
                "G-Counter entry of {node} is zero; zero entries are omitted"
            )),
            None => Ok(()),
        }
    }
}

/// A counter that goes up and down: a [`GCounter`] of increments and one of
/// decrements, read as their difference.
///
/// ```
/// use calm_crdt::{DeltaCrdt, PnCounter};
/// use calm_types::NodeId;
///
/// let mut a = PnCounter::default();
/// let mut b = PnCounter::default();
/// let up = a.increment(NodeId(1), 3).expect("a fresh entry cannot overflow");
/// a.apply_delta(&up);
/// let down = b.decrement(NodeId(2), 5).expect("a fresh entry cannot overflow");
/// b.apply_delta(&down);
/// a.apply_delta(&down);
/// b.apply_delta(&up);
/// assert_eq!(a, b);
/// assert_eq!(a.value(), -2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    increments: GCounter,
    decrements: GCounter,
}

impl PnCounter {
    /// A counter at zero (the bottom state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta that adds `n` on behalf of `node`.
    pub fn increment(&self, node: NodeId, n: u64) -> Result<Self, CounterOverflow> {
        Ok(Self {
            increments: self.increments.increment(node, n)?,
            decrements: GCounter::default(),
        })
    }

    /// The delta that subtracts `n` on behalf of `node`.
    pub fn decrement(&self, node: NodeId, n: u64) -> Result<Self, CounterOverflow> {
        Ok(Self {
            increments: GCounter::default(),
            decrements: self.decrements.increment(node, n)?,
        })
    }

    /// The grow-only counter of increments.
    pub fn increments(&self) -> &GCounter {
        &self.increments
    }

    /// The grow-only counter of decrements.
    pub fn decrements(&self) -> &GCounter {
        &self.decrements
    }
}

impl DeltaCrdt for PnCounter {
    /// Increments minus decrements. Each side is an exact `u128` sum, so the
    /// difference is exact for any state with fewer than 2^63 nodes; beyond
    /// that it saturates instead of panicking.
    type Value = i128;

    fn value(&self) -> i128 {
        let up = i128::try_from(self.increments.total()).unwrap_or(i128::MAX);
        let down = i128::try_from(self.decrements.total()).unwrap_or(i128::MAX);
        up.saturating_sub(down)
    }

    fn join(&mut self, other: &Self) {
        self.increments.join(&other.increments);
        self.decrements.join(&other.decrements);
    }

    fn validate(&self) -> Result<(), String> {
        self.increments.validate()?;
        self.decrements.validate()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::laws::{
        Convergence, NetworkFaults, check_converged, check_delta_is_join, check_join_laws,
    };

    /// 1,000 cases from a fixed seed, so that a failure replays exactly.
    fn law_config() -> ProptestConfig {
        crate::causal::testkit::config(0x6c61_7773)
    }

    /// One scripted operation: (replica, is_decrement, amount).
    type Op = (usize, bool, u64);

    fn script() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec((0usize..5, any::<bool>(), 0u64..1_000), 0..40)
    }

    /// Runs `ops` on a PN-Counter convergence run; returns the run and the
    /// sum of acknowledged increments minus acknowledged decrements.
    fn run_pn(replicas: usize, seed: u64, ops: &[Op]) -> (Convergence<PnCounter>, i128) {
        let mut run = Convergence::<PnCounter>::new(replicas, seed, NetworkFaults::default());
        let mut expected = 0i128;
        for &(at, down, n) in ops {
            let acked = run.apply(at, |s, at| {
                let node = NodeId(at as u64);
                if down {
                    s.decrement(node, n).ok()
                } else {
                    s.increment(node, n).ok()
                }
            });
            if acked {
                expected += if down { -i128::from(n) } else { i128::from(n) };
            }
        }
        (run, expected)
    }

    proptest! {
        #![proptest_config(law_config())]

        // Delta-state CRDTs (Almeida et al.) §3: join is a semilattice join.
        #[test]
        fn pn_counter_join_is_a_semilattice_join(seed: u64, ops in script()) {
            let (run, _) = run_pn(3, seed, &ops);
            let (a, b, c) = (run.replica(0), run.replica(1), run.replica(2));
            prop_assert_eq!(check_join_laws(a, b, c), Ok(()));
            prop_assert_eq!(check_join_laws(a.increments(), b.increments(), c.increments()), Ok(()));
        }

        // Delta-state CRDTs §4: a delta mutator's result joins into any state.
        #[test]
        fn counter_deltas_are_joins(seed: u64, ops in script(), n in 0u64..1_000) {
            let (run, _) = run_pn(3, seed, &ops);
            let delta = run.replica(1).decrement(NodeId(1), n).expect("small entries");
            prop_assert_eq!(check_delta_is_join(run.replica(0), &delta), Ok(()));
            let delta = run.replica(1).increments().increment(NodeId(1), n).expect("small entries");
            prop_assert_eq!(check_delta_is_join(run.replica(0).increments(), &delta), Ok(()));
        }

        // Sequential specification: the converged value is the sum of every
        // acknowledged increment minus every acknowledged decrement, whatever
        // the network lost, duplicated or reordered.
        #[test]
        fn pn_counter_converges_to_acknowledged_sum(
            replicas in 3usize..=5, seed: u64, ops in script(),
        ) {
            let (run, expected) = run_pn(replicas, seed, &ops);
            let settled = run.settle();
            prop_assert_eq!(check_converged(&settled), Ok(()));
            prop_assert_eq!(settled[0].value(), expected);
        }

        #[test]
        fn g_counter_converges_to_acknowledged_sum(
            replicas in 3usize..=5, seed: u64, ops in script(),
        ) {
            let mut run = Convergence::<GCounter>::new(replicas, seed, NetworkFaults::default());
            let mut expected = 0u64;
            for &(at, _, n) in &ops {
                if run.apply(at, |s, at| s.increment(NodeId(at as u64), n).ok()) {
                    expected += n;
                }
            }
            let settled = run.settle();
            prop_assert_eq!(check_converged(&settled), Ok(()));
            prop_assert_eq!(settled[0].value(), expected);
        }
    }

    #[test]
    fn increment_delta_carries_only_the_acting_nodes_entry() {
        let mut state = GCounter::new();
        state.apply_delta(&state.increment(NodeId(1), 4).unwrap());
        state.apply_delta(&state.increment(NodeId(2), 9).unwrap());
        let delta = state.increment(NodeId(1), 1).unwrap();
        assert_eq!(delta.entries, BTreeMap::from([(NodeId(1), 5)]));
        assert_eq!(state.increment(NodeId(1), 0).unwrap(), GCounter::default());
    }

    #[test]
    fn increment_past_u64_max_is_refused_not_wrapped() {
        let state = GCounter {
            entries: BTreeMap::from([(NodeId(1), u64::MAX - 1)]),
        };
        let decoded = GCounter::decode(&state.encode()).expect("a valid state");
        assert_eq!(
            decoded.increment(NodeId(1), 1).unwrap().entry(NodeId(1)),
            u64::MAX
        );
        assert_eq!(
            decoded.increment(NodeId(1), 2),
            Err(CounterOverflow {
                node: NodeId(1),
                entry: u64::MAX - 1,
                requested: 2
            })
        );
    }

    #[test]
    fn sums_beyond_u64_saturate_or_stay_exact_instead_of_panicking() {
        let huge = BTreeMap::from([(NodeId(1), u64::MAX), (NodeId(2), u64::MAX)]);
        let g = GCounter {
            entries: huge.clone(),
        };
        assert_eq!(g.value(), u64::MAX);
        let pn = PnCounter {
            increments: g,
            decrements: GCounter { entries: huge },
        };
        assert_eq!(pn.value(), 0);
        let pn = PnCounter {
            increments: GCounter::new(),
            decrements: pn.decrements,
        };
        assert_eq!(pn.value(), -2 * i128::from(u64::MAX));
    }

    #[test]
    fn decode_rejects_zero_entries_because_they_break_structural_equality() {
        let state = GCounter {
            entries: BTreeMap::from([(NodeId(3), 0)]),
        };
        assert!(matches!(
            GCounter::decode(&state.encode()),
            Err(calm_types::codec::DecodeError::Invalid(_))
        ));
        let pn = PnCounter {
            increments: GCounter::new(),
            decrements: state,
        };
        assert!(matches!(
            PnCounter::decode(&pn.encode()),
            Err(calm_types::codec::DecodeError::Invalid(_))
        ));
    }

    /// A deliberately broken G-Counter whose join adds entries instead of
    /// taking their maximum: it double-counts every duplicated message.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct SummingCounter(GCounter);

    impl DeltaCrdt for SummingCounter {
        type Value = u64;
        fn value(&self) -> u64 {
            self.0.value()
        }
        fn join(&mut self, other: &Self) {
            for (&node, &count) in &other.0.entries {
                *self.0.entries.entry(node).or_insert(0) += count;
            }
        }
    }

    #[test]
    fn planted_summing_join_fails_the_law_and_convergence_checks() {
        let one = SummingCounter(GCounter::new().increment(NodeId(1), 1).unwrap());
        let err = check_join_laws(&one, &SummingCounter::default(), &SummingCounter::default());
        assert!(err.is_err_and(|e| e.contains("idempotent")));

        // Under duplication the broken counter over-counts in some replica.
        let caught = (0..20u64).any(|seed| {
            let mut run = Convergence::<SummingCounter>::new(3, seed, NetworkFaults::default());
            for at in 0..12 {
                // The op-based delta "add one" is exactly right for a
                // summing join, so only the network faults expose it.
                run.apply(at, |_, at| {
                    Some(SummingCounter(
                        GCounter::new().increment(NodeId(at as u64), 1).ok()?,
                    ))
                });
            }
            let settled = run.settle();
            check_converged(&settled).is_err() || settled.iter().any(|r| r.value() != 12)
        });
        assert!(
            caught,
            "a summing join must be caught by the convergence check"
        );
    }
}
