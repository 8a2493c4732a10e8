#![no_main]
//! Fuzzes the versioned codec envelope.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The envelope alone: version byte, postcard body, trailing bytes.
    let _ = calm_types::codec::decode::<(u64, Vec<u8>, String)>(data);
});
