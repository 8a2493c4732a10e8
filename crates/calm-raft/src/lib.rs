//! The coordinated keyspace, as sans-IO cores: Raft (through raft-rs), an
//! MVCC store with etcd's revision semantics, leases and watches.
//!
//! The state machine speaks etcd's own request and response messages
//! (`calm_proto::etcd::etcdserverpb`): each Raft log entry is one
//! `calm.raft.v1.Command` wrapping one etcd request, so the etcd v3 API and
//! the applied state agree by construction, with no translation layer.
//!
//! Like every core in calm, nothing here opens a socket, reads a clock or
//! touches a disk: changes are written into a [`calm_storage::WriteBatch`]
//! the driver persists and syncs, and time is an argument.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bytes;
mod keyspace;
mod lease;
mod log;
mod mvcc;
mod node;
mod state;
mod watch;

pub use keyspace::{
    ETCD_VERSION, Keyspace, KeyspaceConfig, KeyspaceError, LeaseQuestion, LeaseTtl, OpenError,
    Output, Read, Reply, RequestId,
};
pub use lease::{LeaseError, Lessor, LessorConfig};
pub use log::Membership;
pub use mvcc::{Applied, MVCC_META, MVCC_REVISIONS, Mvcc, MvccError, TXN_OPS_MAX};
pub use node::{MembershipChange, RaftConfig, RaftCore, RaftError, RaftStatus, Role};
pub use state::{ApplyError, Outcome, Response, StateConfig, StateError, StateMachine, txn_writes};
pub use watch::{WatchBatch, WatchConfig, WatchError, WatchHub, WatchId, WatchSpec};
