//! Sans-IO cluster membership: SWIM (via foca) with Lifeguard local health and phi-accrual timeouts.
//!
//! A [`Membership`] is one node's view of the cluster. It does no I/O: the
//! driver (a tokio task, or the deterministic simulator) feeds it datagrams
//! and timers with the current time, and carries out the [`Effect`]s it
//! queues. Randomness comes from a seed, so a run replays exactly.
//!
//! ```
//! use calm_membership::{Effect, MemberState, Membership, MembershipConfig, Peer};
//! use calm_types::NodeId;
//!
//! let peer = |n: u64| Peer {
//!     node: NodeId(n),
//!     addr: format!("127.0.0.1:{}", 7000 + n).parse().unwrap(),
//!     generation: 1,
//! };
//! let mut nodes = [
//!     Membership::new(peer(1), MembershipConfig::default(), 1).unwrap(),
//!     Membership::new(peer(2), MembershipConfig::default(), 2).unwrap(),
//! ];
//!
//! // Node 2 joins through node 1, knowing only its node id and address.
//! nodes[1].join(&[Peer::seed(NodeId(1), peer(1).addr)], 0).unwrap();
//!
//! // A toy driver: deliver datagrams at once; a real one also sets timers.
//! let mut delivered = 0;
//! loop {
//!     let mut datagrams = Vec::new();
//!     for node in nodes.iter_mut() {
//!         while let Some(effect) = node.poll_effect() {
//!             if let Effect::Send { to, bytes } = effect {
//!                 datagrams.push((to.node, bytes));
//!             }
//!         }
//!     }
//!     if datagrams.is_empty() {
//!         break;
//!     }
//!     for (to, bytes) in datagrams {
//!         let index = (to.0 - 1) as usize;
//!         nodes[index].handle_data(&bytes, 1).unwrap();
//!         delivered += 1;
//!     }
//! }
//! assert!(delivered >= 2, "an announce and its feed");
//!
//! // Each node now lists the other as alive, at incarnation 0.
//! let row = &nodes[0].members()[1];
//! assert_eq!((row.peer.node, row.state, row.incarnation), (NodeId(2), MemberState::Alive, 0));
//! assert_eq!(nodes[1].members()[1].peer.node, NodeId(1));
//!
//! // Datagrams from the network are untrusted: garbage is a typed error.
//! assert!(nodes[0].handle_data(&[0xde, 0xad, 0xbe, 0xef], 2).is_err());
//! ```
//!
//! Modules: [`Membership`] (the core and its driver contract), [`Peer`] (the
//! identity), [`MembershipConfig`] (every bound), [`LocalHealth`]
//! (Lifeguard), [`PhiAccrual`] (the failure detector).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod health;
mod membership;
mod peer;
mod phi;
mod wire;

pub use config::{
    ConfigError, MEMBERS_MAX_LIMIT, MembershipConfig, PACKET_BYTES_MAX_LIMIT, PACKET_BYTES_MIN,
};
pub use health::{LOCAL_HEALTH_MAX_LIMIT, LocalHealth};
pub use membership::{
    Effect, LocalEvent, MemberEvent, MemberRow, MemberState, Membership, MembershipError, Timer,
};
pub use peer::Peer;
pub use phi::{PhiAccrual, SAMPLES_MAX_LIMIT, SampleWindow};
