//! The peer messages of the CRDT replicas: batches of deltas and whole
//! states for repair (the `local` level), and the acknowledged writes and
//! state reads a request at `one`/`quorum`/`all` waits on. All travel
//! through the versioned codec and are validated after decoding, so
//! garbage is a typed error, never a panic.

use std::collections::BTreeMap;

use calm_clock::{COUNTER_MAX, HlcTimestamp};
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use crate::object::Object;

/// Most key entries one decoded message may carry (a sender's
/// `batch_keys_max` must not exceed it).
pub const MESSAGE_KEYS_MAX: usize = 4096;

/// Longest key a decoded message may name (a replica's `key_bytes_max`
/// must not exceed it).
pub const MESSAGE_KEY_BYTES_MAX: usize = 4096;

/// A message between replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Deltas of writes the sender accepted, one entry per key.
    Deltas(DeltaBatch),
    /// A key's whole state and the writes it holds, for anti-entropy repair.
    State(Box<StateTransfer>),
    /// A coordinator's synced write, to be held durably and acknowledged
    /// with [`Message::Replicated`] after the receiver's next sync.
    Replicate(Box<Replicate>),
    /// The receiver of a [`Message::Replicate`] holds the write durably.
    Replicated(Replicated),
    /// A coordinator's read: the receiver answers with its synced state of
    /// the key in a [`Message::Fetched`].
    Fetch(Fetch),
    /// The answer to a [`Message::Fetch`].
    Fetched(Box<Fetched>),
}

/// A write a coordinator asks a replica to hold durably before it
/// acknowledges the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replicate {
    /// The coordinator's HLC reading.
    pub clock: HlcTimestamp,
    /// The coordinator's name for the request: an HLC reading of its own,
    /// so no two requests of one node share it, across restarts too.
    pub request: HlcTimestamp,
    /// The write, numbered by its origin, the coordinator.
    pub delta: KeyDelta,
}

/// The acknowledgement of a [`Replicate`], sent after the sync that made
/// the write durable at `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicated {
    /// The acknowledging replica.
    pub from: NodeId,
    /// The request acknowledged.
    pub request: HlcTimestamp,
    /// The write's sequence number at its origin: with `request`, it names
    /// exactly one write.
    pub seq: u64,
}

/// A coordinator's request for a replica's state of `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// The coordinator's HLC reading.
    pub clock: HlcTimestamp,
    /// The coordinator, which the answer goes to.
    pub from: NodeId,
    /// The coordinator's name for the request.
    pub request: HlcTimestamp,
    /// The key.
    pub key: Vec<u8>,
}

/// A replica's synced state of a key, answering a [`Fetch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fetched {
    /// The answering replica.
    pub from: NodeId,
    /// The request answered.
    pub request: HlcTimestamp,
    /// The key.
    pub key: Vec<u8>,
    /// The replica's state, `None` if it holds nothing for the key.
    pub state: Option<StateTransfer>,
}

/// A batch of deltas from their origin, the sender.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaBatch {
    /// The sender's HLC reading when it sent the batch; the receiver's HLC
    /// observes it (and refuses a reading beyond its offset bound).
    pub clock: HlcTimestamp,
    /// One entry per key.
    pub deltas: Vec<KeyDelta>,
}

/// The joined delta of the origin's writes `first_seq..=last_seq` to `key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyDelta {
    /// The key.
    pub key: Vec<u8>,
    /// The node that accepted the writes and numbered them.
    pub origin: NodeId,
    /// The first write sequence number the delta covers.
    pub first_seq: u64,
    /// The last write sequence number the delta covers.
    pub last_seq: u64,
    /// The joined delta of those writes.
    pub delta: Object,
}

/// A key's whole state, with the contiguous write frontier per origin that
/// the state is known to hold: the receiver may claim those writes once it
/// has joined the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateTransfer {
    /// The sender's HLC reading.
    pub clock: HlcTimestamp,
    /// The key.
    pub key: Vec<u8>,
    /// The sender's whole object.
    pub object: Object,
    /// Origin → every write `1..=seq` of it is in `object`.
    pub frontier: BTreeMap<NodeId, u64>,
}

impl Message {
    /// Encodes the message for the wire.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and validates a message from untrusted bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let message: Message = codec::decode(bytes)?;
        message.validate().map_err(DecodeError::Invalid)?;
        Ok(message)
    }

    /// The sender's HLC reading, for the messages that carry one.
    pub fn clock(&self) -> Option<HlcTimestamp> {
        match self {
            Message::Deltas(batch) => Some(batch.clock),
            Message::State(state) => Some(state.clock),
            Message::Replicate(replicate) => Some(replicate.clock),
            Message::Fetch(fetch) => Some(fetch.clock),
            Message::Fetched(fetched) => fetched.state.as_ref().map(|state| state.clock),
            Message::Replicated(_) => None,
        }
    }

    /// The invariants serde cannot express.
    fn validate(&self) -> Result<(), String> {
        match self {
            Message::Deltas(batch) => {
                if batch.deltas.len() > MESSAGE_KEYS_MAX {
                    return Err(format!("{} deltas in one batch", batch.deltas.len()));
                }
                batch.deltas.iter().try_for_each(KeyDelta::validate)
            }
            Message::State(state) => state.validate(),
            Message::Replicate(replicate) => replicate.delta.validate(),
            Message::Replicated(replicated) => match replicated.seq {
                1..=COUNTER_MAX => Ok(()),
                seq => Err(format!("acknowledged write {seq} outside 1..=COUNTER_MAX")),
            },
            Message::Fetch(fetch) => check_key(&fetch.key),
            Message::Fetched(fetched) => {
                check_key(&fetched.key)?;
                match &fetched.state {
                    Some(state) if state.key != fetched.key => {
                        Err("a fetched state of another key".into())
                    }
                    Some(state) => state.validate(),
                    None => Ok(()),
                }
            }
        }
    }
}

impl StateTransfer {
    fn validate(&self) -> Result<(), String> {
        check_key(&self.key)?;
        if self.frontier.len() > crate::token::TOKEN_ORIGINS_MAX {
            return Err("state frontier names too many origins".into());
        }
        if self.frontier.values().any(|&s| s == 0 || s > COUNTER_MAX) {
            return Err("frontier sequence numbers lie in 1..=COUNTER_MAX".into());
        }
        self.object.validate()
    }
}

impl KeyDelta {
    fn validate(&self) -> Result<(), String> {
        check_key(&self.key)?;
        if !(1 <= self.first_seq && self.first_seq <= self.last_seq && self.last_seq <= COUNTER_MAX)
        {
            return Err(format!(
                "delta covers writes {}..={}, not a range inside 1..=COUNTER_MAX",
                self.first_seq, self.last_seq
            ));
        }
        self.delta.validate()
    }
}

fn check_key(key: &[u8]) -> Result<(), String> {
    if key.len() > MESSAGE_KEY_BYTES_MAX {
        return Err(format!("key of {} bytes", key.len()));
    }
    Ok(())
}
