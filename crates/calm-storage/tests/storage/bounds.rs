//! Named bounds: an oversized key, value, batch or scan gets a typed error and writes nothing.

use calm_storage::{
    DiskEngine, KeyRange, Keyspace, Limits, MemoryEngine, Order, Storage, StorageError, WriteBatch,
};

use crate::model::{KEYSPACES, Model, contents};

const KS: Keyspace = KEYSPACES[0];

/// Small bounds so the oversized inputs stay small.
const LIMITS: Limits = Limits {
    key_bytes_max: 8,
    value_bytes_max: 16,
    batch_ops_max: 4,
    batch_bytes_max: 40,
    scan_entries_max: 10,
};

/// The batches to refuse, each with the error it must get.
fn oversized() -> Vec<(&'static str, WriteBatch, StorageError)> {
    let mut cases = Vec::new();
    let mut batch = WriteBatch::new();
    batch.put(KS, "ok", "ok").put(KS, vec![b'k'; 9], "v");
    let error = StorageError::KeyTooLarge {
        key_bytes: 9,
        key_bytes_max: 8,
    };
    cases.push(("key one byte too long, after a valid put", batch, error));

    let mut batch = WriteBatch::new();
    batch.put(KS, "k", vec![0; 17]);
    let error = StorageError::ValueTooLarge {
        value_bytes: 17,
        value_bytes_max: 16,
    };
    cases.push(("value one byte too long", batch, error));

    let mut batch = WriteBatch::new();
    batch.delete_range(KS, KeyRange::new("a", vec![b'z'; 9]));
    let error = StorageError::KeyTooLarge {
        key_bytes: 9,
        key_bytes_max: 8,
    };
    cases.push(("range delete bound too long", batch, error));

    let mut batch = WriteBatch::new();
    for key in ["a", "b", "c", "d", "e"] {
        batch.put(KS, key, "v");
    }
    let error = StorageError::BatchTooManyOps {
        ops: 5,
        batch_ops_max: 4,
    };
    cases.push(("one operation too many", batch, error));

    let mut batch = WriteBatch::new();
    for key in ["a", "b", "c"] {
        batch.put(KS, key, vec![0; 13]);
    }
    let error = StorageError::BatchTooLarge {
        batch_bytes: 42,
        batch_bytes_max: 40,
    };
    cases.push(("batch over its byte bound", batch, error));
    cases
}

/// Checks every oversized batch against `engine`: typed error, state and fsyncs unchanged.
fn check(engine: &impl Storage) {
    let mut seed = WriteBatch::new();
    seed.put(KS, "seed", "present");
    engine.write(&seed).expect("a small batch fits");
    engine.sync().expect("sync succeeds");
    let before: Model = contents(engine).expect("reads succeed");
    let fsyncs_before = engine.fsync_count();

    for (name, batch, expected) in oversized() {
        assert_eq!(engine.write(&batch), Err(expected), "{name}");
        engine
            .sync()
            .expect("a refused batch leaves nothing to sync");
        assert_eq!(contents(engine).expect("reads succeed"), before, "{name}");
    }
    assert_eq!(
        engine.fsync_count(),
        fsyncs_before,
        "refused batches cost no fsync"
    );

    let limit = LIMITS.scan_entries_max + 1;
    let error = StorageError::ScanLimitTooLarge {
        limit,
        scan_entries_max: 10,
    };
    let scan = engine.scan(KS, &KeyRange::all(), Order::Ascending, limit);
    assert_eq!(scan, Err(error));
    let snapshot = engine.snapshot().expect("snapshots succeed");
    let scan =
        calm_storage::ReadView::scan(&snapshot, KS, &KeyRange::all(), Order::Ascending, limit);
    assert!(matches!(scan, Err(StorageError::ScanLimitTooLarge { .. })));
}

#[test]
fn memory_engine_refuses_oversized_input_with_typed_errors_and_writes_nothing() {
    check(&MemoryEngine::new(LIMITS));
}

#[test]
fn disk_engine_refuses_oversized_input_with_typed_errors_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    check(&DiskEngine::open(dir.path().join("db.redb"), LIMITS).expect("a fresh file opens"));
}

#[test]
fn batches_at_exactly_the_bounds_are_accepted() {
    let engine = MemoryEngine::new(LIMITS);
    let mut batch = WriteBatch::new();
    batch
        .put(KS, vec![b'k'; 8], vec![0; 16])
        .put(KS, "a", vec![0; 15]);
    assert_eq!(batch.payload_bytes(), 40);
    engine.write(&batch).expect("a batch at its bounds fits");
    assert_eq!(
        contents(&engine).expect("memory reads succeed").0[0].len(),
        2
    );
}
