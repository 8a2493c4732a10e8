#![no_main]
//! Fuzzes the `one`/`quorum`/`all` levels' untrusted bytes: a stored or
//! shipped KV object, a coordinator's message and a replica's reply from a
//! peer, and a client's causal context presented with a put.

use calm_replica::coordinator::{KvMessage, KvReply};
use calm_replica::kv::{KvLimits, KvObject};
use calm_types::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = KvLimits::default();
    let _ = KvMessage::decode(data, &limits);
    let _ = KvReply::decode(data, &limits);
    if let Ok(object) = KvObject::decode(data, &limits) {
        let again = KvObject::decode(&object.encode(), &limits).expect("a decoded object re-encodes");
        assert_eq!(again.encode(), object.encode(), "round trip keeps the object");
    }
    // A context is the client's: a bad one is an error and changes nothing.
    let mut object = KvObject::default();
    let before = object.encode();
    if object
        .put(b"k", data, NodeId(1), b"v".to_vec().into(), &limits)
        .is_err()
    {
        assert_eq!(object.encode(), before, "a refused put changed nothing");
    }
});
