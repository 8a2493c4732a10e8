//! The coordinated keyspace under the simulator: seeded chaos (partitions,
//! one-way blocks, leader crashes in and between turns, power failures,
//! pauses, clock skew and steps, leadership transfers, lossy and
//! reordering networks) must keep every checker green; a seed must replay
//! its trace; and planted driver bugs must be caught.
//!
//! `raft::many_seeds` runs `CALM_SIM_SEEDS` seeds (`CI_SEEDS` unless set)
//! from `CALM_SIM_SEED_START`; `raft::one_seed` replays `CALM_SIM_SEED`,
//! the command a failing seed prints.

use std::panic::{AssertUnwindSafe, catch_unwind};

use calm_sim::linearizability::EtcdInput;
use calm_sim::raft::{KeyspaceBug, KeyspaceSim, KeyspaceSimConfig, KeyspaceStats};
use calm_sim::{NetworkFaults, Violation};
use calm_types::NodeId;

use super::env_number;

/// Seeds `many_seeds` runs unless `CALM_SIM_SEEDS` says otherwise: CI's
/// budget.
const CI_SEEDS: u64 = 1_000;
/// Rounds of traffic and faults per seed.
const ROUNDS: usize = 8;

/// The config of `seed` in the sweep: every fourth seed runs five voters.
fn config(seed: u64) -> KeyspaceSimConfig {
    let mut config = KeyspaceSimConfig::new(seed);
    if seed % 4 == 3 {
        config.voters = 5;
    }
    config
}

/// A chaos run of `config` and every checker; a panic inside the
/// simulation becomes an error too, so the caller can name the seed.
fn chaos(config: KeyspaceSimConfig) -> Result<KeyspaceSim, String> {
    let seed = config.seed;
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = KeyspaceSim::new(config).expect("a valid config");
        let quiet = sim.run_chaos(ROUNDS);
        sim.check_all().map_err(|v| v.to_string())?;
        if !quiet {
            return Err(format!(
                "seed {seed}: not quiet after settling: {:?}",
                sim.stats()
            ));
        }
        Ok(sim)
    }));
    run.unwrap_or_else(|_| {
        Err(format!(
            "seed {seed}: the simulation panicked (message above)"
        ))
    })
}

/// The command that replays `seed` alone, printed with every failure.
fn replay_line(seed: u64) -> String {
    format!(
        "replay: CALM_SIM_SEED={seed} cargo test -p calm-sim --test sim raft::one_seed -- --nocapture"
    )
}

#[test]
fn many_seeds_of_chaos_keep_every_keyspace_checker_green() {
    let start = env_number("CALM_SIM_SEED_START", 0);
    let count = env_number("CALM_SIM_SEEDS", CI_SEEDS);
    let mut total = KeyspaceStats::default();
    for seed in start..start.saturating_add(count) {
        match chaos(config(seed)) {
            Ok(sim) => add(&mut total, sim.stats()),
            Err(failure) => panic!("{failure}\n{}", replay_line(seed)),
        }
    }
    println!(
        "seeds {start}..{}: green; {total:?}",
        start.saturating_add(count)
    );
    if count >= 50 {
        // The sweep reached every nemesis and both outcomes of a swap.
        let t = &total;
        assert!(
            t.crashes_in_turn > 0 && t.unsynced_batches_lost > 0,
            "{t:?}"
        );
        assert!(
            t.pauses > 0 && t.clock_jumps > 0 && t.transfers > 0,
            "{t:?}"
        );
        assert!(t.messages_duplicated > 0 && t.messages_blocked > 0, "{t:?}");
        assert!(t.swaps > 0 && t.indeterminate > 0, "{t:?}");
        assert!(t.membership_changes > 0, "{t:?}");
    }
}

#[test]
fn one_seed_named_by_calm_sim_seed_keeps_every_keyspace_checker_green() {
    let seed = env_number("CALM_SIM_SEED", 0);
    let sim = chaos(config(seed)).unwrap_or_else(|f| panic!("{f}\n{}", replay_line(seed)));
    let (answered, indeterminate) = sim.request_counts();
    println!(
        "seed {seed}: green; trace {:#018x}; {answered} answered, {indeterminate} indeterminate; {:?}",
        sim.trace_hash(),
        sim.stats()
    );
    assert!(answered > 0, "{:?}", sim.stats());
}

#[test]
fn a_seed_replays_its_identical_trace_and_another_seed_does_not() {
    // A seed names one run, so every failure replays.
    let run = |seed| {
        let sim = chaos(config(seed)).expect("green");
        (sim.trace_hash(), sim.history(), sim.stats().clone())
    };
    let (first, second, other) = (run(11), run(11), run(12));
    assert_eq!(first, second);
    assert_ne!(first.0, other.0);
    assert!(first.2.messages_delivered > 1_000, "{:?}", first.2);
}

#[test]
fn an_isolated_leader_answers_no_stale_read_and_loses_no_write() {
    // Raft §6.4: a read-only query must not be served by a deposed leader;
    // ReadIndex confirms leadership with a quorum first. The isolated
    // leader's clients get timeouts, never old values.
    let mut sim = KeyspaceSim::new(KeyspaceSimConfig::new(3)).unwrap();
    sim.run_for(500);
    let old = sim.leader().expect("a leader");
    sim.run_workload(500);
    let rest: Vec<NodeId> = sim.voters().into_iter().filter(|&n| n != old).collect();
    sim.partition(&[&[old], &rest]).unwrap();
    sim.run_workload(2_000);
    let new = sim.leader().expect("a leader");
    assert_ne!(new, old, "the majority elected a new leader");
    sim.heal();
    sim.run_workload(500);
    assert!(sim.settle(10_000));
    sim.check_all().unwrap();
    assert!(sim.stats().indeterminate + sim.stats().no_effect > 0);
}

#[test]
fn a_power_failure_loses_no_acknowledged_write() {
    // Raft §5.4 with durable logs: an entry is acknowledged only once a
    // quorum synced it, so even every node crashing at once keeps it.
    let mut lost = 0;
    for seed in 0..5 {
        let (sim, settled) = power_failure_after_traffic(KeyspaceSimConfig::new(seed));
        assert!(settled, "seed {seed}: {:?}", sim.stats());
        sim.check_all().unwrap();
        lost += sim.stats().unsynced_batches_lost;
    }
    assert!(lost > 0, "the crashes threw unsynced writes away");
}

#[test]
fn a_restarted_node_answers_each_request_with_its_own_outcome() {
    // A follower applies a put it proposed, answers it, and crashes before
    // the applied state is synced (the contract allows that: the log
    // replays it). Restarted, it takes a new put at once; replaying the
    // old entry must not answer the new request.
    let mut config = KeyspaceSimConfig::new(1);
    config.faults = NetworkFaults::NONE;
    let mut sim = KeyspaceSim::new(config).unwrap();
    sim.run_for(500);
    let leader = sim.leader().expect("a leader");
    let follower = sim.voters().into_iter().find(|&n| n != leader).unwrap();
    let put = |value: &str| EtcdInput::Put {
        key: "k0".to_string(),
        value: value.to_string(),
    };
    let first = sim.submit(follower, put("first")).unwrap();
    while sim.operation(first).unwrap().ret.is_none() {
        sim.run_for(1);
    }
    sim.crash(follower).unwrap();
    sim.restart(follower).unwrap();
    let second = sim.submit(follower, put("second")).unwrap();
    sim.run_for(1_000);
    assert!(sim.operation(second).unwrap().ret.is_some(), "answered");
    assert!(sim.settle(10_000));
    sim.check_all().unwrap();
}

/// The first violation `checker` finds in a chaos run of some seed in
/// `seeds` under `config`.
fn caught(
    seeds: std::ops::Range<u64>,
    config: impl Fn(u64) -> KeyspaceSimConfig,
    checker: impl Fn(&KeyspaceSim) -> Result<(), Violation>,
) -> Option<Violation> {
    seeds.into_iter().find_map(|seed| {
        let mut sim = KeyspaceSim::new(config(seed)).unwrap();
        sim.run_chaos(ROUNDS);
        checker(&sim).err()
    })
}

/// A second of traffic, then every node loses power at once, restarts,
/// and serves another second of traffic before settling. Returns the sim
/// and whether it settled.
fn power_failure_after_traffic(config: KeyspaceSimConfig) -> (KeyspaceSim, bool) {
    let mut sim = KeyspaceSim::new(config).unwrap();
    sim.run_for(500);
    sim.run_workload(1_000);
    for node in sim.voters() {
        sim.crash(node).unwrap();
    }
    sim.run_for(100);
    sim.restart_all();
    sim.run_workload(1_000);
    let settled = sim.settle(10_000);
    (sim, settled)
}

#[test]
fn reads_served_without_read_index_are_caught_as_stale() {
    // The planted bug: linearizable ranges answered from the local applied
    // state. A deposed leader or a lagging follower answers old values,
    // which the linearizability checker must reject.
    let config = |seed| KeyspaceSimConfig {
        bug: KeyspaceBug::ReadsWithoutReadIndex,
        ..KeyspaceSimConfig::new(seed)
    };
    let violation = caught(0..40, config, KeyspaceSim::check_linearizable);
    assert!(violation.is_some(), "a stale read is caught");
}

#[test]
fn acknowledging_before_the_sync_loses_writes_that_the_checkers_catch() {
    // The planted bug: Raft's writes are synced on a 100 ms timer but
    // acknowledged (to the leader, hence to clients) at once. A power
    // failure loses entries a quorum had acknowledged: the durability
    // checker finds acknowledged writes missing, and the linearizability
    // checker finds reads that no longer see them.
    let (mut lost, mut stale) = (None, None);
    for seed in 0..10 {
        if lost.is_some() && stale.is_some() {
            break;
        }
        // Whether it settles does not matter here: replicas that lost
        // different committed entries may never agree again.
        let (sim, _) = power_failure_after_traffic(KeyspaceSimConfig {
            bug: KeyspaceBug::AckBeforeSync,
            ..KeyspaceSimConfig::new(seed)
        });
        lost = lost.or(sim.check_acknowledged_writes().err());
        stale = stale.or(sim.check_linearizable().err());
    }
    assert!(lost.is_some(), "the durability checker caught a lost write");
    assert!(stale.is_some(), "the linearizability checker caught it too");
}

#[test]
fn a_voter_demoted_to_learner_and_promoted_back_keeps_histories_linearizable() {
    // Raft §6 (etcd's MemberPromote and a demotion): the configuration
    // changes through the log while clients keep writing and reading.
    let mut sim = KeyspaceSim::new(KeyspaceSimConfig::new(11)).unwrap();
    sim.run_for(500);
    let leader = sim.leader().expect("a leader");
    let follower = sim.voters().into_iter().find(|&n| n != leader).unwrap();
    assert!(
        sim.toggle_voter(follower).unwrap(),
        "the leader takes the change"
    );
    sim.run_workload(1_000);
    assert_eq!(sim.learners(), [follower], "the follower was demoted");
    assert!(sim.promote_learners());
    sim.run_workload(1_000);
    assert!(sim.settle(10_000), "{:?}", sim.stats());
    assert_eq!(sim.learners(), [], "the learner was promoted back");
    sim.check_all().unwrap();
    assert!(sim.request_counts().0 > 100, "{:?}", sim.stats());
}

#[test]
fn a_watch_resumed_at_the_last_seen_revision_is_caught_repeating_events() {
    // etcd API guarantee: a watcher that resumes after the last revision it
    // saw gets every later event exactly once. The planted bug resumes at
    // that revision itself, so a restart repeats its events.
    let config = |seed| KeyspaceSimConfig {
        bug: KeyspaceBug::WatchResumesAtLastSeen,
        ..KeyspaceSimConfig::new(seed)
    };
    let violation = caught(0..40, config, KeyspaceSim::check_watches);
    assert!(violation.is_some(), "a repeated event is caught");
}

#[test]
fn lease_based_reads_turn_stale_when_a_frozen_leader_resumes() {
    // Why `raft_lease_reads` is off by default: a leader's lease is
    // counted in its own ticks, and a frozen process ticks no more.
    // Frozen past an election and cut off, it resumes still trusting its
    // lease and answers reads the new leader's writes have overtaken
    // (Raft thesis §6.4.1 assumes bounded clock drift; a pause is not).
    let config = |seed| KeyspaceSimConfig {
        lease_reads: true,
        ..KeyspaceSimConfig::new(seed)
    };
    let violation = caught(0..40, config, KeyspaceSim::check_linearizable);
    assert!(violation.is_some(), "a stale lease read is caught");
}

#[test]
fn a_network_that_duplicates_forwarded_proposals_still_applies_each_write_once() {
    // Raft does not deduplicate proposals: a forwarded one delivered twice
    // is appended twice. The state machine skips the copy (each proposer
    // numbers its proposals upwards), so histories stay linearizable and
    // no value is written twice.
    let mut duplicated = 0;
    for seed in 0..40 {
        let config = KeyspaceSimConfig {
            duplicate_proposals: true,
            faults: NetworkFaults {
                duplication: 0.3,
                ..KeyspaceSimConfig::new(seed).faults
            },
            ..KeyspaceSimConfig::new(seed)
        };
        let sim = chaos(config).unwrap_or_else(|f| panic!("{f}"));
        duplicated += sim.stats().messages_duplicated;
    }
    assert!(duplicated > 0, "the network duplicated messages");
}

fn add(total: &mut KeyspaceStats, stats: &KeyspaceStats) {
    total.messages_delivered += stats.messages_delivered;
    total.messages_duplicated += stats.messages_duplicated;
    total.messages_blocked += stats.messages_blocked;
    total.requests += stats.requests;
    total.answered += stats.answered;
    total.indeterminate += stats.indeterminate;
    total.no_effect += stats.no_effect;
    total.swaps += stats.swaps;
    total.crashes += stats.crashes;
    total.crashes_in_turn += stats.crashes_in_turn;
    total.unsynced_batches_lost += stats.unsynced_batches_lost;
    total.pauses += stats.pauses;
    total.transfers += stats.transfers;
    total.clock_jumps += stats.clock_jumps;
    total.membership_changes += stats.membership_changes;
    total.term_max = total.term_max.max(stats.term_max);
}

/// Seeds the lease sweep runs unless `CALM_SIM_LEASE_SEEDS` says
/// otherwise.
const CI_LEASE_SEEDS: u64 = 200;

fn lease_config(seed: u64) -> KeyspaceSimConfig {
    KeyspaceSimConfig {
        leases: 3,
        ..config(seed)
    }
}

#[test]
fn a_clock_running_double_is_caught_revoking_leases_early() {
    // The planted bug: the core's clock runs at twice real speed, so the
    // leader expires every lease at half its TTL.
    let config = |seed| KeyspaceSimConfig {
        bug: KeyspaceBug::ClockRunsDouble,
        ..lease_config(seed)
    };
    let violation = caught(0..20, config, KeyspaceSim::check_leases);
    assert!(
        violation.is_some_and(|v| v.checker == "lease never early"),
        "an early revocation is caught"
    );
}

#[test]
fn leases_are_never_revoked_early_and_always_in_the_end_across_seeds() {
    // etcd's lease guarantees under crashes, pauses, partitions and skewed
    // or stepped clocks: no replica revokes a lease before the TTL of its
    // last acknowledged keep-alive (on the fastest allowed clock), and an
    // abandoned lease is revoked once the cluster is healthy.
    let start = env_number("CALM_SIM_SEED_START", 0);
    let count = env_number("CALM_SIM_LEASE_SEEDS", CI_LEASE_SEEDS);
    let (mut attached, mut revoked) = (0, 0);
    for seed in start..start.saturating_add(count) {
        match chaos(lease_config(seed)) {
            Ok(sim) => {
                attached += sim.leases_attached();
                revoked += sim.leases_revoked_during_run();
            }
            Err(failure) => panic!(
                "{failure}\nreplay: CALM_SIM_SEED_START={seed} CALM_SIM_LEASE_SEEDS=1 cargo test -p calm-sim --test sim raft::leases_are -- --nocapture"
            ),
        }
    }
    println!(
        "lease seeds {start}..{}: {attached} leases attached, {revoked} revoked while running",
        start + count
    );
    assert!(
        attached > 0 && revoked > 0,
        "{attached} attached, {revoked} revoked"
    );
}
