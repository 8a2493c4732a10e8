//! The CRDT replica's `one`/`quorum`/`all` levels under the simulator:
//! counter increments and reads at `quorum` through loss, duplication,
//! partitions and a minority crash must keep every checker green, reads
//! included; a seed must replay its trace; and a replica that acks what it
//! does not hold must be caught serving stale reads.
//!
//! `crdt_quorum::many_seeds` runs `CALM_SIM_QUORUM_SEEDS` seeds (`CI_SEEDS`
//! unless set) from `CALM_SIM_SEED_START`; `crdt_quorum::one_seed` replays
//! `CALM_SIM_SEED`, the command a failing seed prints.

use std::panic::{AssertUnwindSafe, catch_unwind};

use calm_replica::coordinator::Level;
use calm_sim::{NetworkFaults, PlantedBug, SimConfig, SimStats, Simulation, Violation};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{SETTLE_BUDGET_MS, build, env_number};

/// Seeds `many_seeds` runs unless `CALM_SIM_QUORUM_SEEDS` says otherwise:
/// CI's budget (about 15 s on two cores in the test profile).
const CI_SEEDS: u64 = 100;
/// Seeds each planted-fault test runs, and how many must catch it.
const PLANTED_SEEDS: u64 = 40;
const PLANTED_CAUGHT_MIN: usize = 20;

/// A run of `seed` at `level` with `bug` planted: a lossy, duplicating,
/// reordering network; one node cut off from the rest and a one-way block
/// elsewhere; after the heal a crash of one node (losing all or a random
/// prefix of its unsynced writes) and its restart; then a settle and every
/// checker.
fn chaos(seed: u64, level: Level, bug: PlantedBug) -> Result<Simulation, Violation> {
    let mut nemesis = StdRng::seed_from_u64(seed ^ 0x7175_6f72_756d); // "quorum"
    let nodes = nemesis.random_range(3..=5);
    let mut config = SimConfig::new(nodes, seed);
    config.level = Some(level);
    config.planted_bug = bug;
    config.faults = NetworkFaults {
        loss: nemesis.random_range(0.0..0.15),
        duplication: nemesis.random_range(0.0..0.15),
        delay_min_ms: 1,
        delay_max_ms: nemesis.random_range(1..40),
    };
    let mut sim = build(config);
    let pick = |rng: &mut StdRng| NodeId(rng.random_range(1..=nodes as u64));
    sim.run_workload(nemesis.random_range(200..800));
    // A minority of one cut off: its clients' requests at `quorum` time
    // out in doubt, then are refused as unavailable once it sees the
    // others down.
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
    sim.run_workload(nemesis.random_range(300..2_500));
    sim.heal();
    sim.run_workload(nemesis.random_range(1..300));
    let victim = pick(&mut nemesis);
    if nemesis.random_bool(0.5) {
        sim.crash(victim).unwrap();
    } else {
        sim.crash_keeping_random_prefix(victim).unwrap();
    }
    sim.run_workload(nemesis.random_range(300..1_500));
    sim.restart(victim).unwrap();
    sim.run_workload(300);
    sim.settle(SETTLE_BUDGET_MS);
    sim.check_all()?;
    Ok(sim)
}

/// `chaos` at `quorum` with a correct driver, a panic inside the
/// simulation turned into an error too, so the caller can name the seed.
fn quorum_chaos(seed: u64) -> Result<Simulation, String> {
    let run = catch_unwind(AssertUnwindSafe(|| {
        chaos(seed, Level::Quorum, PlantedBug::None)
    }));
    match run {
        Ok(Ok(sim)) => Ok(sim),
        Ok(Err(violation)) => Err(violation.to_string()),
        Err(_) => Err(format!(
            "seed {seed}: the simulation panicked (message above)"
        )),
    }
}

/// The command that replays `seed` alone, printed with every failure.
fn replay_line(seed: u64) -> String {
    format!(
        "replay: CALM_SIM_SEED={seed} cargo test -p calm-sim --test sim \
         crdt_quorum::one_seed -- --nocapture"
    )
}

/// Adds the counters the sweep asserts on.
fn add(total: &mut SimStats, stats: &SimStats) {
    total.quorum_reads_checked += stats.quorum_reads_checked;
    total.quorum_reads_failed += stats.quorum_reads_failed;
    total.writes_in_doubt += stats.writes_in_doubt;
    total.stale_reads += stats.stale_reads;
    total.unsynced_batches_lost += stats.unsynced_batches_lost;
    total.messages_duplicated += stats.messages_duplicated;
    total.messages_partitioned += stats.messages_partitioned;
}

#[test]
fn many_seeds_at_quorum_read_every_acknowledged_increment_and_lose_none() {
    // r + w > n: a read merges an owner that holds every write acknowledged
    // before it started (Gifford 1979; Dynamo §4.5); a crash of a minority
    // loses only unsynced writes, never one acknowledged at w copies.
    let start = env_number("CALM_SIM_SEED_START", 0);
    let count = env_number("CALM_SIM_QUORUM_SEEDS", CI_SEEDS);
    let (mut total, mut acked) = (SimStats::default(), 0);
    for seed in start..start.saturating_add(count) {
        match quorum_chaos(seed) {
            Ok(sim) => {
                add(&mut total, sim.stats());
                acked += sim.acknowledged_increments();
            }
            Err(failure) => panic!("{failure}\n{}", replay_line(seed)),
        }
    }
    let t = &total;
    println!(
        "seeds {start}..{}: green; increments acknowledged {acked}, reads checked {}, \
         reads failed {}, writes in doubt {}, unsynced batches lost {}",
        start.saturating_add(count),
        t.quorum_reads_checked,
        t.quorum_reads_failed,
        t.writes_in_doubt,
        t.unsynced_batches_lost,
    );
    if count >= 50 {
        // The sweep reached every path the checkers judge.
        assert_eq!(t.stale_reads, 0, "{t:?}");
        assert!(acked > 0 && t.quorum_reads_checked > 0, "{t:?}");
        assert!(t.quorum_reads_failed > 0 && t.writes_in_doubt > 0, "{t:?}");
        assert!(t.unsynced_batches_lost > 0, "{t:?}");
        assert!(
            t.messages_duplicated > 0 && t.messages_partitioned > 0,
            "{t:?}"
        );
    }
}

#[test]
fn one_seed_named_by_calm_sim_seed_keeps_every_checker_green_at_quorum() {
    let seed = env_number("CALM_SIM_SEED", 0);
    let sim = quorum_chaos(seed).unwrap_or_else(|f| panic!("{f}\n{}", replay_line(seed)));
    println!(
        "seed {seed}: green; trace {:#018x}; {:?}",
        sim.trace_hash(),
        sim.stats()
    );
    assert!(sim.stats().quorum_reads_checked > 0, "{:?}", sim.stats());
}

#[test]
fn a_seed_at_quorum_replays_its_identical_trace_and_another_seed_does_not() {
    // The trace covers every delivery, request and reply, so the quorum
    // messages (Replicate, Replicated, Fetch, Fetched) and the reads too.
    let run = |seed| {
        let sim = quorum_chaos(seed).expect("green");
        (sim.trace_hash(), sim.stats().clone())
    };
    let (first, second, other) = (run(7), run(7), run(8));
    assert_eq!(first, second);
    assert_ne!(first.0, other.0);
    let stats = &first.1;
    assert!(
        stats.messages_delivered > 1_000 && stats.quorum_reads_checked > 0,
        "{stats:?}"
    );
}

/// How many of the planted seeds `check_quorum_reads` fails at `level`
/// with `bug`, checking that each failure is the quorum-read checker's.
fn caught(level: Level, bug: PlantedBug) -> usize {
    (0..PLANTED_SEEDS)
        .filter(|&seed| {
            let mut config = SimConfig::new(3, seed);
            config.faults = NetworkFaults::LOSSY;
            config.level = Some(level);
            config.planted_bug = bug;
            let mut sim = build(config);
            sim.run_workload(1_000);
            sim.settle(SETTLE_BUDGET_MS);
            // The plants break only recency: convergence and durability
            // hold, so the quorum-read checker alone must see them.
            sim.check_convergence().unwrap();
            sim.check_no_lost_increments().unwrap();
            match sim.check_quorum_reads() {
                Ok(()) => false,
                Err(violation) => {
                    assert_eq!((violation.seed, violation.checker), (seed, "quorum read"));
                    assert!(
                        violation.detail.contains("acknowledged before"),
                        "{violation}"
                    );
                    true
                }
            }
        })
        .count()
}

#[test]
fn a_replica_acking_writes_it_does_not_hold_is_caught_serving_stale_quorum_reads() {
    // The driver forges each Replicated ack and drops the Replicate: writes
    // are acknowledged with one copy, so w is 1 in truth and r + w = n.
    let caught = caught(Level::Quorum, PlantedBug::ForgedReplicatedAcks);
    println!("forged acks: caught on {caught} of {PLANTED_SEEDS} seeds");
    assert!(caught >= PLANTED_CAUGHT_MIN, "caught on {caught} seeds");
}

#[test]
fn reads_at_one_held_to_the_quorum_promise_are_caught_stale() {
    // r = 1, w = 2 of n = 3: a read at the one owner a write has not
    // reached yet misses it.
    let caught = caught(Level::Quorum, PlantedBug::ReadsAtOne);
    println!("reads at one: caught on {caught} of {PLANTED_SEEDS} seeds");
    assert!(caught >= PLANTED_CAUGHT_MIN, "caught on {caught} seeds");
}

#[test]
fn reads_and_writes_at_one_may_be_stale_and_the_checker_claims_nothing() {
    // At `one`, r + w = 2 <= n = 3: recency is not promised, so stale reads
    // are counted but are no violation.
    let mut config = SimConfig::new(3, 5);
    config.faults = NetworkFaults::LOSSY;
    config.level = Some(Level::One);
    let mut sim = build(config);
    sim.run_workload(2_000);
    assert!(sim.settle(SETTLE_BUDGET_MS));
    sim.check_all().unwrap();
    let stats = sim.stats();
    assert!(stats.stale_reads > 0, "{stats:?}");
    assert!(stats.quorum_reads_checked > stats.stale_reads, "{stats:?}");
}
