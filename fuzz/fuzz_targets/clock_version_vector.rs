#![no_main]
//! Fuzzes version vector decoding.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(vv) = calm_clock::VersionVector::decode(data) {
        let again = calm_clock::VersionVector::decode(&vv.encode()).expect("round trip");
        assert_eq!(again, vv);
        let mut merged = vv.clone();
        merged.merge(&vv);
        assert_eq!(merged, vv);
        assert_eq!(vv.compare(&vv), calm_clock::Causality::Equal);
    }
});
