#![no_main]
//! Fuzzes HLC timestamp and clock decoding.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ts) = calm_clock::HlcTimestamp::decode(data) {
        assert_eq!(calm_clock::HlcTimestamp::decode(&ts.encode()), Ok(ts));
        // A received timestamp goes straight into update: it must never panic.
        let mut hlc = calm_clock::Hlc::new(500);
        let _ = hlc.update(ts, 1_000);
    }
    if let Ok(hlc) = calm_clock::Hlc::decode(data) {
        let mut hlc2 = hlc.clone();
        let _ = hlc2.now(0);
    }
});
