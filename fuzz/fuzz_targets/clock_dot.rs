#![no_main]
//! Fuzzes Dot decoding.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(dot) = calm_clock::Dot::decode(data) {
        assert_eq!(calm_clock::Dot::decode(&dot.encode()), Ok(dot));
    }
});
