#![no_main]
//! Fuzzes the coordinated keyspace's state machine with arbitrary log
//! entries: whatever decodes as a `calm.raft.v1.Command` (any etcd request,
//! however malformed) applies or is refused whole; nothing panics, and a
//! store reloaded from what was written equals the one in memory.

use calm_raft::{StateConfig, StateMachine};
use calm_storage::{Limits, MemoryEngine, Storage, WriteBatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let engine = MemoryEngine::new(Limits::default());
    let mut state = StateMachine::new(StateConfig::default());
    // Several entries per input: length-prefixed chunks.
    let mut rest = data;
    let mut index = 1;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (entry, next) = tail.split_at(len);
        rest = next;
        index += 1;
        let mut batch = WriteBatch::new();
        let _ = state.apply(index, entry, &mut batch);
        if engine.write(&batch).is_err() {
            return;
        }
    }
    let reloaded = StateMachine::load(StateConfig::default(), &engine).expect("what was written loads");
    assert_eq!(reloaded.snapshot(), state.snapshot(), "a reload equals the state in memory");
});
