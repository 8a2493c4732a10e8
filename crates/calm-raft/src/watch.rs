//! The watch hub: one node's watchers and what each must be sent, as a
//! sans-IO state machine over the [`Mvcc`] store.
//!
//! # Model
//!
//! A watcher wants every change to a key range from its start revision on,
//! in revision order, with no gap and no duplicate (etcd's watch guarantees).
//! Each watcher is in one of three states, as in etcd's `watchableStore`:
//!
//! * **synced**: it has been sent everything up to the newest revision, and
//!   [`WatchHub::on_applied`] routes each new revision's events to it;
//! * **unsynced**: it is behind, and [`WatchHub::catch_up`] reads its events
//!   from the store's history ([`Mvcc::changes`]), a bounded number of
//!   revisions per call, until it has caught up and becomes synced;
//! * **paused**: its driver could not deliver a batch (the stream to the
//!   client is full); it gets nothing until [`WatchHub::resume`], then catches
//!   up from the first revision it was not sent.
//!
//! A watcher whose next revision has been compacted away is cancelled with a
//! batch carrying the compact revision, as etcd cancels it.
//!
//! # Driver contract
//!
//! * **Inputs**: [`WatchHub::create`] and [`WatchHub::cancel`] from clients;
//!   [`WatchHub::on_applied`] after **every** write the store applies, with
//!   its revision and [`Applied::events`](crate::mvcc::Applied::events),
//!   before any other call that passes the store; [`WatchHub::pause`] and
//!   [`WatchHub::resume`] from the driver's flow control.
//! * **Outputs**: [`WatchBatch`]es, per watcher, from `create`, `on_applied`
//!   and `catch_up`. The driver sends each watcher's batches in the order the
//!   hub produced them. If it cannot send one, it must drop that batch and
//!   every later one it holds for the watcher, and call
//!   [`WatchHub::pause`] with the batch's [`WatchBatch::first_revision`]: the
//!   hub will produce them again. Call [`WatchHub::catch_up`] whenever some
//!   watcher may be unsynced (after `create`, `resume`, or on a timer), and
//!   [`WatchHub::progress_due`] on a timer for progress notifications.
//!
//! The events of one revision always travel in one batch; the gRPC layer
//! may still fragment a large batch, as etcd's does, into several
//! `WatchResponse`s.

use std::collections::BTreeMap;

use calm_proto::etcd::mvccpb::{Event, event::EventType};
use thiserror::Error;

use crate::mvcc::{KeyBounds, Mvcc};

#[cfg(test)]
mod tests;

/// A watcher's identity, unique within one hub (the gRPC layer maps its
/// per-stream watch ids onto these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(pub u64);

/// What a watcher watches: etcd's `WatchCreateRequest`, in plain fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// The first key. Empty means `"\0"`, the smallest key, as in etcd.
    pub key: Vec<u8>,
    /// The end of the range as in a Range request: empty for the key alone,
    /// `"\0"` for every key from `key` on, otherwise exclusive.
    pub range_end: Vec<u8>,
    /// The first revision to report; 0 means the next one. A revision above
    /// the current one waits for it.
    pub start_revision: i64,
    /// Send each event's previous key-value too.
    pub prev_kv: bool,
    /// Leave out put events (etcd's `NOPUT` filter).
    pub no_put: bool,
    /// Leave out delete events (etcd's `NODELETE` filter).
    pub no_delete: bool,
    /// Ask for progress notifications when nothing else is sent.
    pub progress_notify: bool,
}

/// One delivery to one watcher; the gRPC layer turns it into a
/// `WatchResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchBatch {
    /// The events, in revision order; every event of a revision in it is in
    /// it.
    pub events: Vec<Event>,
    /// With `canceled`, the compact revision that outran the watcher (etcd
    /// tells clients to restart from there); 0 otherwise.
    pub compact_revision: i64,
    /// The watcher is gone: this is its last batch.
    pub canceled: bool,
    /// The revision the watcher has now seen everything up to (the
    /// response header's revision).
    pub revision: i64,
}

impl WatchBatch {
    /// The revision of the first event, if any: what to pass to
    /// [`WatchHub::pause`] when this batch could not be delivered.
    pub fn first_revision(&self) -> Option<i64> {
        self.events
            .first()
            .and_then(|event| event.kv.as_ref())
            .map(|kv| kv.mod_revision)
    }
}

/// The hub's bounds and timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// Most watchers at once; more are refused with
    /// [`WatchError::TooManyWatchers`].
    pub watchers_max: usize,
    /// Most revisions (that hold events for it) one catch-up reads for one
    /// watcher.
    pub catch_up_revisions_max: usize,
    /// Most unsynced watchers one [`WatchHub::catch_up`] call serves (etcd's
    /// `maxWatchersPerSync`); the rest wait for the next call, in turn.
    pub catch_up_watchers_max: usize,
    /// Interval between progress notifications (etcd's
    /// `--experimental-watch-progress-notify-interval`).
    pub progress_interval_ms: u64,
}

impl Default for WatchConfig {
    /// etcd's defaults where etcd has one: 512 watchers per sync and a
    /// 10-minute progress interval; 100,000 watchers and 1,000 revisions per
    /// catch-up.
    fn default() -> Self {
        Self {
            watchers_max: 100_000,
            catch_up_revisions_max: 1_000,
            catch_up_watchers_max: 512,
            progress_interval_ms: 10 * 60 * 1000,
        }
    }
}

/// Why a watcher could not be created; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WatchError {
    /// `range_end` is set and not above `key`.
    #[error("watcher range is empty")]
    EmptyRange,
    /// The start revision is negative.
    #[error("negative start revision")]
    NegativeStartRevision,
    /// The hub already holds [`WatchConfig::watchers_max`] watchers.
    #[error("too many watchers (at most {watchers_max})")]
    TooManyWatchers {
        /// The bound.
        watchers_max: usize,
    },
}

impl WatchError {
    /// The `cancel_reason` etcd puts in the `WatchResponse` that refuses the
    /// watch (created and canceled at once).
    pub fn cancel_reason(&self) -> &'static str {
        match self {
            WatchError::EmptyRange => "mvcc: watcher range is empty",
            // etcd refuses a negative start revision as compacted.
            WatchError::NegativeStartRevision => "mvcc: required revision has been compacted",
            // Not an etcd string: etcd has no such bound.
            WatchError::TooManyWatchers { .. } => "etcdserver: too many watchers",
        }
    }
}

/// Where a watcher is with respect to the store's newest revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    Synced,
    Unsynced,
    Paused,
}

#[derive(Clone, Debug)]
struct Watcher {
    spec: WatchSpec,
    /// The first revision the watcher has not been sent.
    next_revision: i64,
    sync: SyncState,
    /// Whether events were sent since the last progress tick (which makes a
    /// progress notification redundant, as etcd elides it).
    sent_since_tick: bool,
}

impl Watcher {
    /// Whether the watcher's range holds `key`.
    fn watches(&self, key: &[u8]) -> bool {
        KeyBounds::new(&self.spec.key, &self.spec.range_end).contains(key)
    }

    /// `event` as this watcher is sent it, or `None` if its filters drop it.
    fn deliverable(&self, event: &Event) -> Option<Event> {
        let dropped = if event.r#type == EventType::Delete as i32 {
            self.spec.no_delete
        } else {
            self.spec.no_put
        };
        if dropped {
            return None;
        }
        let mut event = event.clone();
        if !self.spec.prev_kv {
            event.prev_kv = None;
        }
        Some(event)
    }
}

/// One node's watchers; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct WatchHub {
    config: WatchConfig,
    watchers: BTreeMap<WatchId, Watcher>,
    next_id: u64,
    /// Where the next [`WatchHub::catch_up`] resumes its round.
    catch_up_after: Option<WatchId>,
    /// When the next progress tick is due; set by the first
    /// [`WatchHub::progress_due`] call.
    next_progress_ms: Option<u64>,
}

impl WatchHub {
    /// An empty hub.
    pub fn new(config: WatchConfig) -> Self {
        Self {
            config,
            watchers: BTreeMap::new(),
            next_id: 1,
            catch_up_after: None,
            next_progress_ms: None,
        }
    }

    // ---- Inputs -------------------------------------------------------

    /// Adds a watcher. Returns its id and what it must be sent at once: for
    /// a start revision already compacted, a cancel batch carrying the
    /// compact revision (the watcher is then gone); for one in the retained
    /// past, its first catch-up batch (later ones come from
    /// [`WatchHub::catch_up`]).
    pub fn create(
        &mut self,
        mut spec: WatchSpec,
        mvcc: &Mvcc,
    ) -> Result<(WatchId, Vec<WatchBatch>), WatchError> {
        if spec.key.is_empty() {
            spec.key = vec![0];
        }
        let inverted = !matches!(spec.range_end.as_slice(), [] | [0]) && spec.key >= spec.range_end;
        if inverted {
            return Err(WatchError::EmptyRange);
        }
        if spec.start_revision < 0 {
            return Err(WatchError::NegativeStartRevision);
        }
        if self.watchers.len() >= self.config.watchers_max {
            return Err(WatchError::TooManyWatchers {
                watchers_max: self.config.watchers_max,
            });
        }
        let id = WatchId(self.next_id);
        self.next_id += 1;
        let current = mvcc.revision();
        let start = spec.start_revision;
        let (next_revision, sync) = if start == 0 || start > current {
            // etcd: a watch from now, or from the future, is synced at once.
            ((current + 1).max(start), SyncState::Synced)
        } else {
            (start, SyncState::Unsynced)
        };
        let mut watcher = Watcher {
            spec,
            next_revision,
            sync,
            sent_since_tick: false,
        };
        let batch = match sync {
            SyncState::Unsynced => {
                catch_up_one(&mut watcher, mvcc, self.config.catch_up_revisions_max)
            }
            _ => None,
        };
        let canceled = batch.as_ref().is_some_and(|batch| batch.canceled);
        if !canceled {
            self.watchers.insert(id, watcher);
        }
        Ok((id, batch.into_iter().collect()))
    }

    /// Removes a watcher; returns whether it existed.
    pub fn cancel(&mut self, id: WatchId) -> bool {
        self.watchers.remove(&id).is_some()
    }

    /// Routes the events of newly applied `revision` to the synced watchers
    /// they concern, filtered, with `prev_kv` only for watchers that asked.
    /// A synced watcher that missed a revision (the driver skipped a call)
    /// turns unsynced and catches up from the store instead of skipping it.
    pub fn on_applied(&mut self, revision: i64, events: &[Event]) -> Vec<(WatchId, WatchBatch)> {
        let mut batches = Vec::new();
        for (id, watcher) in &mut self.watchers {
            if watcher.sync != SyncState::Synced || watcher.next_revision > revision {
                continue;
            }
            if watcher.next_revision < revision {
                watcher.sync = SyncState::Unsynced;
                continue;
            }
            watcher.next_revision = revision + 1;
            let delivered: Vec<Event> = events
                .iter()
                .filter(|event| event.kv.as_ref().is_some_and(|kv| watcher.watches(&kv.key)))
                .filter_map(|event| watcher.deliverable(event))
                .collect();
            if !delivered.is_empty() {
                watcher.sent_since_tick = true;
                batches.push((*id, events_batch(delivered, revision)));
            }
        }
        batches
    }

    /// Sends the next stretch of history to up to
    /// [`WatchConfig::catch_up_watchers_max`] unsynced watchers, in turn. A
    /// watcher that reaches the store's revision becomes synced; one whose
    /// next revision was compacted away gets a cancel batch and is removed.
    pub fn catch_up(&mut self, mvcc: &Mvcc) -> Vec<(WatchId, WatchBatch)> {
        let unsynced: Vec<WatchId> = self.round_of_unsynced();
        let mut batches = Vec::new();
        for id in unsynced {
            let Some(watcher) = self.watchers.get_mut(&id) else {
                continue;
            };
            self.catch_up_after = Some(id);
            let Some(batch) = catch_up_one(watcher, mvcc, self.config.catch_up_revisions_max)
            else {
                continue;
            };
            if batch.canceled {
                self.watchers.remove(&id);
            }
            batches.push((id, batch));
        }
        batches
    }

    /// Marks a watcher whose driver could not deliver the batch starting at
    /// `undelivered_from` (see [`WatchBatch::first_revision`]): it gets
    /// nothing until [`WatchHub::resume`], then catches up from that
    /// revision (or from an earlier one it is still owed). Returns whether
    /// the watcher exists.
    pub fn pause(&mut self, id: WatchId, undelivered_from: i64) -> bool {
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return false;
        };
        watcher.sync = SyncState::Paused;
        watcher.next_revision = watcher.next_revision.min(undelivered_from.max(1));
        true
    }

    /// Lets a paused watcher catch up again (at the next
    /// [`WatchHub::catch_up`]). Returns whether it was paused.
    pub fn resume(&mut self, id: WatchId) -> bool {
        match self.watchers.get_mut(&id) {
            Some(watcher) if watcher.sync == SyncState::Paused => {
                watcher.sync = SyncState::Unsynced;
                true
            }
            _ => false,
        }
    }

    // ---- Outputs ------------------------------------------------------

    /// The watchers owed a progress notification at `now_ms`: on each tick of
    /// [`WatchConfig::progress_interval_ms`], every synced watcher that asked
    /// for them and was sent no events since the previous tick, as etcd's
    /// watch stream does. The first call starts the ticks.
    pub fn progress_due(&mut self, now_ms: u64) -> Vec<WatchId> {
        let interval_ms = self.config.progress_interval_ms;
        match self.next_progress_ms {
            Some(due_ms) if now_ms >= due_ms => {}
            Some(_) => return Vec::new(),
            None => {
                self.next_progress_ms = Some(now_ms.saturating_add(interval_ms));
                return Vec::new();
            }
        }
        self.next_progress_ms = Some(now_ms.saturating_add(interval_ms));
        let mut due = Vec::new();
        for (id, watcher) in &mut self.watchers {
            let quiet = !std::mem::take(&mut watcher.sent_since_tick);
            if quiet && watcher.spec.progress_notify && watcher.sync == SyncState::Synced {
                due.push(*id);
            }
        }
        due
    }

    // ---- Getters ------------------------------------------------------

    /// How many watchers the hub holds.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// Whether the hub holds no watcher.
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Whether watcher `id` exists and is synced.
    pub fn is_synced(&self, id: WatchId) -> bool {
        self.watchers
            .get(&id)
            .is_some_and(|watcher| watcher.sync == SyncState::Synced)
    }

    /// The first revision watcher `id` has not been sent, if it exists.
    pub fn next_revision(&self, id: WatchId) -> Option<i64> {
        self.watchers.get(&id).map(|watcher| watcher.next_revision)
    }

    /// The highest revision every watcher has been sent everything up to:
    /// what a progress notification may promise (etcd sends one only when
    /// no watcher is behind; this lowers it instead). `None` when every
    /// watcher is synced.
    pub fn progress_floor(&self) -> Option<i64> {
        self.watchers
            .values()
            .filter(|watcher| watcher.sync != SyncState::Synced)
            .map(|watcher| watcher.next_revision - 1)
            .min()
    }

    /// Up to `catch_up_watchers_max` unsynced watchers, starting after the
    /// last one served, so every behind watcher gets its turn.
    fn round_of_unsynced(&self) -> Vec<WatchId> {
        let unsynced = |(id, watcher): (&WatchId, &Watcher)| {
            (watcher.sync == SyncState::Unsynced).then_some(*id)
        };
        let after = self.catch_up_after.map_or(0, |id| id.0 + 1);
        let later = self.watchers.range(WatchId(after)..).filter_map(unsynced);
        let earlier = self.watchers.range(..WatchId(after)).filter_map(unsynced);
        later
            .chain(earlier)
            .take(self.config.catch_up_watchers_max)
            .collect()
    }
}

/// Reads the next stretch of `watcher`'s history from `mvcc` and advances
/// it: to synced if the stretch reaches the store's revision. Returns the
/// batch to send, if there is anything to send.
fn catch_up_one(watcher: &mut Watcher, mvcc: &Mvcc, revisions_max: usize) -> Option<WatchBatch> {
    // A bound of 0 would never make progress.
    let revisions_max = revisions_max.max(1);
    let spec = &watcher.spec;
    let events = match mvcc.changes(
        &spec.key,
        &spec.range_end,
        watcher.next_revision,
        revisions_max,
    ) {
        Ok(events) => events,
        Err(_) => {
            // Only a compacted start fails: etcd cancels the watcher and
            // names the compact revision so the client can restart there.
            return Some(WatchBatch {
                events: Vec::new(),
                compact_revision: mvcc.compact_revision(),
                canceled: true,
                revision: mvcc.revision(),
            });
        }
    };
    let mut revisions = events
        .iter()
        .filter_map(|event| event.kv.as_ref().map(|kv| kv.mod_revision))
        .collect::<Vec<_>>();
    revisions.dedup();
    match revisions.last() {
        Some(&last) if revisions.len() >= revisions_max => watcher.next_revision = last + 1,
        _ => {
            watcher.next_revision = watcher.next_revision.max(mvcc.revision() + 1);
            watcher.sync = SyncState::Synced;
        }
    }
    let delivered: Vec<Event> = events
        .iter()
        .filter_map(|event| watcher.deliverable(event))
        .collect();
    if delivered.is_empty() {
        return None;
    }
    watcher.sent_since_tick = true;
    Some(events_batch(delivered, watcher.next_revision - 1))
}

fn events_batch(events: Vec<Event>, revision: i64) -> WatchBatch {
    WatchBatch {
        events,
        compact_revision: 0,
        canceled: false,
        revision,
    }
}
