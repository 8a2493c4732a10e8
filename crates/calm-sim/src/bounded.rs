//! Bounded counters in the simulation: the workload's choice of escrow
//! operation, the per-step check of every replica view the simulator
//! changes, and the planted bug that spends rights from a stale view.

use calm_replica::{Message, Object, Operation, Value};
use calm_types::NodeId;
use rand::RngExt;

use crate::check::Violation;
use crate::ledger::Change;
use crate::sim::{INCREMENT_MAX, Simulation, node_id};

/// The bound no replica's view of a bounded counter may drop below: the
/// replica's bounded counters are calm-crdt's `BoundedCounter<0>`.
pub(crate) const BOUNDED_COUNTER_FLOOR: i128 = 0;

/// The checker's name in its violations.
pub(crate) const CHECKER: &str = "bounded counter";

/// What is wrong with one replica's view of a bounded counter, if anything:
/// a value below the floor, or a value other than the sum of every node's
/// rights. The escrow keeps the two equal because each transfer moves
/// rights without changing the value; a view where they differ has some
/// node's rights overdrawn (read as zero), which is a double spend even
/// while the value is still above the floor.
pub(crate) fn view_breach(value: &Value) -> Option<String> {
    match value {
        Value::Absent => None,
        Value::BoundedCounter { value, rights, .. } => {
            let held: i128 = rights.values().map(|&r| i128::from(r)).sum();
            if *value < BOUNDED_COUNTER_FLOOR {
                Some(format!(
                    "value {value} is below the bound {BOUNDED_COUNTER_FLOOR}"
                ))
            } else if *value != held {
                Some(format!(
                    "value {value} differs from the {held} rights the nodes hold {rights:?}: \
                     some node's rights are overdrawn"
                ))
            } else {
                None
            }
        }
        other => Some(format!("holds {other:?}, not a bounded counter")),
    }
}

impl Simulation {
    /// The workload's operation on a bounded counter at `target`, one of
    /// the key's natural `owners`: an increment, a decrement of up to
    /// `INCREMENT_MAX` (refused when `target` holds fewer rights), or a
    /// transfer of rights to another owner (refused likewise). Increments
    /// and decrements are equally likely, so values wander near the bound
    /// and refusals are common.
    pub(crate) fn bounded_op(&mut self, target: NodeId, owners: &[NodeId]) -> Operation {
        let amount = self.rng.random_range(1..=INCREMENT_MAX);
        let others: Vec<NodeId> = owners.iter().copied().filter(|&o| o != target).collect();
        match self.rng.random_range(0..10) {
            0..4 => Operation::BoundedIncrement(amount),
            4..8 => Operation::BoundedDecrement(amount),
            _ if others.is_empty() => Operation::BoundedIncrement(amount),
            _ => {
                let to = others[self.rng.random_range(0..others.len())];
                Operation::BoundedTransfer { to, amount }
            }
        }
    }

    /// The per-step half of `check_bounded_counters`: checks node `index`'s
    /// view of every bounded key and keeps the first breach. The simulator
    /// calls it after every event that can change a replica (a replication
    /// message delivered, a client request, a restart from disk); no other
    /// event does, so every view any replica ever holds is checked.
    pub(crate) fn check_bounds_at(&mut self, index: usize) {
        if self.bound_breach.is_some() {
            return;
        }
        let Some(live) = self.nodes[index].live.as_ref() else {
            return;
        };
        for key in self.bounded_keys() {
            if let Some(breach) = view_breach(&live.replica.peek(&key)) {
                let detail = format!(
                    "at {} ms, {} at {}: {breach}",
                    self.now_ms(),
                    String::from_utf8_lossy(&key),
                    node_id(index)
                );
                self.bound_breach = Some(Violation {
                    seed: self.config.seed,
                    checker: CHECKER,
                    detail,
                });
                return;
            }
        }
    }

    /// The planted `DecrementFromStaleRights` bug: decrements `amount` from
    /// the node's counter as frozen at its first decrement of `key`, joins
    /// the result into the node's replica as if it were a repair, and
    /// counts the decrement acknowledged. A refusal by the frozen view is
    /// counted like the replica's.
    pub(crate) fn decrement_from_stale_rights(&mut self, index: usize, key: Vec<u8>, amount: u64) {
        let now = self.now_ms();
        let me = node_id(index);
        let Some(live) = self.nodes[index].live.as_mut() else {
            return;
        };
        // The node's own state transfer is the frame the forged state
        // travels in: a clock and frontier the node accepts from itself.
        let Some(Ok(Message::State(mut state))) = live
            .replica
            .state_transfer(&key, now)
            .map(|bytes| Message::decode(&bytes))
        else {
            self.stats.rights_refused += 1;
            return;
        };
        let fork = self
            .forks
            .entry((index, key.clone()))
            .or_insert_with(|| state.object.clone());
        let Object::BoundedCounter(counter) = &*fork else {
            return;
        };
        let Ok(delta) = counter.decrement(me, amount) else {
            self.stats.rights_refused += 1;
            return;
        };
        fork.join(&Object::BoundedCounter(delta));
        state.object = fork.clone();
        if live
            .replica
            .step(&Message::State(state).encode(), now)
            .is_err()
        {
            self.stats.replica_errors += 1;
        }
        self.ledger.acknowledge_at_once(key, Change::Down(amount));
        self.drain(index);
    }
}
