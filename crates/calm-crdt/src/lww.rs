//! LWW-Register: the write with the greatest hybrid-logical-clock stamp wins.
//!
//! Writes are ordered by `(HlcTimestamp, NodeId)` (see
//! [`HlcTimestamp::tiebreak`]), never by raw wall-clock time: an HLC reading
//! already folds in every timestamp its node has seen, so a write issued after
//! observing another is ordered after it even when the physical clocks
//! disagree.

use std::cmp::Ordering;
use std::fmt::Debug;

use calm_clock::HlcTimestamp;
use calm_types::NodeId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::DeltaCrdt;

/// A last-writer-wins register. The bottom state holds no value.
///
/// Two writes with the same `(timestamp, node)` and different values can
/// only come from a node reusing an HLC reading, which a correct clock never
/// does; the value's own order then breaks the tie, so that join stays
/// commutative even for such states (hence `T: Ord`).
///
/// ```
/// use calm_clock::HlcTimestamp;
/// use calm_crdt::{DeltaCrdt, LwwRegister};
/// use calm_types::NodeId;
///
/// let mut a = LwwRegister::default();
/// let mut b = LwwRegister::default();
/// let first = a.write(NodeId(1), HlcTimestamp::new(1_000, 0), "first".to_string());
/// // Same physical millisecond, higher logical counter: ordered later.
/// let second = b.write(NodeId(2), HlcTimestamp::new(1_000, 1), "second".to_string());
/// a.apply_delta(&first);
/// b.apply_delta(&second);
/// a.join(&b);
/// b.join(&a);
/// assert_eq!(a, b);
/// assert_eq!(a.current().map(String::as_str), Some("second"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    /// The winning write so far; `None` is bottom.
    winner: Option<Write<T>>,
}

/// One write: its stamp, its writer and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Write<T> {
    timestamp: HlcTimestamp,
    node: NodeId,
    value: T,
}

impl<T: Ord> Write<T> {
    /// The total order of writes: `(timestamp, node)`, then the value.
    fn order(&self, other: &Self) -> Ordering {
        let key = self.timestamp.tiebreak(self.node);
        key.cmp(&other.timestamp.tiebreak(other.node))
            .then_with(|| self.value.cmp(&other.value))
    }
}

impl<T> Default for LwwRegister<T> {
    // Written by hand because the derive would demand `T: Default`.
    fn default() -> Self {
        Self { winner: None }
    }
}

impl<T: Ord + Clone> LwwRegister<T> {
    /// An empty register (the bottom state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta that writes `value` at `timestamp` on behalf of `node`: a
    /// register holding just that write.
    ///
    /// `timestamp` should come from `node`'s HLC after it has observed
    /// [`stamp`](Self::stamp); a write ordered below the current one is
    /// still a valid delta, but it loses, exactly as it would had the two
    /// writes been concurrent on different nodes.
    pub fn write(&self, node: NodeId, timestamp: HlcTimestamp, value: T) -> Self {
        Self {
            winner: Some(Write {
                timestamp,
                node,
                value,
            }),
        }
    }

    /// The current value, borrowed; `None` before any write.
    pub fn current(&self) -> Option<&T> {
        self.winner.as_ref().map(|w| &w.value)
    }

    /// The `(timestamp, node)` of the current value, for the writer's HLC to
    /// observe before its next write.
    pub fn stamp(&self) -> Option<(HlcTimestamp, NodeId)> {
        self.winner.as_ref().map(|w| w.timestamp.tiebreak(w.node))
    }
}

impl<T> DeltaCrdt for LwwRegister<T>
where
    T: Ord + Clone + Debug + Serialize + DeserializeOwned,
{
    /// The winning write's value; `None` before any write.
    type Value = Option<T>;

    fn value(&self) -> Option<T> {
        self.current().cloned()
    }

    fn join(&mut self, other: &Self) {
        let Some(theirs) = &other.winner else { return };
        let replace = match &self.winner {
            None => true,
            Some(ours) => theirs.order(ours) == Ordering::Greater,
        };
        if replace {
            self.winner = Some(theirs.clone());
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
        crate::causal::testkit::config(0x6c77_7772)
    }

    /// One scripted write: (replica, physical ms, logical, value). Narrow
    /// ranges make equal timestamps, and so node tiebreaks, common.
    type Op = (usize, u64, u32, u8);

    fn script() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec((0usize..5, 0u64..4, 0u32..3, any::<u8>()), 0..30)
    }

    /// The greatest write seen so far, as `((timestamp, node), value)`.
    type Greatest = Option<((HlcTimestamp, NodeId), u8)>;

    /// Runs `ops`; returns the run and the greatest acknowledged write.
    fn run_writes(
        replicas: usize,
        seed: u64,
        ops: &[Op],
    ) -> (Convergence<LwwRegister<u8>>, Greatest) {
        let mut run = Convergence::<LwwRegister<u8>>::new(replicas, seed, NetworkFaults::default());
        let mut greatest = None;
        for &(at, ms, logical, value) in ops {
            let timestamp = HlcTimestamp::new(ms, logical);
            let node = NodeId((at % replicas) as u64);
            run.apply(at, |s, _| Some(s.write(node, timestamp, value)));
            greatest = greatest.max(Some((timestamp.tiebreak(node), value)));
        }
        (run, greatest)
    }

    proptest! {
        #![proptest_config(law_config())]

        // Delta-state CRDTs (Almeida et al.) §3: join is a semilattice join.
        #[test]
        fn lww_join_is_a_semilattice_join(seed: u64, ops in script()) {
            let (run, _) = run_writes(3, seed, &ops);
            prop_assert_eq!(check_join_laws(run.replica(0), run.replica(1), run.replica(2)), Ok(()));
        }

        // Delta-state CRDTs §4: a delta mutator's result joins into any state.
        #[test]
        fn lww_write_deltas_are_joins(seed: u64, ops in script(), (ms, logical, v) in (0u64..4, 0u32..3, any::<u8>())) {
            let (run, _) = run_writes(3, seed, &ops);
            let delta = run.replica(1).write(NodeId(1), HlcTimestamp::new(ms, logical), v);
            prop_assert_eq!(check_delta_is_join(run.replica(0), &delta), Ok(()));
        }

        // Sequential specification: every replica ends on the acknowledged
        // write with the greatest (timestamp, node).
        #[test]
        fn lww_converges_to_the_greatest_stamped_write(
            replicas in 3usize..=5, seed: u64, ops in script(),
        ) {
            let (run, greatest) = run_writes(replicas, seed, &ops);
            let settled = run.settle();
            prop_assert_eq!(check_converged(&settled), Ok(()));
            prop_assert_eq!(settled[0].stamp(), greatest.map(|(stamp, _)| stamp));
            prop_assert_eq!(settled[0].value(), greatest.map(|(_, v)| v));
        }
    }

    #[test]
    fn later_hlc_wins_even_within_one_physical_millisecond() {
        let mut reg = LwwRegister::new();
        reg.join(&reg.write(NodeId(9), HlcTimestamp::new(5, 1), 'b'));
        reg.join(&reg.write(NodeId(1), HlcTimestamp::new(5, 0), 'a'));
        assert_eq!(reg.value(), Some('b'));
    }

    #[test]
    fn equal_timestamps_are_broken_by_node_id() {
        // HlcTimestamp::tiebreak: (timestamp, node) is the total order.
        let at = HlcTimestamp::new(7, 0);
        let (mut left, mut right) = (LwwRegister::new(), LwwRegister::new());
        let low = left.write(NodeId(1), at, 200u8);
        let high = right.write(NodeId(2), at, 100u8);
        left.join(&low);
        left.join(&high);
        right.join(&high);
        right.join(&low);
        assert_eq!((left.value(), right.value()), (Some(100), Some(100)));
        assert_eq!(left.stamp(), Some((at, NodeId(2))));
    }

    #[test]
    fn bottom_holds_no_value() {
        let reg = LwwRegister::<String>::default();
        assert_eq!((reg.value(), reg.stamp()), (None, None));
    }

    /// A deliberately broken register whose join keeps whichever write
    /// arrives last, as if ordered by arrival time.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct LastArrivalWins(LwwRegister<u8>);

    impl DeltaCrdt for LastArrivalWins {
        type Value = Option<u8>;
        fn value(&self) -> Option<u8> {
            self.0.value()
        }
        fn join(&mut self, other: &Self) {
            if other.0.winner.is_some() {
                self.0 = other.0.clone();
            }
        }
    }

    #[test]
    fn planted_arrival_order_join_fails_the_law_check() {
        let a = LastArrivalWins(LwwRegister::new().write(NodeId(1), HlcTimestamp::new(1, 0), 1));
        let b = LastArrivalWins(LwwRegister::new().write(NodeId(2), HlcTimestamp::new(2, 0), 2));
        assert!(check_join_laws(&a, &b, &b).is_err_and(|e| e.contains("commutative")));
    }
}
