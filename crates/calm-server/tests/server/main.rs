//! calm-server's integration tests, one binary: the HTTP admin endpoints,
//! the gRPC services over an in-process replica, and whole nodes talking
//! over loopback sockets.

mod admin;
mod api;
mod crdt_levels;
mod etcd;
mod kv;
mod node;
