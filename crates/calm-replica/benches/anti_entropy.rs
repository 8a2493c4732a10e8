//! Anti-entropy benchmarks: the transfer of one session between two replicas
//! of 1,000,000 keys (16-byte keys, 100-byte values) that differ in 100, as
//! a printed figure checked against the design target (at most 1% of the
//! data), the same figure for the KV levels' objects (trees built from
//! the store's digests, the differing keys shipped as the store's state
//! transfers), then criterion timings of building a tree, a session and an
//! incremental update.
//!
//! Run with `cargo bench -p calm-replica --bench anti_entropy`.

use std::hint::black_box;
use std::time::Instant;

use std::collections::BTreeMap;

use calm_replica::kv::{KvLimits, KvObject, store};
use calm_replica::{
    AntiEntropyConfig, AntiEntropySession, KeyRange, MerkleTree, Outcome, ValueDigest,
};
use calm_types::NodeId;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const KEY_BYTES: u64 = 16;
const VALUE_BYTES: usize = 100;
const KEYS: u64 = 1_000_000;
const DIFFERING: u64 = 100;

/// Key `i`: 16 bytes, the index then a scrambled copy of it.
fn key_of(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&i.to_be_bytes());
    key[8..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    key
}

/// The digest of version `version` of `key`'s 100-byte value.
fn value_digest(key: &[u8; 16], version: u8) -> ValueDigest {
    let mut value = [version; VALUE_BYTES];
    value[..16].copy_from_slice(key);
    ValueDigest::of(&value)
}

fn build(keys: u64) -> MerkleTree {
    let mut tree = MerkleTree::with_expected_keys(KeyRange::FULL, keys);
    for i in 0..keys {
        let key = key_of(i);
        tree.upsert(&key, value_digest(&key, 0))
            .expect("the full range covers every key");
    }
    tree.root();
    tree
}

/// Two replicas of `keys` keys where the second missed `differing` updates:
/// a third changed there, a third missing there, a third only here.
fn diverged(keys: u64, differing: u64) -> (MerkleTree, MerkleTree) {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut a, mut b) = (build(keys), build(keys));
    for n in 0..differing {
        let key = key_of(rng.random_range(0..keys));
        let result = match n % 3 {
            0 => b.upsert(&key, value_digest(&key, 1)),
            1 => b.remove(&key),
            _ => a.upsert(&key_of(keys + n), value_digest(&key, 2)),
        };
        result.expect("the full range covers every key");
    }
    (a, b)
}

/// One full session; returns (bytes of messages, states to ship).
fn session(a: &mut MerkleTree, b: &mut MerkleTree) -> (u64, usize) {
    let (bytes, outcome) = session_outcome(a, b);
    (bytes, outcome.send.len() + outcome.receive.len())
}

/// One full session; returns (bytes of messages, the initiator's outcome).
fn session_outcome(a: &mut MerkleTree, b: &mut MerkleTree) -> (u64, Outcome) {
    let config = AntiEntropyConfig::default();
    let mut initiator = AntiEntropySession::initiator(config).expect("default config is valid");
    let mut responder = AntiEntropySession::responder(config).expect("default config is valid");
    loop {
        let mut moved = false;
        while let Some(bytes) = initiator.poll_transmit(a).expect("honest peers") {
            responder.handle(b, &bytes).expect("honest peers");
            moved = true;
        }
        while let Some(bytes) = responder.poll_transmit(b).expect("honest peers") {
            initiator.handle(a, &bytes).expect("honest peers");
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let outcome = initiator.outcome().expect("the session finished");
    (initiator.bytes_exchanged(), outcome)
}

/// The design target's figure, printed once: bytes exchanged vs full data.
fn print_transfer_figure() {
    let started = Instant::now();
    let (mut a, mut b) = diverged(KEYS, DIFFERING);
    let build_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (message_bytes, states) = session(&mut a, &mut b);
    let session_ms = started.elapsed().as_secs_f64() * 1e3;
    let entry_bytes = KEY_BYTES + VALUE_BYTES as u64;
    let shipped_bytes = states as u64 * entry_bytes;
    let exchanged = message_bytes + shipped_bytes;
    let full = KEYS * entry_bytes;
    let ratio = exchanged as f64 / full as f64;
    println!(
        "anti-entropy, {KEYS} keys × {entry_bytes} B differing in {DIFFERING}: \
         messages {message_bytes} B + {states} states {shipped_bytes} B = {exchanged} B \
         of {full} B full data = {:.4}% (target ≤ 1%); \
         building both trees {build_s:.2} s, session {session_ms:.1} ms",
        ratio * 100.0
    );
    assert!(ratio <= 0.01, "anti-entropy transfer above 1% of the data");
}

/// Version `version` of `key`'s KV object: `version + 1` writes by one
/// node, each with the previous one's context, so one 100-byte sibling.
fn kv_object(key: &[u8], version: u8) -> KvObject {
    let limits = KvLimits::default();
    let mut object = KvObject::new();
    for v in 0..=version {
        let mut value = vec![v; VALUE_BYTES];
        value[..key.len()].copy_from_slice(key);
        let context = object.get(key).context;
        object
            .put(key, &context, NodeId(1), value, &limits)
            .expect("a small write");
    }
    object
}

fn kv_digest(key: &[u8], version: u8) -> ValueDigest {
    ValueDigest(store::digest(&kv_object(key, version)))
}

/// What one side holds of `key` besides version 0: `Some(None)` absent.
type Overrides = BTreeMap<Vec<u8>, Option<u8>>;

/// A state transfer of `key` from a side with `overrides`: the key and the
/// encoded object, as `KvStore::state_transfer` ships it.
fn kv_transfer_bytes(overrides: &Overrides, key: &[u8]) -> u64 {
    match overrides.get(key) {
        Some(None) => 0,
        Some(Some(version)) => (key.len() + kv_object(key, *version).encode().len()) as u64,
        None => (key.len() + kv_object(key, 0).encode().len()) as u64,
    }
}

/// The design target's figure for the KV levels: two stores' trees built
/// from object digests, differing in `DIFFERING` keys as in `diverged`.
fn print_kv_transfer_figure() {
    let started = Instant::now();
    let mut a = MerkleTree::with_expected_keys(KeyRange::FULL, KEYS);
    let mut b = MerkleTree::with_expected_keys(KeyRange::FULL, KEYS);
    let mut full = 0u64;
    for i in 0..KEYS {
        let key = key_of(i);
        let object = kv_object(&key, 0);
        full += (key.len() + object.encode().len()) as u64;
        let digest = ValueDigest(store::digest(&object));
        for tree in [&mut a, &mut b] {
            tree.upsert(&key, digest)
                .expect("the full range covers every key");
        }
    }
    let (mut only_a, mut only_b) = (Overrides::new(), Overrides::new());
    let mut rng = StdRng::seed_from_u64(7);
    for n in 0..DIFFERING {
        let key = key_of(rng.random_range(0..KEYS));
        let result = match n % 3 {
            0 => {
                only_b.insert(key.to_vec(), Some(1));
                b.upsert(&key, kv_digest(&key, 1))
            }
            1 => {
                only_b.insert(key.to_vec(), None);
                b.remove(&key)
            }
            _ => {
                let key = key_of(KEYS + n);
                only_b.insert(key.to_vec(), None);
                only_a.insert(key.to_vec(), Some(2));
                a.upsert(&key, kv_digest(&key, 2))
            }
        };
        result.expect("the full range covers every key");
    }
    let build_s = started.elapsed().as_secs_f64();
    let (message_bytes, outcome) = session_outcome(&mut a, &mut b);
    let shipped: u64 = outcome
        .send
        .iter()
        .map(|key| kv_transfer_bytes(&only_a, key))
        .chain(
            outcome
                .receive
                .iter()
                .map(|key| kv_transfer_bytes(&only_b, key)),
        )
        .sum();
    let states = outcome.send.len() + outcome.receive.len();
    let exchanged = message_bytes + shipped;
    let ratio = exchanged as f64 / full as f64;
    println!(
        "anti-entropy, {KEYS} KV objects ({full} B with keys) differing in {DIFFERING}: \
         messages {message_bytes} B + {states} state transfers {shipped} B = {exchanged} B \
         = {:.4}% (target ≤ 1%); building both trees {build_s:.2} s",
        ratio * 100.0
    );
    assert!(
        ratio <= 0.01,
        "KV anti-entropy transfer above 1% of the data"
    );
}

fn benches(c: &mut Criterion) {
    print_transfer_figure();
    print_kv_transfer_figure();
    let mut group = c.benchmark_group("anti_entropy");
    group.sample_size(10);
    group.bench_function("build_tree_100k_keys", |bench| {
        bench.iter(|| black_box(build(100_000)))
    });
    let (mut a, mut b) = diverged(KEYS, DIFFERING);
    group.bench_function("session_1m_keys_100_differing", |bench| {
        bench.iter(|| black_box(session(&mut a, &mut b)))
    });
    let mut version = 0u8;
    group.bench_function("upsert_and_root_1m_keys", |bench| {
        bench.iter(|| {
            version = version.wrapping_add(1);
            let key = key_of(u64::from(version));
            a.upsert(&key, value_digest(&key, version))
                .expect("the full range covers every key");
            black_box(a.root())
        })
    });
    group.finish();
}

criterion_group!(anti_entropy, benches);
criterion_main!(anti_entropy);
