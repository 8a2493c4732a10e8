//! The KV store's contract: replies only after the sync, hints held,
//! handed over and bounded, reaps only under the grace rule, and replicas
//! that merge each other's objects converging.

use calm_storage::{Limits, MemoryEngine, Storage};
use calm_types::NodeId;
use proptest::prelude::*;

use super::*;
use crate::RequestId;
use crate::coordinator::{Coordinator, CoordinatorConfig, Effect, KvRequest, Outcome, Quorum};
use crate::kv::Sibling;
use calm_ring::{PreferenceList, Replica as RingReplica};

const ME: NodeId = NodeId(1);
const PEER: NodeId = NodeId(2);
const OWNER: NodeId = NodeId(3);

fn engine() -> MemoryEngine {
    MemoryEngine::new(Limits::default())
}

fn open(node: NodeId, engine: &MemoryEngine) -> KvStore {
    KvStore::open(KvStoreConfig::new(node), engine).expect("an empty store opens")
}

/// The driver's commit: write, sync, release.
fn commit(store: &mut KvStore, engine: &MemoryEngine) {
    let batches = store.take_batches();
    engine.write_synced(&batches).expect("memory engine writes");
    store.synced();
}

fn value(text: &str, node: NodeId) -> KvObject {
    let mut object = KvObject::new();
    object
        .put(
            b"k",
            &[],
            node,
            text.as_bytes().to_vec(),
            &KvLimits::default(),
        )
        .expect("a small write");
    object
}

fn store_message(request: u64, object: &KvObject, hint: Option<NodeId>) -> KvMessage {
    KvMessage::Store {
        request: RequestId(request),
        key: b"k".to_vec(),
        object: object.clone(),
        hint,
    }
}

fn replies(store: &mut KvStore) -> Vec<KvReply> {
    store
        .take_outputs()
        .into_iter()
        .filter_map(|output| match output {
            KvOutput::Reply { reply, .. } => Some(reply),
            KvOutput::Send { .. } => None,
        })
        .collect()
}

#[test]
fn a_store_is_acknowledged_only_after_its_sync() {
    let engine = engine();
    let mut store = open(ME, &engine);
    store.handle(&engine, PEER, store_message(7, &value("a", PEER), None), 0);
    assert!(replies(&mut store).is_empty(), "no ack before the sync");
    commit(&mut store, &engine);
    assert_eq!(
        replies(&mut store),
        [KvReply::Stored {
            request: RequestId(7)
        }]
    );
    assert_eq!(store.read(&engine, b"k").unwrap(), Some(value("a", PEER)));
}

#[test]
fn a_crash_before_the_sync_loses_the_write_and_nothing_was_acknowledged() {
    let engine = engine();
    let mut store = open(ME, &engine);
    store.handle(&engine, PEER, store_message(7, &value("a", PEER), None), 0);
    let batches = store.take_batches();
    engine.write_synced(&[]).unwrap();
    for batch in &batches {
        engine.write(batch).unwrap();
    }
    // The process dies here: `synced` never ran, so no reply left.
    assert!(replies(&mut store).is_empty());
    engine.crash();
    let store = open(ME, &engine);
    assert_eq!(store.read(&engine, b"k").unwrap(), None);
}

#[test]
fn a_fetch_is_answered_after_the_sync_with_what_this_turn_wrote() {
    let engine = engine();
    let mut store = open(ME, &engine);
    store.handle(&engine, PEER, store_message(1, &value("a", PEER), None), 0);
    let fetch = KvMessage::Fetch {
        request: RequestId(2),
        key: b"k".to_vec(),
        hint: None,
    };
    store.handle(&engine, PEER, fetch, 0);
    assert!(replies(&mut store).is_empty());
    commit(&mut store, &engine);
    let fetched = KvReply::Fetched {
        request: RequestId(2),
        object: value("a", PEER),
    };
    assert_eq!(replies(&mut store)[1], fetched);
}

#[test]
fn a_stamped_write_mints_from_the_stored_object_and_survives_a_restart() {
    let engine = engine();
    let mut store = open(ME, &engine);
    let first = store
        .stamp(&engine, b"k", &[], Some(b"a".to_vec()), 0)
        .unwrap();
    commit(&mut store, &engine);
    let context = first.get(b"k").context;
    let second = store
        .stamp(&engine, b"k", &context, Some(b"b".to_vec()), 0)
        .unwrap();
    commit(&mut store, &engine);
    assert_eq!(second.get(b"k").values().collect::<Vec<_>>(), [b"b"]);
    // Its own Store of what it stamped changes nothing.
    store.handle(&engine, ME, store_message(3, &second, None), 0);
    assert!(store.take_batches().is_empty());
    let reopened = open(ME, &engine);
    assert_eq!(reopened.read(&engine, b"k").unwrap(), Some(second));
}

#[test]
fn refused_stamps_change_nothing() {
    let engine = engine();
    let mut store = open(ME, &engine);
    let long_key = vec![b'k'; KvLimits::default().key_bytes_max + 1];
    let refused = store.stamp(&engine, &long_key, &[], Some(b"a".to_vec()), 0);
    assert!(matches!(
        refused,
        Err(StampError::Refused(KvError::KeyTooLarge { .. }))
    ));
    let refused = store.stamp(&engine, b"k", b"garbage", Some(b"a".to_vec()), 0);
    assert!(matches!(
        refused,
        Err(StampError::Refused(KvError::BadContext(_)))
    ));
    assert!(store.take_batches().is_empty());
    assert_eq!(store.digests().count(), 0);
}

#[test]
fn a_hinted_store_is_held_for_its_owner_and_handed_over_when_acknowledged() {
    let (engine, owner_engine) = (engine(), engine());
    let mut fallback = open(ME, &engine);
    let mut owner = open(OWNER, &owner_engine);
    let object = value("a", PEER);
    fallback.handle(&engine, PEER, store_message(1, &object, Some(OWNER)), 0);
    commit(&mut fallback, &engine);
    assert_eq!(
        replies(&mut fallback),
        [KvReply::Stored {
            request: RequestId(1)
        }]
    );
    // Held as a hint, not as this node's own object.
    assert_eq!(fallback.read(&engine, b"k").unwrap(), None);
    assert_eq!(fallback.hinted_owners(), [OWNER]);
    // It survives a restart.
    let mut fallback = open(ME, &engine);
    assert_eq!(fallback.stats().hints, 1);
    fallback.handoff(&engine, OWNER, 10);
    let outputs = fallback.take_outputs();
    let [KvOutput::Send { to, message }] = outputs.as_slice() else {
        panic!("one handoff: {outputs:?}");
    };
    assert_eq!(*to, OWNER);
    // A second handoff while the first is in flight sends nothing.
    fallback.handoff(&engine, OWNER, 11);
    assert!(fallback.take_outputs().is_empty());
    owner.handle(&owner_engine, ME, message.clone(), 12);
    commit(&mut owner, &owner_engine);
    let ack = replies(&mut owner).pop().expect("the owner acknowledges");
    assert_eq!(owner.read(&owner_engine, b"k").unwrap(), Some(object));
    fallback.step(&engine, OWNER, ack, 13);
    commit(&mut fallback, &engine);
    assert!(fallback.hinted_owners().is_empty());
    assert_eq!(fallback.stats().hints_delivered, 1);
    assert_eq!(open(ME, &engine).stats().hints, 0, "the delete is durable");
}

#[test]
fn a_hint_merged_after_its_handoff_left_is_kept_until_handed_over_again() {
    let engine = engine();
    let mut fallback = open(ME, &engine);
    fallback.handle(
        &engine,
        PEER,
        store_message(1, &value("a", PEER), Some(OWNER)),
        0,
    );
    commit(&mut fallback, &engine);
    fallback.handoff(&engine, OWNER, 1);
    let sent = fallback.take_outputs();
    let Some(KvOutput::Send {
        message: KvMessage::Handoff { object, .. },
        ..
    }) = sent.last()
    else {
        panic!("a handoff: {sent:?}");
    };
    let handed = super::digest(object);
    fallback.handle(
        &engine,
        PEER,
        store_message(2, &value("b", NodeId(9)), Some(OWNER)),
        2,
    );
    commit(&mut fallback, &engine);
    let ack = KvReply::HandedOff {
        key: b"k".to_vec(),
        digest: handed,
    };
    fallback.step(&engine, OWNER, ack, 3);
    assert_eq!(fallback.stats().hints, 1, "the newer hint stays");
    assert_eq!(fallback.stats().hints_delivered, 0);
}

#[test]
fn a_full_hint_store_refuses_new_hints_at_once_and_counts_them() {
    let engine = engine();
    let config = KvStoreConfig {
        hints_max: 1,
        ..KvStoreConfig::new(ME)
    };
    let mut store = KvStore::open(config, &engine).unwrap();
    store.handle(
        &engine,
        PEER,
        store_message(1, &value("a", PEER), Some(OWNER)),
        0,
    );
    let mut other = store_message(2, &value("b", PEER), Some(NodeId(8)));
    if let KvMessage::Store { key, .. } = &mut other {
        *key = b"other".to_vec();
    }
    store.handle(&engine, PEER, other, 0);
    // The refusal leaves at once; the accepted one waits for its sync.
    assert_eq!(
        replies(&mut store),
        [KvReply::Failed {
            request: RequestId(2)
        }]
    );
    commit(&mut store, &engine);
    assert_eq!(
        replies(&mut store),
        [KvReply::Stored {
            request: RequestId(1)
        }]
    );
    assert_eq!((store.stats().hints, store.stats().hints_refused), (1, 1));
}

#[test]
fn hints_past_their_ttl_are_dropped() {
    let engine = engine();
    let mut store = open(ME, &engine);
    store.handle(
        &engine,
        PEER,
        store_message(1, &value("a", PEER), Some(OWNER)),
        1_000,
    );
    commit(&mut store, &engine);
    let ttl_ms = KvStoreConfig::new(ME).hint_ttl_ms;
    store.tick(1_000 + ttl_ms - 1);
    assert_eq!(store.stats().hints, 1);
    store.tick(1_000 + ttl_ms);
    commit(&mut store, &engine);
    assert_eq!((store.stats().hints, store.stats().hints_expired), (0, 1));
    assert_eq!(open(ME, &engine).stats().hints, 0);
}

/// A tombstone superseding `value("a", PEER)`, as every owner would hold it.
fn tombstone() -> KvObject {
    let mut object = value("a", PEER);
    let context = object.get(b"k").context;
    object
        .delete(b"k", &context, PEER, &KvLimits::default())
        .expect("a delete");
    object
}

#[test]
fn a_reap_is_accepted_only_after_the_grace_for_the_same_tombstone_without_hints() {
    let engine = engine();
    let mut store = open(ME, &engine);
    let grace_ms = KvStoreConfig::new(ME).reap_grace_ms;
    store.handle(&engine, PEER, store_message(1, &tombstone(), None), 100);
    commit(&mut store, &engine);
    assert!(store.tombstones_due(100 + grace_ms - 1, 10).is_empty());
    assert_eq!(store.tombstones_due(100 + grace_ms, 10), [b"k".to_vec()]);
    let reap = |object: KvObject| KvMessage::Reap {
        key: b"k".to_vec(),
        object,
    };
    // Too early, or another object, or a hint for the key held here.
    store.handle(&engine, PEER, reap(tombstone()), 100 + grace_ms - 1);
    store.handle(&engine, PEER, reap(value("a", PEER)), 100 + grace_ms);
    store.handle(
        &engine,
        PEER,
        store_message(2, &value("z", PEER), Some(OWNER)),
        0,
    );
    store.handle(&engine, PEER, reap(tombstone()), 100 + grace_ms);
    commit(&mut store, &engine);
    assert_eq!(store.stats().reaps_refused, 3);
    assert_eq!(store.read(&engine, b"k").unwrap(), Some(tombstone()));
    // Once the hint is gone, the reap removes the key and its digest.
    store.tick(u64::MAX / 2);
    store.handle(&engine, PEER, reap(tombstone()), 100 + grace_ms);
    commit(&mut store, &engine);
    assert_eq!(store.stats().reaped, 1);
    assert_eq!(store.read(&engine, b"k").unwrap(), None);
    assert_eq!(store.digests().count(), 0);
    assert_eq!(open(ME, &engine).read(&engine, b"k").unwrap(), None);
}

#[test]
fn a_write_after_a_delete_clears_the_tombstone_clock() {
    let engine = engine();
    let mut store = open(ME, &engine);
    store.handle(&engine, PEER, store_message(1, &tombstone(), None), 100);
    store.handle(
        &engine,
        PEER,
        store_message(2, &value("b", NodeId(9)), None),
        200,
    );
    commit(&mut store, &engine);
    assert!(store.tombstones_due(u64::MAX, 10).is_empty());
}

#[test]
fn state_transfers_leave_only_synced_objects() {
    let engine = engine();
    let mut store = open(ME, &engine);
    store.handle(&engine, PEER, store_message(1, &value("a", PEER), None), 0);
    assert_eq!(store.state_transfer(&engine, b"k").unwrap(), None);
    commit(&mut store, &engine);
    let bytes = store
        .state_transfer(&engine, b"k")
        .unwrap()
        .expect("synced");
    let peer_engine = self::engine();
    let mut peer = open(PEER, &peer_engine);
    assert!(peer.merge_transfer(&peer_engine, b"k", &bytes, 0).unwrap());
    assert!(!peer.merge_transfer(&peer_engine, b"k", &bytes, 0).unwrap());
    assert!(
        peer.merge_transfer(&peer_engine, b"k", b"\x01garbage", 0)
            .is_err()
    );
    assert_eq!(
        peer.digests().collect::<Vec<_>>(),
        store.digests().collect::<Vec<_>>()
    );
}

#[test]
fn a_fetch_answers_the_hint_it_names_and_an_absent_key_as_empty() {
    let engine = engine();
    let mut store = open(ME, &engine);
    store.handle(
        &engine,
        PEER,
        store_message(1, &value("a", PEER), Some(OWNER)),
        0,
    );
    // A hint naming this node is this node's own object.
    store.handle(
        &engine,
        PEER,
        store_message(2, &value("b", PEER), Some(ME)),
        0,
    );
    commit(&mut store, &engine);
    let fetch = |request, hint| KvMessage::Fetch {
        request: RequestId(request),
        key: b"k".to_vec(),
        hint,
    };
    store.handle(&engine, PEER, fetch(3, Some(OWNER)), 1);
    store.handle(&engine, PEER, fetch(4, None), 1);
    store.handle(&engine, PEER, fetch(5, Some(NodeId(8))), 1);
    commit(&mut store, &engine);
    let fetched = |request, object| KvReply::Fetched {
        request: RequestId(request),
        object,
    };
    assert_eq!(
        replies(&mut store)[2..],
        [
            fetched(3, value("a", PEER)),
            fetched(4, value("b", PEER)),
            fetched(5, KvObject::new()),
        ]
    );
    assert_eq!(store.hinted_owners(), [OWNER]);
}

#[test]
fn an_unacknowledged_handoff_goes_again_after_its_timeout() {
    let engine = engine();
    let mut fallback = open(ME, &engine);
    let timeout_ms = KvStoreConfig::new(ME).handoff_timeout_ms;
    fallback.handle(
        &engine,
        PEER,
        store_message(1, &value("a", PEER), Some(OWNER)),
        0,
    );
    commit(&mut fallback, &engine);
    let sends = |store: &mut KvStore| {
        let outputs = store.take_outputs();
        outputs
            .iter()
            .filter(|output| matches!(output, KvOutput::Send { to: OWNER, .. }))
            .count()
    };
    fallback.handoff(&engine, OWNER, 10);
    assert_eq!(sends(&mut fallback), 1);
    fallback.tick(10 + timeout_ms - 1);
    fallback.handoff(&engine, OWNER, 10 + timeout_ms - 1);
    assert_eq!(sends(&mut fallback), 0, "still in flight");
    fallback.tick(10 + timeout_ms);
    fallback.handoff(&engine, OWNER, 10 + timeout_ms);
    assert_eq!(sends(&mut fallback), 1, "timed out, so sent again");
    // A handoff to an owner with no hints here sends nothing.
    fallback.handoff(&engine, PEER, 10 + timeout_ms);
    assert_eq!(fallback.take_outputs(), []);
}

#[test]
fn an_ack_from_another_node_or_without_a_handoff_in_flight_deletes_no_hint() {
    let engine = engine();
    let mut fallback = open(ME, &engine);
    let object = value("a", PEER);
    fallback.handle(&engine, PEER, store_message(1, &object, Some(OWNER)), 0);
    commit(&mut fallback, &engine);
    let ack = KvReply::HandedOff {
        key: b"k".to_vec(),
        digest: super::digest(&object),
    };
    fallback.step(&engine, OWNER, ack.clone(), 1);
    fallback.handoff(&engine, OWNER, 2);
    fallback.step(&engine, PEER, ack, 3);
    assert_eq!(fallback.stats().hints, 1);
    assert_eq!(fallback.stats().hints_delivered, 0);
}

#[test]
fn an_unreadable_record_is_a_typed_error_or_a_failed_reply_never_a_panic() {
    let engine = engine();
    let mut store = open(ME, &engine);
    let mut garbage = WriteBatch::new();
    garbage.put(OBJECTS, b"k".to_vec(), b"\xffnot a record".to_vec());
    garbage.put(HINTS, hint_key(OWNER, b"k"), b"\xffnot a hint".to_vec());
    engine.write_synced(&[garbage]).unwrap();
    assert!(store.read(&engine, b"k").is_err());
    assert!(matches!(
        store.stamp(&engine, b"k", &[], Some(b"a".to_vec()), 0),
        Err(StampError::Storage(_))
    ));
    assert!(store.state_transfer(&engine, b"k").is_err());
    let object = value("a", PEER);
    assert!(
        store
            .merge_transfer(&engine, b"k", &object.encode(), 0)
            .is_ok()
    );
    store.handle(&engine, PEER, store_message(1, &object, None), 0);
    store.handle(&engine, PEER, store_message(2, &object, Some(OWNER)), 0);
    let fetch = KvMessage::Fetch {
        request: RequestId(3),
        key: b"k".to_vec(),
        hint: None,
    };
    store.handle(&engine, PEER, fetch, 0);
    let reap = KvMessage::Reap {
        key: b"k".to_vec(),
        object: tombstone(),
    };
    store.handle(&engine, PEER, reap, u64::MAX);
    commit(&mut store, &engine);
    let failed = |request| KvReply::Failed {
        request: RequestId(request),
    };
    assert_eq!(replies(&mut store), [failed(1), failed(2), failed(3)]);
    assert_eq!(store.stats().storage_errors, 5);
    assert!(store.take_batches().is_empty(), "nothing was queued");
    assert!(KvStore::open(KvStoreConfig::new(ME), &engine).is_err());
}

#[test]
fn a_turn_of_more_writes_than_one_engine_batch_holds_commits_in_batches_the_engine_accepts() {
    let engine = engine();
    let mut store = open(ME, &engine);
    let writes = Limits::default().batch_ops_max + 1;
    for i in 0..writes {
        let key = format!("k{i}").into_bytes();
        store
            .stamp(&engine, &key, &[], Some(vec![b'v'; 2_000]), 0)
            .unwrap();
    }
    commit(&mut store, &engine);
    let reopened = open(ME, &engine);
    assert_eq!(reopened.stats().objects, writes as u64);
    // Hints expiring together are deleted in such batches too.
    let mut store = KvStore::open(
        KvStoreConfig {
            hints_max: writes,
            ..KvStoreConfig::new(ME)
        },
        &engine,
    )
    .unwrap();
    for i in 0..writes {
        let mut message = store_message(i as u64, &value("a", PEER), Some(OWNER));
        if let KvMessage::Store { key, .. } = &mut message {
            *key = format!("h{i}").into_bytes();
        }
        store.handle(&engine, PEER, message, 0);
    }
    commit(&mut store, &engine);
    store.tick(u64::MAX);
    commit(&mut store, &engine);
    assert_eq!(open(ME, &engine).stats().hints, 0);
}

/// A preference list of owners 1, 2, 3 whose replicas, in order, are
/// `replicas` (node, the owner it stands in for).
fn preference_list(replicas: &[(NodeId, Option<NodeId>)]) -> PreferenceList {
    PreferenceList {
        owners: vec![NodeId(1), NodeId(2), NodeId(3)],
        replicas: replicas
            .iter()
            .map(|&(node, stands_in_for)| RingReplica {
                node,
                stands_in_for,
            })
            .collect(),
    }
}

/// The coordinator and four stores end to end: a write at W = 2 while
/// owner 3 is down also goes to node 4 as a hint, is read back at R = 2,
/// and reaches owner 3 when it returns, where a read at R = 2 finds it.
#[test]
fn a_coordinated_write_with_an_owner_down_reaches_it_through_a_hint() {
    let nodes = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
    let engines: Vec<MemoryEngine> = nodes.iter().map(|_| engine()).collect();
    let mut stores: Vec<KvStore> = nodes
        .iter()
        .zip(&engines)
        .map(|(&node, engine)| open(node, engine))
        .collect();
    let owner_down = preference_list(&[
        (nodes[0], None),
        (nodes[1], None),
        (nodes[3], Some(nodes[2])),
    ]);
    // Node 1 coordinates: it stamps on its own object and sends only after
    // the sync.
    let object = stores[0]
        .stamp(&engines[0], b"k", &[], Some(b"v".to_vec()), 0)
        .unwrap();
    commit(&mut stores[0], &engines[0]);
    let mut coordinator = Coordinator::new(CoordinatorConfig::default());
    let quorum = Quorum::new(3, 2, 2).unwrap();
    let request = |id| KvRequest::new(RequestId(id), b"k".to_vec(), quorum);
    coordinator
        .start_write(request(1), object.clone(), &owner_down, 0)
        .unwrap();
    let written = exchange(&mut coordinator, &mut stores, &engines, &nodes);
    assert!(
        matches!(written, Some(Ok(Outcome::Written { acks: 2, .. }))),
        "{written:?}"
    );
    assert_eq!(stores[3].hinted_owners(), [nodes[2]]);
    assert_eq!(stores[2].read(&engines[2], b"k").unwrap(), None);
    coordinator.start_read(request(2), &owner_down, 1).unwrap();
    let read = exchange(&mut coordinator, &mut stores, &engines, &nodes);
    let Some(Ok(Outcome::Read {
        object: read,
        replies: 2,
    })) = read
    else {
        panic!("a read at R = 2: {read:?}");
    };
    assert_eq!(read.get(b"k").values().collect::<Vec<_>>(), [b"v"]);

    // Owner 3 returns: the hint is handed over and dropped.
    stores[3].handoff(&engines[3], nodes[2], 5);
    for output in stores[3].take_outputs() {
        let KvOutput::Send { message, .. } = output else {
            continue;
        };
        stores[2].handle(&engines[2], nodes[3], message, 6);
    }
    commit(&mut stores[2], &engines[2]);
    for reply in replies(&mut stores[2]) {
        stores[3].step(&engines[3], nodes[2], reply, 7);
    }
    commit(&mut stores[3], &engines[3]);
    assert!(stores[3].hinted_owners().is_empty());
    assert_eq!(stores[2].read(&engines[2], b"k").unwrap(), Some(object));
    // A read at R = 2 that asks owner 3 first finds the write there.
    let owner_back = preference_list(&[(nodes[2], None), (nodes[1], None), (nodes[0], None)]);
    coordinator.start_read(request(3), &owner_back, 8).unwrap();
    let read = exchange(&mut coordinator, &mut stores, &engines, &nodes);
    let Some(Ok(Outcome::Read { object: read, .. })) = read else {
        panic!("a read at R = 2: {read:?}");
    };
    assert_eq!(read.get(b"k").values().collect::<Vec<_>>(), [b"v"]);
}

/// Delivers every message the coordinator sends to the stores, and their
/// replies back, until the client's reply comes out.
fn exchange(
    coordinator: &mut Coordinator,
    stores: &mut [KvStore],
    engines: &[MemoryEngine],
    nodes: &[NodeId],
) -> Option<Result<Outcome, crate::coordinator::CoordinatorError>> {
    for round in 0..4 {
        for effect in coordinator.take_effects() {
            match effect {
                Effect::Send { to, message } => {
                    let index = nodes.iter().position(|&n| n == to).expect("a known node");
                    stores[index].handle(&engines[index], nodes[0], message, round);
                }
                Effect::Reply { result, .. } => return Some(result),
                _ => {}
            }
        }
        for (index, store) in stores.iter_mut().enumerate() {
            commit(store, &engines[index]);
            for reply in replies(store) {
                coordinator.step(nodes[index], reply, round);
            }
        }
    }
    None
}

/// One step of the convergence property, at store `at` (of three) and
/// key `key` (of two).
#[derive(Clone, Debug)]
enum Step {
    /// A coordinator's Store of a fresh write by a node of its own.
    Store { at: usize, key: u8 },
    /// A read repair of such a write.
    Repair { at: usize, key: u8 },
    /// A client write stamped by the store itself, from a blind context.
    Stamp { at: usize, key: u8 },
    /// An anti-entropy transfer from `at` to `to`, if `at` holds the key
    /// synced.
    Transfer { at: usize, to: usize, key: u8 },
    /// The store's commit: write, sync, release.
    Commit { at: usize },
    /// A crash before the store's sync: its unsynced writes are lost.
    Crash { at: usize },
}

fn arb_step() -> impl Strategy<Value = Step> {
    let at = 0usize..3;
    let key = 0u8..2;
    prop_oneof![
        (at.clone(), key.clone()).prop_map(|(at, key)| Step::Store { at, key }),
        (at.clone(), key.clone()).prop_map(|(at, key)| Step::Repair { at, key }),
        (at.clone(), key.clone()).prop_map(|(at, key)| Step::Stamp { at, key }),
        (at.clone(), 0usize..3, key).prop_map(|(at, to, key)| Step::Transfer { at, to, key }),
        at.clone().prop_map(|at| Step::Commit { at }),
        at.prop_map(|at| Step::Crash { at }),
    ]
}

/// A fresh write of `key`, by a node that writes nothing else (a dot
/// names one value).
fn fresh(key: &[u8], i: usize) -> KvObject {
    let mut object = KvObject::new();
    let value = format!("v{i}").into_bytes();
    object
        .put(key, &[], NodeId(10 + i as u64), value, &KvLimits::default())
        .expect("a small write");
    object
}

/// Three stores on their engines, driven one step at a time.
struct Trio {
    engines: Vec<MemoryEngine>,
    stores: Vec<KvStore>,
    /// Every (key, dot) that left a store, with the sibling it named.
    shipped: BTreeMap<(Bytes, calm_clock::Dot), Sibling>,
    /// Dots seen naming two different siblings.
    reminted: Vec<String>,
}

impl Trio {
    fn new() -> Self {
        let engines: Vec<MemoryEngine> = (0..3).map(|_| engine()).collect();
        let stores = (0..3u64)
            .map(|i| open(NodeId(i + 1), &engines[i as usize]))
            .collect();
        Self {
            engines,
            stores,
            shipped: BTreeMap::new(),
            reminted: Vec::new(),
        }
    }

    fn apply(&mut self, i: usize, step: Step) {
        let key = |key: u8| vec![b'k', key];
        match step {
            Step::Store { at, key: k } => {
                let message = KvMessage::Store {
                    request: RequestId(i as u64),
                    key: key(k),
                    object: fresh(&key(k), i),
                    hint: None,
                };
                self.stores[at].handle(&self.engines[at], NodeId(9), message, 0);
            }
            Step::Repair { at, key: k } => {
                let (key, object) = (key(k), fresh(&key(k), i));
                let message = KvMessage::Repair {
                    key,
                    object,
                    hint: None,
                };
                self.stores[at].handle(&self.engines[at], NodeId(9), message, 0);
            }
            Step::Stamp { at, key: k } => {
                let value = Some(format!("s{i}").into_bytes());
                self.stores[at]
                    .stamp(&self.engines[at], &key(k), &[], value, 0)
                    .expect("a small blind write");
            }
            Step::Transfer { at, to, key: k } => self.transfer(at, to, &key(k)),
            Step::Commit { at } => commit(&mut self.stores[at], &self.engines[at]),
            Step::Crash { at } => {
                drop(self.stores[at].take_batches());
                self.engines[at].crash();
                self.stores[at] = open(NodeId(at as u64 + 1), &self.engines[at]);
            }
        }
    }

    fn transfer(&mut self, from: usize, to: usize, key: &[u8]) {
        let state = self.stores[from].state_transfer(&self.engines[from], key);
        if let Some(bytes) = state.expect("memory engine reads") {
            let object = KvObject::decode(&bytes, &KvLimits::default()).expect("it decodes");
            self.ship(key, &object);
            self.stores[to]
                .merge_transfer(&self.engines[to], key, &bytes, 0)
                .expect("a store's own encoding decodes");
        }
    }

    /// Every store sends every key it holds to the others, twice round.
    fn exchange_all(&mut self) {
        for from in [0, 1, 2, 0, 1] {
            for at in 0..3 {
                commit(&mut self.stores[at], &self.engines[at]);
            }
            let keys: Vec<Vec<u8>> = self.stores[from]
                .digests()
                .map(|(k, _)| k.to_vec())
                .collect();
            for key in keys {
                for to in 0..3 {
                    self.transfer(from, to, &key);
                }
            }
        }
    }

    /// Records what `object` names as having left a store: a dot, once
    /// out, must name one sibling forever.
    fn ship(&mut self, key: &[u8], object: &KvObject) {
        for (dot, sibling) in object.dotted_siblings() {
            let named = self
                .shipped
                .entry((key.to_vec(), dot))
                .or_insert(sibling.clone());
            if named != sibling {
                self.reminted
                    .push(format!("{dot:?} named {named:?} and {sibling:?}"));
            }
        }
    }

    fn digests(&self, at: usize) -> Vec<(Vec<u8>, u64)> {
        self.stores[at]
            .digests()
            .map(|(k, d)| (k.to_vec(), d))
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Stores, repairs, stamps, anti-entropy transfers, commits and crashes
    /// in any interleaving leave three replicas with equal digests once
    /// each has sent the others its objects. A crash can only lose what
    /// never left, so no dot is ever minted twice for two values.
    #[test]
    fn replicas_that_exchange_their_objects_converge(
        steps in prop::collection::vec(arb_step(), 1..60),
    ) {
        let mut trio = Trio::new();
        for (i, step) in steps.into_iter().enumerate() {
            trio.apply(i, step);
        }
        trio.exchange_all();
        prop_assert_eq!(&trio.reminted, &Vec::<String>::new());
        prop_assert_eq!(trio.digests(0), trio.digests(1));
        prop_assert_eq!(trio.digests(1), trio.digests(2));
    }
}
