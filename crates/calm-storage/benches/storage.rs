//! Criterion benches of the disk engine: a synced commit per batch (1 and 100 puts), and group
//! commit with four writer threads, reporting how many commits each fsync carried.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use calm_storage::{DiskEngine, Keyspace, Limits, Storage, WriteBatch};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const KS: Keyspace = Keyspace::new("bench");
const VALUE_BYTES: usize = 100;
const GROUP_WRITERS: u64 = 4;

fn open() -> (tempfile::TempDir, DiskEngine) {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let engine = DiskEngine::open(dir.path().join("bench.redb"), Limits::default())
        .expect("a fresh file opens");
    (dir, engine)
}

/// A batch of `puts` small puts under keys that never repeat, so each is an insert.
fn batch(next_key: &mut u64, puts: usize) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for _ in 0..puts {
        batch.put(KS, next_key.to_be_bytes(), [0xAB; VALUE_BYTES]);
        *next_key += 1;
    }
    batch
}

/// One writer: write a batch, sync, repeat. Every commit pays one fsync.
fn synced_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("synced_commit");
    for puts in [1usize, 100] {
        let (_dir, engine) = open();
        let mut next_key = 0u64;
        group.throughput(Throughput::Elements(puts as u64));
        group.bench_function(format!("batch_of_{puts}"), |b| {
            b.iter(|| {
                engine
                    .write(&batch(&mut next_key, puts))
                    .expect("the write succeeds");
                engine.sync().expect("the sync succeeds");
            })
        });
    }
    group.finish();
}

/// Four writers, each writing one put and syncing, `iters` commits in all. Returns the
/// wall time; adds to the commit and fsync tallies.
fn run_group(engine: &Arc<DiskEngine>, iters: u64, tally: &Tally) -> Duration {
    let fsyncs_before = engine.fsync_count();
    let start = Instant::now();
    let writers: Vec<_> = (0..GROUP_WRITERS)
        .map(|writer| {
            let engine = Arc::clone(engine);
            // Writers take turns over the iterations, so together they commit `iters` times.
            let commits = (writer..iters).step_by(GROUP_WRITERS as usize).count();
            thread::spawn(move || {
                let mut next_key = (writer << 48) | engine.fsync_count() << 16;
                for _ in 0..commits {
                    let batch = batch(&mut next_key, 1);
                    engine.write(black_box(&batch)).expect("the write succeeds");
                    engine.sync().expect("the sync succeeds");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("no writer panics");
    }
    let elapsed = start.elapsed();
    tally.commits.fetch_add(iters, Ordering::Relaxed);
    tally
        .fsyncs
        .fetch_add(engine.fsync_count() - fsyncs_before, Ordering::Relaxed);
    elapsed
}

#[derive(Default)]
struct Tally {
    commits: AtomicU64,
    fsyncs: AtomicU64,
}

fn group_commit(c: &mut Criterion) {
    let (_dir, engine) = open();
    let engine = Arc::new(engine);
    let tally = Tally::default();
    let mut group = c.benchmark_group("group_commit");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{GROUP_WRITERS}_writers_batch_of_1"), |b| {
        b.iter_custom(|iters| run_group(&engine, iters, &tally))
    });
    group.finish();
    let (commits, fsyncs) = (tally.commits.into_inner(), tally.fsyncs.into_inner());
    println!(
        "group_commit/{GROUP_WRITERS}_writers: {commits} synced commits over {fsyncs} fsyncs \
         = {:.2} commits per fsync",
        commits as f64 / fsyncs.max(1) as f64
    );
}

criterion_group!(benches, synced_commit, group_commit);
criterion_main!(benches);
