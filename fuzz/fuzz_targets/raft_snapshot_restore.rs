#![no_main]
//! Fuzzes restoring the coordinated keyspace from a snapshot a leader sent:
//! arbitrary bytes restore or are refused with an error, never a panic.

use calm_raft::{StateConfig, StateMachine};
use calm_storage::WriteBatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = StateMachine::new(StateConfig::default());
    let mut batch = WriteBatch::new();
    if state.restore(data, &mut batch).is_ok() {
        let _ = state.snapshot();
    }
});
