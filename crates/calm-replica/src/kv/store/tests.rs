//! The KV store's contract: replies only after the sync, hints held,
//! handed over and bounded, reaps only under the grace rule, and replicas
//! that merge each other's objects converging.

use calm_storage::{Limits, MemoryEngine, Storage};
use calm_types::NodeId;
use proptest::prelude::*;

use super::*;
use crate::RequestId;
use crate::coordinator::{Coordinator, CoordinatorConfig, Effect, KvRequest, Outcome, Quorum};
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

/// The coordinator and three stores end to end: a write at W = 2 while
/// one owner is down goes to a fallback as a hint, is read back at R = 2,
/// and reaches the owner when it returns.
#[test]
fn a_coordinated_write_with_an_owner_down_reaches_it_through_a_hint() {
    let nodes = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
    let engines: Vec<MemoryEngine> = nodes.iter().map(|_| engine()).collect();
    let mut stores: Vec<KvStore> = nodes
        .iter()
        .zip(&engines)
        .map(|(&node, engine)| open(node, engine))
        .collect();
    // Owners 1, 2, 3; owner 3 is down and node 4 stands in for it.
    let list = PreferenceList {
        owners: nodes[..3].to_vec(),
        replicas: vec![
            RingReplica {
                node: nodes[0],
                stands_in_for: None,
            },
            RingReplica {
                node: nodes[1],
                stands_in_for: None,
            },
            RingReplica {
                node: nodes[3],
                stands_in_for: Some(nodes[2]),
            },
        ],
    };
    let object = stores[0]
        .stamp(&engines[0], b"k", &[], Some(b"v".to_vec()), 0)
        .unwrap();
    commit(&mut stores[0], &engines[0]);
    let mut coordinator = Coordinator::new(CoordinatorConfig::default());
    let quorum = Quorum::new(3, 2, 3).unwrap();
    let request = KvRequest::new(RequestId(1), b"k".to_vec(), quorum);
    coordinator
        .start_write(request, object.clone(), &list, 0)
        .unwrap();
    let result = exchange(&mut coordinator, &mut stores, &engines, &nodes);
    assert!(
        matches!(result, Some(Ok(Outcome::Written { acks: 3, hinted: 1 }))),
        "{result:?}"
    );
    assert_eq!(stores[3].hinted_owners(), [nodes[2]]);
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

fn arb_write() -> impl Strategy<Value = (u8, bool)> {
    // (which store receives it, repair or store)
    (0u8..3, any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Stores, repairs and anti-entropy transfers in any order and
    /// interleaving leave three replicas with equal digests once each has
    /// sent the others its objects.
    #[test]
    fn replicas_that_exchange_their_objects_converge(writes in prop::collection::vec(arb_write(), 1..20)) {
        let engines: Vec<MemoryEngine> = (0..3).map(|_| engine()).collect();
        let mut stores: Vec<KvStore> = (0..3u64)
            .map(|i| open(NodeId(i + 1), &engines[i as usize]))
            .collect();
        for (i, (at, repair)) in writes.into_iter().enumerate() {
            let at = at as usize;
            // Each write by a node of its own: a dot names one value.
            let object = value(&format!("v{i}"), NodeId(10 + i as u64));
            let message = match repair {
                true => KvMessage::Repair { key: b"k".to_vec(), object, hint: None },
                false => store_message(i as u64, &object, None),
            };
            stores[at].handle(&engines[at], NodeId(9), message, 0);
            commit(&mut stores[at], &engines[at]);
        }
        for from in 0..3 {
            let Some(bytes) = stores[from].state_transfer(&engines[from], b"k").unwrap() else {
                continue;
            };
            for to in 0..3 {
                stores[to].merge_transfer(&engines[to], b"k", &bytes, 0).unwrap();
                commit(&mut stores[to], &engines[to]);
            }
        }
        let digests: Vec<Vec<(Vec<u8>, u64)>> = stores
            .iter()
            .map(|s| s.digests().map(|(k, d)| (k.to_vec(), d)).collect())
            .collect();
        prop_assert_eq!(&digests[0], &digests[1]);
        prop_assert_eq!(&digests[1], &digests[2]);
    }
}
