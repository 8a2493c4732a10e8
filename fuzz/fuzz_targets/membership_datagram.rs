#![no_main]
//! Fuzzes a SWIM datagram arriving at a node that already has a peer: the
//! envelope decoder, foca's packet parser behind it, and the member-limit
//! check that parses a packet before foca applies it.

use calm_membership::{Membership, MembershipConfig, Peer};
use calm_types::NodeId;
use libfuzzer_sys::fuzz_target;

fn peer(n: u64) -> Peer {
    Peer { node: NodeId(n), addr: ([127, 0, 0, 1], 7000 + n as u16).into(), generation: 1 }
}

fuzz_target!(|data: &[u8]| {
    let mut node = Membership::new(peer(1), MembershipConfig::default(), 7)
        .expect("the default config is valid");
    let _ = node.join(&[Peer::seed(NodeId(2), peer(2).addr)], 0);
    let before = node.members();
    if node.handle_data(data, 1).is_err() {
        // A refused datagram changes nothing (the core's documented contract
        // for every error but `Swim`, which foca reports after parsing).
        assert_eq!(node.members().len(), before.len());
    }
    while node.poll_effect().is_some() {}
});
