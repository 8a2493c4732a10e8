//! Property tests for calm-clock: the partial-order and lattice laws of
//! version vectors, the HLC's monotonicity and offset bound, the DVV-set's
//! sync laws and sibling bound, and codec round trips for every wire type.
//!
//! Every property runs 1,000 seeded cases (override with `PROPTEST_CASES`
//! while iterating); a fixed seed makes a failure replay exactly.

use std::collections::BTreeSet;

use calm_clock::{
    Causality, ClockError, Dot, DvvSet, Hlc, HlcTimestamp, LamportClock, VersionVector,
};
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError, FORMAT_VERSION};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// The seed every property starts from, so a failing case replays exactly.
const SEED: u64 = 0xCA1C_C10C;

fn config() -> ProptestConfig {
    // PROPTEST_CASES shortens local iteration; the committed count is 1,000.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok());
    ProptestConfig {
        rng_seed: RngSeed::Fixed(SEED),
        // A fixed seed already replays every failure, so no regression files
        // are written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases.unwrap_or(1000))
    }
}

// ---------------------------------------------------------------- strategies

/// A small version vector: few nodes and small counters, so that equal and
/// ordered pairs are common, not just concurrent ones.
fn vv() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((0u64..4, 0u64..5), 0..5).prop_map(|pairs| {
        let mut out = VersionVector::new();
        for (node, count) in pairs {
            for _ in 0..count {
                out.increment(NodeId(node));
            }
        }
        out
    })
}

/// `lower` raised to cover `upper` by increments alone, without `merge`, so
/// it can serve as an independent upper bound in the merge tests.
fn raised(lower: &VersionVector, upper: &VersionVector) -> VersionVector {
    let mut out = lower.clone();
    for (node, counter) in upper {
        while out.counter(node) < counter {
            out.increment(node);
        }
    }
    out
}

fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut out = a.clone();
    out.merge(b);
    out
}

/// One step of a DVV-set replication history over three replicas.
#[derive(Clone, Debug)]
enum Step {
    /// A client writes at `replica` with the context of an earlier snapshot
    /// (`None`: a blind write).
    Write {
        replica: usize,
        context_of: Option<usize>,
    },
    /// `to` merges `from`'s set (anti-entropy or read repair).
    Sync { from: usize, to: usize },
}

const REPLICAS: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..REPLICAS, prop::option::of(any::<usize>())).prop_map(|(replica, context_of)| {
            Step::Write {
                replica,
                context_of,
            }
        }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// Every state the replicas passed through while running `steps`. Values are
/// the step index, so each dot names one value everywhere, as it does when
/// only the coordinator mints its dots.
fn history(steps: &[Step]) -> Vec<DvvSet<u32>> {
    let mut replicas = vec![DvvSet::new(); REPLICAS];
    let mut snapshots = vec![DvvSet::new()];
    for (index, step) in steps.iter().enumerate() {
        match *step {
            Step::Write {
                replica,
                context_of,
            } => {
                let context = context_of
                    .map(|k| snapshots[k % snapshots.len()].join())
                    .unwrap_or_default();
                let value = u32::try_from(index).expect("histories are short");
                replicas[replica].update(&context, NodeId(replica as u64), value);
                snapshots.push(replicas[replica].clone());
            }
            Step::Sync { from, to } => {
                let source = replicas[from].clone();
                replicas[to].sync(&source);
                snapshots.push(replicas[to].clone());
            }
        }
    }
    snapshots
}

/// A replication history and three states picked from it.
fn dvv_triple() -> impl Strategy<Value = (DvvSet<u32>, DvvSet<u32>, DvvSet<u32>)> {
    (
        prop::collection::vec(step(), 0..24),
        any::<(usize, usize, usize)>(),
    )
        .prop_map(|(steps, (i, j, k))| {
            let states = history(&steps);
            let pick = |n: usize| states[n % states.len()].clone();
            (pick(i), pick(j), pick(k))
        })
}

fn synced(a: &DvvSet<u32>, b: &DvvSet<u32>) -> DvvSet<u32> {
    let mut out = a.clone();
    out.sync(b);
    out
}

fn dotted(set: &DvvSet<u32>) -> BTreeSet<(Dot, u32)> {
    set.dotted_values()
        .map(|(dot, &value)| (dot, value))
        .collect()
}

// ------------------------------------------------------------ version vectors

proptest! {
    #![proptest_config(config())]

    #[test]
    fn vv_compare_is_a_partial_order(a in vv(), b in vv(), c in vv()) {
        // Reflexive.
        prop_assert_eq!(a.compare(&a), Causality::Equal);
        // Antisymmetric: mutual domination is equality.
        if a.dominates(&b) && b.dominates(&a) {
            prop_assert_eq!(&a, &b);
        }
        // Transitive, on random triples and on a chain built to be ordered.
        if a.dominates(&b) && b.dominates(&c) {
            prop_assert!(a.dominates(&c));
        }
        let lower = c.clone();
        let middle = raised(&lower, &b);
        let upper = raised(&middle, &a);
        prop_assert!(middle.dominates(&lower) && upper.dominates(&middle));
        prop_assert!(upper.dominates(&lower));
        prop_assert_ne!(lower.compare(&upper), Causality::After);
        prop_assert_ne!(lower.compare(&upper), Causality::Concurrent);
    }

    #[test]
    fn vv_compare_agrees_with_dominates_contains_and_its_inverse(a in vv(), b in vv()) {
        let expected = match (a.dominates(&b), b.dominates(&a)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        };
        prop_assert_eq!(a.compare(&b), expected);
        prop_assert_eq!(a.compare(&b), b.compare(&a).inverse());
        // Domination is containment of every event of the other history.
        let contains_all = b.iter().all(|(node, n)| (1..=n).all(|k| a.contains(Dot::new(node, k))));
        prop_assert_eq!(a.dominates(&b), contains_all);
        prop_assert_eq!(a == b, a.compare(&b) == Causality::Equal);
    }

    #[test]
    fn vv_merge_is_the_least_upper_bound(a in vv(), b in vv(), c in vv(), extra in vv()) {
        check_lub(merged, &a, &b, &c, &extra).map_err(TestCaseError::fail)?;
    }
}

/// Checks that `merge` is commutative, associative and idempotent and
/// yields the least upper bound of its inputs in the causal order.
fn check_lub(
    merge: fn(&VersionVector, &VersionVector) -> VersionVector,
    a: &VersionVector,
    b: &VersionVector,
    c: &VersionVector,
    extra: &VersionVector,
) -> Result<(), String> {
    let ab = merge(a, b);
    let fail = |law: &str| Err(format!("{law} fails for a = {a:?}, b = {b:?}, c = {c:?}"));
    if ab != merge(b, a) {
        return fail("commutativity");
    }
    if merge(&ab, c) != merge(a, &merge(b, c)) {
        return fail("associativity");
    }
    if &merge(a, a) != a {
        return fail("idempotence");
    }
    if !(ab.dominates(a) && ab.dominates(b)) {
        return fail("upper bound");
    }
    // Least: an upper bound of both built without merge dominates the merge,
    // and so does any generated vector that happens to bound both.
    let bound = raised(&raised(a, b), extra);
    if !bound.dominates(&ab) || (c.dominates(a) && c.dominates(b) && !c.dominates(&ab)) {
        return fail("least upper bound");
    }
    Ok(())
}

#[test]
fn the_lub_check_catches_broken_merges() {
    // Planted violations: a merge that keeps only the left side is not an
    // upper bound; one that adds an event is not the least one.
    let one = |node: u64| {
        let mut v = VersionVector::new();
        v.increment(NodeId(node));
        v
    };
    let (a, b, empty) = (one(1), one(2), VersionVector::new());
    let left_only: fn(&VersionVector, &VersionVector) -> VersionVector = |a, _| a.clone();
    let too_big: fn(&VersionVector, &VersionVector) -> VersionVector = |a, b| {
        let mut out = merged(a, b);
        out.increment(NodeId(9));
        out
    };
    assert!(check_lub(left_only, &a, &b, &empty, &empty).is_err());
    assert!(
        check_lub(too_big, &a, &a, &a, &empty)
            .unwrap_err()
            .contains("idempotence")
    );
    assert!(check_lub(too_big, &a, &b, &empty, &empty).is_err());
    assert_eq!(check_lub(merged, &a, &b, &empty, &empty), Ok(()));
}

// ---------------------------------------------------------------------- HLC

const OFFSET_MS: u64 = 500;

/// One HLC input: a local reading, or a received remote reading.
#[derive(Clone, Debug)]
enum HlcInput {
    Now {
        wall_step_ms: i64,
    },
    Update {
        wall_step_ms: i64,
        remote_skew_ms: i64,
        remote_logical: u32,
    },
}

fn logical() -> impl Strategy<Value = u32> {
    // Mostly small, sometimes at the top so that spills are exercised.
    prop_oneof![4 => 0u32..4, 1 => (u32::MAX - 2)..=u32::MAX]
}

fn hlc_input() -> impl Strategy<Value = HlcInput> {
    // Wall steps go backwards too (NTP steps); remote skew straddles the bound.
    let step = -50i64..200;
    prop_oneof![
        step.clone()
            .prop_map(|wall_step_ms| HlcInput::Now { wall_step_ms }),
        (step, -1_000i64..1_000, logical()).prop_map(
            |(wall_step_ms, remote_skew_ms, remote_logical)| {
                HlcInput::Update {
                    wall_step_ms,
                    remote_skew_ms,
                    remote_logical,
                }
            }
        ),
    ]
}

fn shifted(base: u64, delta: i64) -> u64 {
    base.saturating_add_signed(delta)
}

/// The HLC surface the checker drives, so a deliberately broken clock can be
/// run through the same check.
trait ClockUnderTest: Clone + PartialEq + std::fmt::Debug {
    fn now(&mut self, wall_ms: u64) -> HlcTimestamp;
    fn update(&mut self, remote: HlcTimestamp, wall_ms: u64) -> Result<HlcTimestamp, ClockError>;
}

impl ClockUnderTest for Hlc {
    fn now(&mut self, wall_ms: u64) -> HlcTimestamp {
        Hlc::now(self, wall_ms)
    }
    fn update(&mut self, remote: HlcTimestamp, wall_ms: u64) -> Result<HlcTimestamp, ClockError> {
        Hlc::update(self, remote, wall_ms)
    }
}

/// Checks an HLC against its guarantees over one run of inputs: readings
/// strictly increase, an accepted update is after the remote reading, a
/// remote reading is rejected exactly when it is beyond the offset bound and
/// a rejection leaves the clock as it was, and readings never fall behind
/// the wall clock nor run more than one millisecond (of logical spill) ahead
/// of the largest physical time seen.
fn check_hlc_run(mut clock: impl ClockUnderTest, inputs: &[HlcInput]) -> Result<(), String> {
    let mut wall_ms = 1_000_000u64;
    let mut previous: Option<HlcTimestamp> = None;
    let mut seen_physical_ms = 0u64;
    for input in inputs {
        let reading = match *input {
            HlcInput::Now { wall_step_ms } => {
                wall_ms = shifted(wall_ms, wall_step_ms);
                clock.now(wall_ms)
            }
            HlcInput::Update {
                wall_step_ms,
                remote_skew_ms,
                remote_logical,
            } => {
                wall_ms = shifted(wall_ms, wall_step_ms);
                let remote = HlcTimestamp::new(shifted(wall_ms, remote_skew_ms), remote_logical);
                let within_bound = remote.physical_ms <= wall_ms + OFFSET_MS;
                let before = clock.clone();
                match clock.update(remote, wall_ms) {
                    Ok(reading) if within_bound && reading > remote => {
                        seen_physical_ms = seen_physical_ms.max(remote.physical_ms);
                        reading
                    }
                    Ok(reading) => {
                        return Err(format!("accepted {remote} at wall {wall_ms} as {reading}"));
                    }
                    Err(error) => {
                        let expected = ClockError::RemoteTooFarAhead {
                            remote,
                            wall_ms,
                            max_offset_ms: OFFSET_MS,
                        };
                        if within_bound || error != expected || clock != before {
                            return Err(format!(
                                "bad rejection of {remote} at wall {wall_ms}: {error}"
                            ));
                        }
                        continue;
                    }
                }
            }
        };
        seen_physical_ms = seen_physical_ms.max(wall_ms);
        if previous.is_some_and(|p| reading <= p) {
            return Err(format!("{reading} is not after {previous:?}"));
        }
        if reading.physical_ms < wall_ms || reading.physical_ms > seen_physical_ms + 1 {
            return Err(format!(
                "{reading} strays from wall {wall_ms} / seen {seen_physical_ms}"
            ));
        }
        previous = Some(reading);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hlc_readings_strictly_increase_and_rejections_change_nothing(
        inputs in prop::collection::vec(hlc_input(), 1..40),
    ) {
        check_hlc_run(Hlc::new(OFFSET_MS), &inputs).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn lamport_times_strictly_increase_past_every_observed_time(
        inputs in prop::collection::vec(prop::option::of(0u64..1_000), 1..40),
    ) {
        let mut clock = LamportClock::new();
        let mut previous = 0;
        for input in inputs {
            let time = match input {
                None => clock.tick(),
                Some(remote) => {
                    let time = clock.observe(remote).expect("remote is within the bound");
                    prop_assert!(time > remote);
                    time
                }
            };
            prop_assert!(time > previous);
            previous = time;
        }
    }
}

// ------------------------------------------------------------------ DVV-set

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dvv_sync_is_commutative_associative_idempotent_and_exact((a, b, c) in dvv_triple()) {
        check_sync(synced, &a, &b, &c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn dvv_update_discards_exactly_the_values_its_context_saw(
        (set, read, _c) in dvv_triple(),
        node in 0u64..REPLICAS as u64,
    ) {
        let context = read.join();
        let mut after = set.clone();
        let node = NodeId(node);
        let dot = after.update(&context, node, u32::MAX);
        // The new dot is fresh: neither the set nor the context had it.
        prop_assert_eq!(dot.counter, set.join().counter(node).max(context.counter(node)) + 1);
        let mut expected: BTreeSet<_> =
            dotted(&set).into_iter().filter(|(d, _)| !context.contains(*d)).collect();
        expected.insert((dot, u32::MAX));
        prop_assert_eq!(dotted(&after), expected);
        let mut history = merged(&set.join(), &context);
        history.increment(node);
        prop_assert_eq!(after.join(), history);
    }
}

type Sync = fn(&DvvSet<u32>, &DvvSet<u32>) -> DvvSet<u32>;

/// Checks that `sync` is commutative, associative and idempotent with the
/// empty set as identity, and that it keeps exactly the values DVV semantics
/// keep: a value survives if both sides hold it, or one side holds it and
/// the other never saw its dot (Preguiça et al., DVV sync).
fn check_sync(sync: Sync, a: &DvvSet<u32>, b: &DvvSet<u32>, c: &DvvSet<u32>) -> Result<(), String> {
    let ab = sync(a, b);
    let fail = |law: &str| Err(format!("{law} fails for a = {a:?}, b = {b:?}, c = {c:?}"));
    if ab != sync(b, a) {
        return fail("commutativity");
    }
    if sync(&ab, c) != sync(a, &sync(b, c)) {
        return fail("associativity");
    }
    if &sync(a, a) != a || &sync(a, &DvvSet::new()) != a {
        return fail("idempotence or identity");
    }
    let (ja, jb) = (a.join(), b.join());
    let (da, db) = (dotted(a), dotted(b));
    let expected: BTreeSet<_> = da
        .iter()
        .filter(|(dot, _)| db.iter().any(|(d, _)| d == dot) || !jb.contains(*dot))
        .chain(db.iter().filter(|(dot, _)| !ja.contains(*dot)))
        .copied()
        .collect();
    if dotted(&ab) != expected || ab.join() != merged(&ja, &jb) {
        return fail("exact survival");
    }
    Ok(())
}

#[test]
fn the_sync_check_catches_a_replica_that_ignores_a_superseding_peer() {
    // Planted violation: a replica whose history covers the peer's keeps its
    // own values, so a value the peer superseded comes back (Riak
    // dvvset.erl sync_test's W and Z).
    let stubborn: Sync = |a, b| {
        if a.join().dominates(&b.join()) {
            a.clone()
        } else {
            synced(a, b)
        }
    };
    let mut z = DvvSet::new();
    z.update(&VersionVector::new(), NodeId(0), 1);
    let saw_first = z.join();
    z.update(&VersionVector::new(), NodeId(0), 2);
    let mut w = DvvSet::new();
    w.discard(&saw_first);
    assert!(check_sync(stubborn, &z, &w, &w).is_err());
    assert_eq!(check_sync(synced, &z, &w, &w), Ok(()));
}

/// One read-modify-write client of the sibling-bound tests.
#[derive(Clone, Default)]
struct Client {
    /// The context of the client's last read, if it has read since writing.
    context: Option<VersionVector>,
}

/// Runs `schedule` (client indices) against replicas with sticky sessions
/// (client `i` uses replica `i % replicas`) and syncs between them; each
/// scheduled turn is either a read or, after a read, a write. Returns the
/// largest sibling count any replica ever held.
fn max_siblings(
    clients: usize,
    replicas: usize,
    schedule: &[(usize, Option<(usize, usize)>)],
    keep_context: bool,
) -> usize {
    let mut sets = vec![DvvSet::new(); replicas];
    let mut state = vec![Client::default(); clients];
    let mut worst = 0;
    for (turn, &(who, sync)) in schedule.iter().enumerate() {
        let (client, replica) = (who % clients, who % clients % replicas);
        match state[client].context.take() {
            None => state[client].context = Some(sets[replica].join()),
            Some(read) => {
                // A broken client that drops its context writes blind.
                let context = if keep_context {
                    read
                } else {
                    VersionVector::new()
                };
                sets[replica].update(&context, NodeId(replica as u64), turn);
            }
        }
        if let Some((from, to)) = sync {
            let source = sets[from % replicas].clone();
            sets[to % replicas].sync(&source);
        }
        worst = worst.max(sets.iter().map(DvvSet::size).max().unwrap_or(0));
    }
    worst
}

fn schedule() -> impl Strategy<Value = Vec<(usize, Option<(usize, usize)>)>> {
    prop::collection::vec(
        (
            any::<usize>(),
            prop::option::weighted(0.2, any::<(usize, usize)>()),
        ),
        0..120,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dvv_siblings_are_bounded_by_concurrent_writers_not_history(
        clients in 1usize..6,
        replicas in 1usize..4,
        turns in schedule(),
    ) {
        // Preguiça et al., DVV: each read-modify-write supersedes what it
        // read, so at most one live value per client remains anywhere.
        prop_assert!(max_siblings(clients, replicas, &turns, true) <= clients);
        // Sequential writers (one client) never leave more than one value.
        prop_assert!(max_siblings(1, replicas, &turns, true) <= 1);
    }
}

/// A broken clock for the planted-violation test: it stamps raw wall-clock
/// time, as last-writer-wins by wall clock would, and ignores remote readings.
#[derive(Clone, Debug, PartialEq)]
struct WallClockOnly;

impl ClockUnderTest for WallClockOnly {
    fn now(&mut self, wall_ms: u64) -> HlcTimestamp {
        HlcTimestamp::new(wall_ms, 0)
    }
    fn update(&mut self, _remote: HlcTimestamp, wall_ms: u64) -> Result<HlcTimestamp, ClockError> {
        Ok(HlcTimestamp::new(wall_ms, 0))
    }
}

#[test]
fn the_hlc_check_catches_a_raw_wall_clock() {
    // Planted violation: two events in one millisecond get the same stamp,
    // and a remote reading from a clock ahead is not moved past.
    let same_ms = [
        HlcInput::Now { wall_step_ms: 0 },
        HlcInput::Now { wall_step_ms: 0 },
    ];
    assert!(check_hlc_run(WallClockOnly, &same_ms).is_err());
    let remote_ahead = [HlcInput::Update {
        wall_step_ms: 0,
        remote_skew_ms: 100,
        remote_logical: 0,
    }];
    assert!(check_hlc_run(WallClockOnly, &remote_ahead).is_err());
    assert_eq!(check_hlc_run(Hlc::new(OFFSET_MS), &same_ms), Ok(()));
    assert_eq!(check_hlc_run(Hlc::new(OFFSET_MS), &remote_ahead), Ok(()));
}

#[test]
fn the_sibling_bound_check_catches_clients_that_drop_their_context() {
    // Planted violation: blind writes are concurrent with everything, so two
    // clients writing ten times each pile up twenty siblings.
    let turns: Vec<_> = (0..40).map(|turn| (turn % 2, None)).collect();
    assert_eq!(max_siblings(2, 1, &turns, true), 2);
    assert_eq!(max_siblings(2, 1, &turns, false), 20);
}

#[test]
fn a_blind_write_survives_as_a_sibling_and_a_read_write_resolves_it() {
    let node = NodeId(1);
    let mut key = DvvSet::new();
    key.update(&VersionVector::new(), node, "first");
    let read = key.join();
    key.update(&VersionVector::new(), node, "blind");
    assert_eq!(
        key.values().copied().collect::<Vec<_>>(),
        ["first", "blind"]
    );
    // A write carrying the first read supersedes only what that read saw.
    key.update(&read, node, "edit");
    assert_eq!(key.values().copied().collect::<Vec<_>>(), ["blind", "edit"]);
    key.update(&key.join(), node, "merged");
    assert_eq!(key.values().copied().collect::<Vec<_>>(), ["merged"]);
}

// ------------------------------------------------------------------ codec

fn dot() -> impl Strategy<Value = Dot> {
    (any::<u64>(), 1..=calm_clock::COUNTER_MAX)
        .prop_map(|(node, counter)| Dot::new(NodeId(node), counter))
}

fn timestamp() -> impl Strategy<Value = HlcTimestamp> {
    any::<(u64, u32)>().prop_map(|(physical_ms, logical)| HlcTimestamp::new(physical_ms, logical))
}

fn causality() -> impl Strategy<Value = Causality> {
    prop_oneof![
        Just(Causality::Before),
        Just(Causality::After),
        Just(Causality::Equal),
        Just(Causality::Concurrent),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_wire_type_round_trips(
        d in dot(),
        ts in timestamp(),
        offset_ms in any::<u64>(),
        lamport in 0..=calm_clock::COUNTER_MAX,
        v in vv(),
        (set, _b, _c) in dvv_triple(),
        causality in causality(),
    ) {
        prop_assert_eq!(Dot::decode(&d.encode()), Ok(d));
        prop_assert_eq!(HlcTimestamp::decode(&ts.encode()), Ok(ts));
        let hlc = Hlc::resume(ts, offset_ms);
        prop_assert_eq!(Hlc::decode(&hlc.encode()), Ok(hlc));
        let mut clock = LamportClock::new();
        clock.observe(lamport.saturating_sub(1)).expect("within the bound");
        prop_assert_eq!(LamportClock::decode(&clock.encode()), Ok(clock));
        prop_assert_eq!(VersionVector::decode(&v.encode()), Ok(v.clone()));
        prop_assert_eq!(DvvSet::<u32>::decode(&set.encode()), Ok(set.clone()));
        prop_assert_eq!(codec::decode::<Causality>(&codec::encode(&causality)), Ok(causality));
        // Nested in another message, the serde path agrees.
        let nested = (v.clone(), set.clone());
        prop_assert_eq!(codec::decode::<(VersionVector, DvvSet<u32>)>(&codec::encode(&nested)), Ok(nested));
    }

    #[test]
    fn corrupted_bytes_decode_to_an_error_or_a_state_that_works(
        (set, _b, _c) in dvv_triple(),
        v in vv(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        truncate in prop::option::of(any::<usize>()),
    ) {
        // What a fuzzer does, seeded: overwrite bytes of valid encodings and
        // check that decoding never panics and that whatever it accepts
        // survives every operation.
        let corrupt = |mut bytes: Vec<u8>| {
            for &(at, byte) in &edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes[0] = FORMAT_VERSION;
            if let Some(len) = truncate {
                bytes.truncate(len % (bytes.len() + 1));
            }
            bytes
        };
        if let Ok(mut decoded) = DvvSet::<u32>::decode(&corrupt(set.encode())) {
            exercise_dvv(&mut decoded, &set);
        }
        if let Ok(mut decoded) = VersionVector::decode(&corrupt(v.encode())) {
            decoded.increment(NodeId(0));
            decoded.merge(&v);
            let _ = decoded.compare(&v);
            prop_assert_eq!(VersionVector::decode(&decoded.encode()), Ok(decoded));
        }
        for bytes in [corrupt(Dot::new(NodeId(1), 1).encode()), corrupt(LamportClock::new().encode())] {
            if let Ok(mut clock) = LamportClock::decode(&bytes) {
                clock.tick();
            }
            let _ = Dot::decode(&bytes);
            let _ = Hlc::decode(&bytes);
        }
    }
}

/// Runs every DVV-set operation on a decoded set, which must not panic.
fn exercise_dvv(decoded: &mut DvvSet<u32>, other: &DvvSet<u32>) {
    let size = decoded.size();
    assert_eq!(decoded.values().count(), size);
    assert_eq!(decoded.dotted_values().count(), size);
    decoded.sync(other);
    let mut reverse = other.clone();
    reverse.sync(decoded);
    let context = decoded.join();
    decoded.update(&context, NodeId(0), 0);
    assert_eq!(decoded.size(), 1);
    assert_eq!(
        DvvSet::<u32>::decode(&decoded.encode()).as_ref(),
        Ok(&*decoded)
    );
}

#[test]
fn decoders_name_the_broken_invariant() {
    // A DVV-set entry (node 1, counter 1) holding two values.
    let forged = codec::encode(&std::collections::BTreeMap::from([(
        NodeId(1),
        (1u64, vec![5u32, 6]),
    )]));
    assert!(
        matches!(DvvSet::<u32>::decode(&forged), Err(DecodeError::Invalid(m)) if m.contains("2 values"))
    );
    assert_eq!(VersionVector::decode(&[]), Err(DecodeError::Empty));
}
