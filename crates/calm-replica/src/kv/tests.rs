//! Tests of the key-value object: DVV semantics as seen through contexts
//! (what a write supersedes, siblings, tombstones, convergence) and every refusal.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::*;

const KEY: &[u8] = b"k";

/// The committed case count, unless `PROPTEST_CASES` asks for fewer while
/// iterating; the seed is fixed so a run replays.
fn proptest_config(committed: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(committed);
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x6b76_7e57),
        ..ProptestConfig::default()
    }
}

fn limits() -> KvLimits {
    KvLimits {
        // High enough that no generated history hits it; the bound has its
        // own tests.
        siblings_max: 1_000,
        ..KvLimits::default()
    }
}

fn dots(object: &KvObject) -> BTreeSet<Dot> {
    object.dotted_siblings().map(|(dot, _)| dot).collect()
}

/// One step of a history over three replicas and a few clients. Replica `i`
/// coordinates as `NodeId(i + 1)`.
#[derive(Clone, Debug)]
enum Op {
    Put {
        client: usize,
        replica: usize,
        value: u8,
    },
    Delete {
        client: usize,
        replica: usize,
    },
    Read {
        client: usize,
        replica: usize,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

const REPLICAS: usize = 3;
const CLIENTS: usize = 4;

fn op(with_reads: bool) -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    let replica = 0..REPLICAS;
    let put =
        (client.clone(), replica.clone(), any::<u8>()).prop_map(|(client, replica, value)| {
            Op::Put {
                client,
                replica,
                value,
            }
        });
    let delete = (client.clone(), replica.clone())
        .prop_map(|(client, replica)| Op::Delete { client, replica });
    let read = (client, replica.clone()).prop_map(|(client, replica)| Op::Read { client, replica });
    let sync = (replica.clone(), replica).prop_map(|(from, to)| Op::Sync { from, to });
    // Reads are optional: a client that reads a stale replica loses sight of
    // its own last write, which the sibling bound does not cover.
    let read_weight = if with_reads { 2 } else { 0 };
    prop_oneof![4 => put, 1 => delete, read_weight => read, 3 => sync]
}

/// Replicas and the context each client holds.
struct World {
    replicas: Vec<KvObject>,
    contexts: Vec<Vec<u8>>,
}

impl World {
    fn new() -> Self {
        Self {
            replicas: vec![KvObject::new(); REPLICAS],
            contexts: vec![Vec::new(); CLIENTS],
        }
    }

    /// Applies `op`. A writing client takes back the context of the object
    /// it wrote (returnbody), as the contract on `KvObject` asks.
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Put {
                client,
                replica,
                value,
            } => {
                let object = &mut self.replicas[replica];
                let node = NodeId(replica as u64 + 1);
                let result = object.put(KEY, &self.contexts[client], node, vec![value], &limits());
                assert!(result.is_ok(), "{result:?}");
                self.contexts[client] = object.get(KEY).context;
            }
            Op::Delete { client, replica } => {
                let object = &mut self.replicas[replica];
                let node = NodeId(replica as u64 + 1);
                let result = object.delete(KEY, &self.contexts[client], node, &limits());
                assert!(result.is_ok(), "{result:?}");
                self.contexts[client] = object.get(KEY).context;
            }
            Op::Read { client, replica } => {
                self.contexts[client] = self.replicas[replica].get(KEY).context;
            }
            Op::Sync { from, to } => {
                let source = self.replicas[from].clone();
                self.replicas[to].merge(&source);
            }
        }
    }

    fn run(ops: &[Op]) -> Self {
        let mut world = Self::new();
        for op in ops {
            world.apply(op);
        }
        world
    }
}

fn merged_in_order(objects: &[KvObject], order: &[usize]) -> KvObject {
    let mut out = KvObject::new();
    for &i in order {
        out.merge(&objects[i]);
    }
    out
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn replicas_converge_whatever_the_merge_order(
        ops in prop::collection::vec(op(true), 0..40),
    ) {
        let world = World::run(&ops);
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let reference = merged_in_order(&world.replicas, &orders[0]);
        for order in &orders[1..] {
            prop_assert_eq!(&merged_in_order(&world.replicas, order), &reference);
        }
        // Idempotent: merging a state already in the merge changes nothing.
        let mut again = reference.clone();
        again.merge(&world.replicas[1]);
        prop_assert_eq!(&again, &reference);
        // A tree of merges agrees with a chain: (r0 ⊔ r1) ⊔ (r1 ⊔ r2).
        let mut left = world.replicas[0].clone();
        left.merge(&world.replicas[1]);
        let mut right = world.replicas[1].clone();
        right.merge(&world.replicas[2]);
        left.merge(&right);
        prop_assert_eq!(&left, &reference);
    }

    #[test]
    fn a_put_with_a_reads_context_supersedes_exactly_what_that_read_saw(
        before in prop::collection::vec(op(true), 0..30),
        replica in 0..REPLICAS,
        concurrent in prop::collection::vec(0..REPLICAS as u64, 0..4),
    ) {
        let mut world = World::run(&before);
        let object = &mut world.replicas[replica];
        let read = object.get(KEY);
        let seen = dots(object);
        // Writes the reader did not see, blind, at other coordinators.
        for node in concurrent {
            object.put(KEY, &[], NodeId(node + 1), b"late".to_vec(), &limits()).unwrap();
        }
        let unseen: BTreeSet<Dot> = dots(object).difference(&seen).copied().collect();
        let dot = object.put(KEY, &read.context, NodeId(9), b"new".to_vec(), &limits()).unwrap();
        let mut expected = unseen;
        expected.insert(dot);
        prop_assert_eq!(dots(object), expected);
    }

    #[test]
    fn blind_puts_keep_every_sibling_and_add_one(
        before in prop::collection::vec(op(true), 0..30),
        replica in 0..REPLICAS,
        node in 1..5u64,
    ) {
        let mut world = World::run(&before);
        let object = &mut world.replicas[replica];
        let seen = dots(object);
        let dot = object.put(KEY, &[], NodeId(node), b"blind".to_vec(), &limits()).unwrap();
        let mut expected = seen;
        expected.insert(dot);
        prop_assert_eq!(dots(object), expected);
    }

    #[test]
    fn a_delete_that_saw_a_value_never_lets_it_resurrect(
        before in prop::collection::vec(op(true), 0..40),
        deleter in 0..REPLICAS,
        after in prop::collection::vec(op(true), 0..20),
    ) {
        let mut world = World::run(&before);
        // Stale copies of every replica, taken before the delete.
        let stale = world.replicas.clone();
        let object = &mut world.replicas[deleter];
        let read = object.get(KEY);
        let seen = dots(object);
        object.delete(KEY, &read.context, NodeId(7), &limits()).unwrap();
        prop_assert!(object.get(KEY).is_absent());
        for op in &after {
            world.apply(op);
        }
        let mut everything = world.replicas.clone();
        everything.extend(stale);
        let merged = merged_in_order(&everything, &[3, 4, 5, 0, 1, 2]);
        let reversed = merged_in_order(&everything, &[2, 1, 0, 5, 4, 3]);
        prop_assert_eq!(&merged, &reversed);
        prop_assert!(dots(&merged).is_disjoint(&seen), "{:?} came back", seen);
    }

    #[test]
    fn siblings_never_outnumber_concurrent_writers(
        ops in prop::collection::vec(op(false), 0..60),
    ) {
        // Each client's write supersedes its own previous one (it carries
        // the context returned with it), so at most one sibling per client.
        let world = World::run(&ops);
        for object in &world.replicas {
            prop_assert!(object.sibling_count() <= CLIENTS, "{}", object.sibling_count());
        }
        let merged = merged_in_order(&world.replicas, &[0, 1, 2]);
        prop_assert!(merged.sibling_count() <= CLIENTS, "{}", merged.sibling_count());
    }

    #[test]
    fn decoding_arbitrary_context_bytes_never_panics_nor_changes_the_object(
        bytes in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut object = KvObject::new();
        object.put(KEY, &[], NodeId(1), b"v".to_vec(), &limits()).unwrap();
        let before = object.clone();
        if object.put(KEY, &bytes, NodeId(1), b"w".to_vec(), &limits()).is_err() {
            prop_assert_eq!(object, before);
        }
    }
}

#[test]
fn a_tombstone_reads_as_absent_and_a_concurrent_value_survives_it() {
    let mut object = KvObject::new();
    object
        .put(KEY, &[], NodeId(1), b"a".to_vec(), &limits())
        .unwrap();
    let read = object.get(KEY);
    object
        .delete(KEY, &read.context, NodeId(1), &limits())
        .unwrap();
    assert!(object.get(KEY).is_absent());
    assert!(object.is_tombstone());
    assert_eq!(object.get(KEY).siblings, vec![None]);

    // A blind write is concurrent with the delete: both stay, the value reads.
    object
        .put(KEY, &[], NodeId(2), b"b".to_vec(), &limits())
        .unwrap();
    let read = object.get(KEY);
    assert_eq!(read.siblings, vec![None, Some(b"b".to_vec())]);
    assert!(!read.is_absent());
    assert!(!object.is_tombstone());
}

#[test]
fn too_many_siblings_is_refused_and_changes_nothing() {
    let limits = KvLimits {
        siblings_max: 2,
        ..KvLimits::default()
    };
    let mut object = KvObject::new();
    object
        .put(KEY, &[], NodeId(1), b"a".to_vec(), &limits)
        .unwrap();
    object
        .put(KEY, &[], NodeId(2), b"b".to_vec(), &limits)
        .unwrap();
    let before = object.clone();
    assert_eq!(
        object.put(KEY, &[], NodeId(3), b"c".to_vec(), &limits),
        Err(KvError::TooManySiblings {
            siblings: 3,
            siblings_max: 2
        })
    );
    assert_eq!(
        object.delete(KEY, &[], NodeId(3), &limits),
        Err(KvError::TooManySiblings {
            siblings: 3,
            siblings_max: 2
        })
    );
    assert_eq!(object, before);
    // A write that read the siblings resolves them and is accepted.
    let read = object.get(KEY);
    object
        .put(KEY, &read.context, NodeId(3), b"c".to_vec(), &limits)
        .unwrap();
    assert_eq!(object.sibling_count(), 1);
}

#[test]
fn oversized_keys_values_and_contexts_are_refused_before_anything_changes() {
    let limits = KvLimits {
        key_bytes_max: 4,
        value_bytes_max: 8,
        context_bytes_max: 64,
        context_nodes_max: 2,
        ..KvLimits::default()
    };
    let mut object = KvObject::new();
    object
        .put(KEY, &[], NodeId(1), b"a".to_vec(), &limits)
        .unwrap();
    let before = object.clone();
    let put = |object: &mut KvObject, key: &[u8], context: &[u8], value: &[u8]| {
        object.put(key, context, NodeId(1), value.to_vec(), &limits)
    };
    assert_eq!(
        put(&mut object, b"kkkkk", &[], b"a"),
        Err(KvError::KeyTooLarge {
            key_bytes: 5,
            key_bytes_max: 4
        })
    );
    assert_eq!(
        object.delete(b"kkkkk", &[], NodeId(1), &limits),
        Err(KvError::KeyTooLarge {
            key_bytes: 5,
            key_bytes_max: 4
        })
    );
    assert_eq!(
        put(&mut object, KEY, &[], &[0; 9]),
        Err(KvError::ValueTooLarge {
            value_bytes: 9,
            value_bytes_max: 8
        })
    );
    assert!(matches!(
        put(&mut object, KEY, &[1; 65], b"a"),
        Err(KvError::ContextTooLarge { what: "bytes", .. })
    ));
    let mut wide = VersionVector::new();
    for node in 1..=3 {
        wide.increment(NodeId(node));
    }
    let wide = Context::new(KEY, wide).encode();
    assert_eq!(
        put(&mut object, KEY, &wide, b"a"),
        Err(KvError::ContextTooLarge {
            what: "nodes",
            found: 3,
            bound: 2
        })
    );
    assert_eq!(object, before);
}

#[test]
fn a_malformed_or_foreign_context_is_a_typed_error() {
    let mut object = KvObject::new();
    object
        .put(KEY, &[], NodeId(1), b"a".to_vec(), &limits())
        .unwrap();
    let before = object.clone();
    let context = object.get(KEY).context;
    assert_eq!(
        object.put(b"other", &context, NodeId(1), b"b".to_vec(), &limits()),
        Err(KvError::ContextForOtherKey)
    );
    let truncated = &context[..context.len() - 1];
    assert!(matches!(
        object.put(KEY, truncated, NodeId(1), b"b".to_vec(), &limits()),
        Err(KvError::BadContext(_))
    ));
    assert!(matches!(
        object.put(KEY, &[9, 0], NodeId(1), b"b".to_vec(), &limits()),
        Err(KvError::BadContext(DecodeError::UnsupportedVersion { .. }))
    ));
    assert_eq!(object, before);
}

#[test]
fn an_object_round_trips_and_decoding_refuses_oversized_values() {
    let mut object = KvObject::new();
    object
        .put(KEY, &[], NodeId(1), vec![7; 16], &limits())
        .unwrap();
    object.delete(KEY, &[], NodeId(2), &limits()).unwrap();
    let bytes = object.encode();
    assert_eq!(KvObject::decode(&bytes, &limits()), Ok(object));
    let small = KvLimits {
        value_bytes_max: 15,
        ..limits()
    };
    assert!(matches!(
        KvObject::decode(&bytes, &small),
        Err(DecodeError::Invalid(_))
    ));
    assert!(KvObject::decode(&bytes[..bytes.len() - 1], &limits()).is_err());
}
