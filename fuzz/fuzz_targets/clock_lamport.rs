#![no_main]
//! Fuzzes Lamport clock decoding.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(clock) = calm_clock::LamportClock::decode(data) {
        let again = calm_clock::LamportClock::decode(&clock.encode()).expect("round trip");
        assert_eq!(again, clock);
    }
});
