//! Checkers: convergence, no acknowledged increment lost, bounded counters
//! (never below the bound, none lost, none applied twice), reads at a
//! quorum level that see every acknowledged increment, membership
//! agreement; and `settle`, the run to quiescence they expect first.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use calm_membership::MemberState;
use calm_replica::Value;

use crate::bounded::{self, view_breach};
use crate::quorum::{self, replicas_needed};
use crate::sim::{Simulation, node_id};

/// How often `settle` looks for quiescence, in ms of virtual time.
const SETTLE_STEP_MS: u64 = 100;

/// A broken property, with the seed that replays it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed}: {checker} violated: {detail}")]
pub struct Violation {
    /// The simulation's seed: rerun with it to replay the failure.
    pub seed: u64,
    /// Which checker failed.
    pub checker: &'static str,
    /// What it saw.
    pub detail: String,
}

impl Simulation {
    fn violation(&self, checker: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.config.seed,
            checker,
            detail,
        }
    }

    /// Stops the workload and runs until the cluster is quiet or
    /// `budget_ms` of virtual time have passed: every running node sees
    /// every other running node alive, no replication message is in flight,
    /// and no pair of connected nodes has anything left for anti-entropy to
    /// repair. Returns whether it got quiet; the checkers say what is wrong
    /// if not. Heal first: a cut link never gets quiet.
    pub fn settle(&mut self, budget_ms: u64) -> bool {
        let deadline_ms = self.now_ms().saturating_add(budget_ms);
        self.stop_workload();
        loop {
            if self.check_membership().is_ok()
                && !self.replica_traffic_pending()
                && self.differences() == 0
            {
                return true;
            }
            if self.now_ms() >= deadline_ms {
                return false;
            }
            self.run_for(SETTLE_STEP_MS);
        }
    }

    /// Convergence: every natural owner of every workload key is running
    /// and holds the same value.
    pub fn check_convergence(&self) -> Result<(), Violation> {
        for key in self.workload_keys() {
            let mut values: Vec<(u64, Value)> = Vec::new();
            for owner in self.owners(&key) {
                let Some(value) = self.peek(owner, &key) else {
                    let detail = format!("owner {owner} of {} is down", show(&key));
                    return Err(self.violation("convergence", detail));
                };
                values.push((owner.0, comparable(value)));
            }
            if values.windows(2).any(|w| w[0].1 != w[1].1) {
                let mut detail = format!("replicas of {} differ:", show(&key));
                for (node, value) in &values {
                    let _ = write!(detail, " n{node}={value:?}");
                }
                return Err(self.violation("convergence", detail));
            }
        }
        Ok(())
    }

    /// No acknowledged increment lost (and none invented): for every counter
    /// key, each running owner's value lies between the sum of acknowledged
    /// increments and that sum plus the increments never answered (less the
    /// acknowledged decrements, and widened by the unanswered ones, for
    /// decrements [`submit`](Self::submit)ted by a test). At a quorum level
    /// this is also the level's durability: a crash loses only unsynced
    /// writes, and an increment is acknowledged only once `w` owners
    /// synced it, while one answered `WriteInDoubt` counts as unanswered.
    pub fn check_no_lost_increments(&self) -> Result<(), Violation> {
        let counters = self
            .workload_keys()
            .into_iter()
            .take(self.config.counter_keys);
        for key in counters {
            let (allowed, told) = self.allowed_values(&key);
            for owner in self.owners(&key) {
                let value = match self.peek(owner, &key) {
                    None => continue,
                    Some(Value::Absent) => 0,
                    Some(Value::Counter(value)) => value,
                    Some(other) => {
                        let detail = format!("{} at {owner} is {other:?}", show(&key));
                        return Err(self.violation("no lost increment", detail));
                    }
                };
                if !allowed.contains(&value) {
                    let detail = format!("{} at {owner} is {value}; {told}", show(&key));
                    return Err(self.violation("no lost increment", detail));
                }
            }
        }
        Ok(())
    }

    /// Bounded counters, the escrow's promise (Balegas et al., SRDS 2015):
    ///
    /// * at every step of the run, no replica's view of a bounded counter
    ///   read below its bound (0), and each view's value equalled the sum of
    ///   every node's rights in it (no node's rights overdrawn); the
    ///   simulator checks each view an event changes, so this reports the
    ///   first breach, with its time;
    /// * now, for every bounded key, each running owner's value lies within
    ///   `acked_up − acked_down − in_doubt_down ..= acked_up + in_doubt_up −
    ///   acked_down`: no acknowledged increment or decrement lost, none
    ///   applied twice, only unanswered ones undecided. A refused decrement
    ///   (the replica answered with an error) counts nowhere, and transfers
    ///   move rights, never the value.
    ///
    /// The end-state half expects a heal and [`settle`](Self::settle) first.
    pub fn check_bounded_counters(&self) -> Result<(), Violation> {
        if let Some(breach) = &self.bound_breach {
            return Err(breach.clone());
        }
        for key in self.bounded_keys() {
            let (allowed, told) = self.allowed_values(&key);
            for owner in self.owners(&key) {
                let Some(value) = self.peek(owner, &key) else {
                    continue;
                };
                let at = format!("{} at {owner}", show(&key));
                if let Some(breach) = view_breach(&value) {
                    return Err(self.violation(bounded::CHECKER, format!("{at}: {breach}")));
                }
                let value = match value {
                    Value::BoundedCounter { value, .. } => value,
                    _ => 0,
                };
                if !allowed.contains(&value) {
                    let detail = format!("{at} is {value}; {told}");
                    return Err(self.violation(bounded::CHECKER, detail));
                }
            }
        }
        Ok(())
    }

    /// Recency of reads at [`SimConfig::level`](crate::SimConfig::level),
    /// the promise of `r + w > n` (Gifford, SOSP 1979; Dynamo §4.5): every
    /// counter read at the level that succeeded returned at least the
    /// increments acknowledged to a client before the read was submitted
    /// (less the decrements that may have landed by its answer). Reports
    /// the first stale read, with the times it was submitted and answered.
    ///
    /// At `one` with `n > 1` (or at `local`) the levels promise no such
    /// thing, so the check passes; [`SimStats::stale_reads`](crate::SimStats)
    /// still counts the stale reads. Unlike the end-state checkers it needs
    /// no settle: each read is judged when its answer arrives.
    pub fn check_quorum_reads(&self) -> Result<(), Violation> {
        let Some(level) = self.config.level else {
            return Ok(());
        };
        let n = self.config.replication_factor;
        let needed = replicas_needed(level, n);
        if needed + needed <= n {
            return Ok(());
        }
        match &self.quorum_reads.first_stale {
            Some(detail) => Err(self.violation(quorum::CHECKER, detail.clone())),
            None => Ok(()),
        }
    }

    /// Membership agreement: every running node sees every other running
    /// node alive, in its current generation.
    pub fn check_membership(&self) -> Result<(), Violation> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].live.is_some())
            .collect();
        for &viewer in &running {
            let Some(live) = self.nodes[viewer].live.as_ref() else {
                continue;
            };
            let members = live.membership.members();
            for &subject in running.iter().filter(|&&s| s != viewer) {
                let Some(identity) = self.nodes[subject]
                    .live
                    .as_ref()
                    .map(|l| l.membership.identity().clone())
                else {
                    continue;
                };
                let agrees = members
                    .iter()
                    .any(|row| row.peer == identity && row.state == MemberState::Alive);
                if !agrees {
                    let row = members.iter().find(|r| r.peer.node == identity.node);
                    let detail = format!(
                        "{} sees {} (generation {}) as {:?}",
                        node_id(viewer),
                        identity.node,
                        identity.generation,
                        row.map(|r| (r.state, r.peer.generation))
                    );
                    return Err(self.violation("membership agreement", detail));
                }
            }
        }
        Ok(())
    }

    /// Every checker, in order: membership, convergence, no lost increment,
    /// bounded counters, quorum reads.
    pub fn check_all(&self) -> Result<(), Violation> {
        self.check_membership()?;
        self.check_convergence()?;
        self.check_no_lost_increments()?;
        self.check_bounded_counters()?;
        self.check_quorum_reads()
    }

    /// Increments acknowledged to clients so far, over every key.
    pub fn acknowledged_increments(&self) -> u64 {
        self.ledger.acked_total()
    }

    /// The values a counter `key` may hold by what its clients were told:
    /// acknowledged increments minus acknowledged decrements, widened by
    /// the unanswered ones, each of which may or may not have landed; and
    /// that tally in words, for a violation.
    fn allowed_values(&self, key: &[u8]) -> (RangeInclusive<i128>, String) {
        let (acked, doubt) = (self.ledger.acked(key), self.ledger.in_doubt(key));
        let net = i128::from(acked.up) - i128::from(acked.down);
        let allowed = net - i128::from(doubt.down)..=net + i128::from(doubt.up);
        let told = format!(
            "acknowledged +{} -{}, in doubt +{} -{}",
            acked.up, acked.down, doubt.up, doubt.down
        );
        (allowed, told)
    }
}

/// What replicas must agree on: a bounded counter's read carries the
/// answering node's own rights, which differ between converged replicas,
/// so only the value and the rights of every node are compared.
fn comparable(value: Value) -> Value {
    match value {
        Value::BoundedCounter { value, rights, .. } => Value::BoundedCounter {
            value,
            local_rights: 0,
            rights,
        },
        other => other,
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
