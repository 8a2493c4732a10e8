//! Compiles the crate's `.proto` files into Rust at build time: protox
//! parses them in pure Rust (so no system `protoc` is needed), and tonic's
//! prost code generator writes the messages, clients and servers.

use std::path::{Path, PathBuf};

/// The proto files compiled, relative to [`PROTO_ROOT`]. Each new package
/// (etcd's, later) adds its files here and a module in `src/lib.rs`.
const PROTO_FILES: &[&str] = &["calm/v1/calm.proto", "google/rpc/status.proto"];

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
    let descriptors = protox::compile(&files, [PROTO_ROOT])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `connect` constructors on the clients, over tonic's Channel.
        .build_transport(true)
        .compile_fds(descriptors)?;
    Ok(())
}
