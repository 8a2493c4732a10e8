//! The `local` level's guarantees, each checked on a seeded cluster.

use std::collections::{BTreeMap, BTreeSet};

use calm_replica::{
    Ack, CausalToken, Message, ObjectError, ObjectKind, Operation, Output, Replica, ReplicaConfig,
    ReplicaError, Request, RequestId, StepError, Value,
};
use calm_storage::{MemoryEngine, Storage};
use calm_types::NodeId;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::harness::{Cluster, Faults, index, node};

fn ack_token(result: Option<Result<Ack, ReplicaError>>) -> CausalToken {
    result.expect("a reply").expect("an ack").token
}

fn read(
    cluster: &mut Cluster,
    i: usize,
    key: &[u8],
    token: Option<&CausalToken>,
) -> Option<Result<Ack, ReplicaError>> {
    cluster.request(i, key, Operation::Read, token)
}

/// What replicas may differ in: the bounded counter's rights are per node.
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

fn random_op(rng: &mut StdRng, kind: ObjectKind) -> Operation {
    let b = |rng: &mut StdRng| vec![rng.random_range(0..4u8)];
    match kind {
        ObjectKind::Counter if rng.random_bool(0.5) => {
            Operation::Increment(rng.random_range(1..10))
        }
        ObjectKind::Counter => Operation::Decrement(rng.random_range(1..10)),
        ObjectKind::Set if rng.random_bool(0.7) => Operation::SetAdd(b(rng)),
        ObjectKind::Set => Operation::SetRemove(b(rng)),
        ObjectKind::Register => Operation::RegisterSet(b(rng)),
        ObjectKind::MultiRegister => Operation::MultiRegisterWrite(b(rng)),
        ObjectKind::Map => match rng.random_range(0..6) {
            0 => Operation::MapRegisterWrite {
                field: b(rng),
                value: b(rng),
            },
            1 => Operation::MapCounterIncrement {
                field: b(rng),
                amount: 3,
            },
            2 => Operation::MapCounterDecrement {
                field: b(rng),
                amount: 1,
            },
            3 => Operation::MapSetAdd {
                field: b(rng),
                element: b(rng),
            },
            4 => Operation::MapSetRemove {
                field: b(rng),
                element: b(rng),
            },
            _ => Operation::MapRemoveField(b(rng)),
        },
        ObjectKind::BoundedCounter if rng.random_bool(0.5) => Operation::BoundedIncrement(5),
        ObjectKind::BoundedCounter => Operation::BoundedDecrement(rng.random_range(1..4)),
    }
}

const KINDS: [ObjectKind; 6] = [
    ObjectKind::Counter,
    ObjectKind::Set,
    ObjectKind::Register,
    ObjectKind::MultiRegister,
    ObjectKind::Map,
    ObjectKind::BoundedCounter,
];

/// The requests a workload submitted: id, key index, operation.
type Submitted = Vec<(RequestId, usize, Operation)>;

/// Runs a random workload of every kind; returns the cluster after it.
fn random_workload(seed: u64, faults: Faults) -> (Cluster, Vec<Vec<u8>>, Submitted) {
    let mut cluster = Cluster::new(4, seed, faults);
    let keys: Vec<Vec<u8>> = (0..12).map(|i| format!("key{i}").into_bytes()).collect();
    let mut submitted = Vec::new();
    for _ in 0..400 {
        let k = cluster.rng.random_range(0..keys.len());
        let replicas = cluster.replicas_of(&keys[k]);
        let at = replicas[cluster.rng.random_range(0..replicas.len())];
        let op = random_op(&mut cluster.rng, KINDS[k % KINDS.len()]);
        let id = cluster.submit(at, &keys[k], op.clone(), None);
        submitted.push((id, k, op));
        if cluster.rng.random_bool(0.3) {
            cluster.flush(at);
        }
        if cluster.rng.random_bool(0.2) {
            cluster.tick(5);
        }
        let n = cluster.rng.random_range(0..4);
        cluster.deliver_some(n);
    }
    cluster.drain();
    (cluster, keys, submitted)
}

/// The counter total of the acknowledged increments and decrements of key `k`.
fn acked_total(cluster: &Cluster, submitted: &Submitted, k: usize) -> i128 {
    submitted
        .iter()
        .filter(|(id, key, _)| *key == k && cluster.replies[id].result.is_ok())
        .map(|(_, _, op)| match op {
            Operation::Increment(n) | Operation::BoundedIncrement(n) => i128::from(*n),
            Operation::Decrement(n) | Operation::BoundedDecrement(n) => -i128::from(*n),
            _ => 0,
        })
        .sum()
}

#[test]
fn every_crdt_kind_converges_once_messages_drain() {
    // Strong eventual consistency (DESIGN §1, local level): with no loss,
    // duplicated and reordered deltas still bring every replica of a key
    // to the same value; no acknowledged increment is lost (DESIGN §4).
    for seed in 0..8 {
        let faults = Faults {
            loss: 0.0,
            duplication: 0.2,
        };
        let (mut cluster, keys, submitted) = random_workload(seed, faults);
        for (k, key) in keys.iter().enumerate() {
            let replicas = cluster.replicas_of(key);
            let values: Vec<Value> = replicas
                .iter()
                .map(|&i| comparable(cluster.replica(i).peek(key)))
                .collect();
            assert!(
                values.windows(2).all(|w| w[0] == w[1]),
                "seed {seed}, key {key:?}: {values:?}"
            );
            let total = acked_total(&cluster, &submitted, k);
            match &values[0] {
                Value::Counter(value) => assert_eq!(*value, total, "seed {seed}"),
                Value::BoundedCounter { value, .. } => {
                    assert_eq!(*value, total, "seed {seed}");
                    assert!(*value >= 0, "seed {seed}: below the bound");
                }
                Value::Absent => panic!("seed {seed}: every key was written"),
                _ => {}
            }
            let tokens: Vec<CausalToken> = replicas
                .iter()
                .map(|&i| cluster.replica(i).token(key))
                .collect();
            assert!(
                tokens.windows(2).all(|w| w[0] == w[1]),
                "seed {seed}: tokens agree once drained"
            );
        }
    }
}

#[test]
fn under_loss_no_replica_claims_a_write_it_lacks() {
    // Token soundness: a lost or reordered delta makes a replica
    // under-claim, never over-claim. Each add is a unique element, and
    // its ack's token says which (origin, seq) it is.
    for seed in 0..8 {
        let mut cluster = Cluster::new(
            4,
            seed,
            Faults {
                loss: 0.3,
                duplication: 0.2,
            },
        );
        let key = b"adds".to_vec();
        let replicas = cluster.replicas_of(&key);
        let mut written: Written = Vec::new();
        for n in 0..150u32 {
            let at = replicas[cluster.rng.random_range(0..replicas.len())];
            let element = n.to_be_bytes().to_vec();
            let token =
                ack_token(cluster.request(at, &key, Operation::SetAdd(element.clone()), None));
            written.push((element, node(at), token.seq(node(at))));
            cluster.tick(1);
            let k = cluster.rng.random_range(0..5);
            cluster.deliver_some(k);
        }
        let claims = over_claims(&mut cluster, &replicas, &key, &written);
        assert!(claims.is_empty(), "seed {seed}: {claims:?}");
    }
}

/// Elements added to one key: (element, origin, the origin's sequence number).
type Written = Vec<(Vec<u8>, NodeId, u64)>;

/// The writes some replica's token claims while its state lacks them.
fn over_claims(
    cluster: &mut Cluster,
    replicas: &[usize],
    key: &[u8],
    written: &Written,
) -> Vec<String> {
    let mut claims = Vec::new();
    for &i in replicas {
        let token = cluster.replica(i).token(key);
        let set = match cluster.replica(i).peek(key) {
            Value::Set(set) => set,
            Value::Absent => BTreeSet::new(),
            other => panic!("a set, not {other:?}"),
        };
        for (element, origin, seq) in written {
            if *seq <= token.seq(*origin) && !set.contains(element) {
                claims.push(format!("n{} claims {origin}:{seq} without it", i + 1));
            }
        }
    }
    claims
}

#[test]
fn the_claim_checker_catches_a_delta_that_claims_more_writes_than_it_carries() {
    // Planted violation: a forged delta batch says it covers writes 1..=3
    // of the origin but carries only the first.
    let mut cluster = Cluster::new(2, 15, Faults::default());
    let key = b"adds".to_vec();
    let mut written: Written = Vec::new();
    for n in 0..3u8 {
        let token = ack_token(cluster.request(0, &key, Operation::SetAdd(vec![n]), None));
        written.push((vec![n], node(0), token.seq(node(0))));
        cluster.tick(1);
    }
    let (to, first) = cluster.network.remove(0);
    let Ok(Message::Deltas(mut batch)) = Message::decode(&first) else {
        panic!("a delta batch")
    };
    assert_eq!(
        (batch.deltas[0].first_seq, batch.deltas[0].last_seq),
        (1, 1)
    );
    batch.deltas[0].last_seq = 3;
    let now = cluster.now_ms;
    cluster
        .replica(index(to))
        .step(&Message::Deltas(batch).encode(), now)
        .expect("well formed");
    let claims = over_claims(&mut cluster, &[0, 1], &key, &written);
    assert_eq!(claims.len(), 2, "{claims:?}");
}

/// One session's history, checked for read-your-writes and monotonic reads
/// (DESIGN §1, session guarantees). Returns the violations found and how
/// many reads were answered (so a run that only times out cannot pass).
fn session_run(seed: u64, broken_node: Option<usize>) -> (Vec<String>, usize) {
    let mut cluster = Cluster::new(
        5,
        seed,
        Faults {
            loss: 0.1,
            duplication: 0.1,
        },
    );
    let mut violations = Vec::new();
    let mut answered = 0;
    for s in 0..6u8 {
        let key = format!("session{s}").into_bytes();
        let replicas = cluster.replicas_of(&key);
        let mut token: Option<CausalToken> = None;
        let mut mine = BTreeSet::new();
        let mut last_seen = BTreeSet::new();
        for step in 0..40u8 {
            let at = replicas[cluster.rng.random_range(0..replicas.len())];
            // The planted violation: a node whose token check is broken,
            // i.e. that ignores the token and answers from whatever it has.
            let presented = if Some(at) == broken_node {
                None
            } else {
                token.as_ref()
            };
            if cluster.rng.random_bool(0.4) {
                let element = vec![s, step];
                if let Some(Ok(ack)) =
                    cluster.request(at, &key, Operation::SetAdd(element.clone()), presented)
                {
                    mine.insert(element);
                    token.get_or_insert(ack.token.clone()).merge(&ack.token);
                }
            } else {
                let id = cluster.submit(at, &key, Operation::Read, presented);
                cluster.flush(at);
                // Let deltas flow while the request may be parked, then time it out.
                for _ in 0..3 {
                    if cluster.replies.contains_key(&id) {
                        break;
                    }
                    cluster.tick(40);
                    let n = cluster.network.len();
                    cluster.deliver_some(n);
                    cluster.flush(at);
                }
                let reply = cluster
                    .replies
                    .remove(&id)
                    .expect("answered or timed out by now");
                match reply.result {
                    Ok(ack) => {
                        answered += 1;
                        let set = match ack.value {
                            Some(Value::Set(set)) => set,
                            Some(Value::Absent) => BTreeSet::new(),
                            other => panic!("a set value, not {other:?}"),
                        };
                        if !mine.is_subset(&set) {
                            violations.push(format!(
                                "seed {seed} session {s}: n{} missed own writes",
                                at + 1
                            ));
                        }
                        if !last_seen.is_subset(&set) {
                            violations.push(format!(
                                "seed {seed} session {s}: n{} went back in time",
                                at + 1
                            ));
                        }
                        last_seen = set;
                        token.get_or_insert(ack.token.clone()).merge(&ack.token);
                    }
                    Err(error) => assert!(error.is_retryable(), "{error}"),
                }
            }
            let n = cluster.rng.random_range(0..3);
            cluster.deliver_some(n);
        }
    }
    (violations, answered)
}

#[test]
fn sessions_read_their_writes_and_read_monotonically_across_nodes() {
    // DESIGN §1: a client carrying its token never sees a state without its
    // own writes, nor an older state than one it saw, at any node.
    let mut answered = 0;
    for seed in 0..10 {
        let (violations, reads) = session_run(seed, None);
        assert!(violations.is_empty(), "{violations:?}");
        answered += reads;
    }
    assert!(answered > 500, "only {answered} reads were answered");
}

#[test]
fn the_session_checker_catches_a_replica_that_ignores_tokens() {
    // Planted violation: node 1 answers without checking the token. The
    // checker above must notice on some seed.
    let found: usize = (0..10).map(|seed| session_run(seed, Some(0)).0.len()).sum();
    assert!(found > 0, "the broken token check went unnoticed");
}

#[test]
fn a_read_with_an_unseen_token_waits_for_catch_up_then_sees_the_write() {
    let mut cluster = Cluster::new(3, 1, Faults::default());
    let key = cluster.key_replicated_at(0, 1, "ryw");
    let token = ack_token(cluster.request(0, &key, Operation::SetAdd(b"x".to_vec()), None));
    // Node 2 has not received the delta: the read is parked, not answered.
    let id = cluster.submit(1, &key, Operation::Read, Some(&token));
    cluster.flush(1);
    assert!(
        !cluster.replies.contains_key(&id),
        "answered without the write"
    );
    cluster.tick(1); // ships node 1's delta
    let n = cluster.network.len();
    cluster.deliver_some(n);
    cluster.flush(1);
    let ack = cluster
        .replies
        .remove(&id)
        .expect("caught up")
        .result
        .expect("an ack");
    assert_eq!(ack.value, Some(Value::Set(BTreeSet::from([b"x".to_vec()]))));
    assert!(ack.token.covers(&token));
}

#[test]
fn a_read_whose_token_is_never_seen_fails_retryably_at_the_deadline() {
    let mut cluster = Cluster::new(
        3,
        2,
        Faults {
            loss: 1.0,
            duplication: 0.0,
        },
    );
    let key = cluster.key_replicated_at(0, 1, "lost");
    let token = ack_token(cluster.request(0, &key, Operation::Increment(1), None));
    let id = cluster.submit(1, &key, Operation::Read, Some(&token));
    cluster.tick(ReplicaConfig::new(node(1)).catch_up_wait_ms - 1);
    assert!(!cluster.replies.contains_key(&id));
    cluster.tick(1);
    let error = cluster
        .replies
        .remove(&id)
        .expect("timed out")
        .result
        .expect_err("no ack");
    let ReplicaError::CatchUpTimeout { replicas } = &error else {
        panic!("{error}")
    };
    assert!(replicas.contains(&node(0)) && error.is_retryable());
}

#[test]
fn acks_are_released_only_by_a_sync_and_one_sync_covers_many_writes() {
    // Durability before ack (DESIGN §1), group commit.
    let mut cluster = Cluster::new(1, 3, Faults::default());
    let ids: Vec<_> = (0..5)
        .map(|_| cluster.submit(0, b"k", Operation::Increment(1), None))
        .collect();
    assert!(cluster.replies.is_empty(), "an ack before the sync");
    assert_eq!(cluster.replica(0).storage().pending_batches(), 5);
    let fsyncs = cluster.replica(0).storage().fsync_count();
    cluster.flush(0);
    assert_eq!(cluster.replica(0).storage().fsync_count(), fsyncs + 1);
    assert!(ids.iter().all(|id| cluster.replies[id].result.is_ok()));
    // A read of a key with unsynced changes waits for the sync too.
    cluster.submit(0, b"k", Operation::Increment(1), None);
    let read = cluster.submit(0, b"k", Operation::Read, None);
    assert!(!cluster.replies.contains_key(&read));
    cluster.flush(0);
    assert_eq!(
        cluster.replies[&read].result.as_ref().expect("ack").value,
        Some(Value::Counter(6))
    );
}

#[test]
fn a_crash_loses_only_unacknowledged_writes() {
    let mut cluster = Cluster::new(1, 4, Faults::default());
    let acked = ack_token(cluster.request(0, b"k", Operation::SetAdd(b"kept".to_vec()), None));
    cluster.submit(0, b"k", Operation::SetAdd(b"lost".to_vec()), None);
    cluster.submit(0, b"other", Operation::Increment(1), None);
    let engine = cluster.replicas[0].take().expect("running").into_storage();
    engine.crash();
    let config = cluster.configs[0].clone();
    let reopened = Replica::open(config, cluster.ring.clone(), engine).expect("reopens");
    assert_eq!(
        reopened.peek(b"k"),
        Value::Set(BTreeSet::from([b"kept".to_vec()]))
    );
    assert_eq!(reopened.peek(b"other"), Value::Absent);
    assert_eq!(
        reopened.token(b"k"),
        acked,
        "the lost write's sequence number is free again"
    );
    cluster.replicas[0] = Some(reopened);
    let again = ack_token(cluster.request(0, b"k", Operation::SetAdd(b"new".to_vec()), None));
    assert_eq!(again.seq(node(0)), 2);
}

#[test]
fn an_operation_of_the_wrong_type_changes_nothing() {
    let mut cluster = Cluster::new(3, 5, Faults::default());
    let token = ack_token(cluster.request(0, b"k", Operation::Increment(3), None));
    cluster.drain();
    let batches = cluster.replica(0).storage().pending_batches();
    let result = cluster.request(0, b"k", Operation::SetAdd(b"x".to_vec()), None);
    let expected = ObjectError::WrongType {
        found: ObjectKind::Counter,
        expected: ObjectKind::Set,
    };
    assert_eq!(result, Some(Err(ReplicaError::Object(expected))));
    assert_eq!(cluster.replica(0).peek(b"k"), Value::Counter(3));
    assert_eq!(cluster.replica(0).token(b"k"), token);
    assert_eq!(cluster.replica(0).storage().pending_batches(), batches);
    cluster.tick(1);
    assert!(cluster.network.is_empty(), "no delta for a refused op");
}

#[test]
fn a_bounded_counter_refuses_decrements_beyond_local_rights_until_they_are_transferred() {
    let mut cluster = Cluster::new(3, 6, Faults::default());
    let key = cluster.key_replicated_at(0, 1, "stock");
    cluster.request(0, &key, Operation::BoundedIncrement(10), None);
    cluster.drain();
    let refused = cluster.request(1, &key, Operation::BoundedDecrement(1), None);
    let expected = ObjectError::InsufficientRights {
        available: 0,
        requested: 1,
    };
    assert_eq!(refused, Some(Err(ReplicaError::Object(expected))));
    cluster.request(
        0,
        &key,
        Operation::BoundedTransfer {
            to: node(1),
            amount: 4,
        },
        None,
    );
    cluster.drain();
    assert!(
        cluster
            .request(1, &key, Operation::BoundedDecrement(3), None)
            .expect("reply")
            .is_ok()
    );
    cluster.drain();
    let value = read(&mut cluster, 1, &key, None)
        .expect("reply")
        .expect("ack")
        .value;
    assert_eq!(
        value,
        Some(Value::BoundedCounter {
            value: 7,
            local_rights: 1,
            rights: [(node(0), 6), (node(1), 1)].into(),
        })
    );
}

#[test]
fn maps_registers_and_multi_registers_read_back_what_was_written() {
    let mut cluster = Cluster::new(3, 7, Faults::default());
    let key = cluster.key_replicated_at(0, 1, "map");
    let ops = [
        Operation::MapRegisterWrite {
            field: b"name".to_vec(),
            value: b"ada".to_vec(),
        },
        Operation::MapCounterIncrement {
            field: b"visits".to_vec(),
            amount: 2,
        },
        Operation::MapSetAdd {
            field: b"tags".to_vec(),
            element: b"x".to_vec(),
        },
    ];
    for op in ops {
        cluster.request(0, &key, op, None);
    }
    cluster.drain();
    let Some(Value::Map(map)) = read(&mut cluster, 1, &key, None)
        .expect("reply")
        .expect("ack")
        .value
    else {
        panic!("a map")
    };
    assert_eq!(
        map.registers[&b"name".to_vec()],
        BTreeSet::from([b"ada".to_vec()])
    );
    assert_eq!(map.counters[&b"visits".to_vec()], 2);
    assert_eq!(map.sets[&b"tags".to_vec()], BTreeSet::from([b"x".to_vec()]));
    // Concurrent MV writes at two replicas are both kept; LWW keeps one.
    let mv = cluster.key_replicated_at(0, 1, "mv");
    cluster.request(0, &mv, Operation::MultiRegisterWrite(b"a".to_vec()), None);
    cluster.request(1, &mv, Operation::MultiRegisterWrite(b"b".to_vec()), None);
    cluster.drain();
    assert_eq!(
        cluster.replica(0).peek(&mv),
        Value::MultiRegister(BTreeSet::from([b"a".to_vec(), b"b".to_vec()]))
    );
    let lww = cluster.key_replicated_at(0, 1, "lww");
    cluster.request(0, &lww, Operation::RegisterSet(b"first".to_vec()), None);
    cluster.now_ms += 10;
    cluster.request(1, &lww, Operation::RegisterSet(b"second".to_vec()), None);
    cluster.drain();
    assert_eq!(
        cluster.replica(0).peek(&lww),
        Value::Register(Some(b"second".to_vec()))
    );
}

#[test]
fn a_request_at_a_node_that_is_not_a_replica_names_the_replicas() {
    let mut cluster = Cluster::new(5, 8, Faults::default());
    let key = (0..1000)
        .map(|i| format!("far{i}").into_bytes())
        .find(|k| !cluster.replicas_of(k).contains(&0))
        .expect("some key lives elsewhere");
    let result = cluster
        .request(0, &key, Operation::Increment(1), None)
        .expect("reply");
    let Err(ReplicaError::NotReplica { replicas }) = result else {
        panic!("{result:?}")
    };
    assert_eq!(replicas.len(), 3);
    // The driver forwards to the first replica, which accepts.
    assert!(
        cluster
            .request(index(replicas[0]), &key, Operation::Increment(1), None)
            .expect("reply")
            .is_ok()
    );
}

#[test]
fn a_down_node_keeps_its_ranges_and_is_skipped_by_delta_propagation() {
    let mut cluster = Cluster::new(4, 9, Faults::default());
    let key = cluster.key_replicated_at(0, 1, "down");
    let owners_before = cluster.replica(0).replicas(&key);
    cluster.replica(0).set_down(node(1), true);
    let list = cluster.replica(0).replicas(&key);
    assert!(
        !list.contains(&node(1)) && list.len() == 3,
        "a fallback stands in"
    );
    cluster.request(0, &key, Operation::Increment(1), None);
    cluster.tick(1);
    assert!(
        cluster.network.iter().all(|(to, _)| *to != node(1)),
        "no delta to a down node"
    );
    // Node 2 itself still serves the key: down is a view, not a loss of ownership.
    assert!(owners_before.contains(&node(1)));
    assert!(
        cluster
            .request(1, &key, Operation::Increment(1), None)
            .expect("reply")
            .is_ok()
    );
}

#[test]
fn delta_batches_respect_the_key_bound() {
    let mut cluster = Cluster::with_config(2, 10, Faults::default(), |n| ReplicaConfig {
        replication_factor: 2,
        batch_keys_max: 2,
        ..ReplicaConfig::new(n)
    });
    for k in 0..5u8 {
        cluster.submit(0, &[k], Operation::Increment(1), None);
    }
    cluster.flush(0);
    cluster.tick(1);
    assert_eq!(cluster.network.len(), 3, "2 + 2 + 1 keys");
    for (_, bytes) in &cluster.network {
        let Ok(Message::Deltas(batch)) = Message::decode(bytes) else {
            panic!("a delta batch")
        };
        assert!(batch.deltas.len() <= 2);
    }
    cluster.drain();
    assert!((0..5u8).all(|k| cluster.replica(1).peek(&[k]) == Value::Counter(1)));
}

#[test]
fn a_full_peer_buffer_drops_its_oldest_deltas_and_a_state_transfer_repairs_them() {
    let mut cluster = Cluster::with_config(2, 10, Faults::default(), |n| ReplicaConfig {
        replication_factor: 2,
        pending_keys_per_peer_max: 3,
        ..ReplicaConfig::new(n)
    });
    for k in 0..5u8 {
        cluster.submit(0, &[k], Operation::Increment(1), None);
    }
    cluster.flush(0); // 5 keys into a buffer bound of 3
    assert_eq!(cluster.replica(0).stats().deltas_dropped, 2);
    cluster.drain();
    // The dropped (oldest) keys are neither visible nor claimed at the peer...
    let gap = [0u8];
    assert_eq!(cluster.replica(1).peek(&gap), Value::Absent);
    assert_eq!(cluster.replica(1).token(&gap).seq(node(0)), 0);
    assert_eq!(cluster.replica(1).peek(&[4]), Value::Counter(1));
    // ...until a state transfer (the anti-entropy seam) repairs them.
    let now = cluster.now_ms;
    let state = cluster
        .replica(0)
        .state_transfer(&gap, now)
        .expect("present");
    cluster.replica(1).step(&state, now).expect("valid");
    assert_eq!(cluster.replica(1).peek(&gap), Value::Counter(1));
    assert_eq!(
        cluster.replica(1).token(&gap),
        cluster.replica(0).token(&gap)
    );
    let digests = |r: &mut Replica<MemoryEngine>| -> BTreeMap<Vec<u8>, u64> {
        r.digests().map(|(k, d)| (k.to_vec(), d)).collect()
    };
    let (d0, d1) = (digests(cluster.replica(0)), digests(cluster.replica(1)));
    assert_eq!(d0[&gap.to_vec()], d1[&gap.to_vec()]);
    assert_ne!(
        d0.get(&vec![1u8]),
        d1.get(&vec![1u8]),
        "key 1 is still missing at the peer"
    );
}

#[test]
fn garbage_peer_messages_are_typed_errors_that_change_nothing() {
    let mut cluster = Cluster::new(2, 11, Faults::default());
    cluster.request(0, b"k", Operation::Increment(1), None);
    cluster.tick(1);
    let (_, valid) = cluster.network.pop().expect("a delta batch");
    let mut rng = StdRng::seed_from_u64(11);
    let replica = cluster.replica(1);
    for _ in 0..2000 {
        let mut bytes = valid.clone();
        match rng.random_range(0..3) {
            0 => bytes.truncate(rng.random_range(0..valid.len())),
            1 => {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            _ => bytes = (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        }
        let before = replica.peek(b"k");
        if let Err(error) = replica.step(&bytes, 2_000) {
            assert!(
                matches!(error, StepError::Decode(_) | StepError::ClockAhead(_)),
                "{error}"
            );
            assert_eq!(replica.peek(b"k"), before);
        }
    }
    assert!(matches!(
        replica.step(&[], 2_000),
        Err(StepError::Decode(_))
    ));
}

#[test]
fn a_bad_or_foreign_token_is_refused() {
    let mut cluster = Cluster::new(1, 12, Faults::default());
    let token = ack_token(cluster.request(0, b"a", Operation::Increment(1), None));
    let result = cluster.request(0, b"b", Operation::Read, Some(&token));
    assert_eq!(result, Some(Err(ReplicaError::TokenForOtherKey)));
    let request = Request {
        id: RequestId(999),
        key: b"a".to_vec(),
        op: Operation::Read,
        token: Some(vec![1, 0xff]),
    };
    cluster.replica(0).submit(request, 2_000);
    let outputs = cluster.replica(0).take_outputs();
    let [Output::Reply(reply)] = outputs.as_slice() else {
        panic!("{outputs:?}")
    };
    assert!(matches!(reply.result, Err(ReplicaError::BadToken(_))));
    assert_eq!(cluster.replica(0).peek(b"a"), Value::Counter(1));
}

#[test]
fn a_received_delta_survives_the_receivers_crash_once_flushed() {
    let mut cluster = Cluster::new(2, 13, Faults::default());
    let token = ack_token(cluster.request(0, b"k", Operation::SetAdd(b"x".to_vec()), None));
    cluster.drain(); // node 2 joins, writes and syncs the delta
    let engine = cluster.replicas[1].take().expect("running").into_storage();
    engine.crash();
    let config = cluster.configs[1].clone();
    let reopened = Replica::open(config, cluster.ring.clone(), engine).expect("reopens");
    assert_eq!(
        reopened.peek(b"k"),
        Value::Set(BTreeSet::from([b"x".to_vec()]))
    );
    assert!(reopened.token(b"k").covers(&token));
}

#[test]
fn the_hlc_resumes_above_stored_stamps_after_a_restart() {
    // Last-writer-wins is decided by HLC (DESIGN §2): a write after a
    // restart, at a wall clock that stepped back, still wins.
    let mut cluster = Cluster::new(1, 14, Faults::default());
    cluster.now_ms = 50_000;
    cluster.request(0, b"r", Operation::RegisterSet(b"before".to_vec()), None);
    let engine = cluster.replicas[0].take().expect("running").into_storage();
    let config = cluster.configs[0].clone();
    cluster.replicas[0] =
        Some(Replica::open(config, cluster.ring.clone(), engine).expect("reopens"));
    cluster.now_ms = 1_000;
    cluster.request(0, b"r", Operation::RegisterSet(b"after".to_vec()), None);
    assert_eq!(
        cluster.replica(0).peek(b"r"),
        Value::Register(Some(b"after".to_vec()))
    );
}

#[test]
fn a_state_leaves_the_node_only_once_it_is_synced() {
    // Durability before anything leaves: a crash must not take back a state
    // a peer already joined (for a bounded counter, transferred rights would
    // be spent twice).
    let mut cluster = Cluster::with_config(2, 11, Faults::default(), |n| ReplicaConfig {
        replication_factor: 2,
        ..ReplicaConfig::new(n)
    });
    let key = [7u8];
    cluster.submit(0, &key, Operation::Increment(3), None);
    let now = cluster.now_ms;
    assert_eq!(cluster.replica(0).peek(&key), Value::Counter(3));
    assert_eq!(
        cluster.replica(0).state_transfer(&key, now),
        None,
        "unsynced"
    );
    cluster.flush(0);
    let state = cluster.replica(0).state_transfer(&key, now);
    assert!(state.is_some(), "synced states ship");
}
