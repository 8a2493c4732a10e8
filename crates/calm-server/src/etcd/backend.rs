//! The seam between etcd's v3 gRPC services and the node: what the services
//! need from the coordinated keyspace.
//!
//! The node's event loop implements [`Coordinated`] (requests go through
//! Raft, reads through ReadIndex or locally when serializable); the
//! services only translate the gRPC surface (streams, ids, errors) onto it.
//! Every response a method returns has its `header` filled in by the
//! backend (cluster id, member id, revision, raft term).

use std::future::Future;
use std::net::SocketAddr;

use calm_proto::etcd::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusResponse, TxnRequest,
    TxnResponse, WatchCreateRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::Status;

/// One watch, as the backend serves it: responses in revision order, each
/// holding the events of one or more revisions (or a progress notification,
/// or a final cancellation such as a compaction error). The backend leaves
/// `watch_id` at 0 and `created` false; the Watch service sets both. Dropping
/// the receiver cancels the watch.
pub type WatchEvents = mpsc::Receiver<WatchResponse>;

/// What etcd's v3 services need from the node. Errors are gRPC statuses
/// carrying etcd's own codes and messages (`etcdserver: ...`, `mvcc: ...`),
/// which etcd clients match on.
pub trait Coordinated: Send + Sync + 'static {
    /// A range: linearizable (ReadIndex) unless `serializable` is set.
    fn range(
        &self,
        request: RangeRequest,
    ) -> impl Future<Output = Result<RangeResponse, Status>> + Send;
    /// A put through the log.
    fn put(&self, request: PutRequest) -> impl Future<Output = Result<PutResponse, Status>> + Send;
    /// A delete-range through the log.
    fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> impl Future<Output = Result<DeleteRangeResponse, Status>> + Send;
    /// A txn: through the log, or read-only and served like a range.
    fn txn(&self, request: TxnRequest) -> impl Future<Output = Result<TxnResponse, Status>> + Send;
    /// Compacts history up to a revision.
    fn compact(
        &self,
        request: CompactionRequest,
    ) -> impl Future<Output = Result<CompactionResponse, Status>> + Send;

    /// Starts a watch; an error (e.g. a start revision already compacted
    /// away is NOT an error here: it is a cancellation response on the
    /// stream, as etcd sends it) only when the node cannot serve watches.
    fn watch(
        &self,
        request: WatchCreateRequest,
    ) -> impl Future<Output = Result<WatchEvents, Status>> + Send;
    /// A response header at the node's current revision, for a watch
    /// progress request.
    fn progress(&self) -> impl Future<Output = Result<ResponseHeader, Status>> + Send;

    /// Grants a lease (the backend picks an id when the request's is 0).
    fn lease_grant(
        &self,
        request: LeaseGrantRequest,
    ) -> impl Future<Output = Result<LeaseGrantResponse, Status>> + Send;
    /// Revokes a lease, deleting its keys.
    fn lease_revoke(
        &self,
        request: LeaseRevokeRequest,
    ) -> impl Future<Output = Result<LeaseRevokeResponse, Status>> + Send;
    /// Renews a lease once (the leader's clock); `ttl` 0 in the response
    /// means the lease is gone.
    fn lease_keep_alive(
        &self,
        request: LeaseKeepAliveRequest,
    ) -> impl Future<Output = Result<LeaseKeepAliveResponse, Status>> + Send;
    /// A lease's remaining and granted TTL, and its keys when asked.
    fn lease_time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> impl Future<Output = Result<LeaseTimeToLiveResponse, Status>> + Send;
    /// Every live lease.
    fn lease_leases(&self) -> impl Future<Output = Result<LeaseLeasesResponse, Status>> + Send;

    /// The Raft members.
    fn member_list(
        &self,
        request: MemberListRequest,
    ) -> impl Future<Output = Result<MemberListResponse, Status>> + Send;
    /// Adds a member (as a learner when asked).
    fn member_add(
        &self,
        request: MemberAddRequest,
    ) -> impl Future<Output = Result<MemberAddResponse, Status>> + Send;
    /// Removes a member.
    fn member_remove(
        &self,
        request: MemberRemoveRequest,
    ) -> impl Future<Output = Result<MemberRemoveResponse, Status>> + Send;
    /// Changes a member's peer URLs.
    fn member_update(
        &self,
        request: MemberUpdateRequest,
    ) -> impl Future<Output = Result<MemberUpdateResponse, Status>> + Send;
    /// Promotes a learner to voter.
    fn member_promote(
        &self,
        request: MemberPromoteRequest,
    ) -> impl Future<Output = Result<MemberPromoteResponse, Status>> + Send;

    /// This member's status (version, db size, leader, raft index and term).
    fn status(&self) -> impl Future<Output = Result<StatusResponse, Status>> + Send;
    /// Where this node passes etcd requests on, whole (see
    /// [`forward`](super::forward)): a member's client address when this
    /// node is outside the keyspace's membership, `None` when it serves
    /// them itself (the default).
    fn forward_target(&self) -> impl Future<Output = Option<SocketAddr>> + Send {
        std::future::ready(None)
    }
    /// Lists, activates or deactivates alarms.
    fn alarm(
        &self,
        request: AlarmRequest,
    ) -> impl Future<Output = Result<AlarmResponse, Status>> + Send;
    /// The hash of the keyspace up to a revision.
    fn hash_kv(
        &self,
        request: HashKvRequest,
    ) -> impl Future<Output = Result<HashKvResponse, Status>> + Send;
    /// Defragments this member's store.
    fn defragment(&self) -> impl Future<Output = Result<DefragmentResponse, Status>> + Send;
    /// Transfers leadership (only the leader accepts).
    fn move_leader(
        &self,
        request: MoveLeaderRequest,
    ) -> impl Future<Output = Result<MoveLeaderResponse, Status>> + Send;
    /// A point-in-time copy of the keyspace as one blob, streamed to the
    /// client in chunks by the Maintenance service.
    fn snapshot(&self) -> impl Future<Output = Result<Vec<u8>, Status>> + Send;
}
