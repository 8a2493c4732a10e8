//! etcd's error table: the exact messages and gRPC codes etcd's servers
//! answer with (`api/v3rpc/rpctypes/error.go`, the `mvcc` watch errors and
//! the `concurrency` package's), which etcd's clients match on by message.
//!
//! The services return these for what they refuse themselves; the backend
//! may use them too, so that every path speaks the same strings.

use tonic::{Code, Status};

/// One of etcd's errors. Each is returned before or instead of a change:
/// none of them means the keyspace changed, unless its doc says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// A request (or a txn's compare or op) has an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A txn op holds no request at all.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put asks to keep the old value but carries a new one.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put asks to keep the old lease but names one.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn has more compares or ops than the configured maximum.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn writes one key twice (two puts, or a put inside a deleted
    /// range).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A range names an unknown sort order or sort target.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A write request encodes to more than the configured maximum.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The revision asked for was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is newer than the store's.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist (or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant names a lease id already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant asks for a TTL above etcd's maximum (9,000,000,000 s).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A member add names a peer URL that does not parse as etcd requires.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// The cluster has no leader at the moment; the request may be retried.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request needs the leader and this member is not it.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The request was not known to commit in time; it may still apply.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The member is shutting down (or stopped serving a stream).
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A watch names a range whose end is not after its key (a watch
    /// response's cancel reason, not a status).
    #[error("mvcc: watcher range is empty")]
    EmptyWatcherRange,
    /// A watch names an id already in use on its stream (a watch
    /// response's cancel reason, not a status).
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateWatchId,
    /// A lock's key vanished (its lease expired) while it waited.
    #[error("mutex: session is expired")]
    SessionExpired,
    /// A proclaim's leader key no longer holds the election.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// No candidate holds the election.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// A proclaim or resign names no leader key.
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// The watch a lock or election waited on ended without the delete.
    #[error("lost watcher waiting for delete")]
    LostWatcher,
}

impl EtcdError {
    /// The gRPC code etcd answers this error with. The `concurrency`
    /// errors are plain Go errors in etcd, which gRPC sends as `Unknown`.
    pub fn code(self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge | MemberBadUrls => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            LeaseExists | NotLeader => Code::FailedPrecondition,
            NoLeader | Timeout | Stopped => Code::Unavailable,
            EmptyWatcherRange | DuplicateWatchId | SessionExpired | ElectionNotLeader
            | ElectionNoLeader | MissingLeaderKey | LostWatcher => Code::Unknown,
        }
    }

    /// Whether `status` is this error, as an etcd client would tell: by
    /// code and message.
    pub fn is(self, status: &Status) -> bool {
        status.code() == self.code() && status.message() == self.to_string()
    }
}

impl From<EtcdError> for Status {
    fn from(error: EtcdError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// The status a server without `method` answers (grpc-go's wording), for
/// the methods calm does not offer.
pub(crate) fn unknown_method(service: &str, method: &str) -> Status {
    Status::unimplemented(format!("unknown method {method} for service {service}"))
}
