//! Generated protobuf messages and gRPC services of calm's client API,
//! `calm.v1`, and of etcd's v3 API, [`etcd`], and nothing else: conversion
//! to and from core types is written by hand in the crates at the boundary,
//! so protobuf stops here.
//!
//! The `.proto` sources live under `proto/`, one directory per package
//! (`proto/calm/v1/calm.proto`; etcd's files keep etcd's own layout under
//! `proto/etcd/`); the build script compiles them with protox, so building
//! needs no system `protoc`. The API's contract (fields, bounds, and which
//! gRPC status code each failure returns) is documented in the `.proto` file
//! and carried into the generated docs.
//!
//! Every data request carries a key, a coordination level and an optional
//! causal token; every response carries a [`calm::v1::ResponseHeader`]:
//!
//! ```
//! use calm_proto::calm::v1::{CounterIncrementRequest, Level};
//! use prost::Message;
//!
//! let request = CounterIncrementRequest {
//!     key: b"visits".to_vec(),
//!     level: Level::Local as i32,
//!     causal_token: Vec::new(),
//!     by: -3,
//! };
//! let bytes = request.encode_to_vec();
//! let decoded = CounterIncrementRequest::decode(bytes.as_slice()).unwrap();
//! assert_eq!(decoded, request);
//! // An unknown or absent level reads as the service's default.
//! assert_eq!(CounterIncrementRequest::default().level(), Level::Unspecified);
//! ```
//!
//! Clients are `calm::v1::counter_client::CounterClient` and its siblings;
//! servers implement `calm::v1::counter_server::Counter` and wrap it in
//! `CounterServer`.
//!
//! etcd's messages and services keep etcd's package, field and service
//! names, so the generated code speaks etcd's wire format and serves etcd's
//! gRPC paths (`/etcdserverpb.KV/Range`). Those paths do not collide with
//! `calm.v1`'s, so both APIs can share one port through tonic's `Routes`.
//!
//! ```
//! use calm_proto::etcd::etcdserverpb::{RangeRequest, kv_server};
//! use prost::Message;
//!
//! // `etcdctl get foo --prefix`: the range end is the key with its last
//! // byte incremented.
//! let request = RangeRequest {
//!     key: b"foo".to_vec(),
//!     range_end: b"fop".to_vec(),
//!     ..RangeRequest::default()
//! };
//! assert_eq!(request.encode_to_vec(), b"\x0a\x03foo\x12\x03fop");
//! assert_eq!(kv_server::SERVICE_NAME, "etcdserverpb.KV");
//! ```

#![forbid(unsafe_code)]

// `calm.raft.v1` wraps etcd's requests; prost resolves `etcdserverpb` from
// the crate root, so it is imported there (privately).
use etcd::etcdserverpb;

/// calm's own API packages.
pub mod calm {
    /// Version 1 of the client API: the CRDT services (`Counter`, `Set`,
    /// `Register`, `Map`, `BoundedCounter`) and `Cluster`.
    // Generated code is exempt from `missing_docs`: prost documents what
    // the `.proto` comments document, but it also emits undocumented items of
    // its own (oneof enums' helpers, service modules), which we cannot edit.
    #[allow(missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/calm.v1.rs"));
    }

    /// Internal to calm's peers: the commands of the coordinated keyspace.
    pub mod raft {
        /// `calm.raft.v1`: one Raft log entry's command, each one etcd
        /// request.
        // Generated code; see the note on `calm::v1`.
        #[allow(missing_docs)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/calm.raft.v1.rs"));
        }
    }
}

/// Google's shared API types that calm's API uses.
pub mod google {
    /// `google.rpc.Status`: the envelope of a failed call's typed details,
    /// which hold one [`crate::calm::v1::ErrorDetail`].
    // Generated code; see the note on `calm::v1`.
    #[allow(missing_docs)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// etcd's v3 API: the gRPC services and messages etcd 3.4 and 3.5 clients
/// (`etcdctl`, etcd's Go client) call, with etcd's own package, service and
/// field names and numbers, so the wire format is etcd's. The sources are
/// vendored from etcd; `proto/etcd/README.md` says which version and from
/// where. Each module is one etcd protobuf package; they are siblings, as
/// the generated cross-package paths (`super::mvccpb::KeyValue`) expect.
pub mod etcd {
    /// `etcdserverpb`: the `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`
    /// and `Auth` services and their messages.
    // Generated code; see the note on `calm::v1`. etcd's comment on
    // `TxnRequest` wraps its numbered list without indenting, which rustdoc
    // renders fine but clippy flags; the vendored file stays as etcd wrote it.
    #[allow(missing_docs, clippy::doc_lazy_continuation)]
    pub mod etcdserverpb {
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    }

    /// `mvccpb`: `KeyValue`, a key's value at a revision, and `Event`, one
    /// change a watch reports.
    // Generated code; see the note on `calm::v1`.
    #[allow(missing_docs)]
    pub mod mvccpb {
        include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    }

    /// `authpb`: the `User`, `Role` and `Permission` records of etcd's auth
    /// store.
    // Generated code; see the note on `calm::v1`.
    #[allow(missing_docs)]
    pub mod authpb {
        include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    }

    /// `v3lockpb`: the `Lock` service, distributed locks held while a lease
    /// lives.
    // Generated code; see the note on `calm::v1`.
    #[allow(missing_docs)]
    pub mod v3lockpb {
        include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    }

    /// `v3electionpb`: the `Election` service, leader election on a key
    /// prefix.
    // Generated code; see the note on `calm::v1`.
    #[allow(missing_docs)]
    pub mod v3electionpb {
        include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    }
}
