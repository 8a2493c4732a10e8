//! Compiles the crate's `.proto` files into Rust at build time: protox
//! parses them in pure Rust (so no system `protoc` is needed), and tonic's
//! prost code generator writes the messages, clients and servers.

use std::path::{Path, PathBuf};

/// The proto files compiled into Rust, relative to [`PROTO_ROOT`]. Each
/// package here has a module in `src/lib.rs`.
const PROTO_FILES: &[&str] = &[
    "calm/v1/calm.proto",
    "calm/raft/v1/raft.proto",
    "google/rpc/status.proto",
    // etcd's v3 API, as vendored (see `proto/etcd/README.md`).
    "etcd/api/etcdserverpb/rpc.proto",
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto",
    "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
];

/// The include root: imports are resolved relative to it, and a file's
/// path under it must match its package (`calm/v1/` for `calm.v1`).
const PROTO_ROOT: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<PathBuf> = PROTO_FILES
        .iter()
        .map(|file| Path::new(PROTO_ROOT).join(file))
        .collect();
    // prost-build does not emit rerun directives when handed a descriptor
    // set, so list every input here; the directory catches added files.
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // protox's error renders the offending file, line and column.
    let mut descriptors = protox::compile(&files, [PROTO_ROOT])?;
    // The set also holds every import. Those that only declare options
    // (etcd's `versionpb`, the grpc-gateway and OpenAPI annotations) have no
    // wire types, and the well-known types come from `prost-types`, so code
    // is generated for the listed files alone.
    descriptors
        .file
        .retain(|file| PROTO_FILES.contains(&file.name()));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `connect` constructors on the clients, over tonic's Channel.
        .build_transport(true)
        .compile_fds(descriptors)?;
    Ok(())
}
