//! The crash model check: random steps run against an engine and against a `BTreeMap` model
//! of what reads must see, what a crash must leave, and what each snapshot froze.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use calm_storage::{
    DiskEngine, Entry, KeyRange, Keyspace, Limits, MemoryEngine, Order, ReadView, Storage,
    StorageError, WriteBatch,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Two keyspaces, so batches span tables and scans must not leak across them.
pub const KEYSPACES: [Keyspace; 2] = [Keyspace::new("alpha"), Keyspace::new("beta")];

/// Snapshots held at once; older ones are released, as a driver would.
const LIVE_SNAPSHOTS_MAX: usize = 4;

/// One mutation, by keyspace index.
#[derive(Clone, Debug)]
pub enum ModelOp {
    /// Put `value` at `key`.
    Put(usize, Vec<u8>, Vec<u8>),
    /// Delete `key`.
    Delete(usize, Vec<u8>),
    /// Delete keys in `[start, end)`.
    DeleteRange(usize, Vec<u8>, Vec<u8>),
}

/// A range as the model understands it, checked by plain comparisons rather than through the
/// crate's `KeyRange`, so a bug there cannot hide in the model.
#[derive(Clone, Debug)]
pub enum RangeSpec {
    /// Keys starting with the prefix.
    Prefix(Vec<u8>),
    /// Keys in `[start, end)`.
    Between(Vec<u8>, Vec<u8>),
    /// Keys at or above `start`.
    From(Vec<u8>),
}

/// One step of a run.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write one batch.
    Write(Vec<ModelOp>),
    /// Sync.
    Sync,
    /// Take a snapshot and remember what it must show.
    TakeSnapshot,
    /// Scan a keyspace and compare with the model.
    Scan(usize, RangeSpec, Order, usize),
    /// Read one key and compare with the model.
    Get(usize, Vec<u8>),
    /// Crash and recover.
    Crash,
}

/// An engine the check can crash: the memory engine, the disk engine, or a planted-bug
/// variant of either.
pub trait Subject: Sized {
    /// The engine under test.
    type Engine: Storage;
    /// A fresh, empty engine.
    fn open() -> Self;
    /// The engine.
    fn engine(&self) -> &Self::Engine;
    /// Crashes the engine and returns it recovered.
    fn crash(self) -> Self;
}

/// The memory engine, crashed with `MemoryEngine::crash`.
pub struct MemorySubject(pub MemoryEngine);

impl Subject for MemorySubject {
    type Engine = MemoryEngine;
    fn open() -> Self {
        Self(MemoryEngine::new(Limits::default()))
    }
    fn engine(&self) -> &MemoryEngine {
        &self.0
    }
    fn crash(self) -> Self {
        self.0.crash();
        self
    }
}

/// Planted bug: a memory engine whose crash keeps the writes made since the last sync.
pub struct ForgetfulMemorySubject(pub MemoryEngine);

impl Subject for ForgetfulMemorySubject {
    type Engine = MemoryEngine;
    fn open() -> Self {
        Self(MemoryEngine::new(Limits::default()))
    }
    fn engine(&self) -> &MemoryEngine {
        &self.0
    }
    fn crash(self) -> Self {
        self
    }
}

/// An engine over a redb file that the disk subject can reopen.
pub trait OpenAt: Storage {
    /// Opens the database at `path`.
    fn open_at(path: &Path) -> Self;
}

impl OpenAt for DiskEngine {
    fn open_at(path: &Path) -> Self {
        DiskEngine::open(path, Limits::default()).expect("a fresh temp file opens")
    }
}

/// A disk engine crashed by copying its file as it stands (the bytes a SIGKILL would leave:
/// what the process handed the kernel, synced or not) and opening the copy.
pub struct DiskSubject<E: OpenAt = DiskEngine> {
    dir: tempfile::TempDir,
    engine: E,
    generation: u32,
}

fn generation_path(dir: &Path, generation: u32) -> PathBuf {
    dir.join(format!("db-{generation}.redb"))
}

impl<E: OpenAt> Subject for DiskSubject<E> {
    type Engine = E;
    fn open() -> Self {
        let dir = tempfile::tempdir().expect("the temp dir is writable");
        let engine = E::open_at(&generation_path(dir.path(), 0));
        Self {
            dir,
            engine,
            generation: 0,
        }
    }
    fn engine(&self) -> &E {
        &self.engine
    }
    fn crash(self) -> Self {
        // Copy while the old engine is open: dropping it would close redb cleanly, which makes
        // pending non-durable commits durable.
        let (from, to) = (self.generation, self.generation + 1);
        std::fs::copy(
            generation_path(self.dir.path(), from),
            generation_path(self.dir.path(), to),
        )
        .expect("the database file copies");
        drop(self.engine);
        Self {
            engine: E::open_at(&generation_path(self.dir.path(), to)),
            dir: self.dir,
            generation: to,
        }
    }
}

/// Planted bug: a disk engine whose sync skips the durable commit.
pub struct SkipsDurableCommit(pub DiskEngine);

impl OpenAt for SkipsDurableCommit {
    fn open_at(path: &Path) -> Self {
        Self(DiskEngine::open_at(path))
    }
}

impl ReadView for SkipsDurableCommit {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.get(keyspace, key)
    }
    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.0.scan(keyspace, range, order, limit)
    }
}

impl Storage for SkipsDurableCommit {
    type Snapshot = <DiskEngine as Storage>::Snapshot;
    fn limits(&self) -> &Limits {
        self.0.limits()
    }
    fn write(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.0.write(batch)
    }
    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
    fn snapshot(&self) -> Result<Self::Snapshot, StorageError> {
        self.0.snapshot()
    }
    fn fsync_count(&self) -> u64 {
        self.0.fsync_count()
    }
}

/// The model: one ordered map per keyspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model(pub [BTreeMap<Vec<u8>, Vec<u8>>; 2]);

impl Model {
    /// Applies one batch, op by op.
    pub fn apply(&mut self, ops: &[ModelOp]) {
        for op in ops {
            match op {
                ModelOp::Put(ks, key, value) => {
                    self.0[*ks].insert(key.clone(), value.clone());
                }
                ModelOp::Delete(ks, key) => {
                    self.0[*ks].remove(key);
                }
                ModelOp::DeleteRange(ks, start, end) => {
                    self.0[*ks].retain(|key, _| !(start <= key && key < end));
                }
            }
        }
    }

    /// What a scan must return, by filtering the whole keyspace.
    pub fn scan(&self, ks: usize, range: &RangeSpec, order: Order, limit: usize) -> Vec<Entry> {
        let inside = |key: &Vec<u8>| match range {
            RangeSpec::Prefix(prefix) => key.starts_with(prefix),
            RangeSpec::Between(start, end) => start <= key && key < end,
            RangeSpec::From(start) => start <= key,
        };
        let entries = self.0[ks].iter().filter(|(key, _)| inside(key));
        let entries = entries.map(|(key, value)| (key.clone(), value.clone()));
        match order {
            Order::Ascending => entries.take(limit).collect(),
            Order::Descending => entries.rev().take(limit).collect(),
        }
    }
}

pub fn batch_of(ops: &[ModelOp]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for op in ops {
        match op {
            ModelOp::Put(ks, key, value) => batch.put(KEYSPACES[*ks], key.clone(), value.clone()),
            ModelOp::Delete(ks, key) => batch.delete(KEYSPACES[*ks], key.clone()),
            ModelOp::DeleteRange(ks, start, end) => {
                batch.delete_range(KEYSPACES[*ks], KeyRange::new(start.clone(), end.clone()))
            }
        };
    }
    batch
}

fn key_range(range: &RangeSpec) -> KeyRange {
    match range {
        RangeSpec::Prefix(prefix) => KeyRange::prefix(prefix),
        RangeSpec::Between(start, end) => KeyRange::new(start.clone(), end.clone()),
        RangeSpec::From(start) => KeyRange::starting_at(start.clone()),
    }
}

/// Everything `view` holds, as a model, read in pages so it also checks that forward paging
/// (continuing from the last key with a zero byte appended) neither skips nor repeats a key.
pub fn contents(view: &impl ReadView) -> Result<Model, StorageError> {
    const PAGE_ENTRIES: usize = 3;
    let mut model = Model::default();
    for (ks, keyspace) in KEYSPACES.iter().enumerate() {
        let mut range = KeyRange::all();
        loop {
            let page = view.scan(*keyspace, &range, Order::Ascending, PAGE_ENTRIES)?;
            let Some((last, _)) = page.last() else { break };
            range = KeyRange::starting_at([last.as_slice(), &[0]].concat());
            model.0[ks].extend(page);
        }
    }
    Ok(model)
}

fn err(error: StorageError) -> TestCaseError {
    TestCaseError::fail(format!("engine error: {error}"))
}

/// Runs `steps` against `S` and the model. Fails if a read disagrees with the model, if a
/// snapshot shows a write made after it, or if a crash recovers anything other than the state
/// at the last completed sync.
pub fn check_steps<S: Subject>(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut subject = S::open();
    let (mut visible, mut durable) = (Model::default(), Model::default());
    let mut snapshots: Vec<(<S::Engine as Storage>::Snapshot, Model)> = Vec::new();
    for step in steps {
        let engine = subject.engine();
        match step {
            Step::Write(ops) => {
                engine.write(&batch_of(ops)).map_err(err)?;
                visible.apply(ops);
                for (snapshot, frozen) in &snapshots {
                    // Snapshot isolation: a snapshot never sees a later write.
                    prop_assert_eq!(&contents(snapshot).map_err(err)?, frozen);
                }
            }
            Step::Sync => {
                engine.sync().map_err(err)?;
                durable = visible.clone();
            }
            Step::TakeSnapshot => {
                if snapshots.len() == LIVE_SNAPSHOTS_MAX {
                    snapshots.remove(0);
                }
                snapshots.push((engine.snapshot().map_err(err)?, visible.clone()));
            }
            Step::Scan(ks, range, order, limit) => {
                let got = engine.scan(KEYSPACES[*ks], &key_range(range), *order, *limit);
                prop_assert_eq!(got.map_err(err)?, visible.scan(*ks, range, *order, *limit));
            }
            Step::Get(ks, key) => {
                let got = engine.get(KEYSPACES[*ks], key).map_err(err)?;
                prop_assert_eq!(got.as_ref(), visible.0[*ks].get(key));
            }
            Step::Crash => {
                // A crash ends the process, and with it every snapshot.
                snapshots.clear();
                subject = subject.crash();
                // Durability: exactly the state at the last completed sync survives.
                prop_assert_eq!(&contents(subject.engine()).map_err(err)?, &durable);
                visible = durable.clone();
            }
        }
    }
    Ok(())
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet with the edge bytes, so keys collide and prefixes end in 0xFF.
    prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xFF]), 0..3)
}

fn op() -> impl Strategy<Value = ModelOp> {
    let value = prop::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        4 => (0..2usize, key(), value).prop_map(|(ks, k, v)| ModelOp::Put(ks, k, v)),
        2 => (0..2usize, key()).prop_map(|(ks, k)| ModelOp::Delete(ks, k)),
        1 => (0..2usize, key(), key()).prop_map(|(ks, a, b)| ModelOp::DeleteRange(ks, a, b)),
    ]
}

fn range() -> impl Strategy<Value = RangeSpec> {
    prop_oneof![
        key().prop_map(RangeSpec::Prefix),
        (key(), key()).prop_map(|(a, b)| RangeSpec::Between(a, b)),
        key().prop_map(RangeSpec::From),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let order = prop_oneof![Just(Order::Ascending), Just(Order::Descending)];
    prop_oneof![
        6 => prop::collection::vec(op(), 1..4).prop_map(Step::Write),
        2 => Just(Step::Sync),
        1 => Just(Step::TakeSnapshot),
        2 => (0..2usize, range(), order, 0..6usize).prop_map(|(ks, r, o, l)| Step::Scan(ks, r, o, l)),
        1 => (0..2usize, key()).prop_map(|(ks, k)| Step::Get(ks, k)),
        1 => Just(Step::Crash),
    ]
}

/// Runs of up to 40 steps, always ending in a crash so every run checks recovery at least once.
pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 0..40).prop_map(|mut steps| {
        steps.push(Step::Crash);
        steps
    })
}
