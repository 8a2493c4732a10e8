//! Group commit on the disk engine: concurrent synced writers share fsyncs, and every
//! acknowledged write is durable.

use std::sync::{Arc, Barrier};
use std::thread;

use calm_storage::{DiskEngine, KeyRange, Keyspace, Limits, Order, ReadView, Storage, WriteBatch};

const KS: Keyspace = Keyspace::new("group");
const WRITERS: usize = 8;

fn open(dir: &tempfile::TempDir) -> DiskEngine {
    DiskEngine::open(dir.path().join("db.redb"), Limits::default()).expect("a fresh file opens")
}

/// Runs `WRITERS` threads that each write one batch, meet at a barrier, then sync, so every
/// sync starts with all batches already written.
fn write_then_sync_together(engine: &Arc<DiskEngine>) {
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (engine, barrier) = (Arc::clone(engine), Arc::clone(&barrier));
            thread::spawn(move || {
                let mut batch = WriteBatch::new();
                batch.put(KS, format!("writer-{writer}"), "acknowledged");
                engine.write(&batch).expect("the write succeeds");
                barrier.wait();
                engine.sync().expect("the sync succeeds");
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("no writer panics");
    }
}

/// Group commit: the first syncer's fsync covers every batch written before it began, so the
/// other seven return without one.
#[test]
fn concurrent_synced_writers_share_one_fsync() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let engine = Arc::new(open(&dir));
    write_then_sync_together(&engine);
    assert_eq!(engine.fsync_count(), 1);
    assert!(engine.fsync_count() < WRITERS as u64);
}

/// Storage contract, rule 2: whatever was acknowledged after a sync survives a crash,
/// however the syncs were grouped.
#[test]
fn writes_acknowledged_under_group_commit_survive_a_crash() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let engine = Arc::new(open(&dir));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let engine = Arc::clone(&engine);
            thread::spawn(move || {
                for round in 0..5 {
                    let mut batch = WriteBatch::new();
                    batch.put(KS, format!("{writer}/{round}"), "acknowledged");
                    engine.write(&batch).expect("the write succeeds");
                    engine.sync().expect("the sync succeeds");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("no writer panics");
    }
    let fsyncs = engine.fsync_count();
    assert!(
        (1..=(WRITERS as u64) * 5).contains(&fsyncs),
        "{fsyncs} fsyncs"
    );
    // The crash image: the file as it stands, copied before a clean close could promote
    // anything.
    let image = dir.path().join("crash.redb");
    std::fs::copy(engine.path(), &image).expect("the database file copies");
    let recovered = DiskEngine::open(&image, Limits::default()).expect("the crash image opens");
    let all = recovered.scan(KS, &KeyRange::all(), Order::Ascending, 1000);
    assert_eq!(all.expect("reads succeed").len(), WRITERS * 5);
}
