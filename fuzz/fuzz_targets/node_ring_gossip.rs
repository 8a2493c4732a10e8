#![no_main]
//! Fuzzes the ring gossip a node receives: whatever decodes merges into a
//! node's state, and the merged log either replays into a ring or is
//! refused with an error, as the node's event loop does; nothing panics.

use calm_ring::RingConfig;
use calm_server::node::gossip::RingGossip;
use calm_types::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(theirs) = RingGossip::decode(data) else {
        return;
    };
    assert_eq!(RingGossip::decode(&theirs.encode()).as_ref(), Ok(&theirs));
    let mut ours = RingGossip::default();
    ours.log.join(NodeId(1));
    ours.merge(&theirs);
    assert!(ours.covers(&theirs), "a merge covers what it merged");
    let config = RingConfig {
        vnodes_per_node: 4,
        ..RingConfig::default()
    };
    let _ = ours.log.ring(config);
});
