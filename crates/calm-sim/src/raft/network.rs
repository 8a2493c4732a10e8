//! What the Raft simulation's network needs to know about the bytes it
//! carries (the network itself is the shared [`crate::network`]): whether a
//! message is a follower's forwarded proposal, which it must not duplicate
//! unless told to.

use calm_types::codec;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use serde::Deserialize;

/// The keyspace's peer envelope, as far as the simulator needs to read
/// it: a Raft message is its first variant (postcard writes the variant
/// index first, so a lease question or answer simply fails to decode).
#[derive(Deserialize)]
enum Envelope {
    Raft(Vec<u8>),
}

/// Whether `bytes` carry a follower's forwarded proposal, which the network
/// must not duplicate unless told to (see
/// [`KeyspaceSimConfig::duplicate_proposals`](super::KeyspaceSimConfig::duplicate_proposals)).
pub(super) fn is_forwarded_proposal(bytes: &[u8]) -> bool {
    let Ok(Envelope::Raft(raft)) = codec::decode::<Envelope>(bytes) else {
        return false;
    };
    Message::parse_from_bytes(&raft)
        .is_ok_and(|message| message.get_msg_type() == MessageType::MsgPropose)
}
