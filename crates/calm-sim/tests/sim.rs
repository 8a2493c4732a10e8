//! Whole-cluster runs under the simulator: convergence under each fault,
//! crash safety of acknowledged increments, bounded counters that never
//! read below zero, replay of a seed, and planted violations that the
//! checkers must catch; the CRDT levels (`crdt_quorum`), the kv store
//! (`kv`) and raft (`raft`) in their own modules.
//!
//! `many_seeds` runs `CALM_SIM_SEEDS` seeds (200 unless set) from
//! `CALM_SIM_SEED_START` (0 unless set); `one_seed` replays
//! `CALM_SIM_SEED` (0 unless set), the command a failing seed prints.

use std::panic::{AssertUnwindSafe, catch_unwind};

use calm_replica::Operation;
use calm_sim::{NetworkFaults, PlantedBug, SimConfig, Simulation, Violation};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[path = "sim/crdt_quorum.rs"]
mod crdt_quorum;
#[path = "sim/kv.rs"]
mod kv;
#[path = "sim/raft.rs"]
mod raft;

/// Virtual time for membership to form before anything else happens.
const WARM_UP_MS: u64 = 3_000;
/// Virtual time `settle` may take after a heal.
const SETTLE_BUDGET_MS: u64 = 60_000;
/// Seeds `many_seeds` runs unless `CALM_SIM_SEEDS` says otherwise: CI's
/// budget (about 40 s on two cores in the test profile).
const CI_SEEDS: u64 = 200;

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

#[test]
fn bounded_counters_hold_their_bound_through_a_partition_and_a_crash() {
    // Escrow keeps "never below zero" without coordination (Balegas et al.
    // 2015): each side of a partition spends only the rights it holds, and
    // a crash loses only decrements no client was told about.
    let mut config = SimConfig::new(4, 14);
    config.faults = NetworkFaults::LOSSY;
    (config.counter_keys, config.set_keys, config.bounded_keys) = (1, 1, 6);
    let mut sim = build(config);
    sim.partition(&[&[NodeId(1), NodeId(2)], &[NodeId(3), NodeId(4)]])
        .unwrap();
    sim.run_workload(3_000);
    sim.heal();
    crash_with_unsynced_writes(&mut sim, NodeId(2));
    sim.run_workload(2_000);
    sim.restart(NodeId(2)).unwrap();
    sim.run_workload(500);
    settle_and_check(&mut sim);
    let stats = sim.stats();
    assert!(
        stats.rights_refused > 0 && stats.transfers_acknowledged > 0,
        "{stats:?}"
    );
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

/// The number in environment variable `name`, or `default` if it is unset.
pub(crate) fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
    }
}

/// The command that replays `seed` alone, printed with every failure.
fn replay_line(seed: u64) -> String {
    format!(
        "replay: CALM_SIM_SEED={seed} cargo test -p calm-sim --test sim one_seed -- --nocapture"
    )
}

/// `chaos(seed)`, with a panic inside the simulation turned into an error
/// too, so that the caller can name the seed either way.
fn chaos_caught(seed: u64) -> Result<Simulation, String> {
    match catch_unwind(AssertUnwindSafe(|| chaos(seed))) {
        Ok(Ok(sim)) => Ok(sim),
        Ok(Err(violation)) => Err(violation.to_string()),
        Err(_) => Err(format!(
            "seed {seed}: the simulation panicked (message above)"
        )),
    }
}

#[test]
fn many_seeds_of_mixed_faults_keep_every_checker_green() {
    let start = env_number("CALM_SIM_SEED_START", 0);
    let count = env_number("CALM_SIM_SEEDS", CI_SEEDS);
    let (mut acked, mut refused, mut transfers) = (0, 0, 0);
    for seed in start..start.saturating_add(count) {
        match chaos_caught(seed) {
            Ok(sim) => {
                acked += sim.acknowledged_increments();
                refused += sim.stats().rights_refused;
                transfers += sim.stats().transfers_acknowledged;
            }
            // Stops at the first failing seed: its replay line is the one
            // to run.
            Err(failure) => panic!("{failure}\n{}", replay_line(seed)),
        }
    }
    println!("seeds {start}..{} green", start.saturating_add(count));
    if count > 0 {
        // The workload reached every part of the escrow it checks.
        assert!(acked > 0 && refused > 0 && transfers > 0);
    }
}

#[test]
fn one_seed_named_by_calm_sim_seed_keeps_every_checker_green() {
    let seed = env_number("CALM_SIM_SEED", 0);
    let sim =
        chaos_caught(seed).unwrap_or_else(|failure| panic!("{failure}\n{}", replay_line(seed)));
    println!(
        "seed {seed}: green; trace {:#018x}; {:?}",
        sim.trace_hash(),
        sim.stats()
    );
    assert!(sim.acknowledged_increments() > 0, "{:?}", sim.stats());
}

#[test]
fn a_seed_replays_its_identical_trace_and_another_seed_does_not() {
    // The simulator's promise (as in FoundationDB's and TigerBeetle's): a
    // seed names one run, so any failure replays. The trace covers every
    // delivery, client request and reply, bounded-counter escrow included.
    let run = |seed| chaos(seed).map(|sim| (sim.trace_hash(), sim.stats().clone()));
    let (first, second) = (run(7).unwrap(), run(7).unwrap());
    assert_eq!(first, second);
    let stats = &first.1;
    assert!(stats.messages_delivered > 1_000, "{stats:?}");
    assert!(
        stats.rights_refused > 0 && stats.transfers_acknowledged > 0,
        "{stats:?}"
    );
    assert_ne!(run(8).unwrap().0, first.0);
}

#[test]
fn a_driver_acknowledging_before_the_group_commit_is_caught_losing_an_increment() {
    let mut config = SimConfig::new(3, 9);
    // Counters only, so that the crash surely loses an increment.
    (config.set_keys, config.bounded_keys) = (0, 0);
    config.planted_bug = PlantedBug::AckBeforeFlush;
    let mut sim = build(config);
    sim.run_workload(500);
    sim.stop_workload();
    // The planted driver acknowledges this increment at once; the crash
    // comes before the group commit could sync it.
    let key = sim.workload_keys()[0].clone();
    sim.submit(NodeId(1), &key, Operation::Increment(1))
        .unwrap();
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
fn a_driver_acknowledging_before_the_replica_answers_is_caught_miscounting_a_bounded_counter() {
    // The client counts refused decrements as done, so the replicas'
    // common value lies above acknowledged increments minus decrements.
    let mut config = SimConfig::new(3, 12);
    (config.counter_keys, config.set_keys) = (0, 0);
    config.planted_bug = PlantedBug::AckBeforeFlush;
    let mut sim = build(config);
    sim.run_workload(1_000);
    assert!(sim.settle(SETTLE_BUDGET_MS));
    sim.check_convergence().unwrap();
    assert!(sim.stats().rights_refused > 0, "{:?}", sim.stats());
    let violation = sim.check_bounded_counters().unwrap_err();
    assert_eq!((violation.seed, violation.checker), (12, "bounded counter"));
    assert!(violation.detail.contains("acknowledged"), "{violation}");
}

#[test]
fn a_driver_spending_rights_from_a_stale_view_is_caught_below_the_bound() {
    // Escrow (Balegas et al. 2015) is safe only while each node spends
    // from an up-to-date view of its own rights. The planted driver mints
    // the giver's decrements from its counter as frozen at its first
    // decrement, so the rights it gave the taker (who spent them) are
    // spent a second time.
    let mut config = SimConfig::new(3, 13);
    config.planted_bug = PlantedBug::DecrementFromStaleRights;
    let mut sim = build(config);
    let key = b"b0";
    let [giver, taker, ..] = sim.owners(key)[..] else {
        panic!("three owners")
    };
    let give = Operation::BoundedTransfer {
        to: taker,
        amount: 9,
    };
    let steps = [
        (giver, Operation::BoundedIncrement(10)),
        // Freezes the giver's view, holding 10 rights.
        (giver, Operation::BoundedDecrement(1)),
        (giver, give),
        (taker, Operation::BoundedDecrement(9)),
    ];
    for (node, op) in steps {
        sim.submit(node, key, op).unwrap();
        sim.run_for(1_000);
    }
    assert_eq!(sim.stats().transfers_acknowledged, 1);
    sim.check_bounded_counters().unwrap(); // value 0, no rights left
    // The stale view still shows 9 rights at the giver.
    sim.submit(giver, key, Operation::BoundedDecrement(9))
        .unwrap();
    let violation = sim.check_bounded_counters().unwrap_err();
    assert_eq!((violation.seed, violation.checker), (13, "bounded counter"));
    let at = format!("b0 at {giver}: value -9 is below the bound 0");
    assert!(violation.detail.ends_with(&at), "{violation}");
    // The breach stays reported after the cluster settles, though the other
    // replicas refuse the overdrawn state and keep their own.
    sim.settle(SETTLE_BUDGET_MS);
    assert_eq!(sim.check_bounded_counters().unwrap_err(), violation);
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
    let broken: [fn(&mut SimConfig); 7] = [
        |c| c.nodes = 0,
        |c| c.faults.loss = 0.9,
        |c| c.faults.delay_min_ms = 0,
        |c| c.anti_entropy_period_ms = Some(0),
        |c| c.counter_keys = 100_000,
        |c| c.bounded_keys = usize::MAX,
        |c| (c.counter_keys, c.set_keys, c.bounded_keys) = (0, 0, 0),
    ];
    for breaks in broken {
        let mut config = SimConfig::new(3, 0);
        breaks(&mut config);
        assert!(Simulation::new(config).is_err());
    }
}

#[test]
fn rights_transferred_but_unsynced_are_not_shipped_then_lost_in_a_crash() {
    // Regression: anti-entropy shipped a replica's unsynced state. Node a
    // transfers 10 rights to b without syncing; if that state reached b and
    // a then crashed, both would spend the same 10 and the counter would
    // end at -10. A state now leaves a node only once it is synced.
    let mut config = SimConfig::new(3, 1);
    config.flush_period_ms = 2_000;
    config.anti_entropy_period_ms = Some(20);
    let mut sim = Simulation::new(config).unwrap();
    sim.run_for(3_000);
    let key = b"b0";
    let [a, b, ..] = sim.owners(key)[..] else {
        panic!("three owners")
    };
    sim.submit(a, key, Operation::BoundedIncrement(10)).unwrap();
    sim.run_for(4_100);
    sim.submit(a, key, Operation::BoundedTransfer { to: b, amount: 10 })
        .unwrap();
    // Anti-entropy runs many rounds while the transfer is still unsynced.
    sim.run_for(500);
    assert_ne!(
        sim.unsynced_batches(a),
        Some(0),
        "the transfer is not synced yet"
    );
    sim.crash(a).unwrap();
    sim.submit(b, key, Operation::BoundedDecrement(10)).unwrap();
    sim.restart(a).unwrap();
    sim.submit(a, key, Operation::BoundedDecrement(10)).unwrap();
    sim.run_for(5_000);
    sim.check_bounded_counters().unwrap();
}
