//! The Storage trait the protocol cores write through, a redb disk engine and
//! a crash-simulating memory engine.
//!
//! Protocol cores never touch a disk: they hand their drivers entries to persist, and the
//! drivers write them through [`Storage`]. The real node uses [`DiskEngine`] (redb, with group
//! commit); the simulator uses [`MemoryEngine`], which can crash and fail syncs on demand.
//!
//! # Tutorial
//!
//! Data lives in named [`Keyspace`]s. Changes go in a [`WriteBatch`], applied atomically:
//!
//! ```
//! use calm_storage::{KeyRange, Keyspace, Limits, MemoryEngine, Order, ReadView, Storage, WriteBatch};
//!
//! const LOG: Keyspace = Keyspace::new("raft_log");
//! const HARD_STATE: Keyspace = Keyspace::new("raft_hard_state");
//!
//! let engine = MemoryEngine::new(Limits::default());
//! let mut batch = WriteBatch::new();
//! batch
//!     .put(LOG, 1u64.to_be_bytes(), "entry 1")
//!     .put(LOG, 2u64.to_be_bytes(), "entry 2")
//!     .put(HARD_STATE, "term", 7u64.to_be_bytes());
//! engine.write(&batch)?;
//!
//! let log = engine.scan(LOG, &KeyRange::all(), Order::Ascending, 100)?;
//! assert_eq!(log.len(), 2);
//! # Ok::<(), calm_storage::StorageError>(())
//! ```
//!
//! A written batch is visible at once but **not durable**. The rule for drivers is *write,
//! then sync before acknowledging*: nothing that depends on a batch (a vote, an append
//! acknowledgement, a client reply) may leave the node until a [`Storage::sync`] that began
//! after the write has returned `Ok`. The memory engine shows why, by crashing:
//!
//! ```
//! # use calm_storage::{Keyspace, Limits, MemoryEngine, ReadView, Storage, WriteBatch};
//! # const LOG: Keyspace = Keyspace::new("raft_log");
//! let engine = MemoryEngine::new(Limits::default());
//! let mut first = WriteBatch::new();
//! first.put(LOG, 1u64.to_be_bytes(), "entry 1");
//! engine.write(&first)?;
//! engine.sync()?; // entry 1 may now be acknowledged
//!
//! let mut second = WriteBatch::new();
//! second.put(LOG, 2u64.to_be_bytes(), "entry 2");
//! engine.write(&second)?; // visible, not yet durable
//! assert!(engine.get(LOG, &2u64.to_be_bytes())?.is_some());
//!
//! engine.crash(); // a process crash loses what was not synced
//! assert!(engine.get(LOG, &1u64.to_be_bytes())?.is_some());
//! assert!(engine.get(LOG, &2u64.to_be_bytes())?.is_none());
//! # Ok::<(), calm_storage::StorageError>(())
//! ```
//!
//! Reads are point lookups or bounded scans over a [`KeyRange`], in either [`Order`]. A
//! snapshot is a consistent view that later writes do not change:
//!
//! ```
//! # use calm_storage::{KeyRange, Keyspace, Limits, MemoryEngine, Order, ReadView, Storage, WriteBatch};
//! # const KV: Keyspace = Keyspace::new("kv");
//! let engine = MemoryEngine::new(Limits::default());
//! let mut batch = WriteBatch::new();
//! batch.put(KV, "user/ada", "1").put(KV, "user/bob", "2").put(KV, "zone/eu", "3");
//! engine.write(&batch)?;
//! let snapshot = engine.snapshot()?;
//!
//! let mut later = WriteBatch::new();
//! later.delete_range(KV, KeyRange::prefix(b"user/"));
//! engine.write(&later)?;
//!
//! let newest_user = snapshot.scan(KV, &KeyRange::prefix(b"user/"), Order::Descending, 1)?;
//! assert_eq!(newest_user, vec![(b"user/bob".to_vec(), b"2".to_vec())]);
//! assert!(engine.scan(KV, &KeyRange::prefix(b"user/"), Order::Ascending, 10)?.is_empty());
//! # Ok::<(), calm_storage::StorageError>(())
//! ```
//!
//! The disk engine has the same interface; share it across threads with an `Arc`, and
//! concurrent syncs will share fsyncs:
//!
//! ```
//! # use calm_storage::{DiskEngine, Keyspace, Limits, Storage, WriteBatch};
//! # const KV: Keyspace = Keyspace::new("kv");
//! let dir = tempfile::tempdir().expect("a temp dir");
//! let engine = DiskEngine::open(dir.path().join("calm.redb"), Limits::default())?;
//! let mut batch = WriteBatch::new();
//! batch.put(KV, "k", "v");
//! engine.write(&batch)?;
//! engine.sync()?;
//! assert_eq!(engine.fsync_count(), 1);
//! # Ok::<(), calm_storage::StorageError>(())
//! ```
//!
//! Every engine enforces [`Limits`]: a key, value or batch over its bound is refused with a
//! typed [`StorageError`] before anything is written.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batch;
mod disk;
mod error;
mod keys;
mod limits;
mod memory;
mod storage;

pub use batch::{Op, WriteBatch};
pub use disk::{DiskEngine, DiskSnapshot};
pub use error::StorageError;
pub use keys::{KEYSPACE_NAME_BYTES_MAX, KeyRange, Keyspace, Order};
pub use limits::Limits;
pub use memory::{MemoryEngine, MemorySnapshot};
pub use storage::{Entry, ReadView, Storage};
