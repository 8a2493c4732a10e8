//! The lessor: etcd's leases as a sans-IO core. It owns the replicated lease table (ids, granted
//! TTLs, checkpointed remaining TTLs), the keys attached to each lease, and the leader's expiry
//! clock; it deletes no key itself (revoking hands the attached keys back to the caller).
//!
//! This is a port of etcd's `server/lease/lessor.go`. Two halves live side by side:
//!
//! * **Replicated state**, changed only by applying committed Raft commands, so it is identical
//!   on every replica: which leases exist, their granted TTL, their last checkpointed remaining
//!   TTL, and (in memory only) which keys are attached to which lease.
//! * **Leader state**, never replicated: when each lease expires, on the driver's monotonic
//!   `now_ms`. Only the leader (etcd's "primary lessor") keeps expiry times, answers keep-alives
//!   and reports expired leases; a follower never expires anything, because its clock and the
//!   leader's disagree and two nodes revoking on their own clocks would race.
//!
//! # Driver contract
//!
//! Replicated inputs, called while applying committed commands, each writing into the batch the
//! driver persists with the rest of that entry's changes:
//! [`grant`](Lessor::grant), [`revoke`](Lessor::revoke) (then delete the keys it returns in the
//! same batch and revision, as etcd does), [`checkpoint`](Lessor::checkpoint), and the in-memory
//! [`attach`](Lessor::attach) / [`detach`](Lessor::detach) the MVCC store drives as keys gain or
//! lose a lease.
//!
//! Start-up: [`Lessor::load`] from storage, **then** re-attach every key the MVCC store holds
//! with a lease (attachments are not persisted: the keys themselves record their lease), exactly
//! as etcd recovers the lessor before the KV store. A Raft snapshot travels as
//! [`Lessor::snapshot`] bytes and is installed with [`Lessor::restore`], again followed by
//! re-attaching the restored MVCC keys.
//!
//! Leader inputs and outputs:
//!
//! 1. [`promote`](Lessor::promote) once this node is leader **and** has applied every entry of
//!    earlier terms (etcd waits for that too, so no lease a previous leader revoked is
//!    resurrected), passing the election timeout as `extend_ms`: every lease then gets its TTL
//!    afresh plus that grace, since clients could not reach a leader during the election.
//! 2. On every tick, [`expired`](Lessor::expired)`(now_ms)` and propose a `LeaseRevoke` for each
//!    id returned. The lease stays "revoking" until the revoke is applied; if the proposal is
//!    lost, the id comes back after [`LessorConfig::retry_after_ms`].
//! 3. If checkpoints are enabled, also propose [`due_checkpoints`](Lessor::due_checkpoints) as one
//!    `LeaseCheckpointRequest`.
//! 4. Keep-alives call [`renew`](Lessor::renew); `LeaseTimeToLive` calls
//!    [`remaining_ttl`](Lessor::remaining_ttl). On a follower both answer
//!    [`LeaseError::NotLeader`], and the driver forwards to the leader as etcd does.
//! 5. [`demote`](Lessor::demote) as soon as this node stops being leader: every expiry is
//!    forgotten, and the next leader starts its own clock.
//!
//! Nothing here reads a clock: every leader method takes `now_ms`, and a `now_ms` smaller than
//! one seen before is treated as the latest seen, so a misbehaving clock cannot move expiries
//! backwards.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use calm_storage::{KeyRange, Keyspace, Order, ReadView, StorageError, WriteBatch};
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where leases are persisted: the key is the lease id (8 bytes, big-endian, so ids sort
/// numerically), the value the encoded granted and checkpointed TTLs.
pub const LEASES: Keyspace = Keyspace::new("lease_leases");

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`, about 285 years).
pub const MAX_TTL_SECONDS: i64 = 9_000_000_000;

/// How many persisted leases [`Lessor::load`] reads per scan: well under any engine's scan bound.
const LOAD_PAGE_ENTRIES: usize = 1024;

/// The length of the sliding window the revoke rate is counted over.
const RATE_WINDOW_MS: u64 = 1000;

/// gRPC status codes (`tonic::Code` as `i32`); written out so this core needs no tonic.
const CODE_NOT_FOUND: i32 = 5;
const CODE_FAILED_PRECONDITION: i32 = 9;
const CODE_OUT_OF_RANGE: i32 = 11;

/// Why a lease operation was refused. No variant changes any state: the lessor and the batch
/// are exactly as they were before the call.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LeaseError {
    /// No lease has this id. Also the answer for an id of zero or below (no lease can have one;
    /// etcd answers a grant of id 0 this way) and for renewing a lease that has already expired
    /// and is being revoked (etcd waits for that revoke and then answers this).
    #[error("lease {id} not found")]
    LeaseNotFound {
        /// The id asked for.
        id: i64,
    },
    /// A lease with this id already exists.
    #[error("lease {id} already exists")]
    LeaseExists {
        /// The id asked for.
        id: i64,
    },
    /// The TTL asked for is above [`MAX_TTL_SECONDS`].
    #[error("lease TTL of {ttl_seconds} s is above the maximum of {MAX_TTL_SECONDS} s")]
    TtlTooLarge {
        /// The TTL asked for, in seconds.
        ttl_seconds: i64,
    },
    /// Only the leader keeps lease expiries; the caller should forward to it.
    #[error("not the leader: only the leader renews leases and knows their remaining TTL")]
    NotLeader,
}

impl LeaseError {
    /// The gRPC status code etcd answers with (`tonic::Code` as its number).
    pub fn code(&self) -> i32 {
        match self {
            LeaseError::LeaseNotFound { .. } => CODE_NOT_FOUND,
            LeaseError::LeaseExists { .. } | LeaseError::NotLeader => CODE_FAILED_PRECONDITION,
            LeaseError::TtlTooLarge { .. } => CODE_OUT_OF_RANGE,
        }
    }

    /// etcd's exact status message (`api/v3rpc/rpctypes/error.go`), which clients match on.
    pub fn etcd_message(&self) -> &'static str {
        match self {
            LeaseError::LeaseNotFound { .. } => "etcdserver: requested lease not found",
            LeaseError::LeaseExists { .. } => "etcdserver: lease already exists",
            LeaseError::TtlTooLarge { .. } => "etcdserver: too large lease TTL",
            LeaseError::NotLeader => "etcdserver: not leader",
        }
    }
}

/// The lessor's bounds and timings. Every replica must use the same `min_ttl_seconds`, since it
/// changes the replicated TTL a grant records; the other fields only shape the leader's pacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LessorConfig {
    /// Shorter TTLs (including zero and negative ones) are raised to this. etcd derives it from
    /// the election timeout so that a lease outlives a leader election: see
    /// [`for_election_timeout`](Self::for_election_timeout).
    pub min_ttl_seconds: i64,
    /// Most leases [`Lessor::expired`] hands out in any window of 1000 ms of `now_ms`, so a mass
    /// expiry cannot flood the Raft log (etcd's `leaseRevokeRate`, 1000).
    pub revoke_per_second: usize,
    /// How long a lease handed out for revocation stays "revoking" before it is handed out
    /// again, in case the revoke proposal was lost (etcd uses its request timeout,
    /// 5 s + 2 × election timeout).
    pub retry_after_ms: u64,
    /// How often the leader checkpoints the remaining TTL of a lease longer than this, so a
    /// leader change does not restart its full TTL; `None` disables checkpoints (etcd's default
    /// is 5 minutes, behind its `LeaseCheckpoint` feature gate).
    pub checkpoint_interval_ms: Option<u64>,
    /// Most checkpoints one [`Lessor::due_checkpoints`] call returns, i.e. per
    /// `LeaseCheckpointRequest` (etcd's `maxLeaseCheckpointBatchSize`, 1000).
    pub checkpoint_batch_max: usize,
}

impl Default for LessorConfig {
    /// etcd's values for its default 1000 ms election timeout: a minimum TTL of 2 s
    /// (⌈1.5 × 1 s⌉), 1000 revokes per second, a 7 s retry, checkpoints every 5 minutes.
    fn default() -> Self {
        Self::for_election_timeout(1000)
    }
}

impl LessorConfig {
    /// etcd's settings for a cluster whose election timeout is `election_timeout_ms`: the
    /// minimum TTL is ⌈1.5 × election timeout⌉ in whole seconds (at least 1), so a lease
    /// survives a leader election, and revokes are retried after 5 s + 2 × election timeout.
    pub fn for_election_timeout(election_timeout_ms: u64) -> Self {
        let min_ttl_seconds = election_timeout_ms.saturating_mul(3).div_ceil(2000).max(1);
        Self {
            min_ttl_seconds: i64::try_from(min_ttl_seconds).unwrap_or(MAX_TTL_SECONDS),
            revoke_per_second: 1000,
            retry_after_ms: 5000_u64.saturating_add(election_timeout_ms.saturating_mul(2)),
            checkpoint_interval_ms: Some(5 * 60 * 1000),
            checkpoint_batch_max: 1000,
        }
    }

    /// Checks every field. An invalid config never makes the lessor panic, but it can stall it
    /// (a zero revoke rate never expires anything), so drivers validate before starting.
    pub fn validate(&self) -> Result<(), LessorConfigError> {
        if !(1..=MAX_TTL_SECONDS).contains(&self.min_ttl_seconds) {
            return Err(LessorConfigError::MinTtlOutOfRange {
                min_ttl_seconds: self.min_ttl_seconds,
            });
        }
        if self.revoke_per_second == 0 {
            return Err(LessorConfigError::ZeroRevokeRate);
        }
        if self.retry_after_ms == 0 {
            return Err(LessorConfigError::ZeroRetry);
        }
        if let Some(interval_ms) = self.checkpoint_interval_ms {
            // Checkpoints record whole seconds; a finer interval would only repeat itself.
            if interval_ms < 1000 {
                return Err(LessorConfigError::CheckpointIntervalTooShort { interval_ms });
            }
        }
        if self.checkpoint_batch_max == 0 {
            return Err(LessorConfigError::ZeroCheckpointBatch);
        }
        Ok(())
    }
}

/// Why a [`LessorConfig`] is invalid.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LessorConfigError {
    /// `min_ttl_seconds` must lie in 1..=[`MAX_TTL_SECONDS`].
    #[error("min_ttl_seconds of {min_ttl_seconds} is outside 1..={MAX_TTL_SECONDS}")]
    MinTtlOutOfRange {
        /// The configured value.
        min_ttl_seconds: i64,
    },
    /// `revoke_per_second` is zero, so no lease would ever be revoked.
    #[error("revoke_per_second must be at least 1")]
    ZeroRevokeRate,
    /// `retry_after_ms` is zero, so a revoking lease would be handed out on every call.
    #[error("retry_after_ms must be at least 1")]
    ZeroRetry,
    /// `checkpoint_interval_ms` is under one second.
    #[error("checkpoint_interval_ms of {interval_ms} is under 1000")]
    CheckpointIntervalTooShort {
        /// The configured value.
        interval_ms: u64,
    },
    /// `checkpoint_batch_max` is zero, so no checkpoint would ever be proposed.
    #[error("checkpoint_batch_max must be at least 1")]
    ZeroCheckpointBatch,
}

/// Why [`Lessor::load`] or [`Lessor::restore`] failed. Neither changes anything on failure:
/// `load` only reads, and `restore` writes into its batch only once the whole snapshot checked.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LessorLoadError {
    /// Reading the persisted leases failed.
    #[error("reading persisted leases: {0}")]
    Storage(#[from] StorageError),
    /// A key in [`LEASES`] is not an 8-byte lease id.
    #[error("a persisted lease key has {key_bytes} bytes, not 8")]
    BadKey {
        /// Length of the offending key.
        key_bytes: usize,
    },
    /// A persisted lease or a snapshot did not decode.
    #[error("decoding leases: {0}")]
    Decode(#[from] DecodeError),
    /// A lease decoded but breaks an invariant (see `reason`).
    #[error("lease {id}: {reason}")]
    Invalid {
        /// The lease's id.
        id: i64,
        /// The invariant it breaks.
        reason: &'static str,
    },
}

/// etcd's lessor as a sans-IO state machine; see the [module docs](self) for the driver
/// contract.
#[derive(Clone, Debug)]
pub struct Lessor {
    config: LessorConfig,
    /// The replicated lease table, ordered so iteration (snapshots, promotion) is deterministic.
    leases: BTreeMap<i64, Lease>,
    /// Which lease each attached key belongs to (etcd's `itemMap`): a key has at most one.
    lease_of_key: BTreeMap<Vec<u8>, i64>,
    /// `Some` exactly while this node is the leader ("primary lessor").
    leadership: Option<Leadership>,
}

impl Lessor {
    /// An empty lessor, a follower until [`promote`](Self::promote)d.
    pub fn new(config: LessorConfig) -> Self {
        Self {
            config,
            leases: BTreeMap::new(),
            lease_of_key: BTreeMap::new(),
            leadership: None,
        }
    }

    /// Rebuilds the lessor from the leases persisted in [`LEASES`], as a follower with no key
    /// attached (re-attach them from the MVCC store next). TTLs below the configured minimum
    /// are raised to it, as etcd does on recovery.
    pub fn load(config: LessorConfig, view: &impl ReadView) -> Result<Self, LessorLoadError> {
        let mut lessor = Self::new(config);
        let mut start = Vec::new();
        loop {
            let range = KeyRange::starting_at(start);
            let page = view.scan(LEASES, &range, Order::Ascending, LOAD_PAGE_ENTRIES)?;
            for (key, value) in &page {
                let id = id_from_key(key)?;
                let persisted: PersistedLease = codec::decode(value)?;
                lessor.insert_recovered(id, persisted)?;
            }
            match page.last() {
                // The next page starts just after the last key read.
                Some((last, _)) if page.len() == LOAD_PAGE_ENTRIES => {
                    start = [last.as_slice(), &[0]].concat();
                }
                _ => return Ok(lessor),
            }
        }
    }

    /// The replicated lease table as bytes for a Raft snapshot: deterministic, so every replica
    /// at the same applied index produces the same bytes. Attachments and leader state are not
    /// included (the MVCC snapshot carries the keys' leases).
    pub fn snapshot(&self) -> Vec<u8> {
        let leases = self
            .leases
            .iter()
            .map(|(&id, lease)| (id, lease.persisted()))
            .collect();
        codec::encode(&SnapshotBody { leases })
    }

    /// A follower lessor holding exactly the leases of `snapshot`, and the writes into `batch`
    /// that replace every persisted lease with them. The batch is touched only if the whole
    /// snapshot is valid.
    ///
    /// The batch holds one operation per lease plus one; a driver whose storage bounds batches
    /// below that must split the install itself.
    pub fn restore(
        config: LessorConfig,
        snapshot: &[u8],
        batch: &mut WriteBatch,
    ) -> Result<Self, LessorLoadError> {
        let body: SnapshotBody = codec::decode(snapshot)?;
        let mut lessor = Self::new(config);
        for (id, persisted) in body.leases {
            lessor.insert_recovered(id, persisted)?;
        }
        batch.delete_range(LEASES, KeyRange::all());
        for (&id, lease) in &lessor.leases {
            persist(batch, id, lease);
        }
        Ok(lessor)
    }

    // ---- Replicated inputs: called only while applying committed commands. ----

    /// Grants lease `id` with a TTL of `ttl_seconds` (raised to the minimum TTL) and persists
    /// it into `batch`. Returns the id and the TTL actually granted.
    ///
    /// On the leader the lease's clock starts at the next leader call that passes `now_ms`
    /// (the next tick at the latest), so it never expires before its full TTL has passed.
    pub fn grant(
        &mut self,
        id: i64,
        ttl_seconds: i64,
        batch: &mut WriteBatch,
    ) -> Result<(i64, i64), LeaseError> {
        // Checked in etcd's order, so a request breaking several rules gets etcd's answer.
        if id <= 0 {
            return Err(LeaseError::LeaseNotFound { id });
        }
        if ttl_seconds > MAX_TTL_SECONDS {
            return Err(LeaseError::TtlTooLarge { ttl_seconds });
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::LeaseExists { id });
        }
        let lease = Lease::new(ttl_seconds.max(self.config.min_ttl_seconds));
        persist(batch, id, &lease);
        let granted_ttl_seconds = lease.ttl_seconds;
        self.leases.insert(id, lease);
        if let Some(leadership) = &mut self.leadership {
            leadership.unclocked.insert(id);
        }
        Ok((id, granted_ttl_seconds))
    }

    /// Revokes lease `id`: removes it (from `batch` too) and returns its attached keys, sorted,
    /// which the caller must delete in the same batch. Sorted because etcd deletes them in key
    /// order so every replica's backend hashes alike.
    pub fn revoke(&mut self, id: i64, batch: &mut WriteBatch) -> Result<Vec<Vec<u8>>, LeaseError> {
        let lease = self
            .leases
            .remove(&id)
            .ok_or(LeaseError::LeaseNotFound { id })?;
        for key in &lease.keys {
            self.lease_of_key.remove(key);
        }
        batch.delete(LEASES, lease_key(id));
        if let Some(leadership) = &mut self.leadership {
            leadership.forget(id);
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// Applies a committed checkpoint: lease `id` has `remaining_ttl_seconds` left, which the
    /// next leader uses instead of the full TTL (0 clears it, as a renewal does). Persisted into
    /// `batch`. A checkpoint for a lease revoked meanwhile is ignored, as in etcd.
    pub fn checkpoint(&mut self, id: i64, remaining_ttl_seconds: i64, batch: &mut WriteBatch) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.remaining_ttl_seconds = remaining_ttl_seconds.clamp(0, MAX_TTL_SECONDS);
            persist(batch, id, lease);
        }
    }

    /// Attaches `key` to lease `id`, so revoking the lease returns it. A key belongs to at most
    /// one lease: attaching it elsewhere moves it. In memory only (see the module docs).
    pub fn attach(&mut self, id: i64, key: &[u8]) -> Result<(), LeaseError> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(LeaseError::LeaseNotFound { id })?;
        lease.keys.insert(key.to_vec());
        let previous = self.lease_of_key.insert(key.to_vec(), id);
        if let Some(previous) = previous.filter(|&previous| previous != id) {
            // The attachment map said the key was elsewhere; keep both views in step.
            if let Some(old) = self.leases.get_mut(&previous) {
                old.keys.remove(key);
            }
        }
        Ok(())
    }

    /// Detaches `key` from lease `id` (the key was deleted or now carries another lease). A key
    /// not attached to `id` is left alone; an unknown lease is an error, as in etcd.
    pub fn detach(&mut self, id: i64, key: &[u8]) -> Result<(), LeaseError> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(LeaseError::LeaseNotFound { id })?;
        if lease.keys.remove(key) {
            self.lease_of_key.remove(key);
        }
        Ok(())
    }

    // ---- Leader inputs: this node's own clock, never replicated. ----

    /// Makes this node the primary lessor at `now_ms`. Every lease expires after its remaining
    /// TTL (its last checkpoint, else its full TTL) plus `extend_ms` (etcd passes the election
    /// timeout). When there are at least `revoke_per_second` leases, piled-up expiries are
    /// spread as etcd does, so no second holds more than ¾ of the revoke rate and a mass expiry
    /// leaves room for the leases that expire on schedule.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        let mut expiry_ms: BTreeMap<i64, u64> = self
            .leases
            .iter()
            .map(|(&id, lease)| {
                let clock_ms = seconds_to_ms(lease.clock_seconds());
                (
                    id,
                    now_ms.saturating_add(clock_ms).saturating_add(extend_ms),
                )
            })
            .collect();
        spread_piled_up_expiries(&mut expiry_ms, self.config.revoke_per_second);
        let mut leadership = Leadership::new(now_ms);
        for (id, expiry) in expiry_ms {
            leadership.start_clock(id, expiry, &self.leases, &self.config);
        }
        self.leadership = Some(leadership);
    }

    /// Stops being the primary lessor: every expiry, pending revocation and scheduled checkpoint
    /// is forgotten. Call it as soon as this node stops being leader.
    pub fn demote(&mut self) {
        self.leadership = None;
    }

    /// Renews lease `id` at `now_ms` (a keep-alive): it now expires a full TTL from `now_ms`.
    /// Returns the TTL in seconds.
    ///
    /// Errors: [`LeaseError::NotLeader`] on a follower; [`LeaseError::LeaseNotFound`] for an
    /// unknown lease or one that has already expired (it is being revoked; etcd waits for the
    /// revoke and then answers the same).
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Result<i64, LeaseError> {
        let leadership = self.leadership.as_mut().ok_or(LeaseError::NotLeader)?;
        let lease = self
            .leases
            .get(&id)
            .ok_or(LeaseError::LeaseNotFound { id })?;
        let now_ms = leadership.observe(now_ms, &self.leases, &self.config);
        if leadership.has_expired(id, now_ms) {
            return Err(LeaseError::LeaseNotFound { id });
        }
        // A renewed lease runs its full TTL, so a checkpointed remainder is now stale and
        // must be cleared, or the next leader would cut the lease short. etcd proposes the
        // reset and waits for it before answering; a sans-IO core cannot wait, so the reset
        // leaves with the next `due_checkpoints` instead.
        let expiry = now_ms.saturating_add(seconds_to_ms(lease.ttl_seconds));
        leadership.set_expiry(id, expiry);
        if lease.remaining_ttl_seconds > 0 && self.config.checkpoint_interval_ms.is_some() {
            leadership.checkpoint_resets.insert(id);
        }
        Ok(lease.ttl_seconds)
    }

    // ---- Leader outputs. ----

    /// The leases whose revocation the leader should propose now, oldest expiry first. At most
    /// [`revoke_per_second`](LessorConfig::revoke_per_second) ids come out in any window of
    /// 1000 ms of `now_ms`; the rest wait for later calls. An id returned is "revoking" and is
    /// not returned again unless [`retry_after_ms`](LessorConfig::retry_after_ms) passes before
    /// [`revoke`](Self::revoke) removes it. A follower returns nothing.
    pub fn expired(&mut self, now_ms: u64) -> Vec<i64> {
        let Some(leadership) = &mut self.leadership else {
            return Vec::new();
        };
        let now_ms = leadership.observe(now_ms, &self.leases, &self.config);
        let budget = leadership
            .revoke_window
            .budget(now_ms, self.config.revoke_per_second);
        // At least 1 ms, or a lease handed out would be due again within this very call.
        let retry_at = now_ms.saturating_add(self.config.retry_after_ms.max(1));
        let mut due = Vec::new();
        while due.len() < budget {
            let Some(id) = leadership.revocations.pop_due(now_ms) else {
                break;
            };
            if leadership.has_expired(id, now_ms) {
                leadership.revocations.set(id, retry_at);
                due.push(id);
            } else if let Some(&expiry) = leadership.expiry_ms.get(&id) {
                // Not reachable while renewals refuse expired leases; kept so a queue entry
                // can never outlive the lease's real expiry.
                leadership.revocations.set(id, expiry);
            }
        }
        leadership.revoke_window.record(now_ms, due.len());
        due
    }

    /// The checkpoints the leader should propose now, as `(id, remaining TTL in seconds)`, at
    /// most [`checkpoint_batch_max`](LessorConfig::checkpoint_batch_max) of them: first the
    /// resets (remaining 0) of leases renewed since their last checkpoint, then each lease
    /// longer than the checkpoint interval whose interval has come round. Empty on a follower
    /// or with checkpoints disabled.
    pub fn due_checkpoints(&mut self, now_ms: u64) -> Vec<(i64, i64)> {
        let (Some(leadership), Some(interval_ms)) =
            (&mut self.leadership, self.config.checkpoint_interval_ms)
        else {
            return Vec::new();
        };
        let now_ms = leadership.observe(now_ms, &self.leases, &self.config);
        let batch_max = self.config.checkpoint_batch_max;
        let mut due = Vec::new();
        while due.len() < batch_max {
            let Some(id) = leadership.checkpoint_resets.pop_first() else {
                break;
            };
            due.push((id, 0));
        }
        while due.len() < batch_max {
            let Some(id) = leadership.checkpoints.pop_due(now_ms) else {
                break;
            };
            let (Some(lease), Some(&expiry)) =
                (self.leases.get(&id), leadership.expiry_ms.get(&id))
            else {
                continue;
            };
            if expiry <= now_ms {
                continue; // expired: revocation, not a checkpoint, is its fate
            }
            // Rounded up, as etcd does, so a checkpoint never shortens a lease.
            let remaining_seconds = seconds_from_ms((expiry - now_ms).div_ceil(1000));
            if seconds_to_ms(remaining_seconds) > interval_ms {
                let next_ms = now_ms.saturating_add(interval_ms);
                leadership.checkpoints.set(id, next_ms);
            }
            if remaining_seconds < lease.ttl_seconds {
                due.push((id, remaining_seconds));
            }
        }
        due
    }

    // ---- Getters. ----

    /// Whether lease `id` exists (granted and not yet revoked). Any replica can answer.
    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Every lease id, in ascending order (etcd's `LeaseLeases`). Any replica can answer.
    pub fn leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// The keys attached to lease `id`, sorted; empty for an unknown lease.
    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|lease| lease.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The lease `key` is attached to, if any (etcd's `GetLease`).
    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.lease_of_key.get(key).copied()
    }

    /// The TTL lease `id` was granted, in seconds (`LeaseTimeToLive`'s `grantedTTL`).
    pub fn granted_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|lease| lease.ttl_seconds)
    }

    /// The seconds lease `id` has left at `now_ms` (`LeaseTimeToLive`'s `TTL`), truncated as
    /// etcd truncates, and 0 once expired (etcd would show a negative count, which clients
    /// would confuse with its -1 for "not found").
    ///
    /// Errors: [`LeaseError::NotLeader`] on a follower (etcd forwards this request to the
    /// leader); [`LeaseError::LeaseNotFound`] for an unknown lease (etcd's API layer answers
    /// that with `TTL: -1`).
    pub fn remaining_ttl(&mut self, id: i64, now_ms: u64) -> Result<i64, LeaseError> {
        let leadership = self.leadership.as_mut().ok_or(LeaseError::NotLeader)?;
        if !self.leases.contains_key(&id) {
            return Err(LeaseError::LeaseNotFound { id });
        }
        let now_ms = leadership.observe(now_ms, &self.leases, &self.config);
        let expiry = leadership.expiry_ms.get(&id).copied().unwrap_or(now_ms);
        Ok(seconds_from_ms(expiry.saturating_sub(now_ms) / 1000))
    }

    /// Whether this node is the primary lessor (promoted and not demoted since).
    pub fn is_leader(&self) -> bool {
        self.leadership.is_some()
    }

    /// The configuration this lessor runs with.
    pub fn config(&self) -> &LessorConfig {
        &self.config
    }

    /// Adds a lease read back from storage or a snapshot, checking what a replica wrote.
    fn insert_recovered(
        &mut self,
        id: i64,
        persisted: PersistedLease,
    ) -> Result<(), LessorLoadError> {
        let invalid = |reason| LessorLoadError::Invalid { id, reason };
        if id <= 0 {
            return Err(invalid("the id is not positive"));
        }
        if !(0..=MAX_TTL_SECONDS).contains(&persisted.ttl_seconds) {
            return Err(invalid("the granted TTL is out of range"));
        }
        if !(0..=MAX_TTL_SECONDS).contains(&persisted.remaining_ttl_seconds) {
            return Err(invalid("the checkpointed TTL is out of range"));
        }
        let mut lease = Lease::new(persisted.ttl_seconds.max(self.config.min_ttl_seconds));
        lease.remaining_ttl_seconds = persisted.remaining_ttl_seconds;
        if self.leases.insert(id, lease).is_some() {
            return Err(invalid("the id appears twice"));
        }
        Ok(())
    }
}

/// One lease's replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lease {
    /// The granted TTL, in seconds.
    ttl_seconds: i64,
    /// The last checkpointed remaining TTL, in seconds; 0 means none (use the full TTL).
    remaining_ttl_seconds: i64,
    /// Attached keys (in memory only), sorted so revocation deletes them in a fixed order.
    keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    fn new(ttl_seconds: i64) -> Self {
        Self {
            ttl_seconds,
            remaining_ttl_seconds: 0,
            keys: BTreeSet::new(),
        }
    }

    /// The seconds a new leader's clock starts from (etcd's `getRemainingTTL`).
    fn clock_seconds(&self) -> i64 {
        if self.remaining_ttl_seconds > 0 {
            self.remaining_ttl_seconds
        } else {
            self.ttl_seconds
        }
    }

    fn persisted(&self) -> PersistedLease {
        PersistedLease {
            ttl_seconds: self.ttl_seconds,
            remaining_ttl_seconds: self.remaining_ttl_seconds,
        }
    }
}

/// A lease as stored in [`LEASES`] (etcd's `leasepb.Lease` without the id, which is the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PersistedLease {
    ttl_seconds: i64,
    remaining_ttl_seconds: i64,
}

/// The snapshot format: every lease, by ascending id. A struct so fields can be added later.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    leases: Vec<(i64, PersistedLease)>,
}

/// The leader's clock: expiries, the revocation and checkpoint queues, the revoke rate window.
#[derive(Clone, Debug)]
struct Leadership {
    /// The latest `now_ms` seen, so time never runs backwards.
    now_ms: u64,
    /// When each clocked lease expires.
    expiry_ms: BTreeMap<i64, u64>,
    /// Leases granted since the last call that carried a time; their clocks start at the next.
    unclocked: BTreeSet<i64>,
    /// When each lease is next due for revocation: its expiry, or the retry time once handed
    /// out (etcd's `LeaseExpiredNotifier` plays both roles the same way).
    revocations: TimerQueue,
    /// Revocations handed out in the last second, for the rate limit.
    revoke_window: RateWindow,
    /// When each long lease is next due for a checkpoint.
    checkpoints: TimerQueue,
    /// Leases renewed since their last checkpoint, whose checkpoint must be cleared.
    checkpoint_resets: BTreeSet<i64>,
}

impl Leadership {
    fn new(now_ms: u64) -> Self {
        Self {
            now_ms,
            expiry_ms: BTreeMap::new(),
            unclocked: BTreeSet::new(),
            revocations: TimerQueue::default(),
            revoke_window: RateWindow::default(),
            checkpoints: TimerQueue::default(),
            checkpoint_resets: BTreeSet::new(),
        }
    }

    /// Advances the clock to `now_ms` (never backwards) and starts the clocks of leases granted
    /// since the last call. Returns the clock's time.
    fn observe(
        &mut self,
        now_ms: u64,
        leases: &BTreeMap<i64, Lease>,
        config: &LessorConfig,
    ) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        for id in std::mem::take(&mut self.unclocked) {
            if let Some(lease) = leases.get(&id) {
                let expiry = self
                    .now_ms
                    .saturating_add(seconds_to_ms(lease.clock_seconds()));
                self.start_clock(id, expiry, leases, config);
            }
        }
        self.now_ms
    }

    /// Sets lease `id` to expire at `expiry_ms` and, if it is longer than the checkpoint
    /// interval, schedules its first checkpoint one interval from now.
    fn start_clock(
        &mut self,
        id: i64,
        expiry_ms: u64,
        leases: &BTreeMap<i64, Lease>,
        config: &LessorConfig,
    ) {
        self.set_expiry(id, expiry_ms);
        let (Some(lease), Some(interval_ms)) = (leases.get(&id), config.checkpoint_interval_ms)
        else {
            return;
        };
        if seconds_to_ms(lease.clock_seconds()) > interval_ms {
            self.checkpoints
                .set(id, self.now_ms.saturating_add(interval_ms));
        }
    }

    fn set_expiry(&mut self, id: i64, expiry_ms: u64) {
        self.expiry_ms.insert(id, expiry_ms);
        self.revocations.set(id, expiry_ms);
    }

    fn has_expired(&self, id: i64, now_ms: u64) -> bool {
        self.expiry_ms
            .get(&id)
            .is_some_and(|&expiry| expiry <= now_ms)
    }

    fn forget(&mut self, id: i64) {
        self.expiry_ms.remove(&id);
        self.unclocked.remove(&id);
        self.revocations.remove(id);
        self.checkpoints.remove(id);
        self.checkpoint_resets.remove(&id);
    }
}

/// Lease ids ordered by a due time, with updates and removals by id. Ties break by id, which
/// keeps the order deterministic.
#[derive(Clone, Debug, Default)]
struct TimerQueue {
    by_time: BTreeSet<(u64, i64)>,
    by_id: BTreeMap<i64, u64>,
}

impl TimerQueue {
    fn set(&mut self, id: i64, at_ms: u64) {
        if let Some(old) = self.by_id.insert(id, at_ms) {
            self.by_time.remove(&(old, id));
        }
        self.by_time.insert((at_ms, id));
    }

    fn remove(&mut self, id: i64) {
        if let Some(old) = self.by_id.remove(&id) {
            self.by_time.remove(&(old, id));
        }
    }

    /// Removes and returns the earliest id due at or before `now_ms`.
    fn pop_due(&mut self, now_ms: u64) -> Option<i64> {
        let &(at_ms, id) = self.by_time.first()?;
        if at_ms > now_ms {
            return None;
        }
        self.remove(id);
        Some(id)
    }
}

/// Counts what was handed out over the last [`RATE_WINDOW_MS`], so that any such window of
/// `now_ms` holds at most the rate. A sliding window rather than a token bucket: a bucket
/// refilled during a burst lets up to twice the rate through in one second.
#[derive(Clone, Debug, Default)]
struct RateWindow {
    /// `(now_ms, count)` of each call that handed something out, oldest first; at most one
    /// entry per call, and at most the rate of them, since each holds at least one.
    recent: VecDeque<(u64, usize)>,
    total: usize,
}

impl RateWindow {
    /// How many may be handed out at `now_ms` without exceeding `per_second` in the window.
    fn budget(&mut self, now_ms: u64, per_second: usize) -> usize {
        while let Some(&(at_ms, count)) = self.recent.front() {
            if at_ms.saturating_add(RATE_WINDOW_MS) > now_ms {
                break;
            }
            self.recent.pop_front();
            self.total -= count;
        }
        per_second.saturating_sub(self.total)
    }

    fn record(&mut self, now_ms: u64, count: usize) {
        if count > 0 {
            self.recent.push_back((now_ms, count));
            self.total += count;
        }
    }
}

/// etcd's `Promote` pile-up adjustment. Walking leases by expiry in windows of one second,
/// the first ¾ × rate of a window keep their expiry and each later one is pushed to
/// `base + n / (¾ × rate)` seconds (the n-th lease of the window), so piled-up leases expire
/// at ¾ of the revoke rate and never sooner than before. Windows and the `next_window`
/// arithmetic follow etcd's code exactly.
fn spread_piled_up_expiries(expiry_ms: &mut BTreeMap<i64, u64>, revoke_per_second: usize) {
    if expiry_ms.len() < revoke_per_second {
        return; // fewer leases than one second's revocations cannot pile up
    }
    // etcd divides by zero here for a rate of 1; one per second is the sensible reading.
    let target = u64::try_from((3 * revoke_per_second) / 4)
        .unwrap_or(u64::MAX)
        .max(1);
    let mut by_expiry: Vec<(u64, i64)> = expiry_ms.iter().map(|(&id, &at)| (at, id)).collect();
    by_expiry.sort_unstable();
    let Some(&(mut base, _)) = by_expiry.first() else {
        return;
    };
    let mut next_window = base.saturating_add(1000);
    let mut expires: u64 = 0;
    for (expiry, id) in by_expiry {
        if expiry > next_window {
            base = expiry;
            next_window = base.saturating_add(1000);
            expires = 1;
            continue;
        }
        expires += 1;
        if expires <= target {
            continue;
        }
        // Positive: `expiry - base` stays below the previous delay, which is below this one.
        let delay = (1000 * expires / target).saturating_sub(expiry - base);
        next_window = base.saturating_add(delay);
        expiry_ms.insert(id, expiry.saturating_add(delay));
    }
}

fn persist(batch: &mut WriteBatch, id: i64, lease: &Lease) {
    batch.put(LEASES, lease_key(id), codec::encode(&lease.persisted()));
}

/// Big-endian, so positive ids sort numerically in the keyspace.
fn lease_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_from_key(key: &[u8]) -> Result<i64, LessorLoadError> {
    let bytes = <[u8; 8]>::try_from(key).map_err(|_| LessorLoadError::BadKey {
        key_bytes: key.len(),
    })?;
    Ok(i64::from_be_bytes(bytes))
}

/// Seconds as milliseconds; negative seconds count as none. Saturates rather than wraps, though
/// [`MAX_TTL_SECONDS`] × 1000 is far below `u64::MAX`.
fn seconds_to_ms(seconds: i64) -> u64 {
    u64::try_from(seconds).unwrap_or(0).saturating_mul(1000)
}

fn seconds_from_ms(whole_seconds: u64) -> i64 {
    i64::try_from(whole_seconds).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_storage::{Limits, MemoryEngine, Storage};
    use proptest::prelude::*;

    /// A config with checkpoints off, so tests about expiry see no checkpoint traffic.
    fn plain() -> LessorConfig {
        LessorConfig {
            checkpoint_interval_ms: None,
            ..LessorConfig::default()
        }
    }

    fn grant(lessor: &mut Lessor, id: i64, ttl_seconds: i64) -> i64 {
        let (_, granted) = lessor
            .grant(id, ttl_seconds, &mut WriteBatch::new())
            .expect("grant");
        granted
    }

    /// A leader promoted at `now_ms` with no grace, holding `leases` as `(id, ttl_seconds)`.
    fn leader_with(config: LessorConfig, now_ms: u64, leases: &[(i64, i64)]) -> Lessor {
        let mut lessor = Lessor::new(config);
        for &(id, ttl) in leases {
            grant(&mut lessor, id, ttl);
        }
        lessor.promote(now_ms, 0);
        lessor
    }

    fn write(engine: &MemoryEngine, batch: &WriteBatch) {
        engine.write(batch).expect("write");
    }

    // ---- Errors and config. ----

    #[test]
    fn errors_carry_etcds_status_codes_and_messages() {
        // etcd api/v3rpc/rpctypes/error.go: NotFound = 5, FailedPrecondition = 9, OutOfRange = 11.
        let check = |error: LeaseError, code: i32, message: &str| {
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(error.etcd_message(), message, "{error:?}");
        };
        check(
            LeaseError::LeaseNotFound { id: 1 },
            5,
            "etcdserver: requested lease not found",
        );
        check(
            LeaseError::LeaseExists { id: 1 },
            9,
            "etcdserver: lease already exists",
        );
        check(
            LeaseError::TtlTooLarge { ttl_seconds: 1 },
            11,
            "etcdserver: too large lease TTL",
        );
        check(LeaseError::NotLeader, 9, "etcdserver: not leader");
    }

    #[test]
    fn minimum_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        // etcd server.go: minTTL = ceil((3 * electionTicks / 2) * heartbeat).
        let check = |election_ms: u64, min_ttl: i64, retry_ms: u64| {
            let config = LessorConfig::for_election_timeout(election_ms);
            assert_eq!(config.min_ttl_seconds, min_ttl, "election {election_ms} ms");
            assert_eq!(config.retry_after_ms, retry_ms, "election {election_ms} ms");
            assert_eq!(config.validate(), Ok(()));
        };
        check(0, 1, 5000);
        check(100, 1, 5200);
        check(1000, 2, 7000);
        check(2000, 3, 9000);
        check(5000, 8, 15000);
        assert_eq!(
            LessorConfig::default(),
            LessorConfig::for_election_timeout(1000)
        );
    }

    #[test]
    fn validate_rejects_each_field_that_would_stall_the_lessor() {
        let check = |change: fn(&mut LessorConfig), expected: LessorConfigError| {
            let mut config = LessorConfig::default();
            change(&mut config);
            assert_eq!(config.validate(), Err(expected));
        };
        check(
            |c| c.min_ttl_seconds = 0,
            LessorConfigError::MinTtlOutOfRange { min_ttl_seconds: 0 },
        );
        check(
            |c| c.min_ttl_seconds = MAX_TTL_SECONDS + 1,
            LessorConfigError::MinTtlOutOfRange {
                min_ttl_seconds: MAX_TTL_SECONDS + 1,
            },
        );
        check(
            |c| c.revoke_per_second = 0,
            LessorConfigError::ZeroRevokeRate,
        );
        check(|c| c.retry_after_ms = 0, LessorConfigError::ZeroRetry);
        check(
            |c| c.checkpoint_interval_ms = Some(999),
            LessorConfigError::CheckpointIntervalTooShort { interval_ms: 999 },
        );
        check(
            |c| c.checkpoint_batch_max = 0,
            LessorConfigError::ZeroCheckpointBatch,
        );
    }

    // ---- Replicated state: grant, revoke, attach. ----

    #[test]
    fn grant_raises_short_ttls_to_the_minimum() {
        let check = |asked: i64, granted: i64| {
            let mut lessor = Lessor::new(LessorConfig {
                min_ttl_seconds: 5,
                ..plain()
            });
            assert_eq!(
                lessor.grant(7, asked, &mut WriteBatch::new()),
                Ok((7, granted)),
                "asked {asked}"
            );
            assert_eq!(lessor.granted_ttl(7), Some(granted));
        };
        check(-3, 5);
        check(0, 5);
        check(4, 5);
        check(5, 5);
        check(6, 6);
        check(MAX_TTL_SECONDS, MAX_TTL_SECONDS);
    }

    #[test]
    fn refused_grants_answer_as_etcd_and_write_nothing() {
        let mut lessor = Lessor::new(plain());
        grant(&mut lessor, 1, 10);
        let check = |lessor: &mut Lessor, id: i64, ttl: i64, expected: LeaseError| {
            let mut batch = WriteBatch::new();
            assert_eq!(lessor.grant(id, ttl, &mut batch), Err(expected));
            assert!(batch.is_empty(), "a refused grant wrote {batch:?}");
        };
        check(&mut lessor, 0, 10, LeaseError::LeaseNotFound { id: 0 });
        check(&mut lessor, -4, 10, LeaseError::LeaseNotFound { id: -4 });
        check(
            &mut lessor,
            2,
            MAX_TTL_SECONDS + 1,
            LeaseError::TtlTooLarge {
                ttl_seconds: MAX_TTL_SECONDS + 1,
            },
        );
        check(&mut lessor, 1, 99, LeaseError::LeaseExists { id: 1 });
        // etcd checks the TTL before the id's uniqueness.
        check(
            &mut lessor,
            1,
            MAX_TTL_SECONDS + 1,
            LeaseError::TtlTooLarge {
                ttl_seconds: MAX_TTL_SECONDS + 1,
            },
        );
        assert_eq!(lessor.leases(), vec![1]);
        assert_eq!(lessor.granted_ttl(1), Some(10));
    }

    #[test]
    fn revoke_returns_the_attached_keys_sorted_and_forgets_the_lease() {
        let mut lessor = Lessor::new(plain());
        grant(&mut lessor, 3, 10);
        grant(&mut lessor, 9, 10);
        for key in [&b"zeta"[..], b"alpha", b"mid"] {
            lessor.attach(3, key).expect("attach");
        }
        lessor.attach(9, b"other").expect("attach");
        assert_eq!(lessor.leases(), vec![3, 9]);

        let mut batch = WriteBatch::new();
        let keys = lessor.revoke(3, &mut batch).expect("revoke");
        assert_eq!(
            keys,
            vec![b"alpha".to_vec(), b"mid".to_vec(), b"zeta".to_vec()]
        );
        assert_eq!(batch.len(), 1, "the revoke deletes the persisted lease");
        assert!(!lessor.exists(3));
        assert!(lessor.keys(3).is_empty());
        assert_eq!(lessor.lease_of(b"alpha"), None);
        assert_eq!(lessor.lease_of(b"other"), Some(9));
        assert_eq!(lessor.leases(), vec![9]);

        let mut batch = WriteBatch::new();
        assert_eq!(
            lessor.revoke(3, &mut batch),
            Err(LeaseError::LeaseNotFound { id: 3 })
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn a_key_belongs_to_one_lease_and_detach_leaves_other_leases_alone() {
        let mut lessor = Lessor::new(plain());
        grant(&mut lessor, 1, 10);
        grant(&mut lessor, 2, 10);
        lessor.attach(1, b"k").expect("attach");
        lessor.attach(2, b"k").expect("attach moves the key");
        assert!(lessor.keys(1).is_empty());
        assert_eq!(lessor.keys(2), vec![b"k".to_vec()]);
        assert_eq!(lessor.lease_of(b"k"), Some(2));

        lessor
            .detach(1, b"k")
            .expect("detach from a lease without the key");
        assert_eq!(lessor.lease_of(b"k"), Some(2), "lease 2 keeps its key");
        lessor.detach(2, b"k").expect("detach");
        assert_eq!(lessor.lease_of(b"k"), None);

        assert_eq!(
            lessor.attach(5, b"k"),
            Err(LeaseError::LeaseNotFound { id: 5 })
        );
        assert_eq!(
            lessor.detach(5, b"k"),
            Err(LeaseError::LeaseNotFound { id: 5 })
        );
    }

    // ---- Persistence: storage and snapshots. ----

    #[test]
    fn leases_survive_a_restart_through_storage() {
        let engine = MemoryEngine::new(Limits::default());
        let mut lessor = Lessor::new(LessorConfig::default());
        // More leases than one load page, written over several batches as applies would.
        for chunk in (1..=2500_i64).collect::<Vec<_>>().chunks(500) {
            let mut batch = WriteBatch::new();
            for &id in chunk {
                lessor.grant(id, id % 50, &mut batch).expect("grant");
            }
            write(&engine, &batch);
        }
        let mut batch = WriteBatch::new();
        for id in (1..=2500).step_by(3) {
            lessor.revoke(id, &mut batch).expect("revoke");
        }
        lessor.checkpoint(2, 17, &mut batch);
        lessor.checkpoint(1, 5, &mut batch); // revoked: ignored
        write(&engine, &batch);

        let loaded = Lessor::load(LessorConfig::default(), &engine).expect("load");
        assert_eq!(loaded.leases(), lessor.leases());
        assert_eq!(loaded.snapshot(), lessor.snapshot());
        assert_eq!(loaded.granted_ttl(2), Some(2), "min TTL 2 applied at grant");
        assert!(!loaded.is_leader(), "a loaded lessor starts as a follower");
    }

    #[test]
    fn load_raises_ttls_below_a_new_minimum() {
        let engine = MemoryEngine::new(Limits::default());
        let mut lessor = Lessor::new(plain());
        let mut batch = WriteBatch::new();
        lessor.grant(1, 3, &mut batch).expect("grant");
        lessor.grant(2, 30, &mut batch).expect("grant");
        write(&engine, &batch);
        let stricter = LessorConfig {
            min_ttl_seconds: 10,
            ..plain()
        };
        let loaded = Lessor::load(stricter, &engine).expect("load");
        assert_eq!(loaded.granted_ttl(1), Some(10));
        assert_eq!(loaded.granted_ttl(2), Some(30));
    }

    #[test]
    fn load_reports_corrupt_records_instead_of_guessing() {
        let check = |key: &[u8], value: Vec<u8>, expected: fn(&LessorLoadError) -> bool| {
            let engine = MemoryEngine::new(Limits::default());
            let mut batch = WriteBatch::new();
            batch.put(LEASES, key, value);
            write(&engine, &batch);
            let error = Lessor::load(plain(), &engine).expect_err("corrupt");
            assert!(expected(&error), "{error:?}");
        };
        let good = codec::encode(&PersistedLease {
            ttl_seconds: 5,
            remaining_ttl_seconds: 0,
        });
        check(b"short", good.clone(), |e| {
            matches!(e, LessorLoadError::BadKey { key_bytes: 5 })
        });
        check(&lease_key(1), vec![0xff, 1], |e| {
            matches!(e, LessorLoadError::Decode(_))
        });
        check(&lease_key(-1), good, |e| {
            matches!(e, LessorLoadError::Invalid { id: -1, .. })
        });
        let too_long = codec::encode(&PersistedLease {
            ttl_seconds: MAX_TTL_SECONDS + 1,
            remaining_ttl_seconds: 0,
        });
        check(&lease_key(1), too_long, |e| {
            matches!(e, LessorLoadError::Invalid { id: 1, .. })
        });
    }

    #[test]
    fn restore_replaces_every_persisted_lease_with_the_snapshots() {
        let mut source = Lessor::new(plain());
        grant(&mut source, 4, 40);
        grant(&mut source, 8, 80);
        source.checkpoint(8, 33, &mut WriteBatch::new());
        source.attach(4, b"k").expect("attach");
        let snapshot = source.snapshot();

        // The receiving node has stale leases of its own on disk.
        let engine = MemoryEngine::new(Limits::default());
        let mut stale = Lessor::new(plain());
        let mut batch = WriteBatch::new();
        stale.grant(1, 10, &mut batch).expect("grant");
        stale.grant(4, 99, &mut batch).expect("grant");
        write(&engine, &batch);

        let mut batch = WriteBatch::new();
        let restored = Lessor::restore(plain(), &snapshot, &mut batch).expect("restore");
        write(&engine, &batch);
        assert_eq!(restored.snapshot(), snapshot);
        assert_eq!(restored.leases(), vec![4, 8]);
        assert!(restored.keys(4).is_empty(), "attachments come from MVCC");
        let loaded = Lessor::load(plain(), &engine).expect("load");
        assert_eq!(loaded.snapshot(), snapshot);
    }

    #[test]
    fn restore_refuses_bad_snapshots_and_leaves_the_batch_alone() {
        let duplicate = codec::encode(&SnapshotBody {
            leases: vec![
                (
                    3,
                    PersistedLease {
                        ttl_seconds: 5,
                        remaining_ttl_seconds: 0,
                    },
                ),
                (
                    3,
                    PersistedLease {
                        ttl_seconds: 6,
                        remaining_ttl_seconds: 0,
                    },
                ),
            ],
        });
        for bytes in [Vec::new(), vec![1, 0xff, 0xff], duplicate] {
            let mut batch = WriteBatch::new();
            assert!(Lessor::restore(plain(), &bytes, &mut batch).is_err());
            assert!(batch.is_empty());
        }
    }

    // ---- Leader-only expiry. ----

    #[test]
    fn a_follower_never_expires_and_refuses_keep_alives() {
        let mut follower = Lessor::new(plain());
        grant(&mut follower, 1, 2);
        assert!(follower.expired(u64::MAX / 2).is_empty());
        assert_eq!(follower.renew(1, 10), Err(LeaseError::NotLeader));
        assert_eq!(follower.remaining_ttl(1, 10), Err(LeaseError::NotLeader));
        assert!(follower.exists(1), "followers still know the lease exists");
    }

    #[test]
    fn promote_gives_every_lease_its_ttl_plus_the_grace() {
        let mut lessor = Lessor::new(plain());
        grant(&mut lessor, 1, 10);
        grant(&mut lessor, 2, 20);
        lessor.promote(5_000, 1_500);
        // etcd truncates the remaining seconds: 11.5 s left reads as 11.
        assert_eq!(lessor.remaining_ttl(1, 5_000), Ok(11));
        assert_eq!(lessor.remaining_ttl(2, 5_000), Ok(21));
        assert!(lessor.expired(16_499).is_empty());
        assert_eq!(lessor.expired(16_500), vec![1]);
        assert_eq!(lessor.remaining_ttl(1, 16_500), Ok(0));
        lessor.revoke(1, &mut WriteBatch::new()).expect("revoke");
        assert!(lessor.expired(26_499).is_empty());
        assert_eq!(lessor.expired(26_500), vec![2]);
    }

    #[test]
    fn renew_pushes_the_expiry_a_full_ttl_from_now() {
        let mut lessor = leader_with(plain(), 0, &[(1, 10)]);
        assert_eq!(lessor.renew(1, 9_000), Ok(10));
        assert!(lessor.expired(18_999).is_empty());
        assert_eq!(lessor.remaining_ttl(1, 18_999), Ok(0));
        assert_eq!(lessor.expired(19_000), vec![1]);
        assert_eq!(
            lessor.renew(7, 19_000),
            Err(LeaseError::LeaseNotFound { id: 7 })
        );
    }

    #[test]
    fn an_expired_lease_cannot_be_renewed_back_to_life() {
        // etcd's Renew waits for the pending revoke and then answers "not found".
        let mut lessor = leader_with(plain(), 0, &[(1, 10)]);
        assert_eq!(
            lessor.renew(1, 10_000),
            Err(LeaseError::LeaseNotFound { id: 1 })
        );
        assert_eq!(lessor.expired(10_000), vec![1], "still due for revocation");
    }

    #[test]
    fn demote_forgets_expiries_and_the_next_promotion_starts_afresh() {
        let mut lessor = leader_with(plain(), 0, &[(1, 10)]);
        lessor.demote();
        assert!(!lessor.is_leader());
        assert!(lessor.expired(60_000).is_empty());
        assert_eq!(lessor.renew(1, 60_000), Err(LeaseError::NotLeader));
        lessor.promote(60_000, 1_000);
        assert!(lessor.expired(70_999).is_empty());
        assert_eq!(lessor.expired(71_000), vec![1]);
    }

    #[test]
    fn a_lease_granted_on_the_leader_starts_its_clock_at_the_next_tick() {
        let mut lessor = leader_with(plain(), 0, &[]);
        grant(&mut lessor, 1, 10);
        assert!(lessor.expired(3_000).is_empty(), "its clock starts here");
        assert_eq!(lessor.remaining_ttl(1, 3_000), Ok(10));
        assert!(lessor.expired(12_999).is_empty());
        assert_eq!(lessor.expired(13_000), vec![1]);
    }

    #[test]
    fn time_running_backwards_does_not_revive_a_lease() {
        let mut lessor = leader_with(plain(), 0, &[(1, 10)]);
        assert!(lessor.expired(5_000).is_empty());
        assert_eq!(
            lessor.remaining_ttl(1, 1_000),
            Ok(5),
            "read at 5 s, not 1 s"
        );
        assert_eq!(
            lessor.renew(1, 0),
            Ok(10),
            "renewed as of the latest time seen"
        );
        assert_eq!(lessor.expired(14_999), Vec::<i64>::new());
        assert_eq!(lessor.expired(15_000), vec![1]);
    }

    // ---- Rate limiting and retries. ----

    /// Every window of 1000 ms of `now_ms` holds at most `rate` handed-out leases.
    fn assert_within_rate(handed_out: &[(u64, usize)], rate: usize) {
        for &(end, _) in handed_out {
            let in_window: usize = handed_out
                .iter()
                .filter(|&&(at, _)| at <= end && at + RATE_WINDOW_MS > end)
                .map(|&(_, count)| count)
                .sum();
            assert!(
                in_window <= rate,
                "{in_window} leases in the second ending at {end}"
            );
        }
    }

    #[test]
    fn a_mass_expiry_comes_out_at_the_revoke_rate_oldest_first() {
        let config = LessorConfig {
            retry_after_ms: 1_000_000,
            ..plain()
        };
        let mut lessor = leader_with(config, 0, &[]);
        let leases: Vec<(i64, i64)> = (1..=10_000).map(|id| (id, 10 + id % 7)).collect();
        for &(id, ttl) in &leases {
            grant(&mut lessor, id, ttl);
        }
        assert!(lessor.expired(0).is_empty(), "clocks start at 0");
        let mut oldest_first = leases.clone();
        oldest_first.sort_by_key(|&(id, ttl)| (ttl, id));
        let oldest_first: Vec<i64> = oldest_first.into_iter().map(|(id, _)| id).collect();

        // Every lease has expired by 20 s; call at irregular intervals from then on.
        let mut handed_out = Vec::new();
        let mut order = Vec::new();
        let mut now = 20_000;
        while order.len() < leases.len() && now < 60_000 {
            let due = lessor.expired(now);
            handed_out.push((now, due.len()));
            order.extend_from_slice(&due);
            now += 137;
        }
        assert_eq!(order, oldest_first, "none lost, none twice, oldest first");
        assert_within_rate(&handed_out, 1000);
        assert!(now >= 29_000, "10,000 leases need at least 9 s at 1000/s");
        assert!(
            lessor.expired(now + 10_000).is_empty(),
            "none handed out twice"
        );
    }

    #[test]
    fn a_lease_whose_revoke_was_lost_is_handed_out_again_after_the_retry_interval() {
        let config = LessorConfig {
            retry_after_ms: 5_000,
            ..plain()
        };
        let mut lessor = leader_with(config, 0, &[(1, 2), (2, 2)]);
        assert_eq!(lessor.expired(2_000), vec![1, 2]);
        for now in [2_001, 4_000, 6_999] {
            assert!(lessor.expired(now).is_empty(), "revoking at {now}");
        }
        lessor.revoke(2, &mut WriteBatch::new()).expect("revoke");
        assert_eq!(lessor.expired(7_000), vec![1], "2 was revoked in time");
        lessor.revoke(1, &mut WriteBatch::new()).expect("revoke");
        assert!(lessor.expired(100_000).is_empty());
    }

    #[test]
    fn promote_spreads_piled_up_expiries_to_three_quarters_of_the_rate() {
        // etcd lessor.go Promote: 2000 leases expiring together at a rate of 1000/s.
        let config = LessorConfig {
            retry_after_ms: 1_000_000,
            ..plain()
        };
        let leases: Vec<(i64, i64)> = (1..=2000).map(|id| (id, 10)).collect();
        let mut lessor = Lessor::new(config);
        for &(id, ttl) in &leases {
            grant(&mut lessor, id, ttl);
        }
        lessor.promote(0, 1_000);
        assert!(lessor.expired(10_999).is_empty(), "none expires sooner");
        let check = |lessor: &mut Lessor, now: u64, ids: Vec<i64>| {
            assert_eq!(lessor.expired(now), ids, "at {now}");
        };
        // The first ¾ × rate keep their expiry; lease n > 750 moves to 11 s + n/750 s.
        check(&mut lessor, 11_000, (1..=750).collect());
        check(&mut lessor, 12_000, Vec::new());
        check(&mut lessor, 13_000, (751..=1500).collect());
        check(&mut lessor, 14_000, (1501..=2000).collect());
    }

    // ---- Checkpoints. ----

    fn checkpointing() -> LessorConfig {
        LessorConfig {
            checkpoint_interval_ms: Some(300_000),
            ..LessorConfig::default()
        }
    }

    #[test]
    fn a_long_lease_is_checkpointed_every_interval() {
        let mut lessor = Lessor::new(checkpointing());
        grant(&mut lessor, 1, 3600);
        grant(&mut lessor, 2, 300);
        lessor.promote(0, 500);
        assert!(lessor.due_checkpoints(299_999).is_empty());
        // Rounded up, as etcd does: 3300.5 s left is checkpointed as 3301.
        assert_eq!(lessor.due_checkpoints(300_000), vec![(1, 3301)]);
        assert!(lessor.due_checkpoints(599_999).is_empty());
        assert_eq!(lessor.due_checkpoints(600_000), vec![(1, 3001)]);
        assert!(
            lessor
                .due_checkpoints(10_000_000)
                .iter()
                .all(|&(id, _)| id != 2),
            "a lease no longer than the interval is never checkpointed"
        );
    }

    #[test]
    fn a_checkpointed_lease_keeps_its_remainder_across_a_leader_change() {
        let engine = MemoryEngine::new(Limits::default());
        let mut old_leader = Lessor::new(checkpointing());
        let mut batch = WriteBatch::new();
        old_leader.grant(1, 3600, &mut batch).expect("grant");
        write(&engine, &batch);
        old_leader.promote(0, 0);
        let due = old_leader.due_checkpoints(300_000);
        assert_eq!(due, vec![(1, 3300)]);
        // The checkpoint commits and every replica applies it.
        let mut batch = WriteBatch::new();
        for (id, remaining) in due {
            old_leader.checkpoint(id, remaining, &mut batch);
        }
        write(&engine, &batch);

        let mut new_leader = Lessor::load(checkpointing(), &engine).expect("load");
        new_leader.promote(50, 1_000);
        assert_eq!(
            new_leader.remaining_ttl(1, 50),
            Ok(3301),
            "not a fresh 3600"
        );
    }

    #[test]
    fn renewing_a_checkpointed_lease_proposes_clearing_the_checkpoint() {
        let mut lessor = leader_with(checkpointing(), 0, &[(1, 3600)]);
        let due = lessor.due_checkpoints(300_000);
        lessor.checkpoint(1, due[0].1, &mut WriteBatch::new());
        assert_eq!(lessor.renew(1, 400_000), Ok(3600));
        assert_eq!(lessor.due_checkpoints(400_000), vec![(1, 0)]);
        lessor.checkpoint(1, 0, &mut WriteBatch::new());
        assert!(lessor.due_checkpoints(400_001).is_empty());
        lessor.demote();
        lessor.promote(0, 0);
        assert_eq!(
            lessor.remaining_ttl(1, 0),
            Ok(3600),
            "cleared: the full TTL"
        );
    }

    #[test]
    fn disabled_checkpoints_are_never_due() {
        let mut lessor = leader_with(plain(), 0, &[(1, 3600)]);
        lessor.checkpoint(1, 100, &mut WriteBatch::new());
        lessor.renew(1, 10).expect("renew");
        assert!(lessor.due_checkpoints(10_000_000).is_empty());
    }

    // ---- Properties. ----

    #[derive(Clone, Debug)]
    enum Op {
        Grant(i64),
        Revoke(i64),
        Attach(i64, u8),
        Detach(i64, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 1..=4_i64;
        let key = 0..6_u8;
        prop_oneof![
            id.clone().prop_map(Op::Grant),
            id.clone().prop_map(Op::Revoke),
            (id.clone(), key.clone()).prop_map(|(id, key)| Op::Attach(id, key)),
            (id, key).prop_map(|(id, key)| Op::Detach(id, key)),
        ]
    }

    /// The reference: each lease's key set, a key in at most one of them.
    type Model = BTreeMap<i64, BTreeSet<Vec<u8>>>;

    fn apply_to_model(model: &mut Model, op: &Op) -> Result<Vec<Vec<u8>>, ()> {
        match *op {
            Op::Grant(id) if model.contains_key(&id) => Err(()),
            Op::Grant(id) => {
                model.insert(id, BTreeSet::new());
                Ok(Vec::new())
            }
            Op::Revoke(id) => model
                .remove(&id)
                .map(|keys| keys.into_iter().collect())
                .ok_or(()),
            Op::Attach(id, key) if model.contains_key(&id) => {
                model.values_mut().for_each(|keys| {
                    keys.remove(&vec![key]);
                });
                model.entry(id).or_default().insert(vec![key]);
                Ok(Vec::new())
            }
            Op::Detach(id, key) if model.contains_key(&id) => {
                model.entry(id).or_default().remove(&vec![key]);
                Ok(Vec::new())
            }
            Op::Attach(..) | Op::Detach(..) => Err(()),
        }
    }

    fn apply_to_lessor(lessor: &mut Lessor, op: &Op) -> Result<Vec<Vec<u8>>, LeaseError> {
        let mut batch = WriteBatch::new();
        match *op {
            Op::Grant(id) => lessor.grant(id, 10, &mut batch).map(|_| Vec::new()),
            Op::Revoke(id) => lessor.revoke(id, &mut batch),
            Op::Attach(id, key) => lessor.attach(id, &[key]).map(|()| Vec::new()),
            Op::Detach(id, key) => lessor.detach(id, &[key]).map(|()| Vec::new()),
        }
    }

    #[derive(Clone, Debug)]
    enum Change {
        Grant(i64, i64),
        Revoke(i64),
        Checkpoint(i64, i64),
    }

    fn change() -> impl Strategy<Value = Change> {
        let id = 1..=30_i64;
        prop_oneof![
            (id.clone(), -5..100_i64).prop_map(|(id, ttl)| Change::Grant(id, ttl)),
            id.clone().prop_map(Change::Revoke),
            (id, 0..100_i64).prop_map(|(id, left)| Change::Checkpoint(id, left)),
        ]
    }

    proptest! {
        #[test]
        fn attached_keys_follow_the_reference_model(ops in prop::collection::vec(op(), 0..60)) {
            let mut lessor = Lessor::new(plain());
            let mut model = Model::new();
            for op in &ops {
                let expected = apply_to_model(&mut model, op);
                let actual = apply_to_lessor(&mut lessor, op);
                prop_assert_eq!(actual.map_err(|_| ()), expected, "{:?}", op);
                for id in 1..=4 {
                    let keys: Vec<Vec<u8>> =
                        model.get(&id).map(|k| k.iter().cloned().collect()).unwrap_or_default();
                    prop_assert_eq!(lessor.keys(id), keys);
                    prop_assert_eq!(lessor.exists(id), model.contains_key(&id));
                }
                for key in 0..6_u8 {
                    let owner = model.iter().find(|(_, keys)| keys.contains(&vec![key]));
                    prop_assert_eq!(lessor.lease_of(&[key]), owner.map(|(&id, _)| id));
                }
            }
        }

        #[test]
        fn storage_and_snapshots_restore_the_same_leases(
            changes in prop::collection::vec(change(), 0..80),
        ) {
            let engine = MemoryEngine::new(Limits::default());
            let mut lessor = Lessor::new(LessorConfig::default());
            for change in &changes {
                let mut batch = WriteBatch::new();
                // Refused changes are part of the sequence too: they must write nothing.
                let _ = match *change {
                    Change::Grant(id, ttl) => lessor.grant(id, ttl, &mut batch).map(|_| ()),
                    Change::Revoke(id) => lessor.revoke(id, &mut batch).map(|_| ()),
                    Change::Checkpoint(id, left) => {
                        lessor.checkpoint(id, left, &mut batch);
                        Ok(())
                    }
                };
                write(&engine, &batch);
            }
            let loaded = Lessor::load(LessorConfig::default(), &engine).expect("load");
            prop_assert_eq!(loaded.snapshot(), lessor.snapshot());
            prop_assert_eq!(loaded.leases(), lessor.leases());
            let mut batch = WriteBatch::new();
            let restored = Lessor::restore(LessorConfig::default(), &lessor.snapshot(), &mut batch)
                .expect("restore");
            prop_assert_eq!(restored.snapshot(), lessor.snapshot());
        }
    }
}
