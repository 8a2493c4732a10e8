#![no_main]
//! Fuzzes a replication message from a peer (delta batches and state
//! transfers) and a client's causal token: both are untrusted bytes.

use calm_replica::{CausalToken, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Message::decode(data);
    if let Ok(token) = CausalToken::decode(data) {
        let again = CausalToken::decode(&token.encode()).expect("a decoded token re-encodes");
        assert!(again.covers(&token) && token.covers(&again), "round trip keeps the token");
    }
});
