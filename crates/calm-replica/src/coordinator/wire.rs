//! The wire form of the coordinator's messages and replicas' replies:
//! the shared versioned codec, and a validating decode for untrusted bytes.
//!
//! `RequestId` is a plain integer on the wire. Encoding goes through
//! borrowed mirrors so that a value is never copied to be sent; the owned
//! mirrors decoded have the same shape, so postcard gives the same bytes.

use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use super::{KvMessage, KvReply};
use crate::kv::{KvLimits, KvObject};
use crate::object::Bytes;
use crate::replica::RequestId;

#[derive(Serialize)]
enum MessageRef<'a> {
    Store {
        request: u64,
        key: &'a [u8],
        object: &'a KvObject,
        hint: Option<NodeId>,
    },
    Fetch {
        request: u64,
        key: &'a [u8],
        hint: Option<NodeId>,
    },
    Repair {
        key: &'a [u8],
        object: &'a KvObject,
        hint: Option<NodeId>,
    },
    Handoff {
        key: &'a [u8],
        object: &'a KvObject,
    },
    Reap {
        key: &'a [u8],
        object: &'a KvObject,
    },
}

#[derive(Deserialize)]
enum MessageOwned {
    Store {
        request: u64,
        key: Bytes,
        object: KvObject,
        hint: Option<NodeId>,
    },
    Fetch {
        request: u64,
        key: Bytes,
        hint: Option<NodeId>,
    },
    Repair {
        key: Bytes,
        object: KvObject,
        hint: Option<NodeId>,
    },
    Handoff {
        key: Bytes,
        object: KvObject,
    },
    Reap {
        key: Bytes,
        object: KvObject,
    },
}

#[derive(Serialize)]
enum ReplyRef<'a> {
    Stored { request: u64 },
    Fetched { request: u64, object: &'a KvObject },
    Failed { request: u64 },
    HandedOff { key: &'a [u8], digest: u64 },
}

#[derive(Deserialize)]
enum ReplyOwned {
    Stored { request: u64 },
    Fetched { request: u64, object: KvObject },
    Failed { request: u64 },
    HandedOff { key: Bytes, digest: u64 },
}

impl KvMessage {
    /// Encodes the message with the shared versioned codec.
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            KvMessage::Store {
                request,
                key,
                object,
                hint,
            } => MessageRef::Store {
                request: request.0,
                key,
                object,
                hint: *hint,
            },
            KvMessage::Fetch { request, key, hint } => MessageRef::Fetch {
                request: request.0,
                key,
                hint: *hint,
            },
            KvMessage::Repair { key, object, hint } => MessageRef::Repair {
                key,
                object,
                hint: *hint,
            },
            KvMessage::Handoff { key, object } => MessageRef::Handoff { key, object },
            KvMessage::Reap { key, object } => MessageRef::Reap { key, object },
        };
        codec::encode(&wire)
    }

    /// Decodes a message from untrusted bytes. Never panics. A key longer
    /// than `limits.key_bytes_max`, a value longer than
    /// `limits.value_bytes_max`, or an object breaking the DVV-set's
    /// invariants is [`DecodeError::Invalid`].
    pub fn decode(bytes: &[u8], limits: &KvLimits) -> Result<Self, DecodeError> {
        let message = match codec::decode::<MessageOwned>(bytes)? {
            MessageOwned::Store {
                request,
                key,
                object,
                hint,
            } => KvMessage::Store {
                request: RequestId(request),
                key,
                object,
                hint,
            },
            MessageOwned::Fetch { request, key, hint } => KvMessage::Fetch {
                request: RequestId(request),
                key,
                hint,
            },
            MessageOwned::Repair { key, object, hint } => KvMessage::Repair { key, object, hint },
            MessageOwned::Handoff { key, object } => KvMessage::Handoff { key, object },
            MessageOwned::Reap { key, object } => KvMessage::Reap { key, object },
        };
        let (key, object) = match &message {
            KvMessage::Store { key, object, .. }
            | KvMessage::Repair { key, object, .. }
            | KvMessage::Handoff { key, object }
            | KvMessage::Reap { key, object } => (key, Some(object)),
            KvMessage::Fetch { key, .. } => (key, None),
        };
        crate::kv::check_key(key, limits).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        if let Some(object) = object {
            object.check_values(limits).map_err(DecodeError::Invalid)?;
        }
        Ok(message)
    }
}

impl KvReply {
    /// Encodes the reply with the shared versioned codec.
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            KvReply::Stored { request } => ReplyRef::Stored { request: request.0 },
            KvReply::Fetched { request, object } => ReplyRef::Fetched {
                request: request.0,
                object,
            },
            KvReply::Failed { request } => ReplyRef::Failed { request: request.0 },
            KvReply::HandedOff { key, digest } => ReplyRef::HandedOff {
                key,
                digest: *digest,
            },
        };
        codec::encode(&wire)
    }

    /// Decodes a reply from untrusted bytes. Never panics. A value longer
    /// than `limits.value_bytes_max` or an object breaking the DVV-set's
    /// invariants is [`DecodeError::Invalid`].
    pub fn decode(bytes: &[u8], limits: &KvLimits) -> Result<Self, DecodeError> {
        let reply = match codec::decode::<ReplyOwned>(bytes)? {
            ReplyOwned::Stored { request } => KvReply::Stored {
                request: RequestId(request),
            },
            ReplyOwned::Fetched { request, object } => {
                object.check_values(limits).map_err(DecodeError::Invalid)?;
                KvReply::Fetched {
                    request: RequestId(request),
                    object,
                }
            }
            ReplyOwned::Failed { request } => KvReply::Failed {
                request: RequestId(request),
            },
            ReplyOwned::HandedOff { key, digest } => {
                crate::kv::check_key(&key, limits)
                    .map_err(|e| DecodeError::Invalid(e.to_string()))?;
                KvReply::HandedOff { key, digest }
            }
        };
        Ok(reply)
    }
}
