//! Tests of the anti-entropy session: exactness against a model, the cost
//! of identical and nearly identical trees, CRDT convergence, and rejection
//! of malformed and out-of-protocol messages.

use std::collections::BTreeMap;

use calm_crdt::{DeltaCrdt, PnCounter};
use calm_types::NodeId;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::*;
use crate::merkle::TreeShape;

/// The committed case count, unless `PROPTEST_CASES` asks for fewer while
/// iterating; the seed is fixed so a run replays.
fn proptest_config(committed: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(committed);
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x0a11_7e57),
        ..ProptestConfig::default()
    }
}

/// Drives both ends to completion, moving every message at once, as a
/// driver over a stream would.
fn exchange(
    config: AntiEntropyConfig,
    ours: &mut MerkleTree,
    theirs: &mut MerkleTree,
) -> Result<(AntiEntropySession, AntiEntropySession), AntiEntropyError> {
    let mut initiator = AntiEntropySession::initiator(config)?;
    let mut responder = AntiEntropySession::responder(config)?;
    loop {
        let mut moved = false;
        while let Some(bytes) = initiator.poll_transmit(ours)? {
            responder.handle(theirs, &bytes)?;
            moved = true;
        }
        while let Some(bytes) = responder.poll_transmit(theirs)? {
            initiator.handle(ours, &bytes)?;
            moved = true;
        }
        if !moved {
            return Ok((initiator, responder));
        }
    }
}

fn tree_of(range: KeyRange, depth: u8, model: &BTreeMap<Vec<u8>, u64>) -> MerkleTree {
    let mut tree = MerkleTree::new(range, TreeShape::new(depth).unwrap());
    for (key, digest) in model {
        tree.upsert(key, ValueDigest(*digest)).unwrap();
    }
    tree
}

/// Keys `from` holds that `to` lacks or holds with another digest.
fn to_ship(from: &BTreeMap<Vec<u8>, u64>, to: &BTreeMap<Vec<u8>, u64>) -> Vec<Vec<u8>> {
    from.iter()
        .filter(|(key, digest)| to.get(*key) != Some(*digest))
        .map(|(key, _)| key.clone())
        .collect()
}

fn small_keys() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..4)
}

/// A divergence: (side, kind, key, digest, pick) where kind 0 upserts `key`,
/// kind 1 removes the `pick`-th key of that side, kind 2 changes its digest.
fn divergences() -> impl Strategy<Value = Vec<(bool, u8, Vec<u8>, u64, usize)>> {
    prop::collection::vec(
        (any::<bool>(), 0u8..3, small_keys(), 0u64..4, any::<usize>()),
        0..24,
    )
}

fn diverge(
    ours: &mut BTreeMap<Vec<u8>, u64>,
    theirs: &mut BTreeMap<Vec<u8>, u64>,
    ops: &[(bool, u8, Vec<u8>, u64, usize)],
) {
    for (side, kind, key, digest, pick) in ops {
        let model = if *side { &mut *ours } else { &mut *theirs };
        let picked = (!model.is_empty()).then(|| model.keys().nth(pick % model.len()).cloned());
        match (kind, picked.flatten()) {
            (0, _) => {
                model.insert(key.clone(), *digest);
            }
            (1, Some(key)) => {
                model.remove(&key);
            }
            (_, Some(key)) => {
                *model.get_mut(&key).unwrap() += 1;
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// Dynamo §4.7: the exchange finds exactly the keys that differ, and
    /// each side learns which states to ship, checked against a BTreeMap
    /// model, under tight bounds so requests are batched and pipelined.
    #[test]
    fn the_session_finds_exactly_the_differing_keys(
        base in prop::collection::btree_map(small_keys(), 0u64..4, 0..300),
        ops in divergences(),
        depth in 2u8..=3,
        arc in prop::option::of(any::<u64>()),
        keys_per_message_max in prop_oneof![Just(16usize), Just(1024)],
        hashes_per_message_max in prop_oneof![Just(16usize), Just(48), Just(1024)],
        in_flight_max in 1usize..=4,
    ) {
        // Half the time the trees cover half the circle, as a ring arc.
        let range = arc.map_or(KeyRange::FULL, |left| KeyRange::arc(left, left.wrapping_add(1 << 63)));
        let in_range = |key: &Vec<u8>| range.contains(calm_ring::KeyHash::of(key));
        let mut ours: BTreeMap<_, _> = base.into_iter().filter(|(key, _)| in_range(key)).collect();
        let mut theirs = ours.clone();
        diverge(&mut ours, &mut theirs, &ops);
        ours.retain(|key, _| in_range(key));
        theirs.retain(|key, _| in_range(key));

        let config = AntiEntropyConfig {
            keys_per_message_max,
            hashes_per_message_max,
            in_flight_max,
            ..AntiEntropyConfig::default()
        };
        let (mut a, mut b) = (tree_of(range, depth, &ours), tree_of(range, depth, &theirs));
        let (initiator, responder) = exchange(config, &mut a, &mut b).unwrap();
        let (found, answered) = (initiator.outcome().unwrap(), responder.outcome().unwrap());
        prop_assert_eq!(&found.send, &to_ship(&ours, &theirs));
        prop_assert_eq!(&found.receive, &to_ship(&theirs, &ours));
        prop_assert_eq!(&answered.send, &found.receive);
        prop_assert_eq!(&answered.receive, &found.send);
        prop_assert_eq!(initiator.ranges_compared(), responder.ranges_compared());
        prop_assert_eq!(initiator.bytes_exchanged(), responder.bytes_exchanged());
    }
}

#[test]
fn identical_trees_exchange_only_the_root() {
    let model: BTreeMap<Vec<u8>, u64> = (0..5_000u32)
        .map(|i| (i.to_be_bytes().to_vec(), 1))
        .collect();
    let (mut a, mut b) = (
        tree_of(KeyRange::FULL, 3, &model),
        tree_of(KeyRange::FULL, 3, &model),
    );
    let (initiator, responder) = exchange(AntiEntropyConfig::default(), &mut a, &mut b).unwrap();
    assert_eq!(initiator.outcome(), Some(Outcome::default()));
    assert_eq!(responder.outcome(), Some(Outcome::default()));
    // Open with the root, and the answer "equal": two messages, one range.
    assert_eq!(initiator.messages_exchanged(), 2);
    assert_eq!(initiator.ranges_compared(), 1);
    assert!(
        initiator.bytes_exchanged() < 40,
        "{} bytes",
        initiator.bytes_exchanged()
    );
}

/// Synthetic replicas for the transfer-ratio check: `keys` keys of 16
/// bytes with 100-byte values; the second replica misses `differing`
/// updates (a third changed, a third missing there, a third only there).
fn diverged_replicas(keys: u64, differing: u64) -> (MerkleTree, MerkleTree) {
    let value = |key: &[u8], version: u8| {
        let mut value = [version; 100];
        value[..16].copy_from_slice(key);
        ValueDigest::of(&value)
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut a = MerkleTree::with_expected_keys(KeyRange::FULL, keys);
    let mut b = MerkleTree::with_expected_keys(KeyRange::FULL, keys);
    let key_of = |i: u64| {
        [
            i.to_be_bytes(),
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes(),
        ]
        .concat()
    };
    for i in 0..keys {
        let key = key_of(i);
        a.upsert(&key, value(&key, 0)).unwrap();
        b.upsert(&key, value(&key, 0)).unwrap();
    }
    for n in 0..differing {
        let key = key_of(rng.random_range(0..keys));
        match n % 3 {
            0 => b.upsert(&key, value(&key, 1)).map(|_| ()).unwrap(),
            1 => b.remove(&key).map(|_| ()).unwrap(),
            _ => a
                .upsert(&key_of(keys + n), value(&key, 2))
                .map(|_| ())
                .unwrap(),
        }
    }
    (a, b)
}

// calm design brief §5: two replicas differing in a few keys exchange at
// most 1% of the full data (100,000 keys here; the bench runs 1,000,000).
#[test]
fn a_session_over_nearly_identical_replicas_transfers_under_one_percent_of_the_data() {
    let (keys, differing) = (100_000, 10);
    let (mut a, mut b) = diverged_replicas(keys, differing);
    let (initiator, _) = exchange(AntiEntropyConfig::default(), &mut a, &mut b).unwrap();
    let outcome = initiator.outcome().unwrap();
    assert_eq!(outcome.differing().len() as u64, differing);
    let entry_bytes = 16 + 100;
    let shipped = (outcome.send.len() + outcome.receive.len()) as u64 * entry_bytes;
    let exchanged = initiator.bytes_exchanged() + shipped;
    let full = keys * entry_bytes;
    assert!(
        exchanged * 100 <= full,
        "exchanged {exchanged} bytes of {full} ({:.3}%)",
        exchanged as f64 * 100.0 / full as f64
    );
}

/// Per-key PN-Counter replicas: the states, and the tree of their digests.
struct CounterReplica {
    node: NodeId,
    states: BTreeMap<Vec<u8>, PnCounter>,
    tree: MerkleTree,
}

impl CounterReplica {
    fn new(node: u64) -> Self {
        CounterReplica {
            node: NodeId(node),
            states: BTreeMap::new(),
            tree: MerkleTree::with_expected_keys(KeyRange::FULL, 100),
        }
    }

    /// Joins `delta` into `key`'s state and records the new digest.
    fn join(&mut self, key: &[u8], delta: &PnCounter) {
        let state = self.states.entry(key.to_vec()).or_default();
        state.join(delta);
        self.tree
            .upsert(key, ValueDigest::of(&state.encode()))
            .unwrap();
    }
}

// Strong eventual consistency through repair: deltas lost in transit are
// recovered by one session plus shipping the listed states and joining.
#[test]
fn counter_replicas_that_diverged_under_message_loss_converge_after_one_session() {
    let mut rng = StdRng::seed_from_u64(42);
    let (mut a, mut b) = (CounterReplica::new(1), CounterReplica::new(2));
    let mut total = BTreeMap::<Vec<u8>, i128>::new();
    for _ in 0..2_000 {
        let key = format!("counter:{}", rng.random_range(0..100)).into_bytes();
        let (origin, peer) = if rng.random_bool(0.5) {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let state = origin.states.get(&key).cloned().unwrap_or_default();
        let amount = rng.random_range(1..10u64);
        let delta = if rng.random_bool(0.7) {
            *total.entry(key.clone()).or_default() += i128::from(amount);
            state.increment(origin.node, amount).unwrap()
        } else {
            *total.entry(key.clone()).or_default() -= i128::from(amount);
            state.decrement(origin.node, amount).unwrap()
        };
        origin.join(&key, &delta);
        // A quarter of the deltas are lost on the way to the peer.
        if rng.random_bool(0.75) {
            peer.join(&key, &delta);
        }
    }
    assert_ne!(
        a.tree.root(),
        b.tree.root(),
        "the loss should have left a difference"
    );

    let (initiator, responder) =
        exchange(AntiEntropyConfig::default(), &mut a.tree, &mut b.tree).unwrap();
    for key in initiator.outcome().unwrap().send {
        let state = a.states[&key].clone();
        b.join(&key, &state);
    }
    for key in responder.outcome().unwrap().send {
        let state = b.states[&key].clone();
        a.join(&key, &state);
    }

    assert_eq!(a.states, b.states);
    assert_eq!(a.tree.root(), b.tree.root());
    for (key, expected) in total {
        assert_eq!(a.states[&key].value(), expected, "{key:?}");
    }
    let (again, _) = exchange(AntiEntropyConfig::default(), &mut a.tree, &mut b.tree).unwrap();
    assert_eq!(
        again.messages_exchanged(),
        2,
        "converged replicas compare roots only"
    );
}

/// Two trees over the full circle that differ in one key, at depth 2.
fn differing_trees() -> (MerkleTree, MerkleTree) {
    let model: BTreeMap<Vec<u8>, u64> =
        (0..200u32).map(|i| (i.to_be_bytes().to_vec(), 1)).collect();
    let (a, mut b) = (
        tree_of(KeyRange::FULL, 2, &model),
        tree_of(KeyRange::FULL, 2, &model),
    );
    b.upsert(&7u32.to_be_bytes(), ValueDigest(2)).unwrap();
    (a, b)
}

fn request(id: u32, body: AntiEntropyRequest) -> Vec<u8> {
    codec::encode(&AntiEntropyMessage::Request { id, body })
}

/// The initiator's 16 level-1 hashes, as a valid first `Hashes` request.
fn level_one_request(tree: &mut MerkleTree, id: u32) -> Vec<u8> {
    let children = (0..16).map(|i| NodeHash(tree.node(1, i))).collect();
    request(
        id,
        AntiEntropyRequest::Hashes {
            level: 1,
            parents: vec![0],
            children,
        },
    )
}

/// Feeds `message` to a responder over `tree` that has answered a valid
/// `Open` (when `opened`), and returns the error it gives.
fn responder_error(opened: bool, message: Vec<u8>) -> AntiEntropyError {
    let (mut ours, mut theirs) = differing_trees();
    let mut responder = AntiEntropySession::responder(AntiEntropyConfig::default()).unwrap();
    if opened {
        let mut initiator = AntiEntropySession::initiator(AntiEntropyConfig::default()).unwrap();
        let open = initiator.poll_transmit(&mut ours).unwrap().unwrap();
        responder.handle(&mut theirs, &open).unwrap();
    }
    let error = responder.handle(&mut theirs, &message).unwrap_err();
    // Any error ends the session.
    assert_eq!(
        responder.handle(&mut theirs, &message),
        Err(AntiEntropyError::Ended)
    );
    assert_eq!(responder.outcome(), None);
    error
}

fn is_invalid(error: &AntiEntropyError) -> bool {
    matches!(error, AntiEntropyError::Invalid(_))
}

#[test]
fn garbage_bytes_end_the_session_with_a_decode_error() {
    let error = responder_error(false, vec![0xff, 1, 2, 3]);
    assert!(matches!(
        error,
        AntiEntropyError::Decode(DecodeError::UnsupportedVersion { .. })
    ));
    let error = responder_error(true, vec![codec::FORMAT_VERSION, 0xff, 0xff, 0xff]);
    assert!(matches!(
        error,
        AntiEntropyError::Decode(DecodeError::Malformed(_))
    ));
    let error = responder_error(true, Vec::new());
    assert_eq!(error, AntiEntropyError::Decode(DecodeError::Empty));
}

/// A `Leaves` request listing `keys` (digest 1) under `leaf`.
fn leaves_request(id: u32, leaf: u64, keys: &[u32]) -> Vec<u8> {
    let entries = keys
        .iter()
        .map(|k| (k.to_be_bytes().to_vec(), ValueDigest(1)))
        .collect();
    let leaves = vec![LeafEntries { leaf, entries }];
    request(id, AntiEntropyRequest::Leaves { leaves })
}

/// A `Hashes` request (id 1) with `count` zero hashes.
fn hashes_request(level: u8, parents: Vec<u64>, count: usize) -> Vec<u8> {
    let children = vec![NodeHash(0); count];
    request(
        1,
        AntiEntropyRequest::Hashes {
            level,
            parents,
            children,
        },
    )
}

#[test]
fn requests_out_of_turn_are_rejected_with_typed_errors() {
    let (mut ours, _) = differing_trees();
    let before_open = level_one_request(&mut ours, 0);
    let unexpected = |error| matches!(error, AntiEntropyError::UnexpectedMessage(_));
    assert!(unexpected(responder_error(false, before_open)));
    let open = AntiEntropyRequest::Open {
        range: KeyRange::FULL,
        depth: 2,
        root: NodeHash(0),
    };
    assert!(unexpected(responder_error(true, request(1, open))));
    let closed = AntiEntropyResponse::Closed;
    let response = codec::encode(&AntiEntropyMessage::Response {
        id: 1,
        body: closed,
    });
    assert!(unexpected(responder_error(true, response)));
    let skipped = level_one_request(&mut ours, 5);
    let out_of_order = AntiEntropyError::OutOfOrder {
        expected: 1,
        found: 5,
    };
    assert_eq!(responder_error(true, skipped), out_of_order);
}

#[test]
fn requests_outside_the_tree_shape_are_rejected_as_invalid() {
    let (ours, _) = differing_trees();
    let leaf_of_7 = ours.leaf_of(&7u32.to_be_bytes()).unwrap();
    let elsewhere = (0..200u32)
        .find(|k| ours.leaf_of(&k.to_be_bytes()) != Some(leaf_of_7))
        .unwrap();
    for message in [
        hashes_request(0, vec![0], 16),    // the root is compared by Open
        hashes_request(3, vec![0], 16),    // below the leaves
        hashes_request(1, vec![0], 15),    // a child missing
        hashes_request(2, vec![16], 16),   // a parent past level 1
        hashes_request(2, vec![3, 1], 32), // parents out of order
        hashes_request(2, vec![], 0),      // nothing to compare
        leaves_request(1, leaf_of_7, &[7, elsewhere]), // a key in another leaf
        leaves_request(1, leaf_of_7, &[7, 7]), // a key twice
        leaves_request(1, 256, &[]),       // a leaf past the last
    ] {
        assert!(is_invalid(&responder_error(true, message)));
    }
    // The same checks accept well-formed requests.
    let (mut ours, mut theirs) = differing_trees();
    let mut responder = AntiEntropySession::responder(AntiEntropyConfig::default()).unwrap();
    let mut initiator = AntiEntropySession::initiator(AntiEntropyConfig::default()).unwrap();
    let open = initiator.poll_transmit(&mut ours).unwrap().unwrap();
    responder.handle(&mut theirs, &open).unwrap();
    responder
        .handle(&mut theirs, &level_one_request(&mut ours, 1))
        .unwrap();
    responder
        .handle(&mut theirs, &leaves_request(2, leaf_of_7, &[7]))
        .unwrap();
}

/// Runs a session between differing trees, letting `tamper` rewrite each
/// response on its way to the initiator; returns the initiator's error.
fn tampered(mut tamper: impl FnMut(&mut AntiEntropyMessage)) -> AntiEntropyError {
    let (mut ours, mut theirs) = differing_trees();
    let config = AntiEntropyConfig::default();
    let mut initiator = AntiEntropySession::initiator(config).unwrap();
    let mut responder = AntiEntropySession::responder(config).unwrap();
    for _ in 0..100 {
        while let Some(bytes) = initiator.poll_transmit(&mut ours).unwrap() {
            responder.handle(&mut theirs, &bytes).unwrap();
        }
        while let Some(bytes) = responder.poll_transmit(&mut theirs).unwrap() {
            let mut message: AntiEntropyMessage = codec::decode(&bytes).unwrap();
            tamper(&mut message);
            if let Err(error) = initiator.handle(&mut ours, &codec::encode(&message)) {
                assert_eq!(
                    initiator.poll_transmit(&mut ours),
                    Err(AntiEntropyError::Ended)
                );
                return error;
            }
        }
    }
    panic!("the tampered session was accepted")
}

fn body(message: &mut AntiEntropyMessage) -> &mut AntiEntropyResponse {
    match message {
        AntiEntropyMessage::Response { body, .. } => body,
        AntiEntropyMessage::Request { .. } => unreachable!("the responder sends responses"),
    }
}

// Planted violations: a deliberately wrong response must be rejected.
#[test]
fn deliberately_wrong_responses_are_rejected_by_the_initiator() {
    let wrong_id = tampered(|message| {
        if let AntiEntropyMessage::Response { id, .. } = message {
            *id += 1;
        }
    });
    assert_eq!(
        wrong_id,
        AntiEntropyError::OutOfOrder {
            expected: 0,
            found: 1
        }
    );
    let wrong_kind = tampered(|message| *body(message) = AntiEntropyResponse::Closed);
    assert!(matches!(wrong_kind, AntiEntropyError::UnexpectedMessage(_)));
    let spare_bit = tampered(|message| {
        if let AntiEntropyResponse::Hashes { differs } = body(message) {
            differs.push(0);
        }
    });
    assert!(is_invalid(&spare_bit));
    let index_past_the_end = tampered(|message| {
        if let AntiEntropyResponse::Leaves { absent, .. } = body(message) {
            absent.push(1_000);
        }
    });
    assert!(is_invalid(&index_past_the_end));
    let both_differing_and_absent = tampered(|message| {
        if let AntiEntropyResponse::Leaves { differ, absent, .. } = body(message) {
            absent.clone_from(differ);
        }
    });
    assert!(is_invalid(&both_differing_and_absent));
    let foreign_extra_key = tampered(|message| {
        if let AntiEntropyResponse::Leaves { extra, .. } = body(message) {
            extra.push(b"not in this leaf".to_vec());
        }
    });
    assert!(is_invalid(&foreign_extra_key));
    let request_to_initiator = tampered(|message| {
        *message = AntiEntropyMessage::Request {
            id: 0,
            body: AntiEntropyRequest::Close,
        };
    });
    assert!(matches!(
        request_to_initiator,
        AntiEntropyError::UnexpectedMessage(_)
    ));
}

#[test]
fn trees_over_other_ranges_or_depths_are_not_compared() {
    let model = BTreeMap::from([(b"k".to_vec(), 1u64)]);
    let hash = calm_ring::KeyHash::of(b"k").0;
    let arc = KeyRange::arc(hash - 1, hash);
    let (mut full, mut shallow) = (
        tree_of(KeyRange::FULL, 2, &model),
        tree_of(KeyRange::FULL, 1, &model),
    );
    let mut narrow = tree_of(arc, 2, &model);
    let config = AntiEntropyConfig::default();
    assert_eq!(
        exchange(config, &mut full, &mut narrow).unwrap_err(),
        AntiEntropyError::RangeMismatch {
            ours: arc,
            theirs: KeyRange::FULL
        }
    );
    assert_eq!(
        exchange(config, &mut full, &mut shallow).unwrap_err(),
        AntiEntropyError::ShapeMismatch { ours: 1, theirs: 2 }
    );
}

#[test]
fn every_bound_is_enforced_with_a_typed_error() {
    let config = AntiEntropyConfig::default();
    let (mut ours, mut theirs) = differing_trees();
    let tight = |change: fn(&mut AntiEntropyConfig)| {
        let mut config = AntiEntropyConfig::default();
        change(&mut config);
        config
    };
    let small_messages = tight(|c| c.message_bytes_max = 20);
    assert_eq!(
        exchange(small_messages, &mut ours, &mut theirs).unwrap_err(),
        AntiEntropyError::MessageTooLarge {
            bytes: 136,
            max: 20
        }
    );
    let few_messages = tight(|c| c.messages_max = 3);
    assert_eq!(
        exchange(few_messages, &mut ours, &mut theirs).unwrap_err(),
        AntiEntropyError::MessageBudgetExhausted { max: 3 }
    );
    // A leaf of 200 keys cannot be listed in messages of 8.
    let model: BTreeMap<Vec<u8>, u64> =
        (0..200u32).map(|i| (i.to_be_bytes().to_vec(), 1)).collect();
    let (mut crowded, mut other) = (
        tree_of(KeyRange::FULL, 1, &model),
        tree_of(KeyRange::FULL, 1, &model),
    );
    other.upsert(&7u32.to_be_bytes(), ValueDigest(2)).unwrap();
    let few_keys = tight(|c| c.keys_per_message_max = 8);
    assert!(matches!(
        exchange(few_keys, &mut crowded, &mut other).unwrap_err(),
        AntiEntropyError::LeafTooLarge { max: 8, .. }
    ));
    // A peer that ignores the window: two requests, no response read.
    let one_in_flight = tight(|c| c.in_flight_max = 1);
    let mut initiator = AntiEntropySession::initiator(config).unwrap();
    let mut responder = AntiEntropySession::responder(one_in_flight).unwrap();
    responder
        .handle(
            &mut theirs,
            &initiator.poll_transmit(&mut ours).unwrap().unwrap(),
        )
        .unwrap();
    let second = level_one_request(&mut ours, 1);
    assert_eq!(
        responder.handle(&mut theirs, &second),
        Err(AntiEntropyError::TooManyInFlight { max: 1 })
    );
    // Unusable bounds are refused up front.
    let no_window = tight(|c| c.in_flight_max = 0);
    assert!(matches!(
        AntiEntropySession::responder(no_window),
        Err(AntiEntropyError::InvalidConfig(_))
    ));
}
