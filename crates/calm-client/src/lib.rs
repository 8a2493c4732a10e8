//! The Rust client of calm's client API (`calm.v1`): typed methods for
//! every CRDT service and the cluster's view of itself, failover across
//! endpoints, and session guarantees through causal tokens.
//!
//! A [`Client`] is a session. It sends each request to its current
//! endpoint and moves on to the next when one is down; it keeps the latest
//! causal token per key and sends it along, so the session reads its own
//! writes and never goes back in time on a key, whichever node answers.
//!
//! ```no_run
//! use calm_client::{Client, ClientError, ErrorDetail, KvLevel, KvOptions, MapUpdate, RegisterKind};
//!
//! # async fn tour() -> Result<(), ClientError> {
//! // Connections open lazily; this only checks the endpoints' syntax.
//! let client = Client::connect(&["127.0.0.1:2379", "127.0.0.1:2380"])?;
//!
//! // Counters: increments commute, so any node accepts them at once.
//! client.counter_increment("visits", 3).await?;
//! let visits = client.counter_get("visits").await?;
//! // Read-your-writes: the read carried the increment's token.
//! assert!(visits.value >= 3);
//! println!("visits = {} (answered by node {})", visits.value, visits.node_id);
//!
//! // Sets, registers and maps.
//! client.set_add("tags", "blue").await?;
//! let tags: Vec<Vec<u8>> = client.set_members("tags").await?.value;
//! client.register_set("motd", "hello", RegisterKind::Lww).await?;
//! let motd = client.register_get("motd").await?.value;
//! client.map_update("cart", "apples", MapUpdate::CounterIncrement(2)).await?;
//! let cart = client.map_get("cart").await?.value;
//! # let _ = (tags, motd, cart);
//!
//! // A bounded counter never drops below zero: a node spends only the
//! // rights it holds, and says so when it holds too few.
//! client.bounded_counter_increment("seats", 10).await?;
//! match client.bounded_counter_decrement("seats", 25).await {
//!     Ok(_) => println!("booked"),
//!     Err(error) => match error.detail() {
//!         Some(ErrorDetail::InsufficientRights { node_id, available, .. }) => {
//!             println!("node {node_id} holds only {available} rights");
//!         }
//!         _ => return Err(error),
//!     },
//! }
//!
//! // Plain values at one, quorum or all replicas, without a leader. Two
//! // blind writes are concurrent and both stay, as siblings; a write
//! // carrying a read's context supersedes exactly what that read saw.
//! let quorum = KvOptions::at(KvLevel::Quorum);
//! client.kv_put("colour", "blue", &quorum).await?;
//! let read = client.kv_get("colour", &quorum).await?;
//! if read.siblings.len() > 1 {
//!     let resolved = quorum.clone().with_context(read.context);
//!     client.kv_put("colour", "teal", &resolved).await?;
//! }
//!
//! // The cluster, as the answering node sees it.
//! for member in client.members().await? {
//!     println!("{} {} {}", member.node_id, member.address, member.state);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Errors carry the gRPC code, the server's message and the typed
//! [`ErrorDetail`]; [`ClientError::is_retryable`] says whether sending the
//! same request again is safe and may succeed.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod error;
mod services;
mod tokens;
mod types;

pub use client::{Client, ClientConfig, ENDPOINTS_MAX};
pub use error::{ClientError, ErrorDetail, code_name};
pub use tokens::CausalToken;
pub use tonic::Code;
pub use types::{
    BoundedCounterValue, KvLevel, KvOptions, KvValue, KvWritten, Level, MapCounter, MapRegister,
    MapSet, MapUpdate, MapValue, Member, MemberState, NodeRights, NodeStatus, ObjectKind,
    ParseKvLevelError, RegisterKind, RegisterValue, Reply,
};
