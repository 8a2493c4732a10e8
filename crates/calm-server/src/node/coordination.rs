//! The coordinated keyspace's half of the event loop: the tokio side of
//! [`calm_raft::Keyspace`].
//!
//! The core holds every protocol decision; this driver only keeps the
//! channels its replies and watch batches go to. The event loop calls it at
//! fixed points of a turn: commands and Raft messages as they arrive,
//! [`Coordination::tick`] on its timer, and around the turn's sync
//! [`Coordination::before_sync`] and [`Coordination::after_sync`], so the
//! keyspace shares the node's one fsync per turn with the replica.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use calm_proto::calm::raft::v1::command::Request;
use calm_proto::etcd::etcdserverpb::{
    HashKvResponse, LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, Member, MemberAddRequest, MemberAddResponse, MemberListResponse,
    MemberPromoteResponse, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    RangeRequest, RangeResponse, ResponseHeader, StatusResponse, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchResponse,
};
use calm_raft::{
    Keyspace, KeyspaceConfig, KeyspaceError, LeaseQuestion, MembershipChange, Output, RaftConfig,
    Read, Reply, RequestId, Response, StateConfig, WatchBatch, WatchConfig, WatchId, WatchSpec,
};
use calm_storage::{DiskEngine, Storage, WriteBatch};
use calm_types::NodeId;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// A reply the loop owes a caller.
pub(super) type Answer<T> = oneshot::Sender<Result<T, Status>>;

/// A request of the etcd API for the loop.
pub(super) enum EtcdCommand {
    /// A write (or a read through the log), proposed to Raft.
    Write {
        request: Request,
        reply: Answer<Response>,
    },
    /// A range; linearizable unless the request says serializable.
    Range {
        request: RangeRequest,
        reply: Answer<RangeResponse>,
    },
    /// A txn without writes, served like a range.
    ReadTxn {
        request: TxnRequest,
        reply: Answer<TxnResponse>,
    },
    /// Opens a watch that sends its responses to `events`.
    Watch {
        request: WatchCreateRequest,
        events: mpsc::Sender<WatchResponse>,
    },
    /// A header at the current revision.
    Progress { reply: Answer<ResponseHeader> },
    /// Renews a lease; the answer is its TTL in seconds.
    KeepAlive { id: i64, reply: Answer<i64> },
    /// A lease's TTLs and keys.
    TimeToLive {
        request: LeaseTimeToLiveRequest,
        reply: Answer<LeaseTimeToLiveResponse>,
    },
    /// Every lease.
    Leases { reply: Answer<LeaseLeasesResponse> },
    /// The Raft members.
    Members { reply: Answer<MemberListResponse> },
    /// Adds the node listening on one of `request.peer_ur_ls`.
    MemberAdd {
        request: MemberAddRequest,
        reply: Answer<MemberAddResponse>,
    },
    /// Removes a member.
    MemberRemove {
        id: u64,
        reply: Answer<MemberRemoveResponse>,
    },
    /// Promotes a learner.
    MemberPromote {
        id: u64,
        reply: Answer<MemberPromoteResponse>,
    },
    /// Confirms a member's peer URLs (they are the addresses it
    /// advertises; an operator cannot move them).
    MemberUpdate {
        request: MemberUpdateRequest,
        reply: Answer<MemberUpdateResponse>,
    },
    /// This member's status.
    Status { reply: Answer<StatusResponse> },
    /// The keyspace's hash at a revision.
    HashKv {
        revision: i64,
        reply: Answer<HashKvResponse>,
    },
    /// Hands leadership to `target`.
    MoveLeader { target: u64, reply: Answer<()> },
    /// The whole keyspace as one blob.
    Snapshot { reply: Answer<Vec<u8>> },
    /// Where a node outside the keyspace's membership forwards etcd
    /// requests: a voter's client address, or `None` when this node is a
    /// member (it serves them) or knows no voter's address.
    ForwardTarget { reply: Answer<Option<SocketAddr>> },
}

/// A caller waiting for the core's reply to its request.
enum Waiter {
    Write(Answer<Response>),
    Range(Answer<RangeResponse>),
    Txn(Answer<TxnResponse>),
    KeepAlive(Answer<i64>),
    TimeToLive(LeaseTimeToLiveRequest, Answer<LeaseTimeToLiveResponse>),
    MemberAdd(u64, Answer<MemberAddResponse>),
    MemberRemove(Answer<MemberRemoveResponse>),
    MemberPromote(Answer<MemberPromoteResponse>),
}

/// Options of the coordinated keyspace on one node.
#[derive(Clone, Debug)]
pub struct CoordinationOptions {
    /// The voters of a new cluster (every voter lists the same ones).
    pub voters: Vec<NodeId>,
    /// Raft's timing and bounds (its `id` is set from the node's).
    pub raft: RaftConfig,
    /// How often Raft ticks, in milliseconds.
    pub tick_ms: u64,
    /// Applied entries between snapshots (and log compactions).
    pub snapshot_count: u64,
    /// The state machine's bounds (quota, leases).
    pub state: StateConfig,
}

/// The coordinated keyspace on a voter, with the channels it answers on.
pub(super) struct Coordination {
    keyspace: Keyspace,
    tick_ms: u64,
    waiters: HashMap<RequestId, Waiter>,
    watchers: HashMap<WatchId, mpsc::Sender<WatchResponse>>,
    /// Every node's peer and client address, as the loop last published.
    addresses: HashMap<NodeId, NodeAddresses>,
    /// The configured voters (`--raft-voters`), which a node outside the
    /// membership forwards to.
    voters: Vec<NodeId>,
    /// Watches whose queue was full: they get nothing until it has room.
    paused: HashSet<WatchId>,
    next_request: u64,
}

impl Coordination {
    /// Opens the keyspace from `storage`: restarts Raft from its log, or
    /// bootstraps a new cluster of `options.voters` (durably, before any
    /// message leaves).
    pub(super) fn open(
        me: NodeId,
        cluster: &str,
        options: CoordinationOptions,
        storage: &DiskEngine,
    ) -> Result<Coordination, String> {
        let election_timeout_ms = options.tick_ms * options.raft.election_tick as u64;
        let config = KeyspaceConfig {
            raft: RaftConfig {
                id: me.0,
                ..options.raft
            },
            // etcd: 5 s plus two election timeouts.
            request_timeout_ms: 5_000 + 2 * election_timeout_ms,
            election_timeout_ms,
            snapshot_count: options.snapshot_count,
            state: options.state,
            cluster_id: calm_ring::KeyHash::of(cluster.as_bytes()).0,
            watch: WatchConfig::default(),
            leaderless_max: 10_000,
        };
        let voters: Vec<u64> = options.voters.iter().map(|n| n.0).collect();
        let mut batch = WriteBatch::new();
        let keyspace =
            Keyspace::open(config, &voters, storage, &mut batch).map_err(|e| e.to_string())?;
        if !batch.is_empty() {
            storage.write(&batch).map_err(|e| e.to_string())?;
            storage.sync().map_err(|e| e.to_string())?;
        }
        Ok(Coordination {
            keyspace,
            tick_ms: options.tick_ms,
            waiters: HashMap::new(),
            watchers: HashMap::new(),
            paused: HashSet::new(),
            addresses: HashMap::new(),
            voters: options.voters.clone(),
            next_request: 0,
        })
    }

    /// How often [`tick`](Self::tick) is due.
    pub(super) fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    // ---- Inputs ----

    /// A message on the Raft channel.
    pub(super) fn inbound(
        &mut self,
        from: NodeId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), String> {
        self.keyspace.step(from.0, bytes, now_ms)
    }

    /// The address book member lists and MemberAdd use.
    pub(super) fn set_addresses(&mut self, addresses: HashMap<NodeId, NodeAddresses>) {
        self.addresses = addresses;
    }

    /// The level a data request pays at and the network round trips on its
    /// critical path, for the coordination tax; `None` for requests that
    /// are not data (leases, members, maintenance). A write or a ReadIndex
    /// read costs the leader one round to a quorum of followers; a request
    /// arriving at a follower adds its forward to the leader and the answer
    /// coming back. A serializable read is answered here. (Lease-based
    /// reads on the leader are counted as a ReadIndex round: an upper
    /// bound.)
    pub(super) fn tax_of(&self, command: &EtcdCommand) -> Option<(&'static str, u64)> {
        let round_trips = || {
            let status = self.keyspace.raft_status();
            match (status.voters.len(), status.leader == Some(status.id)) {
                (0 | 1, _) => 0,
                (_, true) => 1,
                (_, false) => 2,
            }
        };
        match command {
            EtcdCommand::Range { request, .. } if request.serializable => Some(("serializable", 0)),
            EtcdCommand::Write { .. } | EtcdCommand::Range { .. } | EtcdCommand::ReadTxn { .. } => {
                Some(("linearizable", round_trips()))
            }
            _ => None,
        }
    }

    /// A request from the etcd API.
    pub(super) fn command(&mut self, command: EtcdCommand, now_ms: u64) {
        let serves_locally = matches!(
            command,
            EtcdCommand::Members { .. }
                | EtcdCommand::Status { .. }
                | EtcdCommand::Progress { .. }
                | EtcdCommand::Snapshot { .. }
                | EtcdCommand::ForwardTarget { .. }
        );
        if !serves_locally && !self.keyspace.is_member() {
            // Not retryable here (etcd clients retry UNAVAILABLE at once):
            // the client must pick another endpoint.
            command.refuse(Status::failed_precondition(
                "calm: this node is not a member of the coordinated keyspace yet \
                 (add it with MemberAdd, or use a member's endpoint)",
            ));
            return;
        }
        match command {
            EtcdCommand::Write { request, reply } => {
                let id = self.wait(Waiter::Write(reply));
                self.keyspace.propose(id, request, now_ms);
            }
            EtcdCommand::Range { request, reply } if request.serializable => {
                let result = self.keyspace.state().range(&request);
                let result = result.map_err(|e| status(KeyspaceError::from(e)));
                let _ = reply.send(result.map(|mut r| {
                    self.keyspace
                        .fill(r.header.get_or_insert_with(ResponseHeader::default));
                    r
                }));
            }
            EtcdCommand::Range { request, reply } => {
                let id = self.wait(Waiter::Range(reply));
                self.keyspace.read(id, Read::Range(request), now_ms);
            }
            EtcdCommand::ReadTxn { request, reply } => {
                let id = self.wait(Waiter::Txn(reply));
                self.keyspace.read(id, Read::Txn(request), now_ms);
            }
            EtcdCommand::Watch { request, events } => match self.keyspace.watch(spec(&request)) {
                Ok(id) => {
                    self.watchers.insert(id, events);
                }
                Err(error) => {
                    // etcd answers a refused watch on the stream: created
                    // and canceled at once, with the reason.
                    let response = WatchResponse {
                        header: Some(self.keyspace.header()),
                        canceled: true,
                        cancel_reason: error.cancel_reason().to_string(),
                        ..WatchResponse::default()
                    };
                    let _ = events.try_send(response);
                }
            },
            EtcdCommand::Progress { reply } => {
                let _ = reply.send(Ok(self.keyspace.progress_header()));
            }
            EtcdCommand::KeepAlive { id: lease, reply } => {
                let id = self.wait(Waiter::KeepAlive(reply));
                self.keyspace.ask(id, LeaseQuestion::Renew(lease), now_ms);
            }
            EtcdCommand::TimeToLive { request, reply } => {
                let question = LeaseQuestion::TimeToLive(request.id);
                let id = self.wait(Waiter::TimeToLive(request, reply));
                self.keyspace.ask(id, question, now_ms);
            }
            EtcdCommand::Leases { reply } => {
                let leases = self.keyspace.state().lessor().leases();
                let leases = leases.into_iter().map(|id| LeaseStatus { id }).collect();
                let header = Some(self.keyspace.header());
                let _ = reply.send(Ok(LeaseLeasesResponse { header, leases }));
            }
            EtcdCommand::Members { reply } => {
                let _ = reply.send(Ok(self.members()));
            }
            EtcdCommand::MemberAdd { request, reply } => {
                let Some(node) = self.node_at(&request.peer_ur_ls) else {
                    let _ = reply.send(Err(Status::failed_precondition(format!(
                        "calm: no node with peer URL {:?} has joined the cluster; start it with \
                         --seeds first",
                        request.peer_ur_ls
                    ))));
                    return;
                };
                let change = match request.is_learner {
                    true => MembershipChange::AddLearner(node.0),
                    false => MembershipChange::AddVoter(node.0),
                };
                let id = self.wait(Waiter::MemberAdd(node.0, reply));
                self.keyspace.change_membership(id, vec![change], now_ms);
            }
            EtcdCommand::MemberRemove { id: member, reply } => {
                let id = self.wait(Waiter::MemberRemove(reply));
                let change = vec![MembershipChange::Remove(member)];
                self.keyspace.change_membership(id, change, now_ms);
            }
            EtcdCommand::MemberPromote { id: member, reply } => {
                let id = self.wait(Waiter::MemberPromote(reply));
                let change = vec![MembershipChange::PromoteLearner(member)];
                self.keyspace.change_membership(id, change, now_ms);
            }
            EtcdCommand::MemberUpdate { request, reply } => {
                let _ = reply.send(self.member_update(&request));
            }
            EtcdCommand::Status { reply } => {
                let _ = reply.send(Ok(self.keyspace.status()));
            }
            EtcdCommand::HashKv { revision, reply } => {
                let _ = reply.send(self.keyspace.hash_kv(revision).map_err(status));
            }
            EtcdCommand::MoveLeader { target, reply } => {
                let _ = reply.send(self.keyspace.transfer_leader(target).map_err(status));
            }
            EtcdCommand::Snapshot { reply } => {
                let _ = reply.send(Ok(self.keyspace.state().snapshot()));
            }
            EtcdCommand::ForwardTarget { reply } => {
                let _ = reply.send(Ok(self.forward_target()));
            }
        }
    }

    /// See [`EtcdCommand::ForwardTarget`]: the first voter, of the current
    /// membership as this node knows it or else of the configured ones,
    /// whose client address gossip has published.
    fn forward_target(&self) -> Option<SocketAddr> {
        if self.keyspace.is_member() {
            return None;
        }
        let status = self.keyspace.raft_status();
        let known = status.voters.into_iter().map(NodeId);
        known
            .chain(self.voters.iter().copied())
            .filter(|&voter| voter.0 != status.id)
            .find_map(|voter| self.addresses.get(&voter)?.client)
    }

    /// The member list: Raft's voters and learners with their addresses.
    fn members(&self) -> MemberListResponse {
        let status = self.keyspace.raft_status();
        let members = self.member_rows(&status.voters, &status.learners);
        // etcd's member list header carries no revision.
        MemberListResponse {
            header: self.membership_header(),
            members,
        }
    }

    /// Raft's clock and the core's timers.
    pub(super) fn tick(&mut self, now_ms: u64) {
        self.keyspace.tick(now_ms);
    }

    /// Fails every waiting request: the node is stopping.
    pub(super) fn shut_down(&mut self) {
        self.keyspace.shut_down();
    }

    // ---- Around the sync ----

    /// Raft's ready into `batch`; whether it needs a sync.
    pub(super) fn before_sync(&mut self, batch: &mut WriteBatch) -> Result<bool, String> {
        self.keyspace.before_sync(batch)
    }

    /// After the sync: applies what committed; the batches to write.
    pub(super) fn after_sync(&mut self, now_ms: u64) -> Result<Vec<WriteBatch>, String> {
        self.keyspace.after_sync(now_ms)
    }

    /// Carries out the core's outputs: replies and watch batches here,
    /// peer messages returned for the loop to send.
    pub(super) fn outputs(&mut self) -> Vec<(NodeId, Vec<u8>)> {
        let mut messages = Vec::new();
        while let Some(output) = self.keyspace.poll() {
            match output {
                Output::Send { to, bytes } => messages.push((NodeId(to), bytes)),
                Output::Reply { id, result } => self.answer(id, result),
                Output::Watch { id, batch } => self.deliver(id, batch),
                Output::Trouble(trouble) => tracing::warn!(%trouble, "coordinated keyspace"),
            }
        }
        let keyspace = &mut self.keyspace;
        self.watchers.retain(|id, sender| {
            let open = !sender.is_closed();
            if !open {
                keyspace.cancel_watch(*id);
            }
            open
        });
        // A paused watch resumes once its queue has room again; it then
        // catches up from the store at the next tick.
        let watchers = &self.watchers;
        self.paused.retain(|id| {
            let room = watchers.get(id).is_some_and(|sender| sender.capacity() > 0);
            if room {
                keyspace.resume_watch(*id);
            }
            !room && watchers.contains_key(id)
        });
        messages
    }

    // ---- Internals ----

    fn member(&self, id: u64, is_learner: bool) -> Member {
        let addresses = self.addresses.get(&NodeId(id));
        let url =
            |addr: Option<SocketAddr>| addr.map(|a| format!("http://{a}")).into_iter().collect();
        Member {
            id,
            name: format!("n{id}"),
            peer_ur_ls: url(addresses.and_then(|a| a.peer)),
            client_ur_ls: url(addresses.and_then(|a| a.client)),
            is_learner,
        }
    }

    fn member_rows(&self, voters: &[u64], learners: &[u64]) -> Vec<Member> {
        voters
            .iter()
            .map(|&id| self.member(id, false))
            .chain(learners.iter().map(|&id| self.member(id, true)))
            .collect()
    }

    /// The node whose peer address is one of `urls` (`http://host:port`).
    /// etcd's MemberUpdate, where a member's peer URLs are the addresses
    /// it advertises through gossip: an update naming those is answered
    /// with the member list (so `etcdctl member update` with the current
    /// URLs succeeds, as on etcd); one naming others is refused, since
    /// only the node itself can move (restart it with a new
    /// `--advertise-peer`).
    fn member_update(&self, request: &MemberUpdateRequest) -> Result<MemberUpdateResponse, Status> {
        let status = self.keyspace.raft_status();
        let known = status.voters.contains(&request.id) || status.learners.contains(&request.id);
        if !known {
            return Err(Status::not_found("etcdserver: member not found"));
        }
        if self.node_at(&request.peer_ur_ls) != Some(NodeId(request.id)) {
            return Err(Status::failed_precondition(format!(
                "calm: member {:x} advertises its own peer URL (--advertise-peer), not {:?}; \
                 restart it with the new address instead",
                request.id, request.peer_ur_ls
            )));
        }
        let MemberListResponse { header, members } = self.members();
        Ok(MemberUpdateResponse { header, members })
    }

    fn node_at(&self, urls: &[String]) -> Option<NodeId> {
        let wanted: Vec<SocketAddr> = urls
            .iter()
            .filter_map(|url| url.rsplit("://").next()?.trim_end_matches('/').parse().ok())
            .collect();
        self.addresses
            .iter()
            .find(|(_, a)| a.peer.is_some_and(|peer| wanted.contains(&peer)))
            .map(|(&node, _)| node)
    }

    /// A header without a revision: membership is not part of the keyspace.
    fn membership_header(&self) -> Option<ResponseHeader> {
        let mut header = self.keyspace.header();
        header.revision = 0;
        Some(header)
    }

    fn wait(&mut self, waiter: Waiter) -> RequestId {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.waiters.insert(id, waiter);
        id
    }

    fn answer(&mut self, id: RequestId, result: Result<Reply, KeyspaceError>) {
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        let result = result.map_err(status);
        match waiter {
            Waiter::Write(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    Reply::Applied(response) => Ok(response),
                    other => Err(mismatch(&other)),
                }));
            }
            Waiter::Range(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    Reply::Range(response) => Ok(response),
                    other => Err(mismatch(&other)),
                }));
            }
            Waiter::Txn(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    Reply::Txn(response) => Ok(response),
                    other => Err(mismatch(&other)),
                }));
            }
            Waiter::KeepAlive(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    Reply::Lease(ttl) => Ok(ttl.ttl),
                    other => Err(mismatch(&other)),
                }));
            }
            Waiter::MemberAdd(node, reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    Reply::Membership(m) => Ok(MemberAddResponse {
                        header: self.membership_header(),
                        member: Some(self.member(node, m.learners.contains(&node))),
                        members: self.member_rows(&m.voters, &m.learners),
                    }),
                    other => Err(mismatch(&other)),
                }));
            }
            Waiter::MemberRemove(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    Reply::Membership(m) => Ok(MemberRemoveResponse {
                        header: self.membership_header(),
                        members: self.member_rows(&m.voters, &m.learners),
                    }),
                    other => Err(mismatch(&other)),
                }));
            }
            Waiter::MemberPromote(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    Reply::Membership(m) => Ok(MemberPromoteResponse {
                        header: self.membership_header(),
                        members: self.member_rows(&m.voters, &m.learners),
                    }),
                    other => Err(mismatch(&other)),
                }));
            }
            Waiter::TimeToLive(request, reply) => {
                let response = result.and_then(|r| match r {
                    Reply::Lease(ttl) => Ok(self.time_to_live(&request, ttl)),
                    other => Err(mismatch(&other)),
                });
                let _ = reply.send(response);
            }
        }
    }

    fn time_to_live(
        &self,
        request: &LeaseTimeToLiveRequest,
        ttl: calm_raft::LeaseTtl,
    ) -> LeaseTimeToLiveResponse {
        let keys = if request.keys && ttl.granted > 0 {
            self.keyspace.state().lessor().keys(request.id)
        } else {
            Vec::new()
        };
        LeaseTimeToLiveResponse {
            header: Some(self.keyspace.header()),
            id: request.id,
            ttl: ttl.ttl,
            granted_ttl: ttl.granted,
            keys,
        }
    }

    /// Sends a batch to its watcher; a full channel pauses the watch (it
    /// catches up from the store later, skipping nothing), a closed one
    /// cancels it.
    fn deliver(&mut self, id: WatchId, batch: WatchBatch) {
        // The core's contract: after a failed send, every later batch held
        // for the watch is dropped too; catch-up resends them.
        if self.paused.contains(&id) {
            return;
        }
        let Some(sender) = self.watchers.get(&id) else {
            return;
        };
        let response = self.watch_response(&batch);
        match sender.try_send(response) {
            Ok(()) if batch.canceled => {
                self.watchers.remove(&id);
                self.keyspace.cancel_watch(id);
            }
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.keyspace.pause_watch(id, &batch);
                self.paused.insert(id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.watchers.remove(&id);
                self.keyspace.cancel_watch(id);
            }
        }
    }

    fn watch_response(&self, batch: &WatchBatch) -> WatchResponse {
        let mut header = self.keyspace.header();
        if batch.revision > 0 {
            header.revision = batch.revision;
        }
        let compacted = batch.compact_revision > 0;
        WatchResponse {
            header: Some(header),
            watch_id: 0,
            created: false,
            canceled: batch.canceled,
            compact_revision: batch.compact_revision,
            cancel_reason: if compacted {
                "etcdserver: mvcc: required revision has been compacted".to_string()
            } else {
                String::new()
            },
            fragment: false,
            events: batch.events.clone(),
        }
    }
}

fn status(error: KeyspaceError) -> Status {
    Status::new(tonic::Code::from(error.code), error.message)
}

fn mismatch(reply: &Reply) -> Status {
    Status::internal(format!("calm: unexpected reply {reply:?}"))
}

/// etcd's watch request as the core's plain spec.
fn spec(request: &WatchCreateRequest) -> WatchSpec {
    use calm_proto::etcd::etcdserverpb::watch_create_request::FilterType;
    let filtered = |filter: FilterType| request.filters.contains(&(filter as i32));
    WatchSpec {
        key: request.key.clone(),
        range_end: request.range_end.clone(),
        start_revision: request.start_revision,
        prev_kv: request.prev_kv,
        no_put: filtered(FilterType::Noput),
        no_delete: filtered(FilterType::Nodelete),
        progress_notify: request.progress_notify,
    }
}

/// A node's addresses as the loop knows them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NodeAddresses {
    pub(super) peer: Option<SocketAddr>,
    pub(super) client: Option<SocketAddr>,
}

impl EtcdCommand {
    /// Answers the command with `status` without serving it.
    pub(super) fn refuse(self, status: Status) {
        match self {
            EtcdCommand::Write { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::Range { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::ReadTxn { reply, .. } => drop(reply.send(Err(status))),
            // Dropping the sender ends the watch stream.
            EtcdCommand::Watch { .. } => {}
            EtcdCommand::Progress { reply } => drop(reply.send(Err(status))),
            EtcdCommand::KeepAlive { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::TimeToLive { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::Leases { reply } => drop(reply.send(Err(status))),
            EtcdCommand::Members { reply } => drop(reply.send(Err(status))),
            EtcdCommand::MemberAdd { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::MemberRemove { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::MemberPromote { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::MemberUpdate { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::Status { reply } => drop(reply.send(Err(status))),
            EtcdCommand::HashKv { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::MoveLeader { reply, .. } => drop(reply.send(Err(status))),
            EtcdCommand::Snapshot { reply } => drop(reply.send(Err(status))),
            EtcdCommand::ForwardTarget { reply } => drop(reply.send(Err(status))),
        }
    }
}
