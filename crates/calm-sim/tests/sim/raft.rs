//! The coordinated keyspace under the simulator: histories of etcd requests
//! through leader crashes, an isolated leader, loss, duplication and
//! reordering must stay linearizable; a planted stale-read bug must not.

use calm_sim::linearizability::Verdict;
use calm_sim::raft::{RaftBug, RaftSimConfig, run_seed};

use super::env_number;

fn replay(seed: u64) -> String {
    format!(
        "replay: CALM_RAFT_SIM_SEED={seed} cargo test -p calm-sim --test sim raft::one_raft_seed -- --nocapture"
    )
}

fn check_seed(config: RaftSimConfig) -> Result<(usize, usize), String> {
    let seed = config.seed;
    let sim = run_seed(config);
    let history = sim.history();
    let indeterminate = history.iter().filter(|op| op.ret.is_none()).count();
    match sim.check_linearizable() {
        Verdict::Linearizable => Ok((history.len(), indeterminate)),
        other => Err(format!("seed {seed}: {other}\n{}", replay(seed))),
    }
}

#[test]
fn raft_keyspace_histories_stay_linearizable_across_seeds() {
    // Raft §5 and etcd's API guarantee: every operation appears to take
    // effect at one instant between its call and its return.
    let seeds = env_number("CALM_RAFT_SIM_SEEDS", 1_000);
    let start = env_number("CALM_RAFT_SIM_SEED_START", 0);
    let mut operations = 0;
    for seed in start..start + seeds {
        let mut config = RaftSimConfig::new(seed);
        if seed % 4 == 3 {
            config.nodes = 5;
        }
        let (ops, _) = check_seed(config).unwrap_or_else(|failure| panic!("{failure}"));
        operations += ops;
    }
    assert!(operations > 0, "clients ran");
}

#[test]
fn one_raft_seed() {
    let seed = env_number("CALM_RAFT_SIM_SEED", 1);
    let (ops, indeterminate) =
        check_seed(RaftSimConfig::new(seed)).unwrap_or_else(|failure| panic!("{failure}"));
    println!("seed {seed}: {ops} operations, {indeterminate} indeterminate, linearizable");
}

#[test]
fn one_raft_seed_replays_the_identical_trace() {
    let first = run_seed(RaftSimConfig::new(11));
    let second = run_seed(RaftSimConfig::new(11));
    assert_eq!(first.trace_hash(), second.trace_hash());
    assert_eq!(first.history(), second.history());
}

#[test]
fn reads_served_without_read_index_are_caught_as_stale() {
    // The planted bug: linearizable reads answered from local state. An
    // isolated old leader or a lagging follower then returns stale data,
    // which the checker must reject for some seed.
    let caught = (0..40).any(|seed| {
        let mut config = RaftSimConfig::new(seed);
        config.bug = RaftBug::LocalReads;
        matches!(run_seed(config).check_linearizable(), Verdict::Violation(_))
    });
    assert!(caught, "the checker caught a stale local read");
}

#[test]
fn a_network_that_duplicates_forwarded_proposals_breaks_linearizability() {
    // Why calm's transport must stay at-most-once: Raft does not
    // deduplicate proposals, so a forwarded one delivered twice is
    // appended and applied twice, a second effect no client asked for.
    let caught = (0..60).any(|seed| {
        let mut config = RaftSimConfig::new(seed);
        config.duplicate = 0.05;
        matches!(run_seed(config).check_linearizable(), Verdict::Violation(_))
    });
    assert!(caught, "a duplicated proposal shows up as a violation");
}
