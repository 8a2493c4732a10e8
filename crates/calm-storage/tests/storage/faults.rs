//! Fault injection and crash variants of the memory engine, as the simulator uses them.

use calm_storage::{Keyspace, Limits, MemoryEngine, ReadView, Storage, StorageError, WriteBatch};

const KS: Keyspace = Keyspace::new("faults");

fn put(engine: &MemoryEngine, key: &str, value: &str) {
    let mut batch = WriteBatch::new();
    batch.put(KS, key, value);
    engine.write(&batch).expect("the engine is healthy");
}

fn value(engine: &MemoryEngine, key: &str) -> Option<Vec<u8>> {
    engine
        .get(KS, key.as_bytes())
        .expect("memory reads cannot fail")
}

/// Storage contract, rule 3: a failed sync poisons the engine until it restarts, and the
/// unsynced batches are in doubt (here: lost by the crash).
#[test]
fn failed_sync_poisons_the_engine_until_a_crash() {
    let engine = MemoryEngine::new(Limits::default());
    put(&engine, "a", "1");
    engine.sync().expect("the first sync succeeds");
    put(&engine, "b", "2");
    engine.fail_next_sync();

    assert!(matches!(
        engine.sync(),
        Err(StorageError::SyncFailed { .. })
    ));
    assert!(engine.is_poisoned());
    let mut batch = WriteBatch::new();
    batch.put(KS, "c", "3");
    assert_eq!(engine.write(&batch), Err(StorageError::Poisoned));
    assert_eq!(engine.sync(), Err(StorageError::Poisoned));
    assert_eq!(value(&engine, "c"), None, "a refused write changes nothing");
    assert_eq!(engine.fsync_count(), 1, "the failed sync is not counted");

    engine.crash();
    assert!(!engine.is_poisoned());
    assert_eq!(value(&engine, "a").as_deref(), Some(&b"1"[..]));
    assert_eq!(value(&engine, "b"), None);
    put(&engine, "c", "3");
    engine.sync().expect("a restarted engine syncs again");
    assert_eq!(engine.fsync_count(), 2);
}

/// Storage contract, rule 1: a crash may keep unsynced batches, but only whole and oldest first.
#[test]
fn crash_keeping_a_prefix_keeps_exactly_the_oldest_pending_batches() {
    let engine = MemoryEngine::new(Limits::default());
    put(&engine, "k", "synced");
    engine.sync().expect("sync succeeds");
    for value in ["p1", "p2", "p3"] {
        put(&engine, "k", value);
    }
    assert_eq!(engine.pending_batches(), 3);

    engine.crash_keeping(2);
    assert_eq!(engine.pending_batches(), 0);
    assert_eq!(value(&engine, "k").as_deref(), Some(&b"p2"[..]));
    // What survived is now durable: a second crash keeps it.
    engine.crash();
    assert_eq!(value(&engine, "k").as_deref(), Some(&b"p2"[..]));
}

#[test]
fn sync_with_nothing_pending_costs_no_fsync() {
    let engine = MemoryEngine::new(Limits::default());
    engine.sync().expect("an empty sync succeeds");
    engine
        .write(&WriteBatch::new())
        .expect("an empty batch is a no-op");
    engine.sync().expect("an empty sync succeeds");
    assert_eq!(engine.fsync_count(), 0);
    put(&engine, "k", "v");
    engine.sync().expect("sync succeeds");
    engine.sync().expect("sync succeeds");
    assert_eq!(engine.fsync_count(), 1);
}
