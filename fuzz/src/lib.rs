//! Shared checks for the fuzz targets: whatever decodes must re-encode to the
//! same value and survive the operations a node runs on received state.

use calm_crdt::DeltaCrdt;

/// Decodes `data` as a CRDT state or delta; if it decodes, checks that it
/// round-trips, that joining it into itself changes nothing, and that joining
/// it into bottom and reading its value never panic.
pub fn crdt<T: DeltaCrdt>(data: &[u8]) {
    let Ok(state) = T::decode(data) else { return };
    let again = T::decode(&state.encode()).expect("a decoded state re-encodes to valid bytes");
    assert_eq!(again, state, "decode(encode(x)) == x");
    let mut joined = state.clone();
    joined.join(&state);
    assert_eq!(joined, state, "join is idempotent on decoded states");
    let mut from_bottom = T::default();
    from_bottom.apply_delta(&state);
    let _ = from_bottom.value();
}
