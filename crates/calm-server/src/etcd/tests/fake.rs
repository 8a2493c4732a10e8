//! An in-memory, single-member [`Coordinated`]: a small MVCC over a
//! `BTreeMap` with revisions, watches with history replay, and leases
//! without expiry. Enough for the services' tests; every call is counted,
//! so tests can check that refused requests never reach the backend.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use calm_proto::etcd::etcdserverpb::compare::{CompareResult, TargetUnion};
use calm_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use calm_proto::etcd::etcdserverpb::request_op::Request as Op;
use calm_proto::etcd::etcdserverpb::response_op::Response as OpResponse;
use calm_proto::etcd::etcdserverpb::watch_create_request::FilterType;
use calm_proto::etcd::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, Compare,
    DefragmentResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, Member, MemberAddRequest, MemberAddResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    MoveLeaderRequest, MoveLeaderResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, StatusResponse, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchResponse,
};
use calm_proto::etcd::mvccpb::event::EventType;
use calm_proto::etcd::mvccpb::{Event, KeyValue};
use tokio::sync::mpsc;
use tonic::Status;

use crate::etcd::backend::{Coordinated, WatchEvents};
use crate::etcd::error::EtcdError;

/// Responses a fake watch may queue; tests stay far below it.
const WATCH_QUEUE: usize = 1024;

/// The fake node.
pub(crate) struct Fake {
    state: Mutex<State>,
    calls: AtomicUsize,
    snapshot: Vec<u8>,
}

#[derive(Default)]
struct State {
    revision: i64,
    keys: BTreeMap<Vec<u8>, KeyValue>,
    /// Every event ever applied, in order (nothing is compacted).
    history: Vec<Event>,
    /// Granted TTL by lease id.
    leases: BTreeMap<i64, i64>,
    next_lease: i64,
    watchers: Vec<Watcher>,
}

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    filters: Vec<i32>,
    sender: mpsc::Sender<WatchResponse>,
}

impl Fake {
    /// A node whose snapshot is `snapshot`.
    pub(crate) fn with_snapshot(snapshot: Vec<u8>) -> Self {
        // etcd's store starts at revision 1: its first write is 2.
        Self::starting_at(1, snapshot)
    }

    /// A node whose store starts at `revision`.
    pub(crate) fn starting_at(revision: i64, snapshot: Vec<u8>) -> Self {
        Self {
            state: Mutex::new(State {
                revision,
                next_lease: 0x7e57_0000,
                ..State::default()
            }),
            calls: AtomicUsize::new(0),
            snapshot,
        }
    }

    /// How many backend methods were called so far.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Ends every watch as a compaction to `revision` does.
    pub(crate) fn compact_watches(&self, revision: i64) {
        let mut state = self.lock();
        let header = state.header();
        for watcher in state.watchers.drain(..) {
            let _ = watcher.sender.try_send(WatchResponse {
                header: Some(header),
                canceled: true,
                compact_revision: revision,
                ..WatchResponse::default()
            });
        }
    }

    /// How many watches the backend still serves.
    pub(crate) fn live_watches(&self) -> usize {
        let state = self.lock();
        state
            .watchers
            .iter()
            .filter(|watcher| !watcher.sender.is_closed())
            .count()
    }

    /// The current value of `key`, if any.
    pub(crate) fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().keys.get(key).map(|kv| kv.value.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state poisoned")
    }

    /// Counts the call and runs `work` on the state.
    fn call<T>(&self, work: impl FnOnce(&mut State) -> Result<T, Status>) -> Result<T, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        work(&mut self.lock())
    }
}

/// Whether `key` is in etcd's range `[key, range_end)`.
fn in_range(key: &[u8], begin: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == begin,
        [0] => key >= begin,
        end => begin <= key && key < end,
    }
}

impl State {
    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            cluster_id: 1,
            member_id: 1,
            revision: self.revision,
            raft_term: 1,
        }
    }

    fn range(&self, request: &RangeRequest) -> RangeResponse {
        let mut kvs: Vec<KeyValue> = self
            .keys
            .values()
            .filter(|kv| in_range(&kv.key, &request.key, &request.range_end))
            .filter(|kv| {
                request.max_create_revision == 0
                    || kv.create_revision <= request.max_create_revision
            })
            .cloned()
            .collect();
        sort(&mut kvs, request);
        let count = kvs.len() as i64;
        let more = request.limit > 0 && count > request.limit;
        if request.limit > 0 {
            kvs.truncate(request.limit as usize);
        }
        RangeResponse {
            header: Some(self.header()),
            kvs,
            more,
            count,
        }
    }

    fn put(
        &mut self,
        request: &PutRequest,
        events: &mut Vec<Event>,
    ) -> Result<PutResponse, Status> {
        if request.lease != 0 && !self.leases.contains_key(&request.lease) {
            return Err(EtcdError::LeaseNotFound.into());
        }
        let revision = self.revision + 1;
        let previous = self.keys.get(&request.key).cloned();
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision: previous.as_ref().map_or(revision, |kv| kv.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |kv| kv.version + 1),
            value: request.value.clone(),
            lease: request.lease,
        };
        self.keys.insert(request.key.clone(), kv.clone());
        events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(PutResponse {
            header: None,
            prev_kv: previous.filter(|_| request.prev_kv),
        })
    }

    fn delete(
        &mut self,
        request: &DeleteRangeRequest,
        events: &mut Vec<Event>,
    ) -> DeleteRangeResponse {
        let revision = self.revision + 1;
        let doomed: Vec<Vec<u8>> = self
            .keys
            .keys()
            .filter(|key| in_range(key, &request.key, &request.range_end))
            .cloned()
            .collect();
        let mut prev_kvs = Vec::new();
        for key in &doomed {
            if let Some(previous) = self.keys.remove(key) {
                events.push(Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: key.clone(),
                        mod_revision: revision,
                        ..KeyValue::default()
                    }),
                    prev_kv: None,
                });
                prev_kvs.push(previous);
            }
        }
        DeleteRangeResponse {
            header: None,
            deleted: doomed.len() as i64,
            prev_kvs: if request.prev_kv {
                prev_kvs
            } else {
                Vec::new()
            },
        }
    }

    fn txn(
        &mut self,
        request: &TxnRequest,
        events: &mut Vec<Event>,
    ) -> Result<TxnResponse, Status> {
        let succeeded = request.compare.iter().all(|compare| self.holds(compare));
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut responses = Vec::new();
        for op in ops {
            let response = match &op.request {
                Some(Op::RequestRange(range)) => OpResponse::ResponseRange(self.range(range)),
                Some(Op::RequestPut(put)) => OpResponse::ResponsePut(self.put(put, events)?),
                Some(Op::RequestDeleteRange(delete)) => {
                    OpResponse::ResponseDeleteRange(self.delete(delete, events))
                }
                Some(Op::RequestTxn(txn)) => OpResponse::ResponseTxn(self.txn(txn, events)?),
                None => return Err(Status::invalid_argument("empty op")),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    fn holds(&self, compare: &Compare) -> bool {
        let kv = self.keys.get(&compare.key);
        let ordering = match (&compare.target_union, kv) {
            (Some(TargetUnion::Value(_)), None) => return false,
            (Some(TargetUnion::Version(v)), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (Some(TargetUnion::CreateRevision(r)), kv) => {
                kv.map_or(0, |kv| kv.create_revision).cmp(r)
            }
            (Some(TargetUnion::ModRevision(r)), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            (Some(TargetUnion::Value(v)), Some(kv)) => kv.value.cmp(v),
            (Some(TargetUnion::Lease(l)), kv) => kv.map_or(0, |kv| kv.lease).cmp(l),
            (None, _) => return false,
        };
        match CompareResult::try_from(compare.result) {
            Ok(CompareResult::Equal) => ordering.is_eq(),
            Ok(CompareResult::Greater) => ordering.is_gt(),
            Ok(CompareResult::Less) => ordering.is_lt(),
            Ok(CompareResult::NotEqual) => ordering.is_ne(),
            Err(_) => false,
        }
    }

    /// Makes `events` one new revision and tells the watchers.
    fn commit(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.revision += 1;
        let header = self.header();
        self.watchers.retain(|watcher| {
            let matching = watcher.matching(&events);
            matching.is_empty()
                || watcher
                    .sender
                    .try_send(WatchResponse {
                        header: Some(header),
                        events: matching,
                        ..WatchResponse::default()
                    })
                    .is_ok()
        });
        self.history.extend(events);
    }
}

impl Watcher {
    fn matching(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|event| {
                let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key);
                let filtered = match EventType::try_from(event.r#type) {
                    Ok(EventType::Put) => self.filters.contains(&(FilterType::Noput as i32)),
                    Ok(EventType::Delete) => self.filters.contains(&(FilterType::Nodelete as i32)),
                    Err(_) => true,
                };
                !filtered && in_range(key, &self.key, &self.range_end)
            })
            .cloned()
            .collect()
    }
}

fn sort(kvs: &mut [KeyValue], request: &RangeRequest) {
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

/// Runs one write: `apply` collects its events, then they commit as one
/// revision and the response gets the header.
fn write<T>(
    state: &mut State,
    apply: impl FnOnce(&mut State, &mut Vec<Event>) -> Result<T, Status>,
    set_header: impl FnOnce(&mut T, ResponseHeader),
) -> Result<T, Status> {
    let mut events = Vec::new();
    let mut response = apply(state, &mut events)?;
    state.commit(events);
    set_header(&mut response, state.header());
    Ok(response)
}

impl Coordinated for Fake {
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        self.call(|state| Ok(state.range(&request)))
    }

    async fn put(&self, request: PutRequest) -> Result<PutResponse, Status> {
        self.call(|state| write(state, |s, e| s.put(&request, e), |r, h| r.header = Some(h)))
    }

    async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        self.call(|state| {
            write(
                state,
                |s, e| Ok(s.delete(&request, e)),
                |r, h| r.header = Some(h),
            )
        })
    }

    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        self.call(|state| write(state, |s, e| s.txn(&request, e), |r, h| r.header = Some(h)))
    }

    async fn compact(&self, _request: CompactionRequest) -> Result<CompactionResponse, Status> {
        self.call(|state| {
            Ok(CompactionResponse {
                header: Some(state.header()),
            })
        })
    }

    async fn watch(&self, request: WatchCreateRequest) -> Result<WatchEvents, Status> {
        self.call(|state| {
            let (sender, events) = mpsc::channel(WATCH_QUEUE);
            let watcher = Watcher {
                key: request.key,
                range_end: request.range_end,
                filters: request.filters,
                sender,
            };
            // Replay history from the start revision, one response per
            // revision, before going live.
            if request.start_revision > 0 {
                let past: Vec<Event> = state
                    .history
                    .iter()
                    .filter(|event| {
                        event
                            .kv
                            .as_ref()
                            .is_some_and(|kv| kv.mod_revision >= request.start_revision)
                    })
                    .cloned()
                    .collect();
                let mut by_revision: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
                for event in watcher.matching(&past) {
                    let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    by_revision.entry(revision).or_default().push(event);
                }
                for (revision, events) in by_revision {
                    let header = ResponseHeader {
                        revision,
                        ..state.header()
                    };
                    let _ = watcher.sender.try_send(WatchResponse {
                        header: Some(header),
                        events,
                        ..WatchResponse::default()
                    });
                }
            }
            state.watchers.push(watcher);
            Ok(events)
        })
    }

    async fn progress(&self) -> Result<ResponseHeader, Status> {
        self.call(|state| Ok(state.header()))
    }

    async fn lease_grant(&self, request: LeaseGrantRequest) -> Result<LeaseGrantResponse, Status> {
        self.call(|state| {
            let id = match request.id {
                0 => {
                    state.next_lease += 1;
                    state.next_lease
                }
                id => id,
            };
            if state.leases.insert(id, request.ttl).is_some() {
                return Err(EtcdError::LeaseExists.into());
            }
            Ok(LeaseGrantResponse {
                header: Some(state.header()),
                id,
                ttl: request.ttl,
                error: String::new(),
            })
        })
    }

    async fn lease_revoke(
        &self,
        request: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, Status> {
        self.call(|state| {
            if state.leases.remove(&request.id).is_none() {
                return Err(EtcdError::LeaseNotFound.into());
            }
            let doomed: Vec<Vec<u8>> = state
                .keys
                .values()
                .filter(|kv| kv.lease == request.id)
                .map(|kv| kv.key.clone())
                .collect();
            write(
                state,
                |s, e| {
                    for key in doomed {
                        s.delete(
                            &DeleteRangeRequest {
                                key,
                                ..Default::default()
                            },
                            e,
                        );
                    }
                    Ok(LeaseRevokeResponse::default())
                },
                |r, h| r.header = Some(h),
            )
        })
    }

    async fn lease_keep_alive(
        &self,
        request: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        self.call(|state| match state.leases.get(&request.id) {
            Some(&ttl) => Ok(LeaseKeepAliveResponse {
                header: Some(state.header()),
                id: request.id,
                ttl,
            }),
            None => Err(EtcdError::LeaseNotFound.into()),
        })
    }

    async fn lease_time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        self.call(|state| match state.leases.get(&request.id) {
            Some(&ttl) => Ok(LeaseTimeToLiveResponse {
                header: Some(state.header()),
                id: request.id,
                ttl,
                granted_ttl: ttl,
                keys: Vec::new(),
            }),
            None => Err(EtcdError::LeaseNotFound.into()),
        })
    }

    async fn lease_leases(&self) -> Result<LeaseLeasesResponse, Status> {
        self.call(|state| {
            Ok(LeaseLeasesResponse {
                header: Some(state.header()),
                leases: state.leases.keys().map(|&id| LeaseStatus { id }).collect(),
            })
        })
    }

    async fn member_list(&self, _request: MemberListRequest) -> Result<MemberListResponse, Status> {
        self.call(|state| {
            Ok(MemberListResponse {
                header: Some(state.header()),
                members: vec![Member {
                    id: 1,
                    name: "fake".into(),
                    peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
                    client_ur_ls: vec!["http://127.0.0.1:2379".into()],
                    is_learner: false,
                }],
            })
        })
    }

    async fn member_add(&self, _request: MemberAddRequest) -> Result<MemberAddResponse, Status> {
        self.call(|_| Err(Status::unimplemented("fake")))
    }

    async fn member_remove(
        &self,
        _request: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, Status> {
        self.call(|_| Err(Status::unimplemented("fake")))
    }

    async fn member_update(
        &self,
        _request: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, Status> {
        self.call(|_| Err(Status::unimplemented("fake")))
    }

    async fn member_promote(
        &self,
        _request: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, Status> {
        self.call(|_| Err(Status::unimplemented("fake")))
    }

    async fn status(&self) -> Result<StatusResponse, Status> {
        self.call(|state| {
            Ok(StatusResponse {
                header: Some(state.header()),
                version: "3.5.0".into(),
                leader: 1,
                ..StatusResponse::default()
            })
        })
    }

    async fn alarm(&self, _request: AlarmRequest) -> Result<AlarmResponse, Status> {
        self.call(|state| {
            Ok(AlarmResponse {
                header: Some(state.header()),
                alarms: Vec::new(),
            })
        })
    }

    async fn hash_kv(&self, _request: HashKvRequest) -> Result<HashKvResponse, Status> {
        self.call(|_| Err(Status::unimplemented("fake")))
    }

    async fn defragment(&self) -> Result<DefragmentResponse, Status> {
        self.call(|_| Err(Status::unimplemented("fake")))
    }

    async fn move_leader(&self, _request: MoveLeaderRequest) -> Result<MoveLeaderResponse, Status> {
        self.call(|_| Err(Status::unimplemented("fake")))
    }

    async fn snapshot(&self) -> Result<Vec<u8>, Status> {
        self.call(|_| Ok(self.snapshot.clone()))
    }
}
