#![no_main]
//! Fuzzes decoding a `calm_crdt::GCounter` state or delta received from a peer.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| calm_fuzz::crdt::<calm_crdt::GCounter>(data));
