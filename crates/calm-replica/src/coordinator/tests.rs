//! Tests of the coordinator: quorum arithmetic, fastest-W writes and
//! hints, fastest-R reads, hedging, read repair, timeouts and refusals.

use std::collections::BTreeMap;

use calm_ring::Replica;
use calm_types::codec::DecodeError;
use proptest::prelude::*;

use super::*;
use crate::kv::KvLimits;

const KEY: &[u8] = b"k";

fn n(id: u64) -> NodeId {
    NodeId(id)
}

/// A preference list of up owners in the order given.
fn owners(nodes: &[u64]) -> PreferenceList {
    PreferenceList {
        owners: nodes.iter().map(|&id| n(id)).collect(),
        replicas: nodes
            .iter()
            .map(|&id| Replica {
                node: n(id),
                stands_in_for: None,
            })
            .collect(),
    }
}

/// Owners 1, 2, 3 with 2 down and 4 standing in for it.
fn with_fallback() -> PreferenceList {
    let replica = |node, stands_in_for| Replica {
        node: n(node),
        stands_in_for,
    };
    PreferenceList {
        owners: vec![n(1), n(2), n(3)],
        replicas: vec![replica(1, None), replica(3, None), replica(4, Some(n(2)))],
    }
}

fn quorum(n: usize, r: usize, w: usize) -> Quorum {
    Quorum::new(n, r, w).unwrap()
}

fn request(id: u64, quorum: Quorum) -> KvRequest {
    KvRequest::new(RequestId(id), KEY.to_vec(), quorum)
}

/// An object holding the values `values`, written blind in that order by
/// `node`.
fn object(node: u64, values: &[&[u8]]) -> KvObject {
    let mut out = KvObject::new();
    for value in values {
        out.put(KEY, &[], n(node), value.to_vec(), &KvLimits::default())
            .unwrap();
    }
    out
}

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        read_timeout_ms: 500,
        write_timeout_ms: 500,
        hedge_delay_min_ms: 5,
        hedge_delay_max_ms: 50,
        ..CoordinatorConfig::default()
    }
}

/// The messages among `effects`, by destination.
fn sends(effects: &[Effect]) -> Vec<(NodeId, &KvMessage)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, message } => Some((*to, message)),
            _ => None,
        })
        .collect()
}

/// The destinations of the sends among `effects`.
fn destinations(effects: &[Effect]) -> Vec<NodeId> {
    sends(effects).into_iter().map(|(to, _)| to).collect()
}

/// The client replies among `effects`.
fn replies(effects: &[Effect]) -> Vec<&Result<Outcome, CoordinatorError>> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Reply { result, .. } => Some(result),
            _ => None,
        })
        .collect()
}

fn stored(id: u64) -> KvReply {
    KvReply::Stored {
        request: RequestId(id),
    }
}

fn fetched(id: u64, object: KvObject) -> KvReply {
    KvReply::Fetched {
        request: RequestId(id),
        object,
    }
}

#[test]
fn a_straggler_never_holds_a_quorum_write() {
    let mut c = Coordinator::new(config());
    let written = object(1, &[b"v"]);
    c.start_write(
        request(1, Quorum::DEFAULT),
        written.clone(),
        &owners(&[1, 2, 3]),
        0,
    )
    .unwrap();
    let effects = c.take_effects();
    // Dynamo §4.5: the write goes to all N at once, not to W of them.
    assert_eq!(destinations(&effects), [n(1), n(2), n(3)]);
    assert!(effects.contains(&Effect::SetTimer { at_ms: 500 }));

    c.step(n(3), stored(1), 4);
    assert!(replies(&c.take_effects()).is_empty());
    c.step(n(1), stored(1), 6);
    let effects = c.take_effects();
    assert_eq!(
        replies(&effects),
        [&Ok(Outcome::Written { acks: 2, hinted: 0 })]
    );
    // The straggler's ack, long after, changes nothing and ends the request.
    assert_eq!(c.in_flight(), 1);
    c.step(n(2), stored(1), 400);
    assert!(c.take_effects().is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_write_to_a_fallback_carries_a_hint_naming_the_down_owner() {
    let mut c = Coordinator::new(config());
    c.start_write(
        request(1, quorum(3, 2, 3)),
        object(1, &[b"v"]),
        &with_fallback(),
        0,
    )
    .unwrap();
    let effects = c.take_effects();
    let hints: Vec<(NodeId, Option<NodeId>)> = sends(&effects)
        .into_iter()
        .map(|(to, message)| match message {
            KvMessage::Store { hint, .. } => (to, *hint),
            other => panic!("a write sends only stores, not {other:?}"),
        })
        .collect();
    assert_eq!(hints, [(n(1), None), (n(3), None), (n(4), Some(n(2)))]);
    for node in [1, 3, 4] {
        c.step(n(node), stored(1), 1);
    }
    // Sloppy quorum: the fallback's ack counts towards W.
    assert_eq!(
        replies(&c.take_effects()),
        [&Ok(Outcome::Written { acks: 3, hinted: 1 })]
    );
}

#[test]
fn without_sloppy_quorum_fallbacks_are_not_used_and_nothing_is_sent() {
    let mut c = Coordinator::new(config());
    let mut strict = request(1, quorum(3, 2, 3));
    strict.sloppy_quorum = false;
    assert_eq!(
        c.start_write(strict, object(1, &[b"v"]), &with_fallback(), 0),
        Err(CoordinatorError::Unavailable { needed: 3, up: 2 })
    );
    assert!(c.take_effects().is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn r_one_replies_at_the_first_answer() {
    let mut c = Coordinator::new(config());
    let one = Quorum::DEFAULT
        .for_request(Level::One, Overrides::default())
        .unwrap();
    c.start_read(request(1, one), &owners(&[1, 2, 3]), 0)
        .unwrap();
    assert_eq!(destinations(&c.take_effects()), [n(1)]);
    let value = object(1, &[b"v"]);
    c.step(n(1), fetched(1, value.clone()), 3);
    assert_eq!(
        replies(&c.take_effects()),
        [&Ok(Outcome::Read {
            object: value,
            replies: 1
        })]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_hedge_fires_only_after_the_delay_and_is_won_when_its_reply_completes_the_quorum() {
    let mut c = Coordinator::new(config());
    // No latencies measured yet: the delay is the configured maximum.
    assert_eq!(c.hedge_delay_ms(), 50);
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    let effects = c.take_effects();
    assert_eq!(destinations(&effects), [n(1), n(2)]);
    assert!(effects.contains(&Effect::SetTimer { at_ms: 50 }));
    c.step(n(1), fetched(1, KvObject::new()), 10);
    c.tick(49);
    assert!(c.take_effects().is_empty(), "no hedge before the delay");
    assert_eq!(c.stats().hedges_sent, 0);

    c.tick(50);
    assert_eq!(destinations(&c.take_effects()), [n(3)]);
    assert_eq!(c.stats().hedges_sent, 1);
    c.step(n(3), fetched(1, KvObject::new()), 55);
    assert_eq!(replies(&c.take_effects()).len(), 1);
    assert_eq!(c.stats().hedges_won, 1);
    // The slow replica answers last: no second reply, no second hedge.
    c.step(n(2), fetched(1, KvObject::new()), 90);
    c.tick(1_000);
    assert!(replies(&c.take_effects()).is_empty());
    assert_eq!((c.stats().hedges_sent, c.stats().timeouts), (1, 0));
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_hedge_that_the_original_replica_beats_is_sent_but_not_won() {
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.step(n(1), fetched(1, KvObject::new()), 10);
    c.tick(50);
    c.step(n(2), fetched(1, KvObject::new()), 52);
    assert_eq!(replies(&c.take_effects()).len(), 1);
    assert_eq!((c.stats().hedges_sent, c.stats().hedges_won), (1, 0));
}

#[test]
fn a_read_that_completes_before_the_delay_sends_no_hedge() {
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.take_effects();
    c.step(n(1), fetched(1, KvObject::new()), 10);
    c.step(n(2), fetched(1, KvObject::new()), 12);
    c.tick(50);
    let effects = c.take_effects();
    assert_eq!(replies(&effects).len(), 1);
    assert!(destinations(&effects).is_empty());
    assert_eq!(c.stats().hedges_sent, 0);
}

#[test]
fn the_hedge_delay_is_the_recent_p95_within_its_bounds() {
    // (latencies recorded, expected delay with bounds [5, 50])
    fn check(latencies: &[u64], expected: u64) {
        let mut tracker = LatencyTracker::default();
        for &latency in latencies {
            tracker.record(latency);
        }
        assert_eq!(tracker.hedge_delay_ms(5, 50), expected, "{latencies:?}");
    }
    let ramp: Vec<u64> = (1..=40).collect();
    check(&[], 50);
    check(&[1; LATENCY_SAMPLES_MIN - 1], 50);
    // Nearest rank: the 38th of 40 sorted samples.
    check(&ramp, 38);
    check(&[1; LATENCY_SAMPLES_MIN], 5);
    check(&[900; LATENCY_SAMPLES_MIN], 50);
    // Only the newest LATENCY_SAMPLES count: old slow samples age out.
    let mut aged = vec![45; LATENCY_SAMPLES];
    aged.extend([20; LATENCY_SAMPLES]);
    check(&aged, 20);
}

#[test]
fn the_coordinator_hedges_after_the_measured_p95() {
    let mut c = Coordinator::new(config());
    // Warm the tracker with reads whose replicas answer in 20 ms.
    for id in 0..LATENCY_SAMPLES_MIN as u64 {
        let start = id * 100;
        c.start_read(request(id, quorum(1, 1, 1)), &owners(&[1]), start)
            .unwrap();
        c.step(n(1), fetched(id, KvObject::new()), start + 20);
    }
    assert_eq!(c.hedge_delay_ms(), 20);
    c.take_effects();
    c.start_read(request(99, Quorum::DEFAULT), &owners(&[1, 2, 3]), 10_000)
        .unwrap();
    assert!(
        c.take_effects()
            .contains(&Effect::SetTimer { at_ms: 10_020 })
    );
    c.tick(10_020);
    assert_eq!(destinations(&c.take_effects()), [n(3)]);
}

#[test]
fn divergent_replies_produce_repairs_to_exactly_the_stale_replicas() {
    let mut c = Coordinator::new(config());
    let all = Quorum::DEFAULT
        .for_request(Level::All, Overrides::default())
        .unwrap();
    c.start_read(request(1, all), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.take_effects();
    // Node 1 is current; node 2 misses the second write (a strict causal
    // predecessor); node 3 has nothing.
    let old = object(1, &[b"v1"]);
    let mut current = old.clone();
    let context = current.get(KEY).context;
    current
        .put(KEY, &context, n(1), b"v2".to_vec(), &KvLimits::default())
        .unwrap();
    c.step(n(1), fetched(1, current.clone()), 1);
    c.step(n(2), fetched(1, old), 2);
    c.step(n(3), fetched(1, KvObject::new()), 3);
    let effects = c.take_effects();
    assert_eq!(
        replies(&effects),
        [&Ok(Outcome::Read {
            object: current.clone(),
            replies: 3
        })]
    );
    let repair = KvMessage::Repair {
        key: KEY.to_vec(),
        object: current.clone(),
        hint: None,
    };
    assert_eq!(sends(&effects), [(n(2), &repair), (n(3), &repair)]);
    assert_eq!(c.stats().read_repairs, 2);
}

#[test]
fn concurrent_siblings_repair_every_replica_that_lacks_one() {
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.take_effects();
    let (left, right) = (object(1, &[b"a"]), object(2, &[b"b"]));
    c.step(n(1), fetched(1, left.clone()), 1);
    c.step(n(2), fetched(1, right.clone()), 2);
    let effects = c.take_effects();
    let mut merged = left;
    merged.merge(&right);
    assert_eq!(merged.sibling_count(), 2);
    assert_eq!(destinations(&effects), [n(1), n(2)]);
    assert_eq!(c.stats().read_repairs, 2);
}

#[test]
fn a_late_reply_that_is_stale_is_repaired_and_one_that_is_current_is_not() {
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    let value = object(1, &[b"v"]);
    c.step(n(1), fetched(1, value.clone()), 1);
    c.tick(50); // hedge to 3
    c.step(n(3), fetched(1, value.clone()), 51);
    assert_eq!(c.stats().read_repairs, 0);
    c.take_effects();
    // Node 2 answers after the reply, with nothing: it gets the merge.
    c.step(n(2), fetched(1, KvObject::new()), 60);
    assert_eq!(destinations(&c.take_effects()), [n(2)]);
    assert_eq!(c.stats().read_repairs, 1);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn invalid_n_r_w_and_unknown_levels_are_rejected_with_clear_errors() {
    fn check(result: Result<Quorum, QuorumError>, expected: Result<Quorum, QuorumError>) {
        assert_eq!(result, expected);
    }
    check(Quorum::new(3, 2, 2), Ok(Quorum::DEFAULT));
    check(Quorum::new(0, 1, 1), Err(QuorumError::NoReplicas));
    check(
        Quorum::new(REPLICAS_MAX + 1, 1, 1),
        Err(QuorumError::ReplicasBeyondLimit {
            n: REPLICAS_MAX + 1,
            n_max: REPLICAS_MAX,
        }),
    );
    check(
        Quorum::new(3, 4, 2),
        Err(QuorumError::ReadQuorumOutOfRange { r: 4, n: 3 }),
    );
    check(
        Quorum::new(3, 0, 2),
        Err(QuorumError::ReadQuorumOutOfRange { r: 0, n: 3 }),
    );
    check(
        Quorum::new(3, 2, 0),
        Err(QuorumError::WriteQuorumOutOfRange { w: 0, n: 3 }),
    );
    let keyspace = Quorum::DEFAULT;
    let level = |level, overrides| keyspace.for_request(level, overrides);
    check(
        level(Level::One, Overrides::default()),
        Quorum::new(3, 1, 1),
    );
    check(level(Level::Quorum, Overrides::default()), Ok(keyspace));
    check(
        level(Level::All, Overrides::default()),
        Quorum::new(3, 3, 3),
    );
    let five = Overrides {
        n: Some(5),
        ..Overrides::default()
    };
    check(level(Level::All, five), Quorum::new(5, 5, 5));
    let one_replica = Overrides {
        n: Some(1),
        ..Overrides::default()
    };
    check(
        level(Level::Quorum, one_replica),
        Err(QuorumError::ReadQuorumOutOfRange { r: 2, n: 1 }),
    );
    let w_three = Overrides {
        w: Some(3),
        ..Overrides::default()
    };
    check(level(Level::One, w_three), Quorum::new(3, 1, 3));

    assert_eq!("quorum".parse::<Level>(), Ok(Level::Quorum));
    assert_eq!(
        "linearizable".parse::<Level>(),
        Err(QuorumError::UnknownLevel {
            level: "linearizable".into()
        })
    );
    let long = "x".repeat(1_000);
    let Err(QuorumError::UnknownLevel { level }) = long.parse::<Level>() else {
        panic!("a long unknown level is refused");
    };
    assert_eq!(level.len(), LEVEL_NAME_ECHO_MAX);
    for level in [Level::One, Level::Quorum, Level::All] {
        assert_eq!(level.name().parse::<Level>(), Ok(level));
    }
}

#[test]
fn n_beyond_the_cluster_is_refused_before_anything_is_sent() {
    let mut c = Coordinator::new(config());
    assert_eq!(
        c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2]), 0),
        Err(CoordinatorError::Quorum(
            QuorumError::ReplicasBeyondCluster { n: 3, members: 2 }
        ))
    );
    assert!(c.take_effects().is_empty());
}

#[test]
fn a_write_without_w_acks_by_the_deadline_is_in_doubt() {
    let mut c = Coordinator::new(config());
    c.start_write(
        request(1, Quorum::DEFAULT),
        object(1, &[b"v"]),
        &owners(&[1, 2, 3]),
        0,
    )
    .unwrap();
    c.step(n(1), stored(1), 5);
    c.tick(499);
    assert!(replies(&c.take_effects()).is_empty());
    c.tick(500);
    assert_eq!(
        replies(&c.take_effects()),
        [&Err(CoordinatorError::WriteInDoubt { acks: 1, needed: 2 })]
    );
    assert_eq!((c.stats().timeouts, c.in_flight()), (1, 0));
    // An ack after the deadline is late and answers nothing.
    c.step(n(2), stored(1), 501);
    assert!(c.take_effects().is_empty());
    assert_eq!(c.stats().late_replies, 1);
}

#[test]
fn a_read_without_r_replies_by_the_deadline_times_out() {
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.step(n(1), fetched(1, KvObject::new()), 5);
    c.tick(500);
    assert_eq!(
        replies(&c.take_effects()),
        [&Err(CoordinatorError::ReadTimeout {
            replies: 1,
            needed: 2
        })]
    );
    assert_eq!(c.stats().timeouts, 1);
}

#[test]
fn a_write_that_can_no_longer_reach_w_is_in_doubt_at_once() {
    let mut c = Coordinator::new(config());
    c.start_write(
        request(1, Quorum::DEFAULT),
        object(1, &[b"v"]),
        &owners(&[1, 2, 3]),
        0,
    )
    .unwrap();
    c.step(n(1), stored(1), 1);
    c.step(
        n(2),
        KvReply::Failed {
            request: RequestId(1),
        },
        2,
    );
    assert!(
        replies(&c.take_effects()).is_empty(),
        "node 3 may still ack"
    );
    c.step(
        n(3),
        KvReply::Failed {
            request: RequestId(1),
        },
        3,
    );
    assert_eq!(
        replies(&c.take_effects()),
        [&Err(CoordinatorError::WriteInDoubt { acks: 1, needed: 2 })]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_failed_read_replica_is_replaced_by_the_next_one_at_once() {
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.take_effects();
    c.step(
        n(2),
        KvReply::Failed {
            request: RequestId(1),
        },
        1,
    );
    assert_eq!(destinations(&c.take_effects()), [n(3)]);
    c.step(
        n(1),
        KvReply::Failed {
            request: RequestId(1),
        },
        2,
    );
    assert_eq!(
        replies(&c.take_effects()),
        [&Err(CoordinatorError::ReadFailed {
            replies: 0,
            needed: 2
        })]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn answers_from_replicas_not_asked_or_of_the_wrong_kind_are_ignored() {
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.take_effects();
    // Node 3 was not asked (no hedge yet); node 1 answers a read with a
    // write ack, then answers twice.
    c.step(n(3), fetched(1, KvObject::new()), 1);
    c.step(n(1), stored(1), 1);
    c.step(n(1), fetched(1, KvObject::new()), 2);
    c.step(n(1), fetched(1, KvObject::new()), 3);
    assert!(replies(&c.take_effects()).is_empty());
    assert_eq!(c.stats().late_replies, 3);
}

#[test]
fn duplicate_ids_and_requests_beyond_the_in_flight_bound_are_refused() {
    let mut c = Coordinator::new(CoordinatorConfig {
        in_flight_max: 1,
        ..config()
    });
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.take_effects();
    assert_eq!(
        c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0),
        Err(CoordinatorError::DuplicateRequest)
    );
    assert_eq!(
        c.start_write(
            request(2, Quorum::DEFAULT),
            KvObject::new(),
            &owners(&[1, 2, 3]),
            0
        ),
        Err(CoordinatorError::Overloaded { in_flight_max: 1 })
    );
    assert!(c.take_effects().is_empty());
}

#[test]
fn messages_and_replies_round_trip_and_bad_bytes_are_refused() {
    let limits = KvLimits::default();
    let value = object(1, &[b"v"]);
    let messages = [
        KvMessage::Store {
            request: RequestId(7),
            key: KEY.to_vec(),
            object: value.clone(),
            hint: Some(n(2)),
        },
        KvMessage::Fetch {
            request: RequestId(8),
            key: KEY.to_vec(),
            hint: None,
        },
        KvMessage::Repair {
            key: KEY.to_vec(),
            object: value.clone(),
            hint: None,
        },
    ];
    for message in messages {
        assert_eq!(KvMessage::decode(&message.encode(), &limits), Ok(message));
    }
    let replies = [
        stored(1),
        fetched(2, value.clone()),
        KvReply::Failed {
            request: RequestId(3),
        },
    ];
    for reply in replies {
        assert_eq!(KvReply::decode(&reply.encode(), &limits), Ok(reply));
    }

    // A key or value beyond the bounds is refused on decode, before any
    // replica merges it.
    let tight = KvLimits {
        key_bytes_max: 0,
        value_bytes_max: 0,
        ..limits
    };
    let fetch = KvMessage::Fetch {
        request: RequestId(1),
        key: KEY.to_vec(),
        hint: None,
    };
    assert!(matches!(
        KvMessage::decode(&fetch.encode(), &tight),
        Err(DecodeError::Invalid(_))
    ));
    let store = KvMessage::Store {
        request: RequestId(1),
        key: Vec::new(),
        object: value.clone(),
        hint: None,
    };
    assert!(matches!(
        KvMessage::decode(&store.encode(), &tight),
        Err(DecodeError::Invalid(_))
    ));
    assert!(matches!(
        KvReply::decode(&fetched(1, value).encode(), &tight),
        Err(DecodeError::Invalid(_))
    ));
    let bytes = stored(1).encode();
    assert!(KvReply::decode(&bytes[..bytes.len() - 1], &limits).is_err());
    assert!(KvMessage::decode(&[], &limits).is_err());
}

/// How one replica answers in a generated schedule.
#[derive(Clone, Debug)]
enum Behaviour {
    /// Answers `latency_ms` after it is asked; reads get `objects[choice]`.
    Answers { latency_ms: u64, choice: usize },
    /// Answers `Failed` after `latency_ms`.
    Fails { latency_ms: u64 },
    /// Never answers.
    Silent,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        4 => (1..300u64, 0..4usize)
            .prop_map(|(latency_ms, choice)| Behaviour::Answers { latency_ms, choice }),
        1 => (1..300u64).prop_map(|latency_ms| Behaviour::Fails { latency_ms }),
        1 => Just(Behaviour::Silent),
    ]
}

/// Four replica states: empty, a value, its successor, and a concurrent
/// write.
fn objects() -> Vec<KvObject> {
    let limits = KvLimits::default();
    let first = object(1, &[b"a"]);
    let mut next = first.clone();
    let context = next.get(KEY).context;
    next.put(KEY, &context, n(1), b"b".to_vec(), &limits)
        .unwrap();
    vec![KvObject::new(), first, next, object(2, &[b"c"])]
}

/// What a schedule produced: the reply with its time, the answers delivered
/// in time, and the last object each node was sent by a repair.
struct Run {
    reply: Option<(u64, Result<Outcome, CoordinatorError>)>,
    replies: usize,
    /// `(time, node, answer)` of every answer delivered.
    delivered: Vec<(u64, NodeId, KvReply)>,
    repaired: BTreeMap<NodeId, KvObject>,
    stats: CoordinatorStats,
    in_flight_at_end: usize,
}

fn run_schedule(read: bool, quorum: Quorum, behaviours: &[Behaviour]) -> Run {
    let objects = objects();
    let mut c = Coordinator::new(config());
    let list = owners(&[1, 2, 3]);
    let req = request(1, quorum);
    let started = if read {
        c.start_read(req, &list, 0)
    } else {
        c.start_write(req, objects[2].clone(), &list, 0)
    };
    assert_eq!(started, Ok(()));
    let mut due: Vec<(u64, NodeId, KvReply)> = Vec::new();
    let mut run = Run {
        reply: None,
        replies: 0,
        delivered: Vec::new(),
        repaired: BTreeMap::new(),
        stats: CoordinatorStats::default(),
        in_flight_at_end: 0,
    };
    for now in 0..=600 {
        c.tick(now);
        let (arrived, later): (Vec<_>, Vec<_>) = due.into_iter().partition(|(at, ..)| *at <= now);
        due = later;
        for (_, from, answer) in arrived {
            run.delivered.push((now, from, answer.clone()));
            c.step(from, answer, now);
        }
        for effect in c.take_effects() {
            match effect {
                Effect::Reply { result, .. } => {
                    run.replies += 1;
                    run.reply = Some((now, result));
                }
                Effect::Send {
                    to,
                    message: KvMessage::Repair { object, .. },
                } => {
                    run.repaired.insert(to, object);
                }
                Effect::Send { to, .. } => {
                    let id = RequestId(1);
                    let answer = match &behaviours[(to.0 - 1) as usize] {
                        Behaviour::Answers { latency_ms, choice } => Some((
                            *latency_ms,
                            if read {
                                KvReply::Fetched {
                                    request: id,
                                    object: objects[*choice].clone(),
                                }
                            } else {
                                KvReply::Stored { request: id }
                            },
                        )),
                        Behaviour::Fails { latency_ms } => {
                            Some((*latency_ms, KvReply::Failed { request: id }))
                        }
                        Behaviour::Silent => None,
                    };
                    if let Some((latency_ms, answer)) = answer {
                        due.push((now + latency_ms, to, answer));
                    }
                }
                Effect::SetTimer { .. } | Effect::Reap { .. } => {}
            }
        }
    }
    run.stats = c.stats().clone();
    run.in_flight_at_end = c.in_flight();
    run
}

fn quorum_strategy() -> impl Strategy<Value = Quorum> {
    (1..=3usize, 1..=3usize).prop_map(|(r, w)| quorum(3, r, w))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(256),
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xc00d),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_write_is_answered_once_at_its_w_th_ack_and_never_later(
        quorum in quorum_strategy(),
        behaviours in prop::collection::vec(behaviour(), 3),
    ) {
        let run = run_schedule(false, quorum, &behaviours);
        prop_assert_eq!(run.replies, 1);
        prop_assert_eq!(run.in_flight_at_end, 0);
        let acks: Vec<u64> = run
            .delivered
            .iter()
            .filter(|(at, _, answer)| *at < 500 && matches!(answer, KvReply::Stored { .. }))
            .map(|(at, ..)| *at)
            .collect();
        let (at, result) = run.reply.unwrap();
        match result {
            Ok(Outcome::Written { acks: count, .. }) => {
                prop_assert_eq!(count, quorum.w());
                // The reply left at the w-th ack: no straggler held it.
                prop_assert_eq!(at, acks[quorum.w() - 1]);
            }
            Err(CoordinatorError::WriteInDoubt { acks: count, needed }) => {
                prop_assert_eq!(needed, quorum.w());
                prop_assert!(count < needed);
                prop_assert!(acks.len() < needed || acks[needed - 1] > at);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn a_read_is_answered_once_at_its_r_th_reply_and_repairs_every_stale_replica(
        quorum in quorum_strategy(),
        behaviours in prop::collection::vec(behaviour(), 3),
    ) {
        let run = run_schedule(true, quorum, &behaviours);
        prop_assert_eq!(run.replies, 1);
        prop_assert_eq!(run.in_flight_at_end, 0);
        prop_assert!(run.stats.hedges_won <= run.stats.hedges_sent);
        prop_assert!(run.stats.hedges_sent <= 1);
        let (at, result) = run.reply.unwrap();
        let fetched: Vec<&(u64, NodeId, KvReply)> = run
            .delivered
            .iter()
            .filter(|(_, _, answer)| matches!(answer, KvReply::Fetched { .. }))
            .collect();
        let Ok(Outcome::Read { object, replies }) = result else {
            prop_assert!(fetched.len() < quorum.r() || fetched[quorum.r() - 1].0 > at);
            return Ok(());
        };
        prop_assert_eq!(replies, quorum.r());
        prop_assert_eq!(fetched[quorum.r() - 1].0, at);
        // The reply is the merge of the first r replies.
        let mut expected = KvObject::new();
        for (_, _, answer) in &fetched[..quorum.r()] {
            if let KvReply::Fetched { object, .. } = answer {
                expected.merge(object);
            }
        }
        prop_assert_eq!(&object, &expected);
        // After repair, every replica that answered holds the merge of all
        // answers the read saw (late ones before its deadline included).
        let mut merged = KvObject::new();
        for (when, _, answer) in &fetched {
            if let (true, KvReply::Fetched { object, .. }) = (*when < 500, answer) {
                merged.merge(object);
            }
        }
        for (when, node, answer) in &fetched {
            let KvReply::Fetched { object, .. } = answer else { continue };
            if *when >= 500 {
                continue;
            }
            let mut holds = object.clone();
            if let Some(repair) = run.repaired.get(node) {
                holds.merge(repair);
            }
            prop_assert_eq!(&holds, &merged, "{} was left stale", node);
            if object == &merged {
                prop_assert!(!run.repaired.contains_key(node), "{} was current", node);
            }
        }
    }
}

/// An object whose only sibling is a tombstone that superseded a value.
fn tombstone() -> KvObject {
    let limits = KvLimits::default();
    let mut out = object(1, &[b"v"]);
    let context = out.get(KEY).context;
    out.delete(KEY, &context, n(1), &limits).unwrap();
    out
}

/// The reaps among `effects`.
fn reaps(effects: &[Effect]) -> Vec<&KvObject> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Reap { object, .. } => Some(object),
            _ => None,
        })
        .collect()
}

#[test]
fn a_tombstone_is_reaped_only_when_every_owner_answered_with_it() {
    let all = quorum(3, 3, 3);
    let gone = tombstone();
    // Every owner holds the tombstone: it may be collected.
    let mut c = Coordinator::new(config());
    c.start_read(request(1, all), &owners(&[1, 2, 3]), 0)
        .unwrap();
    for node in [1, 2, 3] {
        c.step(n(node), fetched(1, gone.clone()), 1);
    }
    assert_eq!(reaps(&c.take_effects()), [&gone]);
    assert_eq!(c.stats().reaps, 1);

    // One owner still holds the deleted value: repaired, not reaped.
    let mut c = Coordinator::new(config());
    c.start_read(request(1, all), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.take_effects();
    c.step(n(1), fetched(1, gone.clone()), 1);
    c.step(n(2), fetched(1, gone.clone()), 1);
    c.step(n(3), fetched(1, object(1, &[b"v"])), 1);
    let effects = c.take_effects();
    assert!(reaps(&effects).is_empty());
    assert_eq!(destinations(&effects), [n(3)]);

    // A fallback stands in for an owner: not every owner is known to have it.
    let mut c = Coordinator::new(config());
    c.start_read(request(1, all), &with_fallback(), 0).unwrap();
    for node in [1, 3, 4] {
        c.step(n(node), fetched(1, gone.clone()), 1);
    }
    assert!(reaps(&c.take_effects()).is_empty());

    // A quorum read that heard from two of three owners proves nothing.
    let mut c = Coordinator::new(config());
    c.start_read(request(1, Quorum::DEFAULT), &owners(&[1, 2, 3]), 0)
        .unwrap();
    c.step(n(1), fetched(1, gone.clone()), 1);
    c.step(n(2), fetched(1, gone), 1);
    assert!(reaps(&c.take_effects()).is_empty());
    assert_eq!(c.stats().reaps, 0);
}
