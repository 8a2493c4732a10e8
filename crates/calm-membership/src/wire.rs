//! The datagram envelope and a read-only parse of foca packets.
//!
//! Every datagram is a [`calm_types::codec`] encoding of [`Envelope`], so a
//! peer running an incompatible format version is refused by the version
//! byte, and calm can add messages that foca does not know (a graceful
//! leave) without a second socket.

use calm_types::codec::{self, DecodeError};
use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::{Deserialize, Serialize};

use crate::Peer;

/// Bytes the envelope adds around a foca packet: the format version, the
/// variant tag and a varint length of at most three bytes (lengths below
/// 2^21, far above any packet bound).
pub(crate) const ENVELOPE_OVERHEAD_BYTES: usize = 5;

/// One membership datagram.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Envelope {
    /// A foca SWIM packet, passed to foca as is.
    Swim(Vec<u8>),
    /// The sender is leaving on purpose. foca spreads a leave as "down"
    /// like any failure; this notice lets receivers tell the two apart.
    Leave(Peer),
    /// The sender asks to join through this node, knowing only its
    /// address: the receiver announces itself to the sender (foca's join),
    /// which then learns the cluster from the receiver's reply.
    Hello(Peer),
}

impl Envelope {
    pub(crate) fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }
}

/// A foca packet's header and piggybacked updates.
pub(crate) struct SwimPacket {
    pub(crate) header: Header<Peer>,
    pub(crate) updates: Vec<Member<Peer>>,
}

/// Decodes only the header of a foca packet.
pub(crate) fn parse_header(mut bytes: &[u8]) -> Result<Header<Peer>, DecodeError> {
    PostcardCodec.decode_header(&mut bytes).map_err(malformed)
}

/// Parses a foca packet the way foca's `handle_data` does, without touching
/// foca's state, so that calm can check its own bounds before foca applies
/// anything. Custom broadcasts, which calm does not use, are left to foca.
pub(crate) fn parse_packet(mut bytes: &[u8]) -> Result<SwimPacket, DecodeError> {
    let header = PostcardCodec.decode_header(&mut bytes).map_err(malformed)?;
    let mut updates = Vec::new();
    if bytes.len() >= 2 && header.message != Message::Broadcast {
        let count = u16::from_be_bytes([bytes[0], bytes[1]]);
        bytes = &bytes[2..];
        // Not `with_capacity(count)`: the count is untrusted, and every
        // member costs input bytes, so pushing bounds memory by input size.
        for _ in 0..count {
            updates.push(PostcardCodec.decode_member(&mut bytes).map_err(malformed)?);
        }
    }
    Ok(SwimPacket { header, updates })
}

fn malformed(error: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed(error.to_string())
}
