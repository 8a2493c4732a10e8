//! The state machine of the coordinated keyspace: applies committed
//! `calm.raft.v1.Command`s, in log order, to the MVCC store and the lessor,
//! and answers each with the etcd response its proposer waits for.
//!
//! Every replica applies the same commands in the same order and so reaches
//! the same state: nothing here reads a clock or depends on which node it
//! runs on. What differs between replicas (lease expiry, which watches are
//! open) lives outside, in the lessor's leader-only half and the watch hub.
//!
//! Durability: each apply writes its changes and the new applied index into
//! the caller's batch, so after a crash the node reloads a state and an
//! applied index that agree, and Raft replays the entries after it.

use std::collections::{BTreeMap, BTreeSet};

use calm_proto::calm::raft::v1::{Command, command::Request};
use calm_proto::etcd::etcdserverpb::DeleteRangeRequest;
use calm_proto::etcd::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionResponse, DeleteRangeResponse,
    LeaseCheckpointResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, alarm_request::AlarmAction,
    request_op,
};
use calm_proto::etcd::mvccpb::{Event, event::EventType};
use calm_storage::{KeyRange, Keyspace, Order, ReadView, StorageError, WriteBatch};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::lease::{LeaseError, Lessor, LessorConfig};
use crate::mvcc::{Applied, Mvcc, MvccError};

/// The applied index and the alarms, beside the MVCC and lease keyspaces.
const STATE: Keyspace = Keyspace::new("raft_applied");
const APPLIED_KEY: &[u8] = b"applied";
const ALARMS_KEY: &[u8] = b"alarms";
/// Each proposer's recently applied proposal numbers: proposer id (8
/// bytes, big-endian) ++ proposal number (8 bytes, big-endian) → nothing.
const PROPOSERS: Keyspace = Keyspace::new("raft_proposers");
/// How many of a proposer's latest applied proposal numbers are kept. A
/// copy of a proposal arrives within a few messages of the original, and
/// proposals may commit slightly out of their numbering order (a forward
/// overtaken by a later one): both stay well inside this window. A
/// proposal older than the whole window is refused as a copy; its client
/// has long given up on it.
pub const PROPOSAL_WINDOW: usize = 4096;
/// Proposers read per page when loading.
const PROPOSERS_PAGE: usize = 1024;

/// The state machine's bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct StateConfig {
    /// The database size quota in bytes (etcd's `--quota-backend-bytes`,
    /// default 2 GiB): a write that would take the store past it raises the
    /// NOSPACE alarm and is refused, as is every later write until an
    /// operator frees space and disarms the alarm. Reads and deletes go on.
    pub quota_bytes: u64,
    /// The lessor's bounds.
    pub lessor: LessorConfig,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            quota_bytes: 2 * 1024 * 1024 * 1024,
            lessor: LessorConfig::default(),
        }
    }
}

/// The etcd response to one applied command.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// To a [`Request::Put`].
    Put(PutResponse),
    /// To a [`Request::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// To a [`Request::Txn`].
    Txn(TxnResponse),
    /// To a [`Request::Compaction`].
    Compaction(CompactionResponse),
    /// To a [`Request::LeaseGrant`].
    LeaseGrant(LeaseGrantResponse),
    /// To a [`Request::LeaseRevoke`].
    LeaseRevoke(LeaseRevokeResponse),
    /// To a [`Request::Alarm`].
    Alarm(AlarmResponse),
    /// To a [`Request::Range`] read through the log.
    Range(RangeResponse),
    /// To a [`Request::LeaseCheckpoint`].
    LeaseCheckpoint(LeaseCheckpointResponse),
}

impl Response {
    /// The response's header, whichever kind it is.
    pub fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
        match self {
            Response::Put(r) => &mut r.header,
            Response::DeleteRange(r) => &mut r.header,
            Response::Txn(r) => &mut r.header,
            Response::Compaction(r) => &mut r.header,
            Response::LeaseGrant(r) => &mut r.header,
            Response::LeaseRevoke(r) => &mut r.header,
            Response::Alarm(r) => &mut r.header,
            Response::Range(r) => &mut r.header,
            Response::LeaseCheckpoint(r) => &mut r.header,
        }
    }
}

/// Why a command was refused. In every case the command changed nothing
/// but the applied index: it is refused whole, on every replica alike.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The MVCC store refused it (compacted revision, missing lease, …).
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// The lessor refused it (unknown lease, duplicate id, …).
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The NOSPACE alarm is raised: writes are refused until it is
    /// disarmed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The entry did not decode as a command (a corrupt or foreign log).
    #[error("undecodable command: {0}")]
    Decode(String),
    /// The command holds no request.
    #[error("empty command")]
    Empty,
    /// A copy of a proposal already applied; skipped, nothing changed.
    #[error("duplicate proposal")]
    Duplicate,
}

impl ApplyError {
    /// The gRPC status code etcd answers this error with (tonic's numbering).
    pub fn code(&self) -> i32 {
        match self {
            ApplyError::Mvcc(error) => error.code(),
            ApplyError::Lease(error) => error.code(),
            // RESOURCE_EXHAUSTED, as etcd's ErrGRPCNoSpace.
            ApplyError::NoSpace => 8,
            // INTERNAL.
            ApplyError::Decode(_) | ApplyError::Empty | ApplyError::Duplicate => 13,
        }
    }

    /// The message etcd clients match on.
    pub fn etcd_message(&self) -> String {
        match self {
            ApplyError::Mvcc(error) => error.etcd_message().to_string(),
            ApplyError::Lease(error) => error.etcd_message().to_string(),
            other => other.to_string(),
        }
    }
}

/// Why the state could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// What was stored does not decode.
    #[error("corrupt coordinated state: {0}")]
    Corrupt(String),
}

/// The outcome of applying one log entry.
#[derive(Debug)]
pub struct Outcome {
    /// The node that proposed the command and its proposal number (0 when
    /// nobody waits), so the proposer answers its client.
    pub proposer: u64,
    /// See `proposer`.
    pub proposal: u64,
    /// The response, or why the command was refused.
    pub result: Result<Response, ApplyError>,
    /// The changes the command made, in revision order, with `prev_kv`
    /// filled: what watches report.
    pub events: Vec<Event>,
}

/// The coordinated keyspace's replicated state: MVCC, leases, alarms and
/// the index of the last applied entry.
///
/// Driver contract: [`apply`](Self::apply) every committed normal entry in
/// log order and [`skip`](Self::skip) every other one (empty or
/// configuration entries), writing the batch each returns into storage; at
/// a Raft snapshot, [`restore`](Self::restore). Reads
/// ([`range`](Self::range)) see everything applied so far.
pub struct StateMachine {
    config: StateConfig,
    mvcc: Mvcc,
    lessor: Lessor,
    applied: u64,
    alarms: Vec<AlarmMember>,
    /// Each proposer's latest [`PROPOSAL_WINDOW`] applied proposal
    /// numbers. A node numbers its proposals uniquely (from its
    /// incarnation up), so an entry whose number is in the window is a copy
    /// of one already applied (a duplicated or re-delivered `MsgPropose`;
    /// Raft itself does not deduplicate) and is skipped, as is one older
    /// than the whole window: every proposal applies at most once.
    proposers: BTreeMap<u64, BTreeSet<u64>>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    applied: u64,
    alarms: Vec<(u64, i32)>,
    mvcc: Vec<u8>,
    lessor: Vec<u8>,
    proposers: Vec<(u64, Vec<u64>)>,
}

impl StateMachine {
    /// An empty keyspace at revision 1.
    pub fn new(config: StateConfig) -> StateMachine {
        let lessor = Lessor::new(config.lessor);
        StateMachine {
            config,
            mvcc: Mvcc::new(),
            lessor,
            applied: 0,
            alarms: Vec::new(),
            proposers: BTreeMap::new(),
        }
    }

    /// The state written through earlier batches; an empty one if nothing
    /// was.
    pub fn load(config: StateConfig, view: &impl ReadView) -> Result<StateMachine, StateError> {
        let mvcc = Mvcc::load(view).map_err(|e| StateError::Corrupt(e.to_string()))?;
        let mut lessor =
            Lessor::load(config.lessor, view).map_err(|e| StateError::Corrupt(e.to_string()))?;
        attach_keys(&mvcc, &mut lessor);
        let applied = match view.get(STATE, APPLIED_KEY)? {
            Some(bytes) => decode_u64(&bytes)?,
            None => 0,
        };
        let alarms = match view.get(STATE, ALARMS_KEY)? {
            Some(bytes) => decode_alarms(&bytes)?,
            None => Vec::new(),
        };
        let proposers = load_proposers(view)?;
        Ok(StateMachine {
            config,
            mvcc,
            lessor,
            applied,
            alarms,
            proposers,
        })
    }

    // ---- Inputs ----

    /// Applies the committed entry at `index` holding `data`.
    pub fn apply(&mut self, index: u64, data: &[u8], batch: &mut WriteBatch) -> Outcome {
        self.set_applied(index, batch);
        let command = match Command::decode(data) {
            Ok(command) => command,
            Err(error) => {
                return Outcome {
                    proposer: 0,
                    proposal: 0,
                    result: Err(ApplyError::Decode(error.to_string())),
                    events: Vec::new(),
                };
            }
        };
        if command.proposal != 0 && !self.first_application(&command, batch) {
            // A copy of an applied proposal: its proposer was answered by
            // the first one, so nobody waits for this.
            return Outcome {
                proposer: 0,
                proposal: 0,
                result: Err(ApplyError::Duplicate),
                events: Vec::new(),
            };
        }
        let (result, events) = match command.request {
            Some(request) => match self.execute(request, batch) {
                Ok((response, events)) => (Ok(response), events),
                Err(error) => (Err(error), Vec::new()),
            },
            None => (Err(ApplyError::Empty), Vec::new()),
        };
        Outcome {
            proposer: command.proposer,
            proposal: command.proposal,
            result,
            events,
        }
    }

    /// Whether `command` is applied for the first time; if so, records it
    /// in its proposer's window (and in `batch`).
    fn first_application(&mut self, command: &Command, batch: &mut WriteBatch) -> bool {
        let applied = self.proposers.entry(command.proposer).or_default();
        let older_than_window = applied.len() >= PROPOSAL_WINDOW
            && applied
                .first()
                .is_some_and(|&oldest| command.proposal < oldest);
        if older_than_window || !applied.insert(command.proposal) {
            return false;
        }
        batch.put(
            PROPOSERS,
            proposal_key(command.proposer, command.proposal),
            [],
        );
        if applied.len() > PROPOSAL_WINDOW
            && let Some(oldest) = applied.pop_first()
        {
            batch.delete(PROPOSERS, proposal_key(command.proposer, oldest));
        }
        true
    }

    /// Records that the entry at `index` (empty, or a configuration change
    /// Raft applied itself) was applied.
    pub fn skip(&mut self, index: u64, batch: &mut WriteBatch) {
        self.set_applied(index, batch);
    }

    /// Replaces the whole state with a Raft snapshot's.
    pub fn restore(&mut self, data: &[u8], batch: &mut WriteBatch) -> Result<(), StateError> {
        let snapshot: Snapshot = postcard::from_bytes(data)
            .map_err(|e| StateError::Corrupt(format!("snapshot: {e}")))?;
        let mvcc =
            Mvcc::restore(&snapshot.mvcc, batch).map_err(|e| StateError::Corrupt(e.to_string()))?;
        let mut lessor = Lessor::restore(self.config.lessor, &snapshot.lessor, batch)
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        attach_keys(&mvcc, &mut lessor);
        self.mvcc = mvcc;
        self.lessor = lessor;
        self.alarms = snapshot
            .alarms
            .into_iter()
            .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect();
        self.write_alarms(batch);
        batch.delete_range(PROPOSERS, KeyRange::prefix(&[]));
        for (proposer, proposals) in &snapshot.proposers {
            for &proposal in proposals {
                batch.put(PROPOSERS, proposal_key(*proposer, proposal), []);
            }
        }
        self.proposers = snapshot
            .proposers
            .into_iter()
            .map(|(proposer, proposals)| (proposer, proposals.into_iter().collect()))
            .collect();
        self.set_applied(snapshot.applied, batch);
        Ok(())
    }

    // ---- Getters ----

    /// The whole state at the applied index, for a Raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            applied: self.applied,
            alarms: self.alarms.iter().map(|a| (a.member_id, a.alarm)).collect(),
            mvcc: self.mvcc.snapshot(),
            lessor: self.lessor.snapshot(),
            proposers: self
                .proposers
                .iter()
                .map(|(&proposer, proposals)| (proposer, proposals.iter().copied().collect()))
                .collect(),
        };
        // Serialising plain vectors and integers into memory cannot fail.
        postcard::to_stdvec(&snapshot).expect("a snapshot serialises")
    }

    /// The index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// A read of the applied state (header revision filled).
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        let mut response = self.mvcc.range(request)?;
        response.header = Some(self.header());
        Ok(response)
    }

    /// A read-only txn against the applied state.
    pub fn read_txn(&self, request: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        let mut response = self.mvcc.read_txn(request)?;
        response.header = Some(self.header());
        stamp_revisions(&mut response, self.mvcc.revision());
        Ok(response)
    }

    /// The MVCC store.
    pub fn mvcc(&self) -> &Mvcc {
        &self.mvcc
    }

    /// The lessor (its leader-only half is driven through
    /// [`lessor_mut`](Self::lessor_mut)).
    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    /// The lessor, for the leader's expiry clock and keep-alives, which are
    /// not replicated.
    pub fn lessor_mut(&mut self) -> &mut Lessor {
        &mut self.lessor
    }

    /// The raised alarms.
    pub fn alarms(&self) -> &[AlarmMember] {
        &self.alarms
    }

    /// A response header at the current revision (ids left for the driver).
    pub fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.mvcc.revision(),
            ..ResponseHeader::default()
        }
    }

    // ---- Applying ----

    fn execute(
        &mut self,
        request: Request,
        batch: &mut WriteBatch,
    ) -> Result<(Response, Vec<Event>), ApplyError> {
        match request {
            Request::Put(put) => {
                let size = (put.key.len() + put.value.len()) as u64;
                self.check_space(size, batch)?;
                let lessor = &self.lessor;
                let applied = self.mvcc.put(&put, |id| lessor.exists(id), batch)?;
                Ok(self.written(applied, Response::Put))
            }
            Request::DeleteRange(delete) => {
                let applied = self.mvcc.delete_range(&delete, batch)?;
                Ok(self.written(applied, Response::DeleteRange))
            }
            Request::Txn(txn) => {
                if txn_writes(&txn) {
                    self.check_space(txn.encoded_len() as u64, batch)?;
                }
                let lessor = &self.lessor;
                let applied = self.mvcc.txn(&txn, |id| lessor.exists(id), batch)?;
                Ok(self.written(applied, Response::Txn))
            }
            Request::Compaction(compaction) => {
                let mut response = self.mvcc.compact(compaction.revision, batch)?;
                response.header = Some(self.header());
                Ok((Response::Compaction(response), Vec::new()))
            }
            Request::LeaseGrant(grant) => {
                self.check_space(0, batch)?;
                let (id, ttl) = self.lessor.grant(grant.id, grant.ttl, batch)?;
                let response = LeaseGrantResponse {
                    header: Some(self.header()),
                    id,
                    ttl,
                    error: String::new(),
                };
                Ok((Response::LeaseGrant(response), Vec::new()))
            }
            Request::LeaseRevoke(revoke) => self.revoke(revoke.id, batch),
            Request::Alarm(alarm) => Ok((Response::Alarm(self.alarm(&alarm, batch)), Vec::new())),
            Request::Range(range) => Ok((Response::Range(self.range(&range)?), Vec::new())),
            Request::LeaseCheckpoint(request) => {
                for checkpoint in &request.checkpoints {
                    self.lessor
                        .checkpoint(checkpoint.id, checkpoint.remaining_ttl, batch);
                }
                let response = LeaseCheckpointResponse {
                    header: Some(self.header()),
                };
                Ok((Response::LeaseCheckpoint(response), Vec::new()))
            }
        }
    }

    /// Revokes a lease and deletes its keys, all at one revision, as etcd
    /// does.
    fn revoke(
        &mut self,
        id: i64,
        batch: &mut WriteBatch,
    ) -> Result<(Response, Vec<Event>), ApplyError> {
        let keys = self.lessor.revoke(id, batch)?;
        let mut events = Vec::new();
        if !keys.is_empty() {
            let txn = TxnRequest {
                compare: Vec::new(),
                success: keys
                    .into_iter()
                    .map(|key| RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key,
                                ..DeleteRangeRequest::default()
                            },
                        )),
                    })
                    .collect(),
                failure: Vec::new(),
            };
            let applied = self.mvcc.txn(&txn, |_| true, batch)?;
            events = applied.events;
            self.track_leases(&events);
        }
        let response = LeaseRevokeResponse {
            header: Some(self.header()),
        };
        Ok((Response::LeaseRevoke(response), events))
    }

    fn alarm(&mut self, request: &AlarmRequest, batch: &mut WriteBatch) -> AlarmResponse {
        let wanted = AlarmMember {
            member_id: request.member_id,
            alarm: request.alarm,
        };
        let matches = |a: &AlarmMember| {
            (request.member_id == 0 || a.member_id == request.member_id)
                && (request.alarm == AlarmType::None as i32 || a.alarm == request.alarm)
        };
        let alarms = match AlarmAction::try_from(request.action) {
            Ok(AlarmAction::Activate) => {
                if request.alarm != AlarmType::None as i32 && !self.alarms.contains(&wanted) {
                    self.alarms.push(wanted);
                    self.write_alarms(batch);
                }
                vec![wanted]
            }
            Ok(AlarmAction::Deactivate) => {
                let (gone, kept): (Vec<_>, Vec<_>) =
                    self.alarms.drain(..).partition(|a| matches(a));
                self.alarms = kept;
                self.write_alarms(batch);
                gone
            }
            Ok(AlarmAction::Get) | Err(_) => {
                self.alarms.iter().filter(|a| matches(a)).cloned().collect()
            }
        };
        AlarmResponse {
            header: Some(self.header()),
            alarms,
        }
    }

    /// Refuses a write while NOSPACE is raised, and raises it when `bytes`
    /// more would take the store past its quota (etcd's capped applier).
    /// The size is the same on every replica, so all raise it together.
    fn check_space(&mut self, bytes: u64, batch: &mut WriteBatch) -> Result<(), ApplyError> {
        let nospace = AlarmType::Nospace as i32;
        if self.alarms.iter().any(|a| a.alarm == nospace) {
            return Err(ApplyError::NoSpace);
        }
        if self.mvcc.size_bytes() + bytes > self.config.quota_bytes {
            // etcd raises the alarm for the member that noticed; here every
            // replica notices at the same entry, so it is raised once, for
            // the whole cluster (member 0).
            self.alarms.push(AlarmMember {
                member_id: 0,
                alarm: nospace,
            });
            self.write_alarms(batch);
            return Err(ApplyError::NoSpace);
        }
        Ok(())
    }

    /// Fills the header of a write's response and keeps lease attachments
    /// in step with its events.
    fn written<R: WithHeader>(
        &mut self,
        applied: Applied<R>,
        wrap: fn(R) -> Response,
    ) -> (Response, Vec<Event>) {
        self.track_leases(&applied.events);
        let mut response = applied.response;
        response.set_header(self.header());
        let mut response = wrap(response);
        if let Response::Txn(txn) = &mut response {
            stamp_revisions(txn, self.mvcc.revision());
        }
        (response, applied.events)
    }

    /// A put attaches its key to its lease (detaching it from the lease of
    /// the version it replaced); a delete detaches it.
    fn track_leases(&mut self, events: &[Event]) {
        for event in events {
            let Some(kv) = &event.kv else { continue };
            let previous = event.prev_kv.as_ref().map_or(0, |prev| prev.lease);
            let current = if event.r#type == EventType::Put as i32 {
                kv.lease
            } else {
                0
            };
            // Attaching fails only for a lease that is gone, which the
            // MVCC store refused before writing; detaching from a revoked
            // lease has nothing left to do.
            if previous != 0 && previous != current {
                let _ = self.lessor.detach(previous, &kv.key);
            }
            if current != 0 {
                let _ = self.lessor.attach(current, &kv.key);
            }
        }
    }

    fn set_applied(&mut self, index: u64, batch: &mut WriteBatch) {
        self.applied = index;
        batch.put(STATE, APPLIED_KEY, index.to_be_bytes());
    }

    fn write_alarms(&self, batch: &mut WriteBatch) {
        let alarms: Vec<(u64, i32)> = self.alarms.iter().map(|a| (a.member_id, a.alarm)).collect();
        // Serialising plain integers into memory cannot fail.
        let bytes = postcard::to_stdvec(&alarms).expect("alarms serialise");
        batch.put(STATE, ALARMS_KEY, bytes);
    }
}

/// Responses whose header the state machine fills.
trait WithHeader {
    fn set_header(&mut self, header: ResponseHeader);
}

macro_rules! with_header {
    ($($t:ty),*) => {$(
        impl WithHeader for $t {
            fn set_header(&mut self, header: ResponseHeader) {
                self.header = Some(header);
            }
        }
    )*};
}

with_header!(PutResponse, DeleteRangeResponse, TxnResponse);

/// Whether a txn may write in either branch: one that cannot is a read
/// (served without the log, and needing no quota).
pub fn txn_writes(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_writes(inner),
            Some(request_op::Request::RequestRange(_)) | None => false,
        })
}

/// Gives every response inside a txn a header holding the txn's revision,
/// as etcd does (only the outer one carries the ids and term).
fn stamp_revisions(txn: &mut TxnResponse, revision: i64) {
    use calm_proto::etcd::etcdserverpb::response_op::Response as Op;
    for op in &mut txn.responses {
        let header = Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        });
        match &mut op.response {
            Some(Op::ResponseRange(r)) => r.header = header,
            Some(Op::ResponsePut(r)) => r.header = header,
            Some(Op::ResponseDeleteRange(r)) => r.header = header,
            Some(Op::ResponseTxn(r)) => {
                r.header = header;
                stamp_revisions(r, revision);
            }
            None => {}
        }
    }
}

/// Re-attaches every live key to its lease (attachments are not stored:
/// they follow from the keys).
fn attach_keys(mvcc: &Mvcc, lessor: &mut Lessor) {
    for (key, lease) in mvcc.leased_keys() {
        // A key whose lease is gone was deleted with the lease's revoke;
        // the store and the lessor are written in the same batch.
        let _ = lessor.attach(lease, &key);
    }
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StateError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StateError::Corrupt("a stored number is not 8 bytes".to_string()))?;
    Ok(u64::from_be_bytes(array))
}

/// The key of one applied proposal in [`PROPOSERS`].
fn proposal_key(proposer: u64, proposal: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&proposer.to_be_bytes());
    key[8..].copy_from_slice(&proposal.to_be_bytes());
    key
}

/// Every proposer's window, written by earlier applies.
fn load_proposers(view: &impl ReadView) -> Result<BTreeMap<u64, BTreeSet<u64>>, StateError> {
    let mut proposers: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut start = Vec::new();
    loop {
        let range = KeyRange::starting_at(start);
        let page = view.scan(PROPOSERS, &range, Order::Ascending, PROPOSERS_PAGE)?;
        for (key, _) in &page {
            let (proposer, proposal) = key
                .split_at_checked(8)
                .ok_or_else(|| StateError::Corrupt("a proposal key is not 16 bytes".to_string()))?;
            let proposal = decode_u64(proposal)?;
            proposers
                .entry(decode_u64(proposer)?)
                .or_default()
                .insert(proposal);
        }
        match page.last() {
            // The next page starts just after the last key read.
            Some((last, _)) if page.len() == PROPOSERS_PAGE => {
                start = [last.as_slice(), &[0]].concat();
            }
            _ => return Ok(proposers),
        }
    }
}

fn decode_alarms(bytes: &[u8]) -> Result<Vec<AlarmMember>, StateError> {
    let alarms: Vec<(u64, i32)> =
        postcard::from_bytes(bytes).map_err(|e| StateError::Corrupt(format!("alarms: {e}")))?;
    Ok(alarms
        .into_iter()
        .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
        .collect())
}

#[cfg(test)]
mod tests {
    use calm_proto::etcd::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, PutRequest};
    use calm_storage::{Limits, MemoryEngine, Storage};

    use super::*;

    /// A state machine whose every batch lands in a memory engine, so a
    /// test can reload what was written.
    struct Harness {
        state: StateMachine,
        engine: MemoryEngine,
        index: u64,
    }

    impl Harness {
        fn new(config: StateConfig) -> Harness {
            Harness {
                state: StateMachine::new(config),
                engine: MemoryEngine::new(Limits::default()),
                index: 1,
            }
        }

        fn apply(&mut self, request: Request) -> Result<Response, ApplyError> {
            self.index += 1;
            let command = Command {
                proposal: self.index,
                proposer: 1,
                request: Some(request),
            };
            let mut batch = WriteBatch::new();
            let outcome = self
                .state
                .apply(self.index, &command.encode_to_vec(), &mut batch);
            self.engine
                .write(&batch)
                .expect("the batch is within limits");
            assert_eq!(
                outcome.proposal, self.index,
                "the proposal number comes back"
            );
            outcome.result
        }

        fn put(&mut self, key: &str, value: &str, lease: i64) -> Result<Response, ApplyError> {
            self.apply(Request::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                lease,
                ..PutRequest::default()
            }))
        }

        fn get(&self, key: &str) -> Option<Vec<u8>> {
            let request = RangeRequest {
                key: key.into(),
                ..RangeRequest::default()
            };
            let response = self.state.range(&request).expect("a range");
            response.kvs.first().map(|kv| kv.value.clone())
        }

        fn reloaded(&self) -> StateMachine {
            StateMachine::load(self.state.config.clone(), &self.engine).expect("it loads")
        }
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_at_one_revision() {
        // etcd: a revoke deletes every attached key in one txn.
        let mut h = Harness::new(StateConfig::default());
        let grant = LeaseGrantRequest { ttl: 60, id: 7 };
        h.apply(Request::LeaseGrant(grant)).expect("granted");
        h.put("a", "1", 7).expect("put on the lease");
        h.put("b", "2", 7).expect("put on the lease");
        h.put("c", "3", 0).expect("put without a lease");
        let before = h.state.mvcc().revision();
        h.apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 7 }))
            .expect("revoked");
        assert_eq!(
            h.state.mvcc().revision(),
            before + 1,
            "one revision for both"
        );
        assert_eq!((h.get("a"), h.get("b")), (None, None));
        assert_eq!(h.get("c"), Some(b"3".to_vec()), "unleased keys stay");
        assert!(!h.state.lessor().exists(7));
    }

    #[test]
    fn a_put_on_a_missing_lease_is_refused_and_changes_nothing() {
        let mut h = Harness::new(StateConfig::default());
        let before = h.state.mvcc().revision();
        let refused = h.put("a", "1", 99);
        assert!(matches!(
            refused,
            Err(ApplyError::Mvcc(MvccError::LeaseNotFound { .. }))
        ));
        assert_eq!(h.state.mvcc().revision(), before);
        assert_eq!(
            h.state.applied(),
            h.index,
            "the entry still counts as applied"
        );
    }

    #[test]
    fn a_key_moved_to_another_lease_leaves_the_first_one() {
        let mut h = Harness::new(StateConfig::default());
        for id in [1, 2] {
            h.apply(Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id }))
                .expect("granted");
        }
        h.put("k", "v1", 1).expect("on lease 1");
        h.put("k", "v2", 2).expect("moved to lease 2");
        assert!(h.state.lessor().keys(1).is_empty());
        h.apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 1 }))
            .expect("revoked");
        assert_eq!(
            h.get("k"),
            Some(b"v2".to_vec()),
            "revoking the old lease spares it"
        );
    }

    #[test]
    fn past_the_quota_writes_raise_nospace_and_reads_go_on() {
        // etcd's quota: the alarm is raised, writes refused, reads served,
        // and disarming it lets writes through again once space is freed.
        let config = StateConfig {
            quota_bytes: 400,
            ..StateConfig::default()
        };
        let mut h = Harness::new(config);
        let mut refused = None;
        for i in 0..20 {
            if let Err(error) = h.put(&format!("key-{i}"), "a value of some length", 0) {
                refused = Some(error);
                break;
            }
        }
        assert_eq!(refused, Some(ApplyError::NoSpace));
        assert_eq!(h.state.alarms().len(), 1, "NOSPACE raised");
        assert_eq!(
            h.put("small", "x", 0),
            Err(ApplyError::NoSpace),
            "every write"
        );
        assert!(h.get("key-0").is_some(), "reads are served");
        let deleted = h.apply(Request::DeleteRange(DeleteRangeRequest {
            key: b"key-".to_vec(),
            range_end: b"key.".to_vec(),
            ..DeleteRangeRequest::default()
        }));
        assert!(deleted.is_ok(), "deletes are allowed under the alarm");
        let revision = h.state.mvcc().revision();
        h.apply(Request::Compaction(
            calm_proto::etcd::etcdserverpb::CompactionRequest {
                revision,
                physical: false,
            },
        ))
        .expect("compacted");
        h.apply(Request::Alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 0,
            alarm: AlarmType::Nospace as i32,
        }))
        .expect("disarmed");
        assert!(h.state.alarms().is_empty());
        assert!(h.put("small", "x", 0).is_ok(), "writes resume");
        let reloaded = h.reloaded();
        assert!(reloaded.alarms().is_empty(), "the alarm state is durable");
    }

    #[test]
    fn what_was_written_reloads_to_the_same_state_and_snapshot() {
        let mut h = Harness::new(StateConfig::default());
        h.apply(Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 3 }))
            .expect("granted");
        h.put("a", "1", 3).expect("put");
        h.put("b", "2", 0).expect("put");
        h.apply(Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 5,
            alarm: AlarmType::Corrupt as i32,
        }))
        .expect("alarm raised");
        let reloaded = h.reloaded();
        assert_eq!(reloaded.applied(), h.state.applied());
        assert_eq!(reloaded.snapshot(), h.state.snapshot());
        assert_eq!(
            reloaded.lessor().keys(3),
            vec![b"a".to_vec()],
            "attachments rebuilt"
        );

        // A follower restoring the snapshot reaches the same state.
        let mut follower = StateMachine::new(StateConfig::default());
        let mut batch = WriteBatch::new();
        follower
            .restore(&h.state.snapshot(), &mut batch)
            .expect("restores");
        assert_eq!(follower.snapshot(), h.state.snapshot());
        assert_eq!(follower.applied(), h.state.applied());
    }

    #[test]
    fn a_proposal_appended_twice_applies_once_across_reloads_and_snapshots() {
        // Raft does not deduplicate proposals: a forwarded MsgPropose that
        // arrives twice is appended twice. The copy must change nothing.
        let put = |proposal: u64, value: &str| Command {
            proposal,
            proposer: 7,
            request: Some(Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: value.into(),
                ..PutRequest::default()
            })),
        };
        let mut h = Harness::new(StateConfig::default());
        let apply = |h: &mut Harness, command: &Command| {
            h.index += 1;
            let mut batch = WriteBatch::new();
            let outcome = h.state.apply(h.index, &command.encode_to_vec(), &mut batch);
            h.engine.write(&batch).expect("the batch is within limits");
            outcome
        };
        let first = apply(&mut h, &put(10, "one"));
        assert!(first.result.is_ok() && first.proposal == 10);
        let revision = h.state.mvcc().revision();
        let copy = apply(&mut h, &put(10, "one"));
        assert!(matches!(copy.result, Err(ApplyError::Duplicate)));
        assert_eq!(
            (copy.proposer, copy.proposal),
            (0, 0),
            "nobody waits for it"
        );
        assert_eq!(
            h.state.mvcc().revision(),
            revision,
            "the copy changed nothing"
        );

        // A reloaded node and a follower restoring a snapshot skip it too.
        let mut reloaded = h.reloaded();
        let mut batch = WriteBatch::new();
        let again = reloaded.apply(h.index + 1, &put(10, "one").encode_to_vec(), &mut batch);
        assert!(matches!(again.result, Err(ApplyError::Duplicate)));
        let mut follower = StateMachine::new(StateConfig::default());
        follower
            .restore(&h.state.snapshot(), &mut WriteBatch::new())
            .expect("restores");
        let again = follower.apply(h.index + 1, &put(10, "one").encode_to_vec(), &mut batch);
        assert!(matches!(again.result, Err(ApplyError::Duplicate)));
        // Later proposals apply, even overtaken by one numbered after
        // them (a forward that arrived late): numbers are unique, not
        // ordered by arrival.
        assert!(apply(&mut h, &put(12, "three")).result.is_ok());
        assert!(apply(&mut h, &put(11, "two")).result.is_ok());
        assert_eq!(h.get("k"), Some(b"two".to_vec()));
        assert!(matches!(
            apply(&mut h, &put(12, "three")).result,
            Err(ApplyError::Duplicate)
        ));
    }

    #[test]
    fn a_proposer_window_forgets_its_oldest_numbers_and_refuses_older_ones() {
        let mut h = Harness::new(StateConfig::default());
        let window = PROPOSAL_WINDOW as u64;
        for proposal in 1..=window + 1 {
            let command = Command {
                proposal,
                proposer: 3,
                request: Some(Request::Put(PutRequest {
                    key: b"k".to_vec(),
                    ..PutRequest::default()
                })),
            };
            let mut batch = WriteBatch::new();
            let outcome = h
                .state
                .apply(proposal, &command.encode_to_vec(), &mut batch);
            assert!(outcome.result.is_ok(), "{proposal}");
            h.engine.write(&batch).expect("the batch is within limits");
        }
        let applied = &h.state.proposers[&3];
        assert_eq!(applied.len(), PROPOSAL_WINDOW, "bounded");
        assert_eq!(applied.first(), Some(&2), "the oldest went");
        assert_eq!(h.reloaded().proposers, h.state.proposers, "and on disk");
        // Proposal 1, older than the window, counts as a copy.
        let command = Command {
            proposal: 1,
            proposer: 3,
            request: Some(Request::Put(PutRequest::default())),
        };
        let outcome = h
            .state
            .apply(window + 2, &command.encode_to_vec(), &mut WriteBatch::new());
        assert!(matches!(outcome.result, Err(ApplyError::Duplicate)));
    }

    #[test]
    fn garbage_entries_and_snapshots_are_errors_not_panics() {
        let mut state = StateMachine::new(StateConfig::default());
        let mut batch = WriteBatch::new();
        let outcome = state.apply(2, &[0xff, 0xff, 0x01], &mut batch);
        assert!(matches!(outcome.result, Err(ApplyError::Decode(_))));
        assert_eq!(state.applied(), 2, "a bad entry is still consumed");
        assert!(state.restore(b"not a snapshot", &mut batch).is_err());
    }

    #[test]
    fn txn_responses_carry_the_txn_revision_inside() {
        // etcd fills each inner response's header with the txn's revision.
        let mut h = Harness::new(StateConfig::default());
        let txn = TxnRequest {
            compare: Vec::new(),
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..PutRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        let Ok(Response::Txn(response)) = h.apply(Request::Txn(txn)) else {
            panic!("the txn applies");
        };
        let revision = h.state.mvcc().revision();
        let inner = response.responses[0].response.as_ref().expect("a response");
        let request_op_response = match inner {
            calm_proto::etcd::etcdserverpb::response_op::Response::ResponsePut(put) => put,
            other => panic!("a put response, got {other:?}"),
        };
        assert_eq!(
            request_op_response.header.as_ref().map(|h| h.revision),
            Some(revision)
        );
    }
}
