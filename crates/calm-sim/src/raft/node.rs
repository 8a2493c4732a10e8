//! One simulated voter: its disk, its keyspace core while it runs, its own
//! clock, and the driver turn that runs the core by its contract.

use std::collections::VecDeque;

use calm_proto::calm::raft::v1::command::Request;
use calm_proto::etcd::etcdserverpb::RangeRequest;
use calm_proto::etcd::mvccpb::Event;
use calm_raft::{
    Keyspace, KeyspaceConfig, KeyspaceError, LeaseQuestion, MembershipChange, OpenError, Output,
    RaftConfig, Read, Reply, RequestId, StateConfig, WatchConfig, WatchId, WatchSpec,
};
use calm_storage::{Limits, MemoryEngine, Storage, WriteBatch};

use super::config::{KeyspaceBug, KeyspaceSimConfig};

/// How long the planted [`KeyspaceBug::AckBeforeSync`] leaves Raft's
/// writes unsynced, in ms of the node's clock: a log that syncs on a timer,
/// like an "fsync every 100 ms" setting.
const BUGGY_SYNC_PERIOD_MS: u64 = 100;

/// A point inside a driver turn where a planned crash strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnStage {
    /// Raft's batch is written but not synced; the messages Raft let leave
    /// before the sync are gone.
    BeforeSync,
    /// Raft's batch is synced; nothing after the sync happened.
    AfterSync,
    /// Committed entries are applied and their batches written (unsynced);
    /// no reply or message of this turn left.
    AfterApply,
}

/// What a client asks a node.
#[derive(Clone, Debug)]
pub(super) enum Call {
    /// A write through the log.
    Propose(Request),
    /// A linearizable read.
    Read(RangeRequest),
    /// A membership change (MemberAdd, MemberPromote, a demotion).
    ChangeMembership(Vec<MembershipChange>),
    /// A lease question (a keep-alive).
    Ask(LeaseQuestion),
}

/// An input waiting for the node's next turn.
#[derive(Debug)]
pub(super) enum Inbound {
    /// A peer's message.
    Peer { from: usize, bytes: Vec<u8> },
    /// A client's request.
    Client { id: RequestId, call: Call },
}

/// A node's clock: `offset + real * (1 + rate_ppm / 10⁶)`, monotonic.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    pub(super) offset_ms: u64,
    pub(super) rate_ppm: i64,
}

impl Clock {
    /// The node's time at real time `real_ms`.
    pub(super) fn local_ms(&self, real_ms: u64) -> u64 {
        let drift = real_ms as i128 * self.rate_ppm as i128 / 1_000_000;
        // The rate stays within ±10%, so the sum never goes below zero.
        (self.offset_ms as i128 + real_ms as i128 + drift) as u64
    }
}

/// What one turn produced, for the simulator to carry out.
#[derive(Debug, Default)]
pub(super) struct TurnOutputs {
    /// Peer messages, in the order the core emitted them.
    pub(super) sends: Vec<(usize, Vec<u8>)>,
    /// Client replies.
    pub(super) replies: Vec<(RequestId, Result<Reply, KeyspaceError>)>,
    /// `Trouble` outputs and refused peer messages.
    pub(super) troubles: Vec<String>,
    /// The core failed (an error from `before_sync`/`after_sync`): a broken
    /// invariant of the core, since the simulated disk never fails.
    pub(super) failure: Option<String>,
    /// A planned crash struck inside the turn.
    pub(super) crashed: bool,
}

/// One voter slot: running (`keyspace` is set) or crashed, disk kept.
pub(super) struct SimNode {
    pub(super) id: u64,
    pub(super) engine: MemoryEngine,
    pub(super) keyspace: Option<Keyspace>,
    pub(super) clock: Clock,
    pub(super) next_tick_local_ms: u64,
    /// While `now < paused_until_ms` the process is stopped (SIGSTOP):
    /// inputs queue up, nothing runs.
    pub(super) paused_until_ms: u64,
    pub(super) inbox: VecDeque<Inbound>,
    pub(super) crash_at: Option<TurnStage>,
    /// The planted [`KeyspaceBug::AckBeforeSync`]: when the oldest write
    /// not synced yet was made, on the node's clock.
    pub(super) unsynced_since_ms: Option<u64>,
    /// The watcher a client keeps open on this node (all keys), and every
    /// event it was sent, across restarts: a client that loses the watch
    /// reopens it from the revision after the last event it saw.
    pub(super) watch: Option<WatchId>,
    pub(super) watched: Vec<Event>,
    pub(super) watched_through: i64,
    /// Set when the watcher was cancelled, which the workload never asks
    /// for (there is no compaction): the checker reports it.
    pub(super) watch_cancelled: Option<String>,
}

impl SimNode {
    pub(super) fn new(id: u64, clock: Clock) -> SimNode {
        SimNode {
            id,
            // The bootstrap and apply batches of a busy ready may exceed
            // the default bound; the engine's bound is not what is tested.
            engine: MemoryEngine::new(Limits {
                batch_ops_max: 1_000_000,
                ..Limits::default()
            }),
            keyspace: None,
            clock,
            next_tick_local_ms: 0,
            paused_until_ms: 0,
            inbox: VecDeque::new(),
            crash_at: None,
            unsynced_since_ms: None,
            watch: None,
            watched: Vec::new(),
            watched_through: 1,
            watch_cancelled: None,
        }
    }

    /// Whether the process runs and is not stopped at `now_ms`.
    pub(super) fn is_active(&self, now_ms: u64) -> bool {
        self.keyspace.is_some() && now_ms >= self.paused_until_ms
    }

    /// Opens the keyspace from the disk (bootstrapping it on first start),
    /// as the node does at boot: the bootstrap batch is synced before any
    /// message leaves. Then reopens the client's watch.
    pub(super) fn start(
        &mut self,
        config: &KeyspaceSimConfig,
        now_ms: u64,
    ) -> Result<(), OpenError> {
        let voters: Vec<u64> = (1..=config.voters as u64).collect();
        let mut batch = WriteBatch::new();
        let keyspace = Keyspace::open(
            keyspace_config(config, self.id),
            &voters,
            &self.engine,
            &mut batch,
        )?;
        if !batch.is_empty() {
            self.engine.write(&batch)?;
            self.engine.sync()?;
        }
        let local = self.clock.local_ms(now_ms);
        self.next_tick_local_ms = local + config.tick_ms;
        self.keyspace = Some(keyspace);
        self.unsynced_since_ms = None;
        self.open_watch(config.bug);
        Ok(())
    }

    /// Kills the process: the core and its queued inputs vanish and the
    /// disk keeps its synced state plus the oldest `kept` unsynced batches.
    /// Returns the batches lost.
    pub(super) fn crash(&mut self, kept: usize) -> usize {
        self.keyspace = None;
        self.inbox.clear();
        self.crash_at = None;
        self.watch = None;
        self.paused_until_ms = 0;
        let pending = self.engine.pending_batches();
        self.engine.crash_keeping(kept);
        pending - kept.min(pending)
    }

    /// One driver turn at real time `now_ms`: the queued inputs and a tick
    /// if one is due, then the core's contract (before_sync, write, sync,
    /// after_sync, write, outputs). Returns `None` if there was nothing to
    /// do.
    pub(super) fn turn(
        &mut self,
        now_ms: u64,
        bug: KeyspaceBug,
        tick_ms: u64,
    ) -> Option<TurnOutputs> {
        let mut local = self.clock.local_ms(now_ms);
        if bug == KeyspaceBug::ClockRunsDouble {
            local *= 2;
        }
        let tick_due = local >= self.next_tick_local_ms;
        if self.inbox.is_empty() && !tick_due {
            return None;
        }
        let mut out = TurnOutputs::default();
        let keyspace = self.keyspace.as_mut()?;
        while let Some(input) = self.inbox.pop_front() {
            take_input(keyspace, input, local, bug, &mut out);
        }
        if tick_due {
            keyspace.tick(local);
            // One tick per firing, however late: the real driver's timer
            // does not catch up after a stall (a pause), and neither does
            // Raft's clock.
            self.next_tick_local_ms = local + tick_ms;
            if self
                .unsynced_since_ms
                .is_some_and(|since| local >= since + BUGGY_SYNC_PERIOD_MS)
            {
                // The planted bug's timer-driven sync.
                let _ = self.engine.sync();
                self.unsynced_since_ms = None;
            }
        }
        self.commit(local, bug, &mut out);
        Some(out)
    }

    /// Steps 2 to 4 of the driver contract, with the planned crash.
    fn commit(&mut self, local: u64, bug: KeyspaceBug, out: &mut TurnOutputs) {
        let Some(keyspace) = self.keyspace.as_mut() else {
            return;
        };
        let mut batch = WriteBatch::new();
        let wrote = match keyspace.before_sync(&mut batch) {
            Ok(wrote) => wrote,
            Err(error) => {
                out.failure = Some(format!("before_sync: {error}"));
                return;
            }
        };
        let mut held = Vec::new();
        // Messages polled now may leave before the sync (the contract's
        // step 2); everything else waits for step 4.
        while let Some(output) = keyspace.poll() {
            match output {
                Output::Send { to, bytes } => out.sends.push((to as usize - 1, bytes)),
                other => held.push(other),
            }
        }
        if wrote {
            if let Err(error) = self.engine.write(&batch) {
                out.failure = Some(format!("writing Raft's batch: {error}"));
                return;
            }
            if self.strikes(TurnStage::BeforeSync, out) {
                return;
            }
            if bug == KeyspaceBug::AckBeforeSync {
                self.unsynced_since_ms.get_or_insert(local);
            } else if let Err(error) = self.engine.sync() {
                out.failure = Some(format!("sync: {error}"));
                return;
            }
        }
        if self.strikes(TurnStage::AfterSync, out) {
            return;
        }
        self.apply(local, held, out);
    }

    /// Step 3's second half and step 4: apply, write, carry out outputs.
    fn apply(&mut self, local: u64, held: Vec<Output>, out: &mut TurnOutputs) {
        let Some(keyspace) = self.keyspace.as_mut() else {
            return;
        };
        let batches = match keyspace.after_sync(local) {
            Ok(batches) => batches,
            Err(error) => {
                out.failure = Some(format!("after_sync: {error}"));
                return;
            }
        };
        for batch in &batches {
            if let Err(error) = self.engine.write(batch) {
                out.failure = Some(format!("writing applied entries: {error}"));
                return;
            }
        }
        let mut outputs = held;
        while let Some(output) = keyspace.poll() {
            outputs.push(output);
        }
        if self.strikes(TurnStage::AfterApply, out) {
            return;
        }
        for output in outputs {
            match output {
                Output::Send { to, bytes } => out.sends.push((to as usize - 1, bytes)),
                Output::Reply { id, result } => out.replies.push((id, result)),
                Output::Trouble(trouble) => out.troubles.push(trouble),
                Output::Watch { id, batch } => self.watched_batch(id, batch),
            }
        }
    }

    /// Whether the planned crash strikes at `stage` (then it happened).
    fn strikes(&mut self, stage: TurnStage, out: &mut TurnOutputs) -> bool {
        if self.crash_at != Some(stage) {
            return false;
        }
        out.crashed = true;
        true
    }

    /// The client's watch on every key, from the revision after the last
    /// event it saw.
    fn open_watch(&mut self, bug: KeyspaceBug) {
        let Some(keyspace) = self.keyspace.as_mut() else {
            return;
        };
        let resume_at = if bug == KeyspaceBug::WatchResumesAtLastSeen {
            self.watched_through
        } else {
            self.watched_through + 1
        };
        let spec = WatchSpec {
            key: vec![0],
            range_end: vec![0],
            start_revision: resume_at,
            ..WatchSpec::default()
        };
        match keyspace.watch(spec) {
            Ok(id) => self.watch = Some(id),
            Err(error) => self.watch_cancelled = Some(format!("refused: {error}")),
        }
    }

    fn watched_batch(&mut self, id: WatchId, batch: calm_raft::WatchBatch) {
        if self.watch != Some(id) {
            return;
        }
        if batch.canceled {
            self.watch = None;
            self.watch_cancelled = Some(format!("cancelled at revision {}", batch.revision));
            return;
        }
        if let Some(last) = batch.events.last().and_then(|event| event.kv.as_ref()) {
            self.watched_through = last.mod_revision;
        }
        self.watched.extend(batch.events);
    }
}

/// Hands one queued input to the core.
fn take_input(
    keyspace: &mut Keyspace,
    input: Inbound,
    local: u64,
    bug: KeyspaceBug,
    out: &mut TurnOutputs,
) {
    match input {
        Inbound::Peer { from, bytes } => {
            // Refusals are operating errors (a proposal forwarded to a node
            // that is no longer leader, a full read queue): the real driver
            // logs and drops them.
            if let Err(error) = keyspace.step(from as u64 + 1, &bytes, local) {
                out.troubles
                    .push(format!("refused from {}: {error}", from + 1));
            }
        }
        Inbound::Client {
            id,
            call: Call::Propose(request),
        } => keyspace.propose(id, request, local),
        Inbound::Client {
            id,
            call: Call::Read(range),
        } => {
            if bug == KeyspaceBug::ReadsWithoutReadIndex {
                // The planted bug: the applied state, whatever its age.
                let result = keyspace.state().range(&range).map(Reply::Range);
                out.replies.push((id, result.map_err(KeyspaceError::from)));
            } else {
                keyspace.read(id, Read::Range(range), local);
            }
        }
        Inbound::Client {
            id,
            call: Call::ChangeMembership(changes),
        } => keyspace.change_membership(id, changes, local),
        Inbound::Client {
            id,
            call: Call::Ask(question),
        } => keyspace.ask(id, question, local),
    }
}

/// The core's config for voter `id`, with the simulation's timings.
fn keyspace_config(config: &KeyspaceSimConfig, id: u64) -> KeyspaceConfig {
    let election_timeout_ms = config.tick_ms * config.election_ticks as u64;
    KeyspaceConfig {
        raft: RaftConfig {
            election_tick: config.election_ticks,
            compaction_keep_entries: config.compaction_keep_entries,
            lease_reads: config.lease_reads,
            // A seeded spread of election timeouts, so the run replays.
            election_seed: config
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(id),
            ..RaftConfig::new(id)
        },
        request_timeout_ms: config.request_timeout_ms,
        election_timeout_ms,
        snapshot_count: config.snapshot_count,
        state: StateConfig::default(),
        cluster_id: 1,
        watch: WatchConfig::default(),
        leaderless_max: 1_000,
    }
}
