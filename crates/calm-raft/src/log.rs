//! The durable Raft log: hard state, membership history, compaction point and entries, kept in
//! memory for raft-rs (`raft::Storage`) and mirrored into write batches so a restart rebuilds it.
//!
//! # What is stored where
//!
//! | keyspace     | key                          | value (calm codec)                          |
//! |--------------|------------------------------|---------------------------------------------|
//! | `raft_log`   | index, 8 bytes big-endian    | one entry: term, kind, data, context        |
//! | `raft_state` | `hard_state`                 | term, vote, commit                          |
//! | `raft_state` | `compaction`                 | index and term of the last compacted entry  |
//! | `raft_state` | `membership/` + index (BE)   | the membership that took effect at `index`  |
//!
//! Big-endian keys sort by index, so the log is one ascending scan and truncation one range
//! delete. Values go through [`calm_types::codec`] (a version byte, then postcard) rather than
//! protobuf: raft-rs's generated types stay out of the on-disk format, and a future layout can
//! be told apart by its version byte.
//!
//! The membership is kept as a *history* (one record per applied configuration change since the
//! last compaction) because raft-rs needs the configuration as of the state machine's applied
//! index on restart: committed entries after it are delivered again and their configuration
//! changes applied again, exactly as etcd replays its log after the last snapshot.
//!
//! The state machine's snapshot blob (what a lagging follower receives) is held in memory only:
//! the state machine's own keyspaces already hold that state durably, so writing it a second time
//! would double the write volume. It is built only when wanted: the driver trims the log at its
//! periodic compaction points without one ([`RaftLog::trim`]), and after a restart the log has
//! no blob either; a follower that needs one makes raft-rs ask, the log answers
//! `SnapshotTemporarilyUnavailable` and raises [`RaftLog::take_snapshot_wanted`], and the driver
//! then hands it one ([`RaftLog::compact`]).

use std::cell::Cell;

use calm_storage::{KeyRange, Keyspace, Order, ReadView, StorageError, WriteBatch};
use calm_types::codec;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfState, Entry, EntryType, HardState, Snapshot,
};
use raft::{Changer, GetEntriesContext, ProgressTracker, RaftState};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The log entries, keyed by big-endian index.
pub const LOG_KEYSPACE: Keyspace = Keyspace::new("raft_log");
/// Hard state, compaction point and membership history.
pub const STATE_KEYSPACE: Keyspace = Keyspace::new("raft_state");

const HARD_STATE_KEY: &[u8] = b"hard_state";
const COMPACTION_KEY: &[u8] = b"compaction";
const MEMBERSHIP_PREFIX: &[u8] = b"membership/";

/// Entries read per scan while loading: far below any engine's scan bound, large enough that a
/// long log loads in few round trips.
const LOAD_PAGE_ENTRIES: usize = 1024;

/// The index a bootstrapped log starts after. Bootstrapping puts a compaction point at index 1
/// (term 1) holding the initial membership, instead of writing the membership as log entries: a
/// node added later starts from empty storage and must then catch up through a snapshot, which
/// carries the membership, rather than replay a log whose first configuration is not in it.
/// (raft-rs's `MemStorage` documents the same choice; TiKV does the same.)
pub const BOOTSTRAP_INDEX: u64 = 1;
/// The term of [`BOOTSTRAP_INDEX`].
pub const BOOTSTRAP_TERM: u64 = 1;

/// Why the log could not be loaded or changed.
#[derive(Debug, Error)]
pub enum LogError {
    /// Reading storage failed. Nothing was loaded.
    #[error("reading the raft log failed: {0}")]
    Storage(#[from] StorageError),
    /// Stored bytes do not decode, or decode into a state that breaks a log invariant (entries
    /// not contiguous, commit outside the log, an unrestorable membership). Nothing was loaded.
    #[error("raft log corrupt at {keyspace}/{key:?}: {reason}")]
    Corrupt {
        /// The keyspace holding the bad record.
        keyspace: &'static str,
        /// The key of the bad record.
        key: Vec<u8>,
        /// What is wrong with it.
        reason: String,
    },
    /// Entries to append do not continue the log: the first new index must lie in
    /// `compaction + 1 ..= last + 1` and the new entries must be contiguous. The log and the
    /// batch are unchanged.
    #[error(
        "entries starting at {first_new} do not continue the log (compacted to {compacted}, last {last})"
    )]
    NotContiguous {
        /// Index of the first entry offered.
        first_new: u64,
        /// The log's compaction index.
        compacted: u64,
        /// The log's last index.
        last: u64,
    },
    /// A compaction or snapshot index outside what the log can describe. Nothing changed.
    #[error("index {index} outside the log's range {first}..={last}")]
    OutOfRange {
        /// The index asked for.
        index: u64,
        /// The lowest acceptable index.
        first: u64,
        /// The highest acceptable index.
        last: u64,
    },
}

/// A cluster configuration as plain data: the mirror of raft-rs's `ConfState`, with every list
/// sorted so equal memberships compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voters of the (incoming) configuration.
    pub voters: Vec<u64>,
    /// Learners: replicas that receive the log but do not vote.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration while in joint consensus; empty otherwise.
    pub voters_outgoing: Vec<u64>,
    /// Outgoing voters that become learners when the joint configuration is left.
    pub learners_next: Vec<u64>,
    /// Whether the joint configuration is left automatically (always, for calm's proposals).
    pub auto_leave: bool,
}

impl Membership {
    /// Whether the cluster is in a joint configuration (Raft §6, joint consensus).
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` replicates the log in any role.
    pub fn contains(&self, id: u64) -> bool {
        self.is_voter(id) || self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// Converts raft-rs's configuration state.
    pub fn from_conf_state(cs: &ConfState) -> Self {
        let sorted = |ids: &[u64]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        };
        Self {
            voters: sorted(&cs.voters),
            learners: sorted(&cs.learners),
            voters_outgoing: sorted(&cs.voters_outgoing),
            learners_next: sorted(&cs.learners_next),
            auto_leave: cs.auto_leave,
        }
    }

    /// Converts to raft-rs's configuration state.
    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..ConfState::default()
        }
    }

    /// Checks that raft-rs can restore this configuration, by running the same changes its
    /// `confchange::restore` runs (which is not public) on an empty tracker. raft-rs panics on an
    /// unrestorable configuration, so anything read from disk or the network passes here first.
    pub fn check_restorable(&self) -> Result<(), String> {
        let mut tracker = ProgressTracker::new(1);
        let add = conf_change_single;
        let mut incoming: Vec<ConfChangeSingle> = Vec::new();
        for &id in &self.voters_outgoing {
            apply_simple(&mut tracker, &[add(id, ConfChangeType::AddNode)])?;
            incoming.push(add(id, ConfChangeType::RemoveNode));
        }
        incoming.extend(
            self.voters
                .iter()
                .map(|&id| add(id, ConfChangeType::AddNode)),
        );
        let learners = self.learners.iter().chain(&self.learners_next);
        incoming.extend(learners.map(|&id| add(id, ConfChangeType::AddLearnerNode)));
        if self.voters_outgoing.is_empty() {
            for change in incoming {
                apply_simple(&mut tracker, &[change])?;
            }
        } else {
            let (cfg, changes) = Changer::new(&tracker)
                .enter_joint(self.auto_leave, &incoming)
                .map_err(|e| e.to_string())?;
            tracker.apply_conf(cfg, changes, 1);
        }
        let restored = Membership::from_conf_state(&tracker.conf().to_conf_state());
        if restored != *self {
            return Err(format!("restores as {restored:?}"));
        }
        Ok(())
    }
}

/// One membership change of `kind` for node `id`, as raft-rs spells it.
pub(crate) fn conf_change_single(id: u64, kind: ConfChangeType) -> ConfChangeSingle {
    ConfChangeSingle {
        node_id: id,
        change_type: kind,
        ..ConfChangeSingle::default()
    }
}

fn apply_simple(tracker: &mut ProgressTracker, changes: &[ConfChangeSingle]) -> Result<(), String> {
    let (cfg, map) = Changer::new(tracker)
        .simple(changes)
        .map_err(|e| e.to_string())?;
    tracker.apply_conf(cfg, map, 1);
    Ok(())
}

/// A position in the log: an index and the term of the entry there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// The entry's index.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredHardState {
    term: u64,
    vote: u64,
    commit: u64,
}

#[derive(Serialize, Deserialize)]
enum StoredEntryKind {
    Normal,
    ConfChange,
    ConfChangeV2,
}

/// One entry as stored; its index is the key.
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    term: u64,
    kind: StoredEntryKind,
    #[serde(with = "crate::bytes")]
    data: Vec<u8>,
    #[serde(with = "crate::bytes")]
    context: Vec<u8>,
}

/// A borrowed [`StoredEntry`], to encode without copying the entry's data.
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    term: u64,
    kind: StoredEntryKind,
    #[serde(serialize_with = "crate::bytes::serialize")]
    data: &'a [u8],
    #[serde(serialize_with = "crate::bytes::serialize")]
    context: &'a [u8],
}

/// The durable Raft log (raft-rs's `Storage`).
///
/// It holds, in memory, everything raft-rs reads: the hard state (term, vote, commit), the
/// membership history, the compaction point (index and term of the last entry dropped) and the
/// entries after it, plus the newest state-machine snapshot for lagging followers. Every mutating
/// method takes a [`WriteBatch`] and writes the same change into it; [`RaftLog::load`] rebuilds
/// the log from what those batches wrote. The driver of the Raft core ([`crate::node`]) writes
/// and syncs the batches; this type does no I/O.
#[derive(Debug, Default)]
pub struct RaftLog {
    hard_state: HardState,
    compaction: LogPosition,
    /// Entries `compaction.index + 1 ..= last`, contiguous.
    entries: Vec<Entry>,
    /// `(index, membership)` in ascending index order: the first record is the membership at
    /// the compaction point, each later one the result of a configuration change applied at
    /// that index. Empty only for a node that has not joined a cluster yet.
    memberships: Vec<(u64, Membership)>,
    /// The newest state-machine snapshot, served to followers that need entries before the
    /// compaction point.
    snapshot: Option<Snapshot>,
    /// Set when raft-rs asked for a snapshot this log could not give. A `Cell` because raft-rs
    /// asks through `Storage::snapshot(&self)`.
    snapshot_wanted: Cell<bool>,
}

impl RaftLog {
    /// An empty log, for a node that joins an existing cluster: it learns the membership from
    /// the snapshot the leader sends it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log for a node of a new cluster whose initial configuration is `membership`; writes it
    /// into `batch`. Every initial voter must bootstrap with the same membership.
    pub fn bootstrap(membership: Membership, batch: &mut WriteBatch) -> Self {
        let mut log = Self::new();
        log.compaction = LogPosition {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
        };
        log.hard_state.term = BOOTSTRAP_TERM;
        log.hard_state.commit = BOOTSTRAP_INDEX;
        batch.put(
            STATE_KEYSPACE,
            COMPACTION_KEY,
            codec::encode(&log.compaction),
        );
        log.write_hard_state(batch);
        log.record_membership(BOOTSTRAP_INDEX, membership, batch);
        log
    }

    /// Whether `view` holds a Raft log written by this module (then the node restarts with
    /// [`RaftLog::load`]; otherwise it bootstraps or joins).
    pub fn exists(view: &impl ReadView) -> Result<bool, LogError> {
        Ok(view.get(STATE_KEYSPACE, HARD_STATE_KEY)?.is_some())
    }

    /// Rebuilds the log from what earlier batches wrote. Checks every record: bytes that do not
    /// decode, or a state raft-rs would panic on, are [`LogError::Corrupt`], never a panic. An
    /// empty `view` gives an empty log (a node that has not joined yet).
    pub fn load(view: &impl ReadView) -> Result<Self, LogError> {
        let mut log = Self::new();
        if let Some(bytes) = view.get(STATE_KEYSPACE, COMPACTION_KEY)? {
            log.compaction = decode_state(COMPACTION_KEY, &bytes)?;
        }
        if let Some(bytes) = view.get(STATE_KEYSPACE, HARD_STATE_KEY)? {
            let stored: StoredHardState = decode_state(HARD_STATE_KEY, &bytes)?;
            log.hard_state.term = stored.term;
            log.hard_state.vote = stored.vote;
            log.hard_state.commit = stored.commit;
        }
        log.memberships = load_memberships(view)?;
        log.entries = load_entries(view, log.compaction)?;
        log.check_loaded()?;
        Ok(log)
    }

    /// The invariants raft-rs assumes of its storage (it panics when they fail).
    fn check_loaded(&self) -> Result<(), LogError> {
        let corrupt = |key: &[u8], reason: String| LogError::Corrupt {
            keyspace: STATE_KEYSPACE.name(),
            key: key.to_vec(),
            reason,
        };
        let (first, last) = (self.compaction.index, self.last_index());
        let commit = self.hard_state.commit;
        if commit < first || commit > last {
            return Err(corrupt(
                HARD_STATE_KEY,
                format!("commit {commit} outside the log {first}..={last}"),
            ));
        }
        if self.last_term() > self.hard_state.term {
            return Err(corrupt(
                HARD_STATE_KEY,
                format!("term {} below the last entry's term", self.hard_state.term),
            ));
        }
        match self.memberships.first() {
            Some(&(index, _)) if index > first => Err(corrupt(
                MEMBERSHIP_PREFIX,
                format!("no membership at the compaction point {first}"),
            )),
            None if first > 0 => Err(corrupt(
                MEMBERSHIP_PREFIX,
                "a compacted log without membership".to_owned(),
            )),
            _ => Ok(()),
        }
    }

    /// The persisted hard state.
    #[cfg(test)]
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The last compacted entry (index 0, term 0 for a log never compacted).
    pub fn compaction(&self) -> LogPosition {
        self.compaction
    }

    /// The current membership: the newest record of the history.
    pub fn membership(&self) -> Membership {
        self.memberships
            .last()
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// The membership in force after the entry at `index` was applied.
    pub fn membership_at(&self, index: u64) -> Membership {
        self.memberships
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    #[cfg(test)]
    /// The index of the newest state-machine snapshot held for followers, if any.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.get_metadata().index)
    }

    /// Whether raft-rs asked for a snapshot the log did not have, without clearing the flag.
    pub fn is_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.get()
    }

    /// Whether raft-rs asked for a snapshot the log did not have since the last call; clears
    /// the flag. The driver answers by building one and calling [`crate::node::RaftCore::compact`].
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Index of the first entry still held.
    pub fn first_index(&self) -> u64 {
        self.compaction.index + 1
    }

    /// Index of the last entry (the compaction index when no entry is held).
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.compaction.index, |e| e.index)
    }

    fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.compaction.term, |e| e.term)
    }

    /// The term of the entry at `index`, if the log still knows it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.compaction.index {
            return Some(self.compaction.term);
        }
        self.entry(index).map(|e| e.term)
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Replaces the hard state.
    pub fn set_hard_state(&mut self, hard_state: &HardState, batch: &mut WriteBatch) {
        self.hard_state.term = hard_state.term;
        self.hard_state.vote = hard_state.vote;
        self.hard_state.commit = hard_state.commit;
        self.write_hard_state(batch);
    }

    /// Raises the commit index (raft-rs reports commit advances after `advance_append` apart
    /// from the hard state).
    pub fn set_commit(&mut self, commit: u64, batch: &mut WriteBatch) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
            self.write_hard_state(batch);
        }
    }

    fn write_hard_state(&self, batch: &mut WriteBatch) {
        let stored = StoredHardState {
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            commit: self.hard_state.commit,
        };
        batch.put(STATE_KEYSPACE, HARD_STATE_KEY, codec::encode(&stored));
    }

    /// Appends `entries`, first dropping any held entry at or after the first new index (a
    /// leader overwriting a follower's uncommitted tail, Raft §5.3).
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch) -> Result<(), LogError> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let contiguous = entries
            .iter()
            .zip(first_new..)
            .all(|(e, index)| e.index == index);
        if first_new <= self.compaction.index || first_new > self.last_index() + 1 || !contiguous {
            return Err(LogError::NotContiguous {
                first_new,
                compacted: self.compaction.index,
                last: self.last_index(),
            });
        }
        if first_new <= self.last_index() {
            // `first_new > compaction.index`, so the offset is within the held entries.
            let keep = (first_new - self.first_index()) as usize;
            self.entries.truncate(keep);
            let tail = KeyRange::starting_at(first_new.to_be_bytes());
            batch.delete_range(LOG_KEYSPACE, tail);
        }
        for entry in entries {
            batch.put(LOG_KEYSPACE, entry.index.to_be_bytes(), encode_entry(entry));
        }
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Records that the configuration change at `index` produced `membership`. Recording the
    /// same index again (a change delivered again after a restart) replaces the record.
    pub fn record_membership(
        &mut self,
        index: u64,
        membership: Membership,
        batch: &mut WriteBatch,
    ) {
        batch.put(
            STATE_KEYSPACE,
            membership_key(index),
            codec::encode(&membership),
        );
        self.memberships.retain(|(at, _)| *at < index);
        self.memberships.push((index, membership));
    }

    /// Forgets, in memory only, membership records after `applied`, so that raft-rs starts from
    /// the configuration as of the state machine's applied index and applies the later changes
    /// again as they are delivered (recording them again, identically). `applied` must lie
    /// within `compaction ..= commit`.
    pub fn rewind_membership_to(&mut self, applied: u64) -> Result<(), LogError> {
        let (first, commit) = (self.compaction.index, self.hard_state.commit);
        if applied < first || applied > commit {
            return Err(LogError::OutOfRange {
                index: applied,
                first,
                last: commit,
            });
        }
        self.memberships.retain(|(at, _)| *at <= applied);
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log restarts after it, the membership
    /// is the snapshot's, and the snapshot becomes the one this node serves to others.
    pub fn apply_snapshot(
        &mut self,
        snapshot: Snapshot,
        batch: &mut WriteBatch,
    ) -> Result<(), LogError> {
        let meta = snapshot.get_metadata();
        let position = LogPosition {
            index: meta.index,
            term: meta.term,
        };
        if position.index < self.compaction.index {
            return Err(LogError::OutOfRange {
                index: position.index,
                first: self.compaction.index,
                last: u64::MAX,
            });
        }
        let membership = Membership::from_conf_state(meta.get_conf_state());
        self.compaction = position;
        self.entries.clear();
        self.hard_state.term = self.hard_state.term.max(position.term);
        self.hard_state.commit = self.hard_state.commit.max(position.index);
        batch.delete_range(LOG_KEYSPACE, KeyRange::all());
        batch.delete_range(STATE_KEYSPACE, KeyRange::prefix(MEMBERSHIP_PREFIX));
        batch.put(STATE_KEYSPACE, COMPACTION_KEY, codec::encode(&position));
        self.write_hard_state(batch);
        self.memberships.clear();
        self.record_membership(position.index, membership, batch);
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Takes the state machine's snapshot `data`, taken at applied index `index`, as the one
    /// to serve lagging followers, and drops the entries up to `index - keep_entries` (keeping
    /// the last `keep_entries` for followers that are only slightly behind).
    ///
    /// `index` must lie between the compaction index and `applied_max` (the highest index the
    /// core has delivered): the log must still know its term, and the snapshot must describe
    /// entries that are committed.
    pub fn compact(
        &mut self,
        index: u64,
        applied_max: u64,
        data: Vec<u8>,
        keep_entries: u64,
        batch: &mut WriteBatch,
    ) -> Result<(), LogError> {
        let term = match self.term_at(index) {
            Some(term) if index <= applied_max => term,
            _ => {
                return Err(LogError::OutOfRange {
                    index,
                    first: self.compaction.index,
                    last: applied_max.min(self.last_index()),
                });
            }
        };
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.membership_at(index).to_conf_state());
        self.snapshot = Some(snapshot);
        self.drop_entries_through(index.saturating_sub(keep_entries), batch);
        Ok(())
    }

    /// Drops the entries up to `index - keep_entries` as [`compact`](Self::compact) does, but
    /// without a new snapshot: a held snapshot older than the new compaction point is dropped
    /// too (a follower restored from it could not continue from the log), so the next follower
    /// that needs one raises [`take_snapshot_wanted`](Self::take_snapshot_wanted).
    ///
    /// This keeps the periodic compaction cheap: serialising the whole state every
    /// `snapshot_count` entries stalled a loaded node for seconds, for a blob that is seldom
    /// sent. `index` is bounded as for `compact`.
    pub fn trim(
        &mut self,
        index: u64,
        applied_max: u64,
        keep_entries: u64,
        batch: &mut WriteBatch,
    ) -> Result<(), LogError> {
        if index > applied_max || self.term_at(index).is_none() {
            return Err(LogError::OutOfRange {
                index,
                first: self.compaction.index,
                last: applied_max.min(self.last_index()),
            });
        }
        self.drop_entries_through(index.saturating_sub(keep_entries), batch);
        let compacted = self.compaction.index;
        if self
            .snapshot
            .as_ref()
            .is_some_and(|snapshot| snapshot.get_metadata().index < compacted)
        {
            self.snapshot = None;
        }
        Ok(())
    }

    /// Moves the compaction point to `through` (if that is forward), dropping entries and
    /// membership records that are no longer needed.
    fn drop_entries_through(&mut self, through: u64, batch: &mut WriteBatch) {
        let Some(term) = self.term_at(through) else {
            return;
        };
        if through <= self.compaction.index {
            return;
        }
        let dropped = (through - self.compaction.index) as usize;
        self.entries.drain(..dropped.min(self.entries.len()));
        let range = KeyRange::new(
            self.first_index().to_be_bytes(),
            (through + 1).to_be_bytes(),
        );
        batch.delete_range(LOG_KEYSPACE, range);
        self.compaction = LogPosition {
            index: through,
            term,
        };
        batch.put(
            STATE_KEYSPACE,
            COMPACTION_KEY,
            codec::encode(&self.compaction),
        );
        // Keep the membership in force at the compaction point and every later record.
        let kept_from = self
            .memberships
            .iter()
            .rposition(|(at, _)| *at <= through)
            .unwrap_or(0);
        if let Some(&(oldest_kept, _)) = self.memberships.get(kept_from) {
            self.memberships.drain(..kept_from);
            let range = KeyRange::new(membership_key(0), membership_key(oldest_kept));
            batch.delete_range(STATE_KEYSPACE, range);
        }
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.membership().to_conf_state(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let start = (low - self.first_index()) as usize;
        let end = (high - self.first_index()) as usize;
        let mut entries = self.entries[start..end].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.compaction.index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.term_at(index)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::last_index(self))
    }

    /// The held state-machine snapshot, if it is recent enough for `request_index` and its
    /// membership includes `to` (raft-rs's follower ignores a snapshot that does not name it,
    /// and the leader would resend it forever). Otherwise asks the driver for a new one.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            Some(snapshot)
                if snapshot.get_metadata().index >= request_index
                    && Membership::from_conf_state(snapshot.get_metadata().get_conf_state())
                        .contains(to) =>
            {
                Ok(snapshot.clone())
            }
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

fn membership_key(index: u64) -> Vec<u8> {
    [MEMBERSHIP_PREFIX, &index.to_be_bytes()].concat()
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    let kind = match entry.get_entry_type() {
        EntryType::EntryNormal => StoredEntryKind::Normal,
        EntryType::EntryConfChange => StoredEntryKind::ConfChange,
        EntryType::EntryConfChangeV2 => StoredEntryKind::ConfChangeV2,
    };
    codec::encode(&StoredEntryRef {
        term: entry.term,
        kind,
        data: &entry.data,
        context: &entry.context,
    })
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, String> {
    let stored: StoredEntry = codec::decode(bytes).map_err(|e| e.to_string())?;
    let mut entry = Entry::default();
    entry.set_entry_type(match stored.kind {
        StoredEntryKind::Normal => EntryType::EntryNormal,
        StoredEntryKind::ConfChange => EntryType::EntryConfChange,
        StoredEntryKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
    });
    entry.index = index;
    entry.term = stored.term;
    entry.data = stored.data.into();
    entry.context = stored.context.into();
    Ok(entry)
}

fn decode_state<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, LogError> {
    codec::decode(bytes).map_err(|e| LogError::Corrupt {
        keyspace: STATE_KEYSPACE.name(),
        key: key.to_vec(),
        reason: e.to_string(),
    })
}

fn index_from_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Reads the entries after `compaction`, checking that they are contiguous and that terms never
/// decrease (Raft's Log Matching property makes both hold for any log a correct node wrote).
fn load_entries(view: &impl ReadView, compaction: LogPosition) -> Result<Vec<Entry>, LogError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut next = compaction.index.checked_add(1);
    let mut last_term = compaction.term;
    while let Some(from) = next {
        let range = KeyRange::starting_at(from.to_be_bytes());
        let page = view.scan(LOG_KEYSPACE, &range, Order::Ascending, LOAD_PAGE_ENTRIES)?;
        let full_page = page.len() == LOAD_PAGE_ENTRIES;
        for (key, value) in page {
            let expected = compaction.index + 1 + entries.len() as u64;
            let corrupt = |reason: String| LogError::Corrupt {
                keyspace: LOG_KEYSPACE.name(),
                key: key.clone(),
                reason,
            };
            if index_from_key(&key) != Some(expected) {
                return Err(corrupt(format!("expected the entry at {expected}")));
            }
            let entry = decode_entry(expected, &value).map_err(corrupt)?;
            if entry.term < last_term {
                return Err(corrupt(format!(
                    "term {} after term {last_term}",
                    entry.term
                )));
            }
            last_term = entry.term;
            entries.push(entry);
        }
        next = full_page.then(|| compaction.index + 1 + entries.len() as u64);
    }
    Ok(entries)
}

fn load_memberships(view: &impl ReadView) -> Result<Vec<(u64, Membership)>, LogError> {
    let all = KeyRange::prefix(MEMBERSHIP_PREFIX);
    let mut range = all.clone();
    let mut records = Vec::new();
    loop {
        let page = view.scan(STATE_KEYSPACE, &range, Order::Ascending, LOAD_PAGE_ENTRIES)?;
        for (key, value) in &page {
            let corrupt = |reason: String| LogError::Corrupt {
                keyspace: STATE_KEYSPACE.name(),
                key: key.clone(),
                reason,
            };
            let index = index_from_key(&key[MEMBERSHIP_PREFIX.len()..])
                .ok_or_else(|| corrupt("membership key without an index".to_owned()))?;
            let membership: Membership =
                codec::decode(value).map_err(|e| corrupt(e.to_string()))?;
            membership.check_restorable().map_err(corrupt)?;
            records.push((index, membership));
        }
        match page.last() {
            Some((last_key, _)) if page.len() == LOAD_PAGE_ENTRIES => {
                // Continue just after the last key read (the next key in byte order).
                let after = [last_key.as_slice(), &[0]].concat();
                range = match all.end() {
                    Some(end) => KeyRange::new(after, end.to_vec()),
                    None => KeyRange::starting_at(after),
                };
            }
            _ => return Ok(records),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_storage::{Limits, MemoryEngine, Storage as _};
    use proptest::prelude::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn voters(ids: &[u64]) -> Membership {
        Membership {
            voters: ids.to_vec(),
            ..Membership::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    /// Runs `change` against the log with a fresh batch and writes the batch to `engine`.
    fn persist<T>(
        engine: &MemoryEngine,
        log: &mut RaftLog,
        change: impl FnOnce(&mut RaftLog, &mut WriteBatch) -> T,
    ) -> T {
        let mut batch = WriteBatch::new();
        let result = change(log, &mut batch);
        engine.write(&batch).expect("write");
        result
    }

    fn bootstrapped(engine: &MemoryEngine) -> RaftLog {
        let mut batch = WriteBatch::new();
        let log = RaftLog::bootstrap(voters(&[1, 2, 3]), &mut batch);
        engine.write(&batch).expect("write");
        log
    }

    fn assert_same_log(a: &RaftLog, b: &RaftLog) {
        assert_eq!(a.hard_state, b.hard_state);
        assert_eq!(a.compaction, b.compaction);
        assert_eq!(a.entries, b.entries);
        assert_eq!(a.memberships, b.memberships);
    }

    #[test]
    fn load_rebuilds_what_the_batches_wrote() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let appended: Vec<Entry> = (2..=8).map(|i| entry(i, 1 + i / 4, b"x")).collect();
        persist(&engine, &mut log, |l, b| l.append(&appended, b)).expect("append");
        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(3, 1, 4), b)
        });
        let learner = Membership {
            learners: vec![4],
            ..voters(&[1, 2, 3])
        };
        persist(&engine, &mut log, |l, b| {
            l.record_membership(3, learner.clone(), b)
        });
        persist(&engine, &mut log, |l, b| l.set_commit(6, b));

        let loaded = RaftLog::load(&engine).expect("load");
        assert_same_log(&loaded, &log);
        assert_eq!(loaded.membership(), learner);
        assert_eq!(loaded.membership_at(2), voters(&[1, 2, 3]));
        assert_eq!(loaded.term_at(8), Some(3));
        assert!(RaftLog::exists(&engine).expect("exists"));
        assert!(!RaftLog::exists(&MemoryEngine::new(Limits::default())).expect("exists"));
    }

    #[test]
    fn a_new_leader_overwrites_an_uncommitted_tail() {
        // Raft §5.3: a follower's conflicting entries are replaced by the leader's.
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let old: Vec<Entry> = (2..=8).map(|i| entry(i, 2, b"old")).collect();
        persist(&engine, &mut log, |l, b| l.append(&old, b)).expect("append");
        let new: Vec<Entry> = (5..=6).map(|i| entry(i, 3, b"new")).collect();
        persist(&engine, &mut log, |l, b| l.append(&new, b)).expect("overwrite");
        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(3, 0, 1), b)
        });

        let loaded = RaftLog::load(&engine).expect("load");
        assert_eq!(loaded.last_index(), 6);
        assert_eq!(loaded.term_at(4), Some(2));
        assert_eq!(loaded.term_at(5), Some(3));
        assert_eq!(loaded.term_at(7), None);
        assert_same_log(&loaded, &log);
    }

    #[test]
    fn appends_that_do_not_continue_the_log_are_refused() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let mut batch = WriteBatch::new();
        for bad in [
            vec![entry(1, 1, b"at the compaction point")],
            vec![entry(3, 1, b"leaves a gap")],
            vec![entry(2, 1, b"a"), entry(4, 1, b"not contiguous")],
        ] {
            assert!(matches!(
                log.append(&bad, &mut batch),
                Err(LogError::NotContiguous { .. })
            ));
        }
        assert!(batch.is_empty(), "a refused append writes nothing");
        assert_eq!(log.last_index(), 1);
    }

    #[test]
    fn storage_answers_like_raft_rs_memstorage() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let appended: Vec<Entry> = (2..=6).map(|i| entry(i, 2, &[0; 100])).collect();
        persist(&engine, &mut log, |l, b| l.append(&appended, b)).expect("append");
        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(2, 0, 6), b)
        });
        persist(&engine, &mut log, |l, b| {
            l.compact(4, 6, b"sm".to_vec(), 1, b)
        })
        .expect("compact");
        let compacted = raft::Error::Store(raft::StorageError::Compacted);
        let unavailable = raft::Error::Store(raft::StorageError::Unavailable);
        let ctx = || GetEntriesContext::empty(false);

        assert_eq!(raft::Storage::first_index(&log).expect("first"), 4);
        assert_eq!(raft::Storage::last_index(&log).expect("last"), 6);
        assert_eq!(log.term(3).expect("the compaction point keeps its term"), 2);
        assert_eq!(log.term(2), Err(compacted));
        assert_eq!(log.term(7), Err(unavailable));
        assert_eq!(
            log.entries(2, 5, None, ctx()),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        );
        assert_eq!(
            log.entries(4, 8, None, ctx()),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        );
        assert_eq!(log.entries(4, 7, None, ctx()).expect("entries").len(), 3);
        // A size bound still returns at least one entry.
        assert_eq!(log.entries(4, 7, Some(1), ctx()).expect("entries").len(), 1);
        let state = log.initial_state().expect("initial state");
        assert_eq!(state.hard_state.commit, 6);
        assert_eq!(
            Membership::from_conf_state(&state.conf_state),
            voters(&[1, 2, 3])
        );
    }

    #[test]
    fn trimming_drops_old_entries_and_a_snapshot_too_old_to_continue_from() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let appended: Vec<Entry> = (2..=20).map(|i| entry(i, 2, &[0; 10])).collect();
        persist(&engine, &mut log, |l, b| l.append(&appended, b)).expect("append");
        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(2, 0, 20), b)
        });
        persist(&engine, &mut log, |l, b| {
            l.compact(5, 20, b"state at 5".to_vec(), 2, b)
        })
        .expect("compact");
        assert_eq!(log.snapshot(0, 2).expect("served").get_metadata().index, 5);

        persist(&engine, &mut log, |l, b| l.trim(6, 20, 2, b)).expect("trim");
        assert_eq!(RaftLog::first_index(&log), 5, "entries through 4 are gone");
        assert_eq!(
            log.snapshot(0, 2)
                .expect("still served")
                .get_metadata()
                .index,
            5,
            "a snapshot at or past the compaction point still brings a follower to the log"
        );

        persist(&engine, &mut log, |l, b| l.trim(20, 20, 2, b)).expect("trim");
        assert_eq!(RaftLog::first_index(&log), 19);
        assert_eq!(
            log.snapshot(0, 2),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            )),
            "a follower restored from the old snapshot could not continue from the log"
        );
        assert!(log.take_snapshot_wanted(), "so a new one is asked for");
        assert!(matches!(
            persist(&engine, &mut log, |l, b| l.trim(21, 20, 2, b)),
            Err(LogError::OutOfRange { .. })
        ));

        let reloaded = RaftLog::load(&engine).expect("load");
        assert_eq!(RaftLog::first_index(&reloaded), 19, "the trim is durable");
        assert_eq!(RaftLog::last_index(&reloaded), 20);
    }

    #[test]
    fn snapshot_is_served_only_when_recent_enough_and_naming_the_follower() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let unavailable = || raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable);
        assert_eq!(log.snapshot(0, 2), Err(unavailable()));
        assert!(
            log.take_snapshot_wanted(),
            "a missing snapshot is asked for"
        );
        assert!(!log.take_snapshot_wanted(), "taking the request clears it");

        persist(&engine, &mut log, |l, b| {
            l.compact(1, 1, b"state".to_vec(), 0, b)
        })
        .expect("compact");
        let served = log.snapshot(1, 2).expect("served");
        assert_eq!(served.get_metadata().index, 1);
        assert_eq!(&served.data[..], b"state");
        assert!(!log.is_snapshot_wanted());
        assert_eq!(log.snapshot(2, 2), Err(unavailable()), "too old");
        assert_eq!(
            log.snapshot(0, 9),
            Err(unavailable()),
            "does not name node 9"
        );
        assert!(log.take_snapshot_wanted());
    }

    #[test]
    fn a_received_snapshot_replaces_the_log_and_survives_a_restart() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = RaftLog::new();
        let stale: Vec<Entry> = (1..=3).map(|i| entry(i, 1, b"stale")).collect();
        persist(&engine, &mut log, |l, b| l.append(&stale, b)).expect("append");
        let mut snapshot = Snapshot {
            data: b"state machine".to_vec().into(),
            ..Snapshot::default()
        };
        snapshot.mut_metadata().index = 10;
        snapshot.mut_metadata().term = 4;
        snapshot
            .mut_metadata()
            .set_conf_state(voters(&[1, 2, 3]).to_conf_state());
        persist(&engine, &mut log, |l, b| l.apply_snapshot(snapshot, b)).expect("apply");

        assert_eq!(log.snapshot_index(), Some(10), "kept to serve others");
        let loaded = RaftLog::load(&engine).expect("load");
        assert_same_log(&loaded, &log);
        assert_eq!(loaded.first_index(), 11);
        assert_eq!(loaded.last_index(), 10);
        assert_eq!(loaded.hard_state().commit, 10);
        assert_eq!(loaded.hard_state().term, 4);
        assert_eq!(loaded.membership(), voters(&[1, 2, 3]));
        assert_eq!(loaded.snapshot_index(), None, "the blob is not persisted");
    }

    #[test]
    fn compaction_keeps_entries_for_slow_followers_and_the_membership_in_force() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let appended: Vec<Entry> = (2..=20).map(|i| entry(i, 1, b"x")).collect();
        persist(&engine, &mut log, |l, b| l.append(&appended, b)).expect("append");
        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(1, 0, 20), b)
        });
        let with_4 = voters(&[1, 2, 3, 4]);
        let with_5 = voters(&[1, 2, 3, 4, 5]);
        persist(&engine, &mut log, |l, b| {
            l.record_membership(5, with_4.clone(), b)
        });
        persist(&engine, &mut log, |l, b| {
            l.record_membership(12, with_5.clone(), b)
        });

        let out_of_range = persist(&engine, &mut log, |l, b| l.compact(21, 20, vec![], 0, b));
        assert!(matches!(out_of_range, Err(LogError::OutOfRange { .. })));
        persist(&engine, &mut log, |l, b| {
            l.compact(18, 20, b"sm".to_vec(), 8, b)
        })
        .expect("compact");
        assert_eq!(log.compaction().index, 10, "keeps 8 entries below 18");
        assert_eq!(log.snapshot_index(), Some(18));

        let loaded = RaftLog::load(&engine).expect("load");
        assert_same_log(&loaded, &log);
        assert_eq!(
            loaded.memberships.len(),
            2,
            "the record at 1 is no longer needed"
        );
        assert_eq!(loaded.membership_at(10), with_4);
        assert_eq!(loaded.membership_at(12), with_5);
        let snapshot = log.snapshot(0, 5).expect("snapshot");
        assert_eq!(
            Membership::from_conf_state(snapshot.get_metadata().get_conf_state()),
            with_5,
            "the snapshot carries the membership as of its index"
        );
    }

    #[test]
    fn rewinding_to_the_applied_index_forgets_later_membership_records() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let appended: Vec<Entry> = (2..=6).map(|i| entry(i, 1, b"x")).collect();
        persist(&engine, &mut log, |l, b| l.append(&appended, b)).expect("append");
        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(1, 0, 5), b)
        });
        persist(&engine, &mut log, |l, b| {
            l.record_membership(4, voters(&[1, 2]), b)
        });
        assert!(matches!(
            log.rewind_membership_to(6),
            Err(LogError::OutOfRange { .. })
        ));
        assert!(matches!(
            log.rewind_membership_to(0),
            Err(LogError::OutOfRange { .. })
        ));
        log.rewind_membership_to(3).expect("rewind");
        assert_eq!(log.membership(), voters(&[1, 2, 3]));
    }

    fn corrupt_load(engine: &MemoryEngine) -> String {
        match RaftLog::load(engine) {
            Err(LogError::Corrupt { reason, .. }) => reason,
            other => panic!("expected a corrupt log, got {other:?}"),
        }
    }

    #[test]
    fn load_refuses_states_raft_rs_would_panic_on() {
        let engine = MemoryEngine::new(Limits::default());
        let mut log = bootstrapped(&engine);
        let appended: Vec<Entry> = (2..=4).map(|i| entry(i, 1, b"x")).collect();
        persist(&engine, &mut log, |l, b| l.append(&appended, b)).expect("append");

        let mut gap = WriteBatch::new();
        gap.delete(LOG_KEYSPACE, 3u64.to_be_bytes());
        engine.write(&gap).expect("write");
        corrupt_load(&engine);

        let mut garbage = WriteBatch::new();
        garbage.put(LOG_KEYSPACE, 3u64.to_be_bytes(), b"\x01garbage".to_vec());
        engine.write(&garbage).expect("write");
        corrupt_load(&engine);

        let mut repaired = WriteBatch::new();
        repaired.put(
            LOG_KEYSPACE,
            3u64.to_be_bytes(),
            encode_entry(&entry(3, 1, b"x")),
        );
        engine.write(&repaired).expect("write");
        RaftLog::load(&engine).expect("a repaired log loads");

        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(1, 0, 9), b)
        });
        assert!(corrupt_load(&engine).contains("commit 9"));
        persist(&engine, &mut log, |l, b| {
            l.set_hard_state(&hard_state(1, 0, 4), b)
        });

        let both = Membership {
            learners: vec![3],
            ..voters(&[1, 2, 3])
        };
        persist(&engine, &mut log, |l, b| l.record_membership(2, both, b));
        corrupt_load(&engine);
    }

    #[test]
    fn memberships_raft_rs_can_restore_pass_and_others_do_not() {
        let joint = Membership {
            voters: vec![1, 2, 4],
            voters_outgoing: vec![1, 2, 3],
            learners_next: vec![3],
            auto_leave: true,
            ..Membership::default()
        };
        for ok in [Membership::default(), voters(&[1]), joint] {
            assert_eq!(ok.check_restorable(), Ok(()), "{ok:?}");
        }
        let voter_and_learner = Membership {
            learners: vec![2],
            ..voters(&[1, 2])
        };
        let learner_next_not_outgoing = Membership {
            learners_next: vec![5],
            voters_outgoing: vec![1],
            ..voters(&[1])
        };
        for bad in [voter_and_learner, learner_next_not_outgoing] {
            assert!(bad.check_restorable().is_err(), "{bad:?}");
        }
    }

    fn arbitrary_membership() -> impl Strategy<Value = Membership> {
        let ids = || proptest::collection::vec(0u64..6, 0..4);
        (ids(), ids(), ids(), ids(), any::<bool>()).prop_map(|(v, l, o, n, auto_leave)| {
            let sorted = |mut ids: Vec<u64>| {
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            Membership {
                voters: sorted(v),
                learners: sorted(l),
                voters_outgoing: sorted(o),
                learners_next: sorted(n),
                auto_leave,
            }
        })
    }

    proptest! {
        #[test]
        fn load_never_panics_on_arbitrary_records(
            records in proptest::collection::vec(
                (0u8..4, 0u64..6, proptest::collection::vec(any::<u8>(), 0..24)),
                0..12,
            ),
            membership in arbitrary_membership(),
        ) {
            let engine = MemoryEngine::new(Limits::default());
            bootstrapped(&engine);
            let mut batch = WriteBatch::new();
            for (slot, index, bytes) in records {
                let (keyspace, key) = match slot {
                    0 => (LOG_KEYSPACE, index.to_be_bytes().to_vec()),
                    1 => (STATE_KEYSPACE, HARD_STATE_KEY.to_vec()),
                    2 => (STATE_KEYSPACE, COMPACTION_KEY.to_vec()),
                    _ => (STATE_KEYSPACE, membership_key(index)),
                };
                batch.put(keyspace, key, bytes);
            }
            batch.put(STATE_KEYSPACE, membership_key(1), codec::encode(&membership));
            engine.write(&batch).expect("write");
            // Whatever was stored, loading answers; a loaded log satisfies raft-rs.
            if let Ok(log) = RaftLog::load(&engine) {
                prop_assert!(log.hard_state.commit <= log.last_index());
                prop_assert!(log.membership().check_restorable().is_ok());
            }
        }

        #[test]
        fn checking_a_membership_never_panics(membership in arbitrary_membership()) {
            let overlapping = membership.voters.iter().any(|id| membership.learners.contains(id));
            let verdict = membership.check_restorable();
            if overlapping {
                prop_assert!(verdict.is_err(), "a voter cannot also be a learner");
            }
        }
    }
}
