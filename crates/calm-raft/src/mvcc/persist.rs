//! How the store lives in calm-storage, in snapshots and in hashes.
//!
//! Layout, like etcd's `key` bucket: [`MVCC_REVISIONS`] maps each record's
//! revision (main then sub, 8 big-endian bytes each, so storage order is
//! revision order) to the record (its key and change) in calm's versioned
//! codec; [`MVCC_META`] holds the compact revision. The current revision is
//! not stored: it is the newest record's main revision, or the compact
//! revision if that is higher (compaction never removes records above the
//! compact revision, so nothing newer can be lost), or 1.

use calm_storage::{KeyRange, Keyspace, Order, ReadView, WriteBatch};
use calm_types::codec;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use super::{Change, Mvcc, MvccError, Record, Revision};

/// Keyspace of the MVCC records: revision → record.
pub const MVCC_REVISIONS: Keyspace = Keyspace::new("mvcc_revisions");

/// Keyspace of the MVCC store's own metadata (the compact revision).
pub const MVCC_META: Keyspace = Keyspace::new("mvcc_meta");

const COMPACT_REVISION_KEY: &[u8] = b"compact_revision";

/// Records read per storage scan while loading; well under every engine's
/// scan bound.
pub(super) const LOAD_PAGE_ENTRIES: usize = 4096;

/// The highest main revision accepted from storage or a snapshot, far above
/// anything reachable, so revision arithmetic on loaded state cannot
/// overflow.
const REVISION_MAX: i64 = 1 << 62;

/// A record as stored: the key and what happened to it.
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    #[serde(with = "crate::bytes")]
    key: Vec<u8>,
    change: Change,
}

/// A borrowed [`StoredRecord`], to encode without copying.
#[derive(Serialize)]
struct StoredRecordRef<'a> {
    #[serde(serialize_with = "crate::bytes::serialize")]
    key: &'a [u8],
    change: &'a Change,
}

/// A whole store, as [`Mvcc::snapshot`] encodes it.
#[derive(Serialize, Deserialize)]
struct Image {
    compact_revision: i64,
    /// Main revision, sub revision, record; in revision order.
    records: Vec<(i64, i64, StoredRecord)>,
}

/// The storage key and value persisting `change` of `key` at `revision`.
pub(super) fn encode_record(key: &[u8], revision: Revision, change: &Change) -> (Vec<u8>, Vec<u8>) {
    let value = codec::encode(&StoredRecordRef { key, change });
    (revision_key(revision).to_vec(), value)
}

fn revision_key(revision: Revision) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&revision.main.to_be_bytes());
    bytes[8..].copy_from_slice(&revision.sub.to_be_bytes());
    bytes
}

fn corrupt(reason: impl Into<String>) -> MvccError {
    MvccError::Corrupt {
        reason: reason.into(),
    }
}

/// Checks a revision read from outside against the invariants the store
/// relies on.
fn checked_revision(main: i64, sub: i64) -> Result<Revision, MvccError> {
    if !(1..=REVISION_MAX).contains(&main) || !(0..=REVISION_MAX).contains(&sub) {
        return Err(corrupt(format!("revision {main}.{sub} out of range")));
    }
    Ok(Revision { main, sub })
}

fn decode_revision_key(bytes: &[u8]) -> Result<Revision, MvccError> {
    let bytes: [u8; 16] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("revision key of {} bytes", bytes.len())))?;
    let both = u128::from_be_bytes(bytes);
    // The high 8 bytes are the main revision, the low 8 the sub revision.
    checked_revision((both >> 64) as u64 as i64, both as u64 as i64)
}

fn check_change(change: &Change) -> Result<(), MvccError> {
    match change {
        Change::Put {
            create_revision,
            version,
            ..
        } if !(1..=REVISION_MAX).contains(create_revision) || *version < 1 => Err(corrupt(
            format!("put with create revision {create_revision} and version {version}"),
        )),
        _ => Ok(()),
    }
}

/// Builds a store from records in strictly increasing revision order.
struct Builder {
    mvcc: Mvcc,
    last: Option<Revision>,
}

impl Builder {
    fn new(compact_revision: i64) -> Result<Self, MvccError> {
        if !(0..=REVISION_MAX).contains(&compact_revision) {
            return Err(corrupt(format!("compact revision {compact_revision}")));
        }
        let mut mvcc = Mvcc::new();
        mvcc.compact_revision = compact_revision;
        Ok(Self { mvcc, last: None })
    }

    fn push(&mut self, revision: Revision, record: StoredRecord) -> Result<(), MvccError> {
        if self.last.is_some_and(|last| last >= revision) {
            return Err(corrupt(format!(
                "revision {}.{} out of order",
                revision.main, revision.sub
            )));
        }
        check_change(&record.change)?;
        self.last = Some(revision);
        let change = record.change;
        self.mvcc
            .insert_record(record.key, Record { revision, change });
        Ok(())
    }

    fn finish(mut self) -> Mvcc {
        let newest = self.last.map_or(1, |revision| revision.main);
        self.mvcc.revision = newest.max(self.mvcc.compact_revision).max(1);
        self.mvcc
    }
}

/// [`Mvcc::load`].
pub(super) fn load(view: &impl ReadView) -> Result<Mvcc, MvccError> {
    let compact_revision = match view.get(MVCC_META, COMPACT_REVISION_KEY)? {
        None => 0,
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("compact revision is not 8 bytes"))?;
            i64::from_be_bytes(bytes)
        }
    };
    let mut builder = Builder::new(compact_revision)?;
    let mut range = KeyRange::all();
    loop {
        let page = view.scan(MVCC_REVISIONS, &range, Order::Ascending, LOAD_PAGE_ENTRIES)?;
        let Some((last_key, _)) = page.last() else {
            break;
        };
        // The next page starts just above the last key read.
        range = KeyRange::starting_at([last_key.as_slice(), &[0]].concat());
        let full = page.len() == LOAD_PAGE_ENTRIES;
        for (key, value) in page {
            let revision = decode_revision_key(&key)?;
            let record: StoredRecord = codec::decode(&value)
                .map_err(|error| corrupt(format!("record {}: {error}", revision.main)))?;
            builder.push(revision, record)?;
        }
        if !full {
            break;
        }
    }
    Ok(builder.finish())
}

/// [`Mvcc::snapshot`].
pub(super) fn snapshot(mvcc: &Mvcc) -> Vec<u8> {
    #[derive(Serialize)]
    struct ImageRef<'a> {
        compact_revision: i64,
        records: Vec<(i64, i64, StoredRecordRef<'a>)>,
    }
    let records = mvcc
        .history
        .iter()
        .filter_map(|(revision, key)| {
            let record = find_record(mvcc, key, *revision)?;
            let stored = StoredRecordRef {
                key,
                change: &record.change,
            };
            Some((revision.main, revision.sub, stored))
        })
        .collect();
    codec::encode(&ImageRef {
        compact_revision: mvcc.compact_revision,
        records,
    })
}

/// [`Mvcc::restore`].
pub(super) fn restore(bytes: &[u8], batch: &mut WriteBatch) -> Result<Mvcc, MvccError> {
    let image: Image =
        codec::decode(bytes).map_err(|error| corrupt(format!("snapshot: {error}")))?;
    let mut builder = Builder::new(image.compact_revision)?;
    for (main, sub, record) in image.records {
        builder.push(checked_revision(main, sub)?, record)?;
    }
    let mvcc = builder.finish();
    batch.delete_range(MVCC_REVISIONS, KeyRange::all());
    batch.delete_range(MVCC_META, KeyRange::all());
    write_compact_revision(&mvcc, batch);
    for (revision, key) in &mvcc.history {
        if let Some(record) = find_record(&mvcc, key, *revision) {
            let (storage_key, value) = encode_record(key, *revision, &record.change);
            batch.put(MVCC_REVISIONS, storage_key, value);
        }
    }
    Ok(mvcc)
}

fn find_record<'a>(mvcc: &'a Mvcc, key: &[u8], revision: Revision) -> Option<&'a Record> {
    let records = mvcc.keys.get(key)?;
    let index = records
        .binary_search_by(|record| record.revision.cmp(&revision))
        .ok()?;
    records.get(index)
}

fn write_compact_revision(mvcc: &Mvcc, batch: &mut WriteBatch) {
    if mvcc.compact_revision > 0 {
        batch.put(
            MVCC_META,
            COMPACT_REVISION_KEY,
            mvcc.compact_revision.to_be_bytes(),
        );
    }
}

/// Appends a compaction to `batch`: the new compact revision, and the
/// deletion of the `removed` revisions (sorted). Removed revisions that are
/// neighbours in storage order are deleted by one range delete, so a
/// compaction costs one operation per run of dropped records, not one per
/// record.
pub(super) fn write_compaction(mvcc: &Mvcc, removed: &[Revision], batch: &mut WriteBatch) {
    write_compact_revision(mvcc, batch);
    let mut runs: Vec<(Revision, Revision)> = Vec::new();
    for &revision in removed {
        match runs.last_mut() {
            // Nothing retained lies between the run's end and `revision`.
            Some((_, end)) if mvcc.history.range(*end..revision).next().is_none() => {
                *end = revision;
            }
            _ => runs.push((revision, revision)),
        }
    }
    for (first, last) in runs {
        if first == last {
            batch.delete(MVCC_REVISIONS, revision_key(first).to_vec());
        } else {
            let end = [revision_key(last).as_slice(), &[0]].concat();
            batch.delete_range(
                MVCC_REVISIONS,
                KeyRange::new(revision_key(first).to_vec(), end),
            );
        }
    }
}

/// The hash of every retained record at or below main revision `at`, in
/// revision order: revision, key and change, each length-prefixed so no two
/// histories hash the same bytes.
pub(super) fn hash_history(mvcc: &Mvcc, at: i64) -> u32 {
    let mut hasher = Xxh3::new();
    for (revision, key) in mvcc.history.range(..=Revision::last_of(at)) {
        let Some(record) = find_record(mvcc, key, *revision) else {
            continue;
        };
        hasher.update(&revision_key(*revision));
        hasher.update(&(key.len() as u64).to_be_bytes());
        hasher.update(key);
        match &record.change {
            Change::Put {
                value,
                lease,
                create_revision,
                version,
            } => {
                hasher.update(&[0]);
                hasher.update(&create_revision.to_be_bytes());
                hasher.update(&version.to_be_bytes());
                hasher.update(&lease.to_be_bytes());
                hasher.update(&(value.len() as u64).to_be_bytes());
                hasher.update(value);
            }
            Change::Tombstone => hasher.update(&[1]),
        }
    }
    let digest = hasher.digest();
    // Fold, rather than truncate, so every bit of the digest counts.
    ((digest >> 32) ^ digest) as u32
}
