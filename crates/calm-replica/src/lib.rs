//! Leaderless replication cores: the local level's CRDT store, delta
//! propagation, causal tokens and Merkle anti-entropy (sans-IO).
//!
//! A [`Replica`] is one node's share of the data: every key it replicates
//! holds one typed CRDT object. A `local` write is applied, written through
//! the [`calm_storage::Storage`] trait, and acknowledged only after the
//! driver's next [`Replica::flush`] (one sync for everything pending: group
//! commit). Its delta then travels in batches to the key's other replicas.
//! Every reply carries a [`CausalToken`]; a request presenting one is never
//! answered by a replica that has not applied the writes it names.
//! [`MerkleTree`] and [`AntiEntropySession`] find the keys two replicas
//! disagree on, exchanging bytes proportional to the difference.
//!
//! # A tour
//!
//! Two replicas of one key: a write at `n1`, and a read at `n2` carrying the
//! write's token, which waits until the delta has arrived.
//!
//! ```
//! use calm_replica::{Operation, Output, Replica, ReplicaConfig, Request, RequestId, Value};
//! use calm_ring::{Ring, RingConfig};
//! use calm_storage::{Limits, MemoryEngine};
//! use calm_types::NodeId;
//!
//! let ring = Ring::new(RingConfig::default(), &[NodeId(1), NodeId(2)])?;
//! let open = |n| {
//!     let engine = MemoryEngine::new(Limits::default());
//!     Replica::open(ReplicaConfig::new(NodeId(n)), ring.clone(), engine)
//! };
//! let (mut n1, mut n2) = (open(1)?, open(2)?);
//! let request = |id, op, token| Request { id: RequestId(id), key: b"hits".to_vec(), op, token };
//!
//! // Write at n1: the ack comes out only after the sync.
//! n1.submit(request(1, Operation::Increment(5), None), 1_000);
//! n1.flush()?;
//! let Some(Output::Reply(ack)) = n1.take_outputs().pop() else { unreachable!() };
//! let token = ack.result?.token.encode();
//!
//! // A read at n2 with that token is parked: n2 has not seen the write yet.
//! n2.submit(request(2, Operation::Read, Some(token)), 1_001);
//! assert!(n2.take_outputs().is_empty());
//!
//! // n1's tick ships the delta; n2 joins it and answers the parked read.
//! n1.tick(1_002);
//! for output in n1.take_outputs() {
//!     if let Output::Send { to: NodeId(2), message } = output {
//!         n2.step(&message, 1_003)?;
//!     }
//! }
//! n2.flush()?;
//! let Some(Output::Reply(reply)) = n2.take_outputs().pop() else { unreachable!() };
//! assert_eq!(reply.result?.value, Some(Value::Counter(5)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The `one`/`quorum`/`all` levels: key-value objects and the coordinator:
pub mod coordinator;
pub mod kv;

// Merkle trees and the anti-entropy exchange:
mod anti_entropy;
mod merkle;
pub use anti_entropy::{
    AntiEntropyConfig, AntiEntropyError, AntiEntropyMessage, AntiEntropyRequest,
    AntiEntropyResponse, AntiEntropySession, LeafEntries, NodeHash, Outcome, Role,
};
pub use merkle::{
    DEPTH_MAX, FANOUT, KeyRange, LEAF_KEYS_TARGET, MerkleError, MerkleTree, TreeShape, ValueDigest,
    shared_ranges,
};

// The local level: objects, the replica core, causal tokens:
mod error;
mod message;
mod object;
mod outbound;
mod replica;
mod token;
pub use error::{ReplicaError, StepError};
pub use message::{
    DeltaBatch, Fetch, Fetched, KeyDelta, MESSAGE_KEY_BYTES_MAX, MESSAGE_KEYS_MAX, Message,
    Replicate, Replicated, StateTransfer,
};
pub use object::{Bytes, MapObject, MapValue, Object, ObjectError, ObjectKind, Operation, Value};
pub use replica::{
    Ack, OBJECTS, Output, Replica, ReplicaConfig, ReplicaStats, Reply, Request, RequestId,
};
pub use token::{CausalToken, PENDING_RANGES_PER_ORIGIN_MAX, TOKEN_ORIGINS_MAX};
