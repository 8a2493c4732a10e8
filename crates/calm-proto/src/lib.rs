//! Generated protobuf messages and gRPC services of calm's client API,
//! `calm.v1`, and nothing else: conversion to and from core types is
//! written by hand in the crates at the boundary, so protobuf stops here.
//!
//! The `.proto` sources live under `proto/`, one directory per package
//! (`proto/calm/v1/calm.proto`); the build script compiles them with protox,
//! so building needs no system `protoc`. The API's contract (fields, bounds,
//! and which gRPC status code each failure returns) is documented in the
//! `.proto` file and carried into the generated docs.
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

#![forbid(unsafe_code)]

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
