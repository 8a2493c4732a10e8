//! `MvccError`: why an MVCC call failed, with the gRPC code and message etcd
//! returns for it.

use calm_storage::StorageError;
use thiserror::Error;

/// Why an MVCC call failed. No variant ever leaves a change behind: a failed
/// call leaves the store and the caller's batch exactly as they were.
///
/// [`code`](Self::code) and [`etcd_message`](Self::etcd_message) are what
/// etcd puts in the gRPC status (from etcd's `api/v3rpc/rpctypes/error.go`),
/// so etcd clients recognise the error (`clientv3` matches on the message).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MvccError {
    /// A request, or a compare of a txn, has an empty key.
    #[error("key is not provided")]
    EmptyKey,
    /// The key an `ignore_value` / `ignore_lease` put needs does not exist;
    /// also a txn operation with no request in it (etcd answers that too
    /// with "key not found").
    #[error("key not found")]
    KeyNotFound,
    /// A put with `ignore_value` also carries a value.
    #[error("value is provided together with ignore_value")]
    ValueProvided,
    /// A put with `ignore_lease` also carries a lease.
    #[error("lease is provided together with ignore_lease")]
    LeaseProvided,
    /// A txn has more compares or operations per branch than
    /// [`TXN_OPS_MAX`](crate::mvcc::TXN_OPS_MAX) (nested txns share it).
    #[error("too many operations in txn request")]
    TooManyOps,
    /// A txn writes one key twice, or puts a key it also deletes.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A range's sort order or sort target is not one etcd knows.
    #[error("invalid sort option")]
    InvalidSortOption,
    /// The revision asked for has been compacted away.
    #[error("revision {requested} has been compacted (compact revision {compact_revision})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The store's compact revision.
        compact_revision: i64,
    },
    /// The revision asked for is above the store's revision.
    #[error("revision {requested} is a future revision (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The store's revision.
        current: i64,
    },
    /// A put names a lease that is not granted.
    #[error("lease {lease} not found")]
    LeaseNotFound {
        /// The lease asked for.
        lease: i64,
    },
    /// Stored or snapshot bytes are not a store this build wrote. Nothing was
    /// loaded or restored.
    #[error("corrupt MVCC state: {reason}")]
    Corrupt {
        /// What was wrong.
        reason: String,
    },
    /// A write reached [`Mvcc::read_txn`](crate::mvcc::Mvcc::read_txn),
    /// which serves only txns that read; nothing changed.
    #[error("a txn that writes was served as a read")]
    ReadOnly,
    /// Reading storage failed while loading. Nothing was loaded.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// gRPC status codes (`tonic::Code` numeric values) etcd answers with.
mod grpc_code {
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const OUT_OF_RANGE: i32 = 11;
    pub(super) const DATA_LOSS: i32 = 15;
}

impl MvccError {
    /// The gRPC status code etcd answers this error with, as
    /// `tonic::Code`'s numeric value.
    pub fn code(&self) -> i32 {
        match self {
            MvccError::EmptyKey
            | MvccError::KeyNotFound
            | MvccError::ValueProvided
            | MvccError::LeaseProvided
            | MvccError::TooManyOps
            | MvccError::DuplicateKey
            | MvccError::InvalidSortOption => grpc_code::INVALID_ARGUMENT,
            MvccError::Compacted { .. } | MvccError::FutureRevision { .. } => {
                grpc_code::OUT_OF_RANGE
            }
            MvccError::LeaseNotFound { .. } => grpc_code::NOT_FOUND,
            MvccError::Corrupt { .. } => grpc_code::DATA_LOSS,
            // etcd answers errors it has no table entry for with Unknown.
            MvccError::Storage(_) | MvccError::ReadOnly => grpc_code::UNKNOWN,
        }
    }

    /// The message etcd puts in the gRPC status, exactly, so etcd clients
    /// map it back to their typed errors.
    pub fn etcd_message(&self) -> &'static str {
        match self {
            MvccError::EmptyKey => "etcdserver: key is not provided",
            MvccError::KeyNotFound => "etcdserver: key not found",
            MvccError::ValueProvided => "etcdserver: value is provided",
            MvccError::LeaseProvided => "etcdserver: lease is provided",
            MvccError::TooManyOps => "etcdserver: too many operations in txn request",
            MvccError::DuplicateKey => "etcdserver: duplicate key given in txn request",
            MvccError::InvalidSortOption => "etcdserver: invalid sort option",
            MvccError::Compacted { .. } => "etcdserver: mvcc: required revision has been compacted",
            MvccError::FutureRevision { .. } => {
                "etcdserver: mvcc: required revision is a future revision"
            }
            MvccError::LeaseNotFound { .. } => "etcdserver: requested lease not found",
            MvccError::Corrupt { .. } => "etcdserver: corrupt cluster",
            // Not an etcd string: etcd passes unexpected errors' own text
            // through, which a `&'static str` cannot carry.
            MvccError::Storage(_) => "etcdserver: storage read failed",
            MvccError::ReadOnly => "etcdserver: a txn that writes was served as a read",
        }
    }
}
