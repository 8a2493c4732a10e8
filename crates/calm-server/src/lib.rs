//! The tokio driver of a calm node.

pub mod admin;
pub mod api;
pub mod backend;
pub mod config;
pub mod etcd;
pub mod metrics;
pub mod node;
pub mod server;
