//! A seeded schedule of faults: rounds of client traffic, each followed by
//! one nemesis (a partition, a crash, a power failure, a pause, a clock
//! jump, a leadership transfer, a membership change), usually repaired
//! before the next round; then everything is repaired, learners are
//! promoted back, and the cluster settles.

use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::cluster::KeyspaceSim;
use super::node::TurnStage;

/// Virtual time a fresh cluster gets to elect its first leader, in ms.
const WARM_UP_MS: u64 = 500;
/// Client traffic after the final repair, in ms: reads that must see every
/// write acknowledged before it.
const AFTERMATH_MS: u64 = 1_000;
/// Virtual time `settle` may take at the end, in ms.
const SETTLE_BUDGET_MS: u64 = 30_000;
/// How often, and how far apart, the end of a run asks for the learners'
/// promotion.
const PROMOTE_ATTEMPTS: usize = 20;
const PROMOTE_RETRY_MS: u64 = 500;
/// Leases are abandoned at random within this many ms per round.
const LEASE_HORIZON_MS_PER_ROUND: u64 = 1_500;
/// Extra healthy time, beyond TTLs and elections, the leases get to
/// expire at the end of a run (revocations are rate-limited and retried).
const LEASE_EXPIRY_SLACK_MS: u64 = 2_000;
/// Mixed into the seed for the schedule's own RNG, so that the schedule
/// does not shift when the cores draw differently from the simulation's.
const NEMESIS_SEED_SALT: u64 = 0x6e65_6d65_7369_7321;

/// Which nemesis follows a round of traffic.
#[derive(Clone, Copy, Debug)]
enum Nemesis {
    IsolateLeader,
    SplitRandomly,
    BlockOneWay,
    CrashLeader,
    CrashAny,
    PowerFailure,
    PauseLeader,
    FreezeLeader,
    PauseAny,
    JumpClock,
    TransferLeadership,
    Reconfigure,
    Calm,
}

impl KeyspaceSim {
    /// Runs `rounds` rounds of traffic and faults from the seed's schedule,
    /// then heals, restarts every node, runs more traffic and settles.
    /// Returns whether the cluster got quiet; run the checkers next.
    pub fn run_chaos(&mut self, rounds: usize) -> bool {
        let mut nemesis = StdRng::seed_from_u64(self.config.seed ^ NEMESIS_SEED_SALT);
        self.run_for(WARM_UP_MS);
        self.start_leases(rounds as u64 * LEASE_HORIZON_MS_PER_ROUND);
        for _ in 0..rounds {
            self.run_workload(nemesis.random_range(100..600));
            let choice = pick(&mut nemesis);
            self.unleash(choice, &mut nemesis);
        }
        self.heal();
        self.restart_all();
        self.run_workload(AFTERMATH_MS);
        // Every demoted voter gets its vote back, so that the cluster ends
        // as it began (a change may be refused while another is in flight,
        // so ask until none is left).
        for _ in 0..PROMOTE_ATTEMPTS {
            if self.promote_learners() && self.learners().is_empty() {
                break;
            }
            self.run_for(PROMOTE_RETRY_MS);
        }
        if self.config.leases > 0 {
            // Healthy for longer than any lease and the extension a new
            // leader grants: every lease must be gone after this.
            self.abandon_leases();
            let election_ms = self.config.tick_ms * self.config.election_ticks as u64;
            self.run_for(self.lease_ttl_ms_max() * 2 + 4 * election_ms + LEASE_EXPIRY_SLACK_MS);
        }
        self.settle(SETTLE_BUDGET_MS)
    }

    fn unleash(&mut self, nemesis: Nemesis, rng: &mut StdRng) {
        let lasting_ms = rng.random_range(200..2_000);
        // Most faults are repaired before the next round; some linger and
        // overlap with the next one.
        let repair = rng.random_bool(0.75);
        let any = self.any_node(rng);
        let leader = self.leader().unwrap_or(any);
        match nemesis {
            Nemesis::IsolateLeader => self.isolate(leader),
            Nemesis::SplitRandomly => self.split_randomly(rng),
            Nemesis::BlockOneWay => {
                let (from, to) = if rng.random_bool(0.5) {
                    (leader, any)
                } else {
                    (any, leader)
                };
                if from != to {
                    let _ = self.block(from, to);
                }
            }
            Nemesis::CrashLeader => self.crash_somehow(leader, rng),
            Nemesis::CrashAny => self.crash_somehow(any, rng),
            Nemesis::PowerFailure => self.power_failure(),
            Nemesis::PauseLeader => {
                let _ = self.pause(leader, lasting_ms);
            }
            Nemesis::FreezeLeader => self.freeze(leader, lasting_ms, rng),
            Nemesis::PauseAny => {
                let _ = self.pause(any, lasting_ms);
            }
            Nemesis::JumpClock => {
                let _ = self.jump_clock(any, rng.random_range(100..5_000));
            }
            Nemesis::TransferLeadership => {
                let _ = self.transfer_leadership(any);
            }
            Nemesis::Reconfigure => {
                let _ = self.toggle_voter(any);
            }
            Nemesis::Calm => {}
        }
        self.run_workload(lasting_ms);
        if repair {
            self.heal();
            self.restart_all();
        }
    }

    /// Cuts `node` off from every other node.
    fn isolate(&mut self, node: NodeId) {
        let rest: Vec<NodeId> = self.voters().into_iter().filter(|&n| n != node).collect();
        let _ = self.partition(&[&[node], &rest]);
    }

    /// A frozen VM: `node` is paused and cut off for `lasting_ms`, then
    /// runs again still cut off for a while (so that it learns of no newer
    /// term), then the network heals.
    fn freeze(&mut self, node: NodeId, lasting_ms: u64, rng: &mut StdRng) {
        self.isolate(node);
        let _ = self.pause(node, lasting_ms);
        self.run_workload(lasting_ms);
        self.run_workload(rng.random_range(50..300));
        self.heal();
    }

    /// Splits the voters into two random groups (one may be empty).
    fn split_randomly(&mut self, rng: &mut StdRng) {
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for node in self.voters() {
            if rng.random_bool(0.5) {
                left.push(node);
            } else {
                right.push(node);
            }
        }
        let _ = self.partition(&[&left, &right]);
    }

    /// A crash between turns, keeping none or some unsynced batches, or
    /// inside the next turn.
    fn crash_somehow(&mut self, node: NodeId, rng: &mut StdRng) {
        let _ = match rng.random_range(0..5) {
            0 => self.crash(node),
            1 => self.crash_keeping_random_prefix(node),
            2 => self.crash_in_turn(node, TurnStage::BeforeSync),
            3 => self.crash_in_turn(node, TurnStage::AfterSync),
            _ => self.crash_in_turn(node, TurnStage::AfterApply),
        };
    }

    fn any_node(&self, rng: &mut StdRng) -> NodeId {
        NodeId(rng.random_range(1..=self.nodes.len() as u64))
    }
}

fn pick(rng: &mut StdRng) -> Nemesis {
    match rng.random_range(0..100) {
        0..12 => Nemesis::IsolateLeader,
        12..22 => Nemesis::SplitRandomly,
        22..30 => Nemesis::BlockOneWay,
        30..42 => Nemesis::CrashLeader,
        42..50 => Nemesis::CrashAny,
        50..56 => Nemesis::PowerFailure,
        56..62 => Nemesis::PauseLeader,
        62..68 => Nemesis::FreezeLeader,
        68..72 => Nemesis::PauseAny,
        72..80 => Nemesis::JumpClock,
        80..88 => Nemesis::TransferLeadership,
        88..96 => Nemesis::Reconfigure,
        _ => Nemesis::Calm,
    }
}
