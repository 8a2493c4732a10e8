#![no_main]
//! Fuzzes DVV-set decoding.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = calm_clock::DvvSet::<Vec<u8>>::decode(data) {
        let again = calm_clock::DvvSet::<Vec<u8>>::decode(&set.encode()).expect("round trip");
        assert_eq!(again, set);
        let context = set.join();
        let mut written = set.clone();
        written.update(&context, calm_types::NodeId(1), b"v".to_vec());
        let _ = written.values().count();
    }
});
