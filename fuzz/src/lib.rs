//! Shared checks for the fuzz targets: whatever decodes must re-encode to the
//! same value and survive the operations a node runs on received state.

use calm_crdt::DeltaCrdt;
use calm_crdt::laws::{check_delta_is_join, check_join_laws};

/// Decodes `data` as a CRDT state or delta; if it decodes, it is a lattice
/// element like any other, so the same law checks the property tests run
/// must hold for it (round trip, idempotence, bottom as identity, delta
/// application equal to join), and reading its value must not panic.
pub fn crdt<T: DeltaCrdt>(data: &[u8]) {
    let Ok(state) = T::decode(data) else { return };
    let bottom = T::default();
    check_join_laws(&state, &bottom, &state).expect("join laws hold on decoded states");
    check_delta_is_join(&bottom, &state).expect("a decoded delta applies as a join");
    check_delta_is_join(&state, &state).expect("re-applying a decoded delta changes nothing");
    let _ = state.value();
}
