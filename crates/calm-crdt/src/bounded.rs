//! The bounded counter: a numeric invariant ("never below a bound") kept
//! without coordination by an escrow of rights (Balegas et al., "Extending
//! Eventually Consistent Cloud Databases for Enforcing Numeric Invariants",
//! SRDS 2015).
//!
//! State is a rights matrix `R` and a used vector `U`: `R[i][i]` counts the
//! increments of node `i`, `R[i][j]` (j ≠ i) the rights `i` transferred to
//! `j`, and `U[i]` the decrements of `i`. Every entry is written only by the
//! node of its row and only upwards, so join is the entry-wise maximum. The
//! local rights of `i` are
//!
//! ```text
//! R[i][i] + Σ_{j≠i} R[j][i] − Σ_{j≠i} R[i][j] − U[i]
//! ```
//!
//! and a node decrements or transfers only within them. The common path, a
//! decrement within local rights, therefore needs no coordination; only a
//! node that has run out asks another for a transfer. Summed over all nodes
//! the transfer terms cancel, so the value `Σ R[i][i] − Σ U[i]` (above the
//! bound) is the sum of everyone's rights and never negative.
//!
//! **Deltas carry the rights they spend.** If a decrement's delta were only
//! the new `U[i]`, a replica that received it before the increments or
//! transfers backing it would read a value below the bound. So the delta of a
//! decrement or a transfer is the acting node's row together with the rows
//! of every node whose transfers, directly or transitively, fed it (its
//! *rights closure*). Every state a replica can hold is then a join of such
//! closed pieces, in which each node's outgoing entries come with at least
//! the incoming entries that justified them, so no node's rights, and hence
//! no value, ever read below zero. An increment spends nothing and ships only
//! its new `R[i][i]`.

use std::collections::{BTreeMap, BTreeSet};

use calm_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::DeltaCrdt;

/// Why a bounded-counter mutator refused. Mutators take `&self`, so a
/// refusal never changes state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundedCounterError {
    /// The node holds fewer rights than the decrement or transfer needs.
    /// Nothing changed; the caller may ask another replica for a transfer
    /// and retry.
    #[error(
        "{requested} exceeds the {available} rights held by this replica; \
         rights must be transferred from another replica first"
    )]
    InsufficientRights {
        /// The acting node's local rights.
        available: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// A node tried to transfer rights to itself, which would mean nothing.
    /// Nothing changed.
    #[error("{node} cannot transfer rights to itself")]
    TransferToSelf {
        /// The acting node.
        node: NodeId,
    },
    /// One of the acting node's entries would pass `u64::MAX`. Nothing
    /// changed.
    #[error("an entry of {node} would pass u64::MAX")]
    Overflow {
        /// The acting node.
        node: NodeId,
    },
}

/// A counter whose value never drops below `LOWER` in any replica's view.
///
/// The bound is part of the type, not of the state, so that `Default` stays
/// the bottom of one lattice: `BoundedCounter<LOWER>` reads `LOWER` at
/// bottom, increments create rights above it and decrements spend them.
/// ("Never below zero" is the default, `BoundedCounter<0>`.) Both ends of a
/// wire must therefore agree on the type, as they do on any schema.
///
/// Overflow: every entry is a `u64` and a mutator that would pass
/// `u64::MAX` is refused with [`BoundedCounterError::Overflow`]; sums are
/// taken in `u128`, so reads are exact.
///
/// Trust: decoding validates one state at a time. Two states that are each
/// valid but that no correct execution produces together (only a Byzantine
/// peer sends them) can join into one where some node's rights would be
/// negative; there [`rights`](Self::rights) reads zero, so that node cannot
/// spend, and nothing panics, but the value may read below the bound.
///
/// ```
/// use calm_crdt::{BoundedCounter, BoundedCounterError, DeltaCrdt};
/// use calm_types::NodeId;
///
/// let (n1, n2) = (NodeId(1), NodeId(2));
/// let mut stock = BoundedCounter::<0>::default();
/// stock.apply_delta(&stock.increment(n1, 10).expect("fresh entry"));
/// // n2 holds no rights yet: the decrement is refused locally.
/// assert_eq!(
///     stock.decrement(n2, 3),
///     Err(BoundedCounterError::InsufficientRights { available: 0, requested: 3 })
/// );
/// stock.apply_delta(&stock.transfer(n1, n2, 4).expect("n1 holds 10"));
/// stock.apply_delta(&stock.decrement(n2, 3).expect("n2 holds 4"));
/// assert_eq!((stock.value(), stock.rights(n1), stock.rights(n2)), (7, 6, 1));
/// assert_eq!(stock.rights_by_node(), [(n1, 6), (n2, 1)].into());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundedCounter<const LOWER: i64 = 0> {
    /// Row `i` of the matrix plus `U[i]`: everything node `i` writes. A node
    /// that wrote nothing has no row.
    rows: BTreeMap<NodeId, Row>,
}

/// The entries one node writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Row {
    /// `R[i][i]`: increments by this node.
    increments: u64,
    /// `R[i][j]` for `j ≠ i`: rights given away; zero entries are omitted.
    transfers: BTreeMap<NodeId, u64>,
    /// `U[i]`: decrements by this node.
    used: u64,
}

impl Row {
    fn join(&mut self, other: &Row) {
        self.increments = self.increments.max(other.increments);
        self.used = self.used.max(other.used);
        for (&to, &n) in &other.transfers {
            let entry = self.transfers.entry(to).or_insert(0);
            *entry = (*entry).max(n);
        }
    }

    /// `Σ_j R[i][j] + U[i]`: everything this row spends.
    fn outflow(&self) -> u128 {
        self.transfers
            .values()
            .map(|&n| u128::from(n))
            .sum::<u128>()
            + u128::from(self.used)
    }
}

impl<const LOWER: i64> BoundedCounter<LOWER> {
    /// The bound the value never drops below.
    pub const LOWER_BOUND: i64 = LOWER;

    /// A counter at its bound with no rights anywhere (the bottom state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta that adds `n` on behalf of `node`, creating `n` rights at
    /// `node`: just the new `R[node][node]`.
    pub fn increment(&self, node: NodeId, n: u64) -> Result<Self, BoundedCounterError> {
        if n == 0 {
            return Ok(Self::default());
        }
        let current = self.rows.get(&node).map_or(0, |row| row.increments);
        let increments = current
            .checked_add(n)
            .ok_or(BoundedCounterError::Overflow { node })?;
        let row = Row {
            increments,
            ..Row::default()
        };
        Ok(Self {
            rows: BTreeMap::from([(node, row)]),
        })
    }

    /// The delta that subtracts `n` on behalf of `node`, spending `n` of its
    /// local rights without contacting anyone; refused with
    /// [`BoundedCounterError::InsufficientRights`] when it holds fewer.
    pub fn decrement(&self, node: NodeId, n: u64) -> Result<Self, BoundedCounterError> {
        if n == 0 {
            return Ok(Self::default());
        }
        self.check_rights(node, n)?;
        let mut row = self.rows.get(&node).cloned().unwrap_or_default();
        row.used = row
            .used
            .checked_add(n)
            .ok_or(BoundedCounterError::Overflow { node })?;
        Ok(self.closure_with(node, row))
    }

    /// The delta that moves `n` of `from`'s rights to `to`. The value does
    /// not change; `to` may then decrement without coordination.
    pub fn transfer(&self, from: NodeId, to: NodeId, n: u64) -> Result<Self, BoundedCounterError> {
        if from == to {
            return Err(BoundedCounterError::TransferToSelf { node: from });
        }
        if n == 0 {
            return Ok(Self::default());
        }
        self.check_rights(from, n)?;
        let mut row = self.rows.get(&from).cloned().unwrap_or_default();
        let entry = row.transfers.entry(to).or_insert(0);
        *entry = entry
            .checked_add(n)
            .ok_or(BoundedCounterError::Overflow { node: from })?;
        Ok(self.closure_with(from, row))
    }

    /// The rights `node` holds in this replica's view: what it may decrement
    /// or transfer without coordination. Saturates at `u64::MAX`, and reads
    /// zero for a state no correct replica produces (see `validate`).
    pub fn rights(&self, node: NodeId) -> u64 {
        let (inflow, outflow) = self.balance(node);
        u64::try_from(inflow.saturating_sub(outflow)).unwrap_or(u64::MAX)
    }

    /// Every node holding rights in this replica's view, with its rights
    /// (as [`rights`](Self::rights) reads them), in node order; nodes whose
    /// rights are spent or given away are left out.
    pub fn rights_by_node(&self) -> BTreeMap<NodeId, u64> {
        let receivers = self.rows.values().flat_map(|row| row.transfers.keys());
        self.rows
            .keys()
            .chain(receivers)
            .map(|&node| (node, self.rights(node)))
            .filter(|&(_, rights)| rights > 0)
            .collect()
    }

    fn check_rights(&self, node: NodeId, requested: u64) -> Result<(), BoundedCounterError> {
        let available = self.rights(node);
        if requested > available {
            return Err(BoundedCounterError::InsufficientRights {
                available,
                requested,
            });
        }
        Ok(())
    }

    /// `(R[i][i] + Σ_{j≠i} R[j][i], Σ_{j≠i} R[i][j] + U[i])` for `node`, exact
    /// in `u128` (overflow would need 2^64 rows).
    fn balance(&self, node: NodeId) -> (u128, u128) {
        let own = self.rows.get(&node);
        let received: u128 = self
            .rows
            .iter()
            .filter(|&(&from, _)| from != node)
            .filter_map(|(_, row)| row.transfers.get(&node))
            .map(|&n| u128::from(n))
            .sum();
        let inflow = own.map_or(0, |row| u128::from(row.increments)) + received;
        (inflow, own.map_or(0, Row::outflow))
    }

    /// The rights closure of `node` (module doc), with `row` as `node`'s new
    /// row: `node` plus every row that transferred into a row already in.
    fn closure_with(&self, node: NodeId, row: Row) -> Self {
        let mut sources: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        for (&from, r) in &self.rows {
            for &to in r.transfers.keys() {
                sources.entry(to).or_default().push(from);
            }
        }
        let mut included = BTreeSet::from([node]);
        let mut frontier = vec![node];
        while let Some(to) = frontier.pop() {
            for &from in sources.get(&to).into_iter().flatten() {
                if included.insert(from) {
                    frontier.push(from);
                }
            }
        }
        let mut rows: BTreeMap<NodeId, Row> = included
            .iter()
            .filter_map(|n| Some((*n, self.rows.get(n)?.clone())))
            .collect();
        rows.insert(node, row);
        Self { rows }
    }
}

impl<const LOWER: i64> DeltaCrdt for BoundedCounter<LOWER> {
    /// `LOWER + Σ R[i][i] − Σ U[i]`, exact.
    type Value = i128;

    fn value(&self) -> i128 {
        let increments: u128 = self.rows.values().map(|r| u128::from(r.increments)).sum();
        let used: u128 = self.rows.values().map(|r| u128::from(r.used)).sum();
        // Each sum is below 2^64 · rows, far inside i128; saturate anyway so
        // that no state, however built, can make a read panic.
        let to_i128 = |n: u128| i128::try_from(n).unwrap_or(i128::MAX);
        i128::from(LOWER)
            .saturating_add(to_i128(increments))
            .saturating_sub(to_i128(used))
    }

    fn join(&mut self, other: &Self) {
        for (&node, theirs) in &other.rows {
            self.rows.entry(node).or_default().join(theirs);
        }
    }

    /// Rejects non-canonical rows (zero entries, transfers to self), and any
    /// state in which some node's rights are negative: no correct replica
    /// ever holds one, and accepting it would let the value drop below the
    /// bound.
    fn validate(&self) -> Result<(), String> {
        let mut inflow: BTreeMap<NodeId, u128> = BTreeMap::new();
        for (&node, row) in &self.rows {
            if row.increments == 0 && row.used == 0 && row.transfers.is_empty() {
                return Err(format!(
                    "bounded counter row of {node} is empty; empty rows are omitted"
                ));
            }
            *inflow.entry(node).or_default() += u128::from(row.increments);
            for (&to, &n) in &row.transfers {
                if to == node || n == 0 {
                    return Err(format!(
                        "bounded counter row of {node} has a transfer {n} to {to}"
                    ));
                }
                *inflow.entry(to).or_default() += u128::from(n);
            }
        }
        for (&node, row) in &self.rows {
            // Every row owner was given an inflow entry in the loop above.
            let (inflow, outflow) = (inflow[&node], row.outflow());
            if outflow > inflow {
                return Err(format!(
                    "{node} spends {outflow} rights but received only {inflow}"
                ));
            }
        }
        Ok(())
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
        crate::causal::testkit::config(0x6573_6372)
    }

    /// One scripted operation: (replica, kind, amount, transfer target).
    /// Kinds: 0 increment, 1 decrement, 2 transfer; 3 is an overdraft,
    /// used only by the planted-violation test.
    type Op = (usize, u8, u64, usize);

    fn script() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec((0usize..5, 0u8..3, 0u64..20, 0usize..5), 0..40)
    }

    /// Checks the bound in every replica's view, and that every view is a
    /// state `validate` accepts (no node's rights negative).
    fn check_floor<const L: i64>(run: &Convergence<BoundedCounter<L>>) -> Result<(), String> {
        for i in 0..run.len() {
            let view = run.replica(i);
            if view.value() < i128::from(L) {
                return Err(format!(
                    "replica {i} reads {} below the bound {L}: {view:?}",
                    view.value()
                ));
            }
            view.validate()
                .map_err(|e| format!("replica {i} holds an invalid state: {e}"))?;
        }
        Ok(())
    }

    /// A decrement that skips the rights check: the planted violation.
    fn overdraw<const L: i64>(
        state: &BoundedCounter<L>,
        node: NodeId,
        n: u64,
    ) -> BoundedCounter<L> {
        let mut row = state.rows.get(&node).cloned().unwrap_or_default();
        row.used += n;
        state.closure_with(node, row)
    }

    fn op_delta<const L: i64>(
        s: &BoundedCounter<L>,
        at: usize,
        (_, kind, n, to): Op,
    ) -> Option<BoundedCounter<L>> {
        let node = NodeId(at as u64);
        match kind {
            0 => s.increment(node, n).ok(),
            1 => s.decrement(node, n).ok(),
            2 => s.transfer(node, NodeId(to as u64), n).ok(),
            _ => Some(overdraw(s, node, n.max(1))),
        }
    }

    /// Runs `ops`, checking the bound after every applied operation. Returns
    /// the run and `LOWER` + acknowledged increments − acknowledged
    /// decrements, or the first floor violation.
    fn run_checked<const L: i64>(
        replicas: usize,
        seed: u64,
        ops: &[Op],
    ) -> Result<(Convergence<BoundedCounter<L>>, i128), String> {
        let mut run =
            Convergence::<BoundedCounter<L>>::new(replicas, seed, NetworkFaults::default());
        let mut expected = i128::from(L);
        for &op in ops {
            let (_, kind, n, _) = op;
            if run.apply(op.0, |s, at| op_delta(s, at, op)) {
                expected += match kind {
                    0 => i128::from(n),
                    1 => -i128::from(n),
                    _ => 0,
                };
            }
            check_floor(&run)?;
        }
        Ok((run, expected))
    }

    proptest! {
        #![proptest_config(law_config())]

        // Delta-state CRDTs (Almeida et al.) §3: join is a semilattice join.
        #[test]
        fn bounded_join_is_a_semilattice_join(seed: u64, ops in script()) {
            let (run, _) = run_checked::<0>(3, seed, &ops).map_err(TestCaseError::fail)?;
            prop_assert_eq!(check_join_laws(run.replica(0), run.replica(1), run.replica(2)), Ok(()));
        }

        // Delta-state CRDTs §4: every mutator's delta joins into any state,
        // and every reachable state passes decode validation.
        #[test]
        fn bounded_deltas_are_joins(seed: u64, ops in script(), (kind, n, to) in (0u8..3, 0u64..20, 0usize..5)) {
            let (run, _) = run_checked::<0>(3, seed, &ops).map_err(TestCaseError::fail)?;
            if let Some(delta) = op_delta(run.replica(1), 1, (1, kind, n, to)) {
                prop_assert_eq!(check_delta_is_join(run.replica(0), &delta), Ok(()));
                prop_assert_eq!(check_delta_is_join(&delta, run.replica(2)), Ok(()));
            }
        }

        // Balegas et al. §3: the invariant holds in every replica's view at
        // every step, and the converged value is LOWER + acknowledged
        // increments − acknowledged decrements (none lost, none invented).
        #[test]
        fn bounded_counter_never_reads_below_its_bound(
            replicas in 3usize..=5, seed: u64, ops in script(),
        ) {
            let (run, expected) = run_checked::<0>(replicas, seed, &ops).map_err(TestCaseError::fail)?;
            let settled = run.settle();
            prop_assert_eq!(check_converged(&settled), Ok(()));
            prop_assert_eq!(settled[0].value(), expected);
            for view in &settled {
                prop_assert_eq!(view.validate(), Ok(()));
            }
        }

        #[test]
        fn a_negative_bound_is_kept_the_same_way(replicas in 3usize..=5, seed: u64, ops in script()) {
            let (run, expected) = run_checked::<-7>(replicas, seed, &ops).map_err(TestCaseError::fail)?;
            let settled = run.settle();
            prop_assert_eq!(check_converged(&settled), Ok(()));
            prop_assert_eq!(settled[0].value(), expected);
        }
    }

    #[test]
    fn planted_overdraft_is_caught_by_the_floor_check() {
        let ops = [(0, 0, 5, 0), (0, 3, 6, 0)];
        let err = run_checked::<0>(3, 1, &ops)
            .err()
            .expect("an overdraft breaks the bound");
        assert!(err.contains("below the bound"), "{err}");
        // The same overdraft, off by one: in rights, so accepted.
        assert!(run_checked::<0>(3, 1, &[(0, 0, 5, 0), (0, 1, 5, 0)]).is_ok());
    }

    #[test]
    fn decrement_beyond_rights_is_refused_with_a_typed_error() {
        let (n1, n2) = (NodeId(1), NodeId(2));
        let mut state = BoundedCounter::<0>::new();
        state.apply_delta(&state.increment(n1, 3).unwrap());
        assert_eq!(
            state.decrement(n1, 4),
            Err(BoundedCounterError::InsufficientRights {
                available: 3,
                requested: 4
            })
        );
        assert_eq!(
            state.transfer(n1, n2, 4),
            Err(BoundedCounterError::InsufficientRights {
                available: 3,
                requested: 4
            })
        );
        assert_eq!(
            state.transfer(n1, n1, 1),
            Err(BoundedCounterError::TransferToSelf { node: n1 })
        );
        let message = state.decrement(n2, 1).unwrap_err().to_string();
        assert!(
            message.contains("transferred from another replica"),
            "{message}"
        );
    }

    #[test]
    fn decrement_delta_carries_the_rights_it_spends() {
        // Balegas et al.: a replica that learns of a spend must also learn of
        // the rights behind it, or it would read below the bound.
        let (n0, n1, n2) = (NodeId(0), NodeId(1), NodeId(2));
        let mut origin = BoundedCounter::<0>::new();
        origin.apply_delta(&origin.increment(n0, 5).unwrap());
        let transfer = origin.transfer(n0, n1, 5).unwrap();
        let mut spender = BoundedCounter::<0>::new();
        spender.apply_delta(&transfer);
        assert_eq!(spender.rights(n1), 5);
        let spend = spender.decrement(n1, 5).unwrap();
        // A third node that sees only the spend reads exactly the bound.
        let mut bystander = BoundedCounter::<0>::new();
        bystander.apply_delta(&spend);
        assert_eq!((bystander.value(), bystander.validate()), (0, Ok(())));
        // An increment elsewhere is not part of the closure.
        origin.apply_delta(&origin.increment(n2, 1).unwrap());
        assert!(!origin.transfer(n0, n1, 1).unwrap().rows.contains_key(&n2));
    }

    #[test]
    fn decode_rejects_states_with_negative_rights() {
        let overdrawn = BoundedCounter::<0> {
            rows: BTreeMap::from([(
                NodeId(1),
                Row {
                    increments: 2,
                    used: 3,
                    ..Row::default()
                },
            )]),
        };
        let given_away = BoundedCounter::<0> {
            rows: BTreeMap::from([(
                NodeId(1),
                Row {
                    transfers: BTreeMap::from([(NodeId(2), 1)]),
                    ..Row::default()
                },
            )]),
        };
        for state in [overdrawn, given_away] {
            let err = BoundedCounter::<0>::decode(&state.encode());
            assert!(
                matches!(err, Err(calm_types::codec::DecodeError::Invalid(ref e)) if e.contains("spends")),
                "{err:?}"
            );
        }
        let empty_row = BoundedCounter::<0> {
            rows: BTreeMap::from([(NodeId(1), Row::default())]),
        };
        assert!(BoundedCounter::<0>::decode(&empty_row.encode()).is_err());
    }

    #[test]
    fn huge_decoded_entries_refuse_mutations_instead_of_panicking() {
        let (n1, n2) = (NodeId(1), NodeId(2));
        let full = Row {
            increments: u64::MAX,
            ..Row::default()
        };
        let giver = Row {
            increments: u64::MAX,
            transfers: BTreeMap::from([(n1, u64::MAX)]),
            used: 0,
        };
        let state = BoundedCounter::<0> {
            rows: BTreeMap::from([(n1, full), (n2, giver)]),
        };
        let state = BoundedCounter::<0>::decode(&state.encode()).expect("rights are non-negative");
        assert_eq!(
            state.increment(n1, 1),
            Err(BoundedCounterError::Overflow { node: n1 })
        );
        assert_eq!(state.rights(n1), u64::MAX);
        let spent = state.decrement(n1, u64::MAX).expect("within rights");
        let mut state = state;
        state.apply_delta(&spent);
        assert_eq!(
            state.decrement(n1, u64::MAX),
            Err(BoundedCounterError::Overflow { node: n1 })
        );
        assert_eq!(state.value(), i128::from(u64::MAX));
    }
}
