//! What travels between the KV simulation's nodes over the shared
//! [`crate::network`], and its fingerprint for the trace hash.

use calm_replica::Bytes;
use calm_replica::coordinator::{KvMessage, KvReply};

/// What travels between nodes.
#[derive(Clone, Debug)]
pub(super) enum Wire {
    /// A coordinator's or a store's message.
    Message(KvMessage),
    /// A replica's answer.
    Reply(KvReply),
    /// Anti-entropy: an owner's durable encoded object of `key`.
    Transfer { key: Bytes, object: Vec<u8> },
}

/// A compact fingerprint of a message for the trace hash: its kind, request,
/// key and object bytes (Debug formatting would cost more than the run).
pub(super) fn fingerprint(wire: &Wire) -> u64 {
    let mut bytes = Vec::new();
    let mut put = |tag: u8, request: u64, key: &[u8], object: &[u8]| {
        bytes.push(tag);
        bytes.extend_from_slice(&request.to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(object);
    };
    match wire {
        Wire::Message(message) => match message {
            KvMessage::Store {
                request,
                key,
                object,
                hint,
            } => put(hint.map_or(1, |_| 2), request.0, key, &object.encode()),
            KvMessage::Fetch { request, key, .. } => put(3, request.0, key, &[]),
            KvMessage::Repair { key, object, .. } => put(4, 0, key, &object.encode()),
            KvMessage::Handoff { key, object } => put(5, 0, key, &object.encode()),
            KvMessage::Reap { key, object } => put(6, 0, key, &object.encode()),
        },
        Wire::Reply(reply) => match reply {
            KvReply::Stored { request } => put(7, request.0, &[], &[]),
            KvReply::Fetched { request, object } => put(8, request.0, &[], &object.encode()),
            KvReply::Failed { request } => put(9, request.0, &[], &[]),
            KvReply::HandedOff { key, digest } => put(10, *digest, key, &[]),
        },
        Wire::Transfer { key, object } => put(11, 0, key, object),
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}
