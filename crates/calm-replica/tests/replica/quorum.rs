//! CRDT requests at `one`/`quorum`/`all`: acks at the w-th durable copy,
//! reads merging r replicas, hedging, read repair, refusals, and a
//! randomized check that acknowledged writes survive a minority crash and
//! are seen by every later quorum read.

use calm_replica::coordinator::Level;
use calm_replica::{Message, Operation, Replica, ReplicaConfig, ReplicaError, Value};
use calm_storage::Storage;
use calm_types::NodeId;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::harness::{Cluster, Faults, index, node};

/// Delivers every in-flight message addressed to node `i`, leaving the
/// rest in flight.
fn deliver_to(cluster: &mut Cluster, i: usize) {
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut cluster.network)
        .into_iter()
        .partition(|(to, _)| index(*to) == i);
    cluster.network = rest;
    for (_, bytes) in mine {
        let now = cluster.now_ms;
        cluster
            .replica(i)
            .step(&bytes, now)
            .expect("peer messages are valid");
        cluster.collect(i);
    }
}

/// Drops every in-flight message addressed to node `i`.
fn drop_to(cluster: &mut Cluster, i: usize) {
    cluster.network.retain(|(to, _)| index(*to) != i);
}

fn counter(cluster: &Cluster, id: calm_replica::RequestId) -> Option<Value> {
    let reply = cluster.replies.get(&id)?;
    reply
        .result
        .as_ref()
        .expect("the read succeeds")
        .value
        .clone()
}

#[test]
fn a_quorum_write_is_acknowledged_at_the_second_durable_copy_not_before() {
    let mut cluster = Cluster::new(3, 1, Faults::default());
    let id = cluster.submit_at(0, b"k", Operation::Increment(5), Level::Quorum);
    cluster.flush(0);
    assert!(cluster.replies.is_empty(), "acked with one copy");
    assert_eq!(cluster.network.len(), 2, "sent to both other owners");
    // Node 2 holds it, but has not synced: no ack yet.
    let fsyncs = cluster.replica(1).storage().fsync_count();
    deliver_to(&mut cluster, 1);
    let to_coordinator = |cluster: &Cluster| cluster.network.iter().any(|(to, _)| index(*to) == 0);
    assert!(!to_coordinator(&cluster), "an ack before the sync");
    cluster.flush(1);
    assert_eq!(cluster.replica(1).storage().fsync_count(), fsyncs + 1);
    deliver_to(&mut cluster, 0);
    // Node 3 never answered: a straggler does not hold the ack.
    assert!(cluster.replies[&id].result.is_ok());
    assert_eq!(cluster.replica(2).peek(b"k"), Value::Absent);
    // The write was sent to node 3 directly, not buffered a second time
    // (if that copy is lost, anti-entropy repairs it).
    drop_to(&mut cluster, 2);
    cluster.tick(1);
    assert!(cluster.network.is_empty(), "{:?}", cluster.network.len());
}

#[test]
fn an_acknowledged_quorum_write_survives_its_coordinators_crash() {
    let mut cluster = Cluster::new(3, 2, Faults::default());
    let id = cluster.submit_at(0, b"k", Operation::Increment(7), Level::Quorum);
    cluster.flush(0);
    drop_to(&mut cluster, 2);
    deliver_to(&mut cluster, 1);
    cluster.flush(1);
    deliver_to(&mut cluster, 0);
    assert!(cluster.replies[&id].result.is_ok());
    // The coordinator loses its disk entirely; node 3 never saw the write.
    cluster.replicas[0] = None;
    cluster.replica(1).set_down(node(0), true);
    cluster.replica(2).set_down(node(0), true);
    let read = cluster.submit_at(2, b"k", Operation::Read, Level::Quorum);
    deliver_to(&mut cluster, 1);
    deliver_to(&mut cluster, 2);
    cluster.flush(2);
    assert_eq!(counter(&cluster, read), Some(Value::Counter(7)));
}

#[test]
fn a_quorum_read_merges_the_replies_and_repairs_the_replicas_behind() {
    let mut cluster = Cluster::new(3, 3, Faults::default());
    // A local write at node 1 that has not spread.
    cluster.request(0, b"k", Operation::SetAdd(b"a".to_vec()), None);
    cluster.network.clear();
    let read = cluster.submit_at(1, b"k", Operation::Read, Level::All);
    assert_eq!(cluster.network.len(), 2);
    deliver_to(&mut cluster, 0);
    deliver_to(&mut cluster, 2);
    deliver_to(&mut cluster, 1);
    assert!(
        !cluster.replies.contains_key(&read),
        "the merge is not synced yet"
    );
    cluster.flush(1);
    let expected = Value::Set([b"a".to_vec()].into());
    assert_eq!(counter(&cluster, read), Some(expected.clone()));
    // Node 3 answered with nothing: it is sent the merged state.
    assert_eq!(cluster.replica(1).stats().read_repairs, 1);
    deliver_to(&mut cluster, 2);
    assert_eq!(cluster.replica(2).peek(b"k"), expected);
}

#[test]
fn a_quorum_read_of_replicas_that_agree_writes_nothing_and_is_answered_at_once() {
    let mut cluster = Cluster::new(3, 10, Faults::default());
    cluster.request(0, b"k", Operation::Increment(4), None);
    cluster.drain();
    let fsyncs = cluster.replica(1).storage().fsync_count();
    let read = cluster.submit_at(1, b"k", Operation::Read, Level::All);
    deliver_to(&mut cluster, 0);
    deliver_to(&mut cluster, 2);
    deliver_to(&mut cluster, 1);
    assert_eq!(
        counter(&cluster, read),
        Some(Value::Counter(4)),
        "not held for a sync"
    );
    cluster.flush(1);
    assert_eq!(cluster.replica(1).storage().fsync_count(), fsyncs);
    assert_eq!(cluster.replica(1).stats().read_repairs, 0);
}

#[test]
fn a_read_hedges_to_the_other_owner_when_the_first_is_slow() {
    let mut cluster = Cluster::new(3, 4, Faults::default());
    cluster.request(0, b"k", Operation::Increment(2), None);
    cluster.drain();
    let read = cluster.submit_at(0, b"k", Operation::Read, Level::Quorum);
    let [(asked, _)] = cluster.network.as_slice() else {
        panic!("r = 2 asks one other owner");
    };
    let slow = index(*asked);
    drop_to(&mut cluster, slow);
    cluster.tick(19);
    assert!(cluster.network.is_empty(), "hedged before the delay");
    cluster.tick(1);
    let [(hedge, _)] = cluster.network.as_slice() else {
        panic!("one hedge");
    };
    let other = index(*hedge);
    assert_ne!(other, slow);
    deliver_to(&mut cluster, other);
    deliver_to(&mut cluster, 0);
    cluster.flush(0);
    assert_eq!(counter(&cluster, read), Some(Value::Counter(2)));
    assert_eq!(cluster.replica(0).stats().hedges_sent, 1);
}

#[test]
fn too_few_owners_up_refuses_before_anything_is_written() {
    let mut cluster = Cluster::new(3, 5, Faults::default());
    cluster.replica(0).set_down(node(1), true);
    cluster.replica(0).set_down(node(2), true);
    let id = cluster.submit_at(0, b"k", Operation::Increment(1), Level::Quorum);
    let error = cluster.replies[&id].result.clone().expect_err("refused");
    assert_eq!(error, ReplicaError::Unavailable { needed: 2, up: 1 });
    assert!(error.is_retryable());
    cluster.flush(0);
    assert_eq!(cluster.replica(0).peek(b"k"), Value::Absent);
    // `one` needs only this replica.
    let one = cluster.submit_at(0, b"k", Operation::Increment(1), Level::One);
    cluster.flush(0);
    assert!(cluster.replies[&one].result.is_ok());
}

#[test]
fn a_write_without_enough_acks_by_the_deadline_is_in_doubt() {
    let mut cluster = Cluster::new(3, 6, Faults::default());
    let id = cluster.submit_at(0, b"k", Operation::Increment(1), Level::All);
    cluster.flush(0);
    deliver_to(&mut cluster, 1);
    cluster.flush(1);
    deliver_to(&mut cluster, 0);
    drop_to(&mut cluster, 2);
    cluster.tick(999);
    assert!(!cluster.replies.contains_key(&id));
    cluster.tick(1);
    let error = cluster.replies[&id].result.clone().expect_err("in doubt");
    assert_eq!(error, ReplicaError::WriteInDoubt { acks: 2, needed: 3 });
    assert!(!error.is_retryable());
    assert_eq!(cluster.replica(0).stats().writes_in_doubt, 1);
}

#[test]
fn a_node_that_is_not_an_owner_names_the_owners() {
    let mut cluster = Cluster::new(4, 7, Faults::default());
    let key = (0..1000)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| !cluster.replicas_of(k).contains(&0))
        .expect("some key is not at node 1");
    let id = cluster.submit_at(0, &key, Operation::Increment(1), Level::Quorum);
    let Err(ReplicaError::NotReplica { replicas }) = cluster.replies[&id].result.clone() else {
        panic!("refused as not a replica");
    };
    assert_eq!(replicas.len(), 3);
    assert!(!replicas.contains(&node(0)));
}

#[test]
fn forged_acks_and_fetched_states_of_another_key_are_refused() {
    let mut cluster = Cluster::new(3, 8, Faults::default());
    let id = cluster.submit_at(0, b"k", Operation::Increment(1), Level::Quorum);
    cluster.flush(0);
    let replicate = cluster
        .network
        .iter()
        .find_map(|(_, bytes)| match Message::decode(bytes) {
            Ok(Message::Replicate(replicate)) => Some(replicate),
            _ => None,
        })
        .expect("the write is replicated");
    // An ack naming another write of the request does not count.
    let wrong = Message::Replicated(calm_replica::Replicated {
        from: node(1),
        request: replicate.request,
        seq: replicate.delta.last_seq + 1,
    });
    let now = cluster.now_ms;
    cluster
        .replica(0)
        .step(&wrong.encode(), now)
        .expect("valid");
    cluster.collect(0);
    assert!(!cluster.replies.contains_key(&id));
    // A fetched state must be of the key it names.
    let state = cluster
        .replica(0)
        .state_transfer(b"k", now)
        .expect("synced");
    let Ok(Message::State(state)) = Message::decode(&state) else {
        panic!("a state");
    };
    let forged = Message::Fetched(Box::new(calm_replica::Fetched {
        from: node(1),
        request: replicate.request,
        key: b"other".to_vec(),
        state: Some(*state),
    }));
    assert!(cluster.replica(0).step(&forged.encode(), now).is_err());
    assert_eq!(cluster.replica(0).peek(b"other"), Value::Absent);
}

/// A run of random counter increments and reads at `quorum` on 3 nodes,
/// over a lossy, duplicating network, with one node crashing (losing its
/// unsynced writes) and coming back at random. Checks that every quorum
/// read sees at least the increments acknowledged before it started, and
/// that the converged total holds every acknowledged increment.
/// `forge_acks` plants a replica that acknowledges writes it never holds.
fn quorum_run(seed: u64, forge_acks: bool) -> Result<(), String> {
    let faults = Faults {
        loss: 0.05,
        duplication: 0.05,
    };
    let mut cluster = Cluster::new(3, seed, faults);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut acked_total: i128 = 0;
    let mut submitted_total: i128 = 0;
    // Writes in flight: id → amount; reads in flight: id → acked total at start.
    let mut writes = std::collections::BTreeMap::new();
    let mut reads = std::collections::BTreeMap::new();
    let mut crashed: Option<usize> = None;
    for _ in 0..400 {
        let i = rng.random_range(0..3);
        match rng.random_range(0..10) {
            0..=4 if crashed != Some(i) => {
                let amount = rng.random_range(1..100);
                let id = cluster.submit_at(i, b"c", Operation::Increment(amount), Level::Quorum);
                writes.insert(id, i128::from(amount));
                submitted_total += i128::from(amount);
            }
            5..=6 if crashed != Some(i) => {
                let id = cluster.submit_at(i, b"c", Operation::Read, Level::Quorum);
                reads.insert(id, acked_total);
            }
            7 if crashed.is_none() => {
                // A crash: everything unsynced is lost, and so is what the
                // node had queued to send.
                let engine = cluster.replicas[i].take().expect("running").into_storage();
                engine.crash();
                cluster.network.retain(|(to, _)| index(*to) != i);
                let config = cluster.configs[i].clone();
                let reopened = Replica::open(config, cluster.ring.clone(), engine)
                    .map_err(|e| e.to_string())?;
                cluster.replicas[i] = Some(reopened);
                crashed = Some(i);
            }
            8 => crashed = None,
            _ => {}
        }
        for j in 0..3 {
            cluster.flush(j);
        }
        if forge_acks {
            forge(&mut cluster);
        }
        let n = cluster.network.len();
        cluster.deliver_some(n / 2 + 1);
        cluster.tick(rng.random_range(0..30));
        for (id, reply) in std::mem::take(&mut cluster.replies) {
            if let Some(amount) = writes.remove(&id) {
                if reply.result.is_ok() {
                    acked_total += amount;
                }
            } else if let Some(floor) = reads.remove(&id)
                && let Ok(ack) = reply.result
            {
                let seen = match ack.value {
                    Some(Value::Counter(seen)) => seen,
                    Some(Value::Absent) => 0,
                    other => return Err(format!("a counter read {other:?}")),
                };
                if seen < floor {
                    return Err(format!(
                        "a quorum read saw {seen}, {floor} acknowledged before"
                    ));
                }
            }
        }
    }
    cluster.drain();
    for j in 0..3 {
        let Value::Counter(total) = cluster.replica(j).peek(b"c") else {
            return Err("the counter is gone".into());
        };
        if !(acked_total..=submitted_total).contains(&total) {
            return Err(format!(
                "node {} holds {total}: acknowledged {acked_total}, submitted {submitted_total}",
                j + 1
            ));
        }
    }
    Ok(())
}

/// The planted fault: for every write being replicated, an ack from its
/// first receiver is forged before that receiver has even seen the write.
fn forge(cluster: &mut Cluster) {
    let forged: Vec<(NodeId, Vec<u8>)> = cluster
        .network
        .iter()
        .filter_map(|(to, bytes)| match Message::decode(bytes) {
            Ok(Message::Replicate(replicate)) => {
                let ack = Message::Replicated(calm_replica::Replicated {
                    from: *to,
                    request: replicate.request,
                    seq: replicate.delta.last_seq,
                });
                Some((replicate.delta.origin, ack.encode()))
            }
            _ => None,
        })
        .collect();
    // The replicate messages themselves are lost.
    cluster
        .network
        .retain(|(_, bytes)| !matches!(Message::decode(bytes), Ok(Message::Replicate(_))));
    cluster.network.extend(forged);
}

#[test]
fn acknowledged_quorum_increments_are_read_and_survive_a_crash_on_every_seed() {
    for seed in 0..40 {
        if let Err(violation) = quorum_run(seed, false) {
            panic!("seed {seed}: {violation}");
        }
    }
}

#[test]
fn the_quorum_checker_catches_a_replica_that_acks_what_it_does_not_hold() {
    let caught = (0..40)
        .filter(|&seed| quorum_run(seed, true).is_err())
        .count();
    assert!(caught >= 20, "caught on only {caught} of 40 seeds");
}

#[test]
fn a_replicated_write_reaches_the_other_owner_through_a_restart_of_the_receiver() {
    // The receiver acks only after its sync, so a crash before it loses
    // nothing the coordinator counted.
    let mut cluster = Cluster::with_config(3, 9, Faults::default(), ReplicaConfig::new);
    let id = cluster.submit_at(0, b"k", Operation::Increment(3), Level::All);
    cluster.flush(0);
    deliver_to(&mut cluster, 1);
    let engine = cluster.replicas[1].take().expect("running").into_storage();
    engine.crash();
    let reopened =
        Replica::open(cluster.configs[1].clone(), cluster.ring.clone(), engine).expect("reopens");
    assert_eq!(
        reopened.peek(b"k"),
        Value::Absent,
        "the unsynced join is lost"
    );
    cluster.replicas[1] = Some(reopened);
    deliver_to(&mut cluster, 2);
    cluster.flush(2);
    deliver_to(&mut cluster, 0);
    assert!(!cluster.replies.contains_key(&id), "acked without node 2");
    cluster.tick(1_000);
    let error = cluster.replies[&id].result.clone().expect_err("in doubt");
    assert_eq!(error, ReplicaError::WriteInDoubt { acks: 2, needed: 3 });
}
