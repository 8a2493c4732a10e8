//! Whole-cluster runs under the simulator: convergence under each fault,
//! crash safety of acknowledged increments, replay of a seed, and planted
//! violations that the checkers must catch.

use calm_sim::{NetworkFaults, PlantedBug, SimConfig, Simulation, Violation};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Virtual time for membership to form before anything else happens.
const WARM_UP_MS: u64 = 3_000;
/// Virtual time `settle` may take after a heal.
const SETTLE_BUDGET_MS: u64 = 60_000;
/// Seeds the `seeds` test runs unless `CALM_SIM_SEEDS` says otherwise.
const CI_SEEDS: u64 = 50;

fn build(config: SimConfig) -> Simulation {
    let mut sim = Simulation::new(config).expect("a valid config");
    sim.run_for(WARM_UP_MS);
    sim
}

/// Settles and runs every checker; the panic message names the seed.
fn settle_and_check(sim: &mut Simulation) {
    let quiet = sim.settle(SETTLE_BUDGET_MS);
    if let Err(violation) = sim.check_all() {
        panic!("{violation} (quiet: {quiet}, stats: {:?})", sim.stats());
    }
    assert!(
        quiet,
        "seed {}: not quiet: {:?}",
        sim.config().seed,
        sim.stats()
    );
}

#[test]
fn a_fault_free_run_converges_with_every_increment_acknowledged() {
    // Strong eventual consistency (Shapiro et al. 2011): replicas that saw
    // the same updates hold the same state.
    let mut sim = build(SimConfig::new(3, 1));
    sim.run_workload(2_000);
    settle_and_check(&mut sim);
    // 2 s at one op per 2 ms, two thirds of them increments to counters.
    assert!(sim.acknowledged_increments() > 0);
    let stats = sim.stats();
    assert!(stats.client_ops >= 900, "{stats:?}");
    assert_eq!(
        (stats.messages_lost, stats.replica_errors),
        (0, 0),
        "{stats:?}"
    );
}

#[test]
fn loss_duplication_and_reordering_still_converge() {
    // Delta-state CRDTs tolerate duplication and reordering by idempotent,
    // commutative joins; loss is repaired by anti-entropy (Dynamo §4.7).
    let mut config = SimConfig::new(5, 2);
    config.faults = NetworkFaults {
        loss: 0.2,
        duplication: 0.2,
        delay_min_ms: 1,
        delay_max_ms: 80,
    };
    let mut sim = build(config);
    sim.run_workload(3_000);
    settle_and_check(&mut sim);
    let stats = sim.stats();
    assert!(
        stats.messages_lost > 0 && stats.messages_duplicated > 0,
        "{stats:?}"
    );
    // Lost deltas can only have been repaired by anti-entropy.
    assert!(stats.state_transfers > 0, "{stats:?}");
}

#[test]
fn a_two_one_partition_longer_than_failure_detection_heals_and_converges() {
    // Local writes stay available on both sides of a partition; after the
    // heal SWIM rejoins the sides (a new generation for the node declared
    // down) and anti-entropy merges what each side wrote.
    let mut config = SimConfig::new(3, 3);
    config.faults = NetworkFaults::LOSSY;
    let mut sim = build(config);
    sim.partition(&[&[NodeId(1), NodeId(2)], &[NodeId(3)]])
        .unwrap();
    // Longer than suspect_to_down: both sides declare the other down.
    sim.run_workload(6_000);
    assert!(sim.check_membership().is_err(), "the sides saw each other");
    assert!(
        sim.check_convergence().is_err(),
        "the minority saw the writes"
    );
    sim.heal();
    settle_and_check(&mut sim);
}

#[test]
fn an_asymmetric_block_then_heal_converges() {
    let mut config = SimConfig::new(4, 4);
    config.faults = NetworkFaults::LOSSY;
    let mut sim = build(config);
    // 1 cannot reach 2 and 3 cannot reach 4, but the reverse links work.
    sim.block(NodeId(1), NodeId(2)).unwrap();
    sim.block(NodeId(3), NodeId(4)).unwrap();
    sim.run_workload(4_000);
    assert!(sim.stats().messages_partitioned > 0);
    sim.heal();
    settle_and_check(&mut sim);
}

/// Runs the workload until `node` holds unsynced writes, then crashes it.
fn crash_with_unsynced_writes(sim: &mut Simulation, node: NodeId) {
    for _ in 0..1_000 {
        if sim.unsynced_batches(node).is_some_and(|b| b > 0) {
            break;
        }
        sim.run_workload(1);
    }
    assert!(sim.unsynced_batches(node).is_some_and(|b| b > 0));
    sim.crash(node).unwrap();
    assert!(!sim.is_up(node));
}

#[test]
fn a_crash_losing_unsynced_writes_loses_no_acknowledged_increment() {
    // Architecture invariant: nothing is acknowledged before it is durable,
    // so a crash may lose only writes whose client is still in doubt.
    let mut config = SimConfig::new(3, 5);
    config.faults = NetworkFaults::LOSSY;
    let mut sim = build(config);
    sim.run_workload(1_000);
    crash_with_unsynced_writes(&mut sim, NodeId(2));
    sim.run_workload(3_000);
    sim.restart(NodeId(2)).unwrap();
    sim.run_workload(1_000);
    settle_and_check(&mut sim);
    let stats = sim.stats();
    assert_eq!((stats.crashes, stats.restarts), (1, 1));
    assert!(stats.unsynced_batches_lost > 0, "{stats:?}");
}

/// A mixed run under `seed`: network faults, a partition, a one-way block,
/// and a crash and restart, then a heal and the checkers.
fn chaos(seed: u64) -> Result<Simulation, Violation> {
    let mut nemesis = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973); // "nemesis"
    let nodes = nemesis.random_range(3..=5);
    let mut config = SimConfig::new(nodes, seed);
    config.faults = NetworkFaults {
        loss: nemesis.random_range(0.0..0.2),
        duplication: nemesis.random_range(0.0..0.2),
        delay_min_ms: 1,
        delay_max_ms: nemesis.random_range(1..60),
    };
    let mut sim = build(config);
    let pick = |rng: &mut StdRng| NodeId(rng.random_range(1..=nodes as u64));
    // One node cut off from the rest, plus a one-way block elsewhere.
    let isolated = pick(&mut nemesis);
    let rest: Vec<NodeId> = (1..=nodes as u64)
        .map(NodeId)
        .filter(|&n| n != isolated)
        .collect();
    sim.partition(&[&[isolated], &rest]).unwrap();
    let (from, to) = (pick(&mut nemesis), pick(&mut nemesis));
    if from != to {
        sim.block(from, to).unwrap();
    }
    sim.run_workload(nemesis.random_range(500..3_000));
    sim.heal();
    let victim = pick(&mut nemesis);
    sim.run_workload(nemesis.random_range(1..500));
    if nemesis.random_bool(0.5) {
        sim.crash(victim).unwrap();
    } else {
        sim.crash_keeping_random_prefix(victim).unwrap();
    }
    sim.run_workload(nemesis.random_range(500..3_000));
    sim.restart(victim).unwrap();
    sim.run_workload(500);
    sim.settle(SETTLE_BUDGET_MS);
    sim.check_all()?;
    Ok(sim)
}

#[test]
fn fifty_seeds_of_mixed_faults_keep_every_checker_green() {
    let seeds = std::env::var("CALM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SEEDS);
    let mut acked = 0;
    for seed in 0..seeds {
        match chaos(seed) {
            Ok(sim) => acked += sim.acknowledged_increments(),
            Err(violation) => panic!("{violation}; replay with this seed"),
        }
    }
    assert!(acked > 0);
}

#[test]
fn one_seed_replays_the_identical_trace_and_another_seed_does_not() {
    // The simulator's promise (as in FoundationDB's and TigerBeetle's): a
    // seed names one run, so any failure replays.
    let run = |seed| chaos(seed).map(|sim| (sim.trace_hash(), sim.stats().clone()));
    let (first, second) = (run(7).unwrap(), run(7).unwrap());
    assert_eq!(first, second);
    assert!(first.1.messages_delivered > 1_000, "{:?}", first.1);
    assert_ne!(run(8).unwrap().0, first.0);
}

#[test]
fn a_driver_acknowledging_before_the_group_commit_is_caught_losing_an_increment() {
    let mut config = SimConfig::new(3, 9);
    config.planted_bug = PlantedBug::AckBeforeFlush;
    let mut sim = build(config);
    sim.run_workload(500);
    crash_with_unsynced_writes(&mut sim, NodeId(1));
    sim.restart(NodeId(1)).unwrap();
    sim.settle(SETTLE_BUDGET_MS);
    sim.check_convergence().unwrap();
    let violation = sim.check_no_lost_increments().unwrap_err();
    assert_eq!(
        (violation.seed, violation.checker),
        (9, "no lost increment")
    );
    assert!(violation.to_string().starts_with("seed 9: "), "{violation}");
}

#[test]
fn a_driver_without_anti_entropy_is_caught_diverging_under_loss() {
    let mut config = SimConfig::new(3, 10);
    config.faults = NetworkFaults::LOSSY;
    config.anti_entropy_period_ms = None;
    let mut sim = build(config);
    sim.run_workload(2_000);
    assert!(!sim.settle(5_000), "lost deltas were never repaired");
    let violation = sim.check_convergence().unwrap_err();
    assert_eq!(violation.checker, "convergence");
    assert!(violation.to_string().contains("seed 10"), "{violation}");
}

#[test]
fn a_partition_left_in_place_is_caught_by_the_membership_checker() {
    let mut sim = build(SimConfig::new(3, 11));
    sim.partition(&[&[NodeId(1), NodeId(2)], &[NodeId(3)]])
        .unwrap();
    sim.run_workload(1_000);
    assert!(!sim.settle(10_000));
    let violation = sim.check_membership().unwrap_err();
    assert_eq!(violation.checker, "membership agreement");
}

#[test]
fn configs_breaking_a_bound_are_refused() {
    let broken: [fn(&mut SimConfig); 5] = [
        |c| c.nodes = 0,
        |c| c.faults.loss = 0.9,
        |c| c.faults.delay_min_ms = 0,
        |c| c.anti_entropy_period_ms = Some(0),
        |c| c.counter_keys = 100_000,
    ];
    for breaks in broken {
        let mut config = SimConfig::new(3, 0);
        breaks(&mut config);
        assert!(Simulation::new(config).is_err());
    }
}
