#![no_main]
//! Fuzzes decoding a `calm_crdt::OrMap<Vec<u8>, calm_crdt::OrMap<Vec<u8>, calm_crdt::MvRegister<Vec<u8>>>>` state or delta received from a peer.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| calm_fuzz::crdt::<calm_crdt::OrMap<Vec<u8>, calm_crdt::OrMap<Vec<u8>, calm_crdt::MvRegister<Vec<u8>>>>>(data));
