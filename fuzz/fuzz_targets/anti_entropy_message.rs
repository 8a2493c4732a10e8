#![no_main]
//! Fuzzes anti-entropy messages arriving at both roles of a session over a
//! small tree: the first message a responder sees, and a reply to an
//! initiator that has opened. Untrusted bytes end the session with a typed
//! error or advance it; they never panic.

use calm_replica::{AntiEntropyConfig, AntiEntropySession, KeyRange, MerkleTree, ValueDigest};
use libfuzzer_sys::fuzz_target;

fn tree() -> MerkleTree {
    let mut tree = MerkleTree::with_expected_keys(KeyRange::FULL, 64);
    for i in 0..64u32 {
        tree.upsert(&i.to_be_bytes(), ValueDigest(u64::from(i)))
            .expect("the full range holds every key");
    }
    tree
}

fuzz_target!(|data: &[u8]| {
    let config = AntiEntropyConfig::default();
    let mut tree = tree();

    let mut responder = AntiEntropySession::responder(config).expect("default config is valid");
    if responder.handle(&mut tree, data).is_ok() {
        while let Ok(Some(_)) = responder.poll_transmit(&mut tree) {}
    }

    let mut initiator = AntiEntropySession::initiator(config).expect("default config is valid");
    while let Ok(Some(_)) = initiator.poll_transmit(&mut tree) {}
    if initiator.handle(&mut tree, data).is_ok() {
        while let Ok(Some(_)) = initiator.poll_transmit(&mut tree) {}
    }
});
