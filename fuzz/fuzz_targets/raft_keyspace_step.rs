#![no_main]
//! Fuzzes what a voter of the coordinated keyspace receives from a peer:
//! any bytes on the Raft channel either step the core or are refused with
//! an error, and the turn that follows (ready, persist, apply) runs without
//! a panic.

use calm_raft::{Keyspace, KeyspaceConfig, RaftConfig, StateConfig, WatchConfig};
use calm_storage::{Limits, MemoryEngine, Storage, WriteBatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let engine = MemoryEngine::new(Limits::default());
    let config = KeyspaceConfig {
        raft: RaftConfig::new(1),
        request_timeout_ms: 1_000,
        election_timeout_ms: 1_000,
        snapshot_count: 100,
        state: StateConfig::default(),
        cluster_id: 7,
        watch: WatchConfig::default(),
        leaderless_max: 16,
    };
    let mut batch = WriteBatch::new();
    let Ok(mut keyspace) = Keyspace::open(config, &[1, 2, 3], &engine, &mut batch) else {
        return;
    };
    let _ = engine.write(&batch);
    // The first byte picks the sender, the rest is the message.
    let Some((&from, message)) = data.split_first() else {
        return;
    };
    let _ = keyspace.step(u64::from(from % 4), message, 0);
    let mut before = WriteBatch::new();
    if keyspace.before_sync(&mut before).is_ok() {
        let _ = engine.write(&before);
        if let Ok(batches) = keyspace.after_sync(0) {
            for batch in &batches {
                let _ = engine.write(batch);
            }
        }
    }
    while keyspace.poll().is_some() {}
});
