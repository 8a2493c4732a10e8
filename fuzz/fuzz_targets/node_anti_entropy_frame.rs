#![no_main]
//! Fuzzes the anti-entropy frames a node receives, at both roles: a frame
//! that opens a responder session (with an untrusted range and depth), and
//! one answering a session this node initiated. Bad frames are dropped or
//! end their session; nothing panics and no session outlives its bound.

use calm_replica::KeyRange;
use calm_server::node::anti_entropy::{AeEffects, AeFrame, AntiEntropy};
use calm_types::NodeId;
use libfuzzer_sys::fuzz_target;

fn keys() -> Vec<(Vec<u8>, u64)> {
    (0..64u32)
        .map(|i| (i.to_be_bytes().to_vec(), u64::from(i) * 7))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = AeFrame::decode(data) else {
        return;
    };
    let keys = keys();
    let digests = || {
        Box::new(keys.iter().map(|(k, d)| (k.as_slice(), *d)))
            as Box<dyn Iterator<Item = (&[u8], u64)>>
    };
    let mut node = AntiEntropy::new(1_000);
    let mut effects = AeEffects::default();
    node.start_round(NodeId(2), vec![KeyRange::FULL]);
    node.open_sessions(digests, 0, &mut effects);
    node.handle(NodeId(2), frame.clone(), digests, 1, &mut effects);
    node.handle(NodeId(2), AeFrame { to_responder: !frame.to_responder, ..frame }, digests, 2, &mut effects);
    node.expire(5_000, &mut effects);
    assert!(!node.busy() || effects.frames.len() < 1_000_000);
});
