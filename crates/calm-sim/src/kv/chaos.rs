//! A seeded schedule of faults for the KV levels: rounds of client
//! traffic, each followed by one nemesis (a node cut off, a random split, a
//! one-way block, a minority crashed between or inside turns, a pause),
//! usually repaired before the next round; then everything is repaired and
//! the cluster settles.

use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::cluster::{KvSim, violation};

/// Client traffic before the first nemesis, in ms.
const WARM_UP_MS: u64 = 200;
/// Client traffic after the final repair, in ms: reads that must see every
/// write acknowledged before them, and writes that meet the repaired state.
const AFTERMATH_MS: u64 = 500;
/// Virtual time `settle` may take at the end, in ms.
const SETTLE_BUDGET_MS: u64 = 30_000;
/// Mixed into the seed for the schedule's own RNG, so that the schedule
/// does not shift when the simulation draws differently.
const NEMESIS_SEED_SALT: u64 = 0x6b76_6e65_6d65_7369; // "kvnemesi"

/// Which nemesis follows a round of traffic.
#[derive(Clone, Copy, Debug)]
enum Nemesis {
    IsolateOne,
    SplitRandomly,
    BlockOneWay,
    CrashMinority,
    PauseAny,
    Calm,
}

impl KvSim {
    /// Runs `rounds` rounds of traffic and faults from the seed's schedule,
    /// then heals, restarts every node, runs more traffic and settles.
    /// Returns whether the cluster got quiet; run the checkers next.
    pub fn run_chaos(&mut self, rounds: usize) -> bool {
        let mut nemesis = StdRng::seed_from_u64(self.config.seed ^ NEMESIS_SEED_SALT);
        self.run_workload(WARM_UP_MS);
        for _ in 0..rounds {
            self.run_workload(nemesis.random_range(100..600));
            let choice = pick(&mut nemesis);
            self.unleash(choice, &mut nemesis);
        }
        self.heal();
        self.repair();
        self.run_workload(AFTERMATH_MS);
        self.settle(SETTLE_BUDGET_MS)
    }

    fn unleash(&mut self, nemesis: Nemesis, rng: &mut StdRng) {
        let lasting_ms = rng.random_range(200..1_500);
        // Most faults are repaired before the next round; some linger and
        // overlap with the next one.
        let repair = rng.random_bool(0.75);
        let nodes = self.node_ids();
        let any = nodes[rng.random_range(0..nodes.len())];
        match nemesis {
            Nemesis::IsolateOne => {
                let rest: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != any).collect();
                let _ = self.partition(&[&[any], &rest]);
            }
            Nemesis::SplitRandomly => {
                let (left, right): (Vec<NodeId>, Vec<NodeId>) =
                    nodes.iter().partition(|_| rng.random_bool(0.5));
                let _ = self.partition(&[&left, &right]);
            }
            Nemesis::BlockOneWay => {
                let other = nodes[rng.random_range(0..nodes.len())];
                if other != any {
                    let _ = self.block(any, other);
                }
            }
            Nemesis::CrashMinority => {
                // At most a minority of the cluster, between turns (keeping
                // none or some unsynced batches) or inside a turn.
                let minority = (nodes.len() - 1) / 2;
                let down = nodes.iter().filter(|&&n| !self.is_up(n)).count();
                let count = rng.random_range(1..=minority.max(1));
                for _ in 0..count.min(minority.saturating_sub(down)) {
                    let victim = nodes[rng.random_range(0..nodes.len())];
                    let _ = match rng.random_range(0..3) {
                        0 => self.crash(victim),
                        1 => self.crash_keeping_random_prefix(victim),
                        _ => self.crash_in_turn(victim),
                    };
                }
            }
            Nemesis::PauseAny => {
                let _ = self.pause(any, lasting_ms);
            }
            Nemesis::Calm => {}
        }
        self.run_workload(lasting_ms);
        if repair {
            self.heal();
            self.repair();
        }
    }

    /// Restarts every crashed node; a store that cannot reopen its disk is
    /// a violation.
    fn repair(&mut self) {
        if let Err(error) = self.restart_all() {
            let detail = format!("a restart failed: {error}");
            self.seen
                .push(violation(self.config.seed, "restart", detail));
        }
    }
}

fn pick(rng: &mut StdRng) -> Nemesis {
    match rng.random_range(0..100) {
        0..20 => Nemesis::IsolateOne,
        20..35 => Nemesis::SplitRandomly,
        35..50 => Nemesis::BlockOneWay,
        50..80 => Nemesis::CrashMinority,
        80..92 => Nemesis::PauseAny,
        _ => Nemesis::Calm,
    }
}
