//! The errors of the `local`-level replica core: request errors (carried in
//! replies) and step errors (returned to the driver for peer messages).

use calm_clock::ClockError;
use calm_storage::StorageError;
use calm_types::NodeId;
use calm_types::codec::DecodeError;

use crate::object::ObjectError;

/// Why a request failed. Each variant says whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The key is longer than `key_bytes_max`. Nothing changed.
    #[error("key of {key_bytes} bytes exceeds the bound of {key_bytes_max}")]
    KeyTooLarge {
        /// The key's length.
        key_bytes: usize,
        /// The bound.
        key_bytes_max: usize,
    },
    /// An element, value or field is longer than `payload_bytes_max`.
    /// Nothing changed.
    #[error("payload of {payload_bytes} bytes exceeds the bound of {payload_bytes_max}")]
    PayloadTooLarge {
        /// The longest byte string in the operation.
        payload_bytes: usize,
        /// The bound.
        payload_bytes_max: usize,
    },
    /// The object would grow beyond `object_bytes_max` encoded. Nothing changed.
    #[error("object would be {object_bytes} bytes, beyond the bound of {object_bytes_max}")]
    ObjectTooLarge {
        /// The encoded size the write would produce.
        object_bytes: usize,
        /// The bound.
        object_bytes_max: usize,
    },
    /// The replica already holds `keys_max` keys and the write would add
    /// one. Nothing changed.
    #[error("the replica holds its bound of {keys_max} keys")]
    TooManyKeys {
        /// The bound.
        keys_max: usize,
    },
    /// This node does not replicate the key. Nothing changed; the driver
    /// forwards the request to the first node of `replicas` (the key's live
    /// preference list) it can reach.
    #[error("not a replica of the key; replicas are {replicas:?}")]
    NotReplica {
        /// The key's live replicas, in preference order.
        replicas: Vec<NodeId>,
    },
    /// The operation does not fit the object (wrong kind, insufficient
    /// bounded-counter rights, overflow). Nothing changed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The presented token is not a valid token. Nothing changed.
    #[error("bad causal token: {0}")]
    BadToken(DecodeError),
    /// The presented token was issued for another key. Nothing changed.
    #[error("the causal token was issued for another key")]
    TokenForOtherKey,
    /// Retryable: this replica had not seen the presented token by the
    /// catch-up deadline. Nothing changed; retry later, or at another of
    /// `replicas`, which may have seen it.
    #[error("replica has not caught up with the token; try {replicas:?}")]
    CatchUpTimeout {
        /// The key's other live replicas.
        replicas: Vec<NodeId>,
    },
    /// Retryable: a bounded queue is full (`bound` names it). Nothing
    /// changed; the driver should flush or tick, the client back off.
    #[error("the replica's {bound} bound is reached")]
    Overloaded {
        /// The config field of the bound.
        bound: &'static str,
    },
    /// Retryable: fewer of the key's replicas are up than the level needs
    /// (`w` for a write, `r` for a read). Nothing changed.
    #[error("{up} of the key's replicas are up, {needed} needed")]
    Unavailable {
        /// `r` or `w`.
        needed: usize,
        /// The key's replicas not known to be down, this one included.
        up: usize,
    },
    /// Fewer than `w` replicas acknowledged the write in time. The write is
    /// in doubt: `acks` replicas hold it durably (this one included), and
    /// it keeps spreading to the others; do not retry a non-idempotent
    /// write blindly.
    #[error("write in doubt: {acks} of the {needed} acks needed")]
    WriteInDoubt {
        /// Replicas that hold the write durably.
        acks: usize,
        /// `w`.
        needed: usize,
    },
    /// Retryable: fewer than `r` replicas answered a read in time. Nothing
    /// changed.
    #[error("read timed out with {replies} of the {needed} replies needed")]
    ReadTimeout {
        /// Replies received, this replica's included.
        replies: usize,
        /// `r`.
        needed: usize,
    },
    /// The storage engine failed. The write is in doubt (it may or may not
    /// survive a restart), and the replica refuses everything until it is
    /// reopened from storage.
    #[error("storage failed, the write is in doubt: {0}")]
    Storage(StorageError),
    /// An earlier storage failure stopped the replica. Nothing changed;
    /// reopen it with `Replica::open`.
    #[error("the replica stopped after a storage failure; reopen it")]
    Poisoned,
}

impl ReplicaError {
    /// Whether the same request may succeed if retried (here later, or at
    /// another replica) without any change by the client.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplicaError::NotReplica { .. }
                | ReplicaError::CatchUpTimeout { .. }
                | ReplicaError::Overloaded { .. }
                | ReplicaError::Unavailable { .. }
                | ReplicaError::ReadTimeout { .. }
        )
    }
}

/// Why a peer message or a flush was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The bytes are not a valid message. Nothing changed.
    #[error("undecodable peer message: {0}")]
    Decode(#[from] DecodeError),
    /// The sender's clock is beyond the HLC offset bound. The message was
    /// dropped and counted; nothing changed.
    #[error("peer clock rejected: {0}")]
    ClockAhead(#[from] ClockError),
    /// The storage engine failed; what the message or sync carried is in
    /// doubt and the replica refuses everything until reopened.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// An earlier storage failure stopped the replica. Nothing changed.
    #[error("the replica stopped after a storage failure; reopen it")]
    Poisoned,
}
