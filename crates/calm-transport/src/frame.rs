//! The sans-IO frame codec: length-prefixed, versioned frames carrying a handshake or a message batch.
//!
//! On the wire a frame is a `u32` big-endian body length, then a body that is
//! a [`calm_types::codec`] envelope (format version byte, then postcard) of a
//! [`Frame`]. The first frame on every connection is a [`Handshake`]; every
//! later one is a batch of [`Message`]s, each tagged with the [`Channel`] of
//! the core that sent it. The transport never looks inside a message's bytes.

use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

/// The transport protocol version sent in every [`Handshake`]. It versions
/// the conversation (what frames may follow the handshake), while the codec's
/// format version byte versions each frame's encoding.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes of the length prefix in front of every frame body.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The default bound on a frame body, in bytes: large enough for a batch of
/// replication deltas, small enough that one malicious peer cannot make a node
/// buffer much.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 1 << 20;

/// The most bytes a batch body spends beyond its messages' own encodings: the
/// format version byte, the enum tag of [`Frame::Batch`] and a varint count of
/// up to five bytes.
pub const BATCH_OVERHEAD_BYTES_MAX: usize = 1 + 1 + 5;

/// The most bytes a message spends beyond its payload: the channel tag and a
/// varint length of up to five bytes.
pub const MESSAGE_OVERHEAD_BYTES_MAX: usize = 1 + 5;

/// Which core a message belongs to. The receiver routes on it; the transport
/// keeps per-peer order, so messages of one channel arrive in send order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Channel {
    /// SWIM datagrams from `calm-membership`.
    Membership,
    /// Delta and state-transfer messages from the replication core.
    Replication,
    /// Raft messages from the coordination core.
    Raft,
    /// Merkle anti-entropy session messages between two replicas.
    AntiEntropy,
    /// The gossiped ring log and node directory.
    Ring,
    /// The `one`/`quorum`/`all` levels: coordinator requests, replica
    /// replies, hint handoffs and their anti-entropy sessions.
    Kv,
}

/// One message in a batch: a channel tag and bytes opaque to the transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The core the message belongs to.
    pub channel: Channel,
    /// The core's own encoding of the message.
    pub bytes: Vec<u8>,
}

impl Message {
    /// The bytes this message adds to a batch body. Exact for postcard: the
    /// channel tag is a one-byte varint and the payload a varint length then
    /// one byte per element.
    pub fn encoded_bytes(&self) -> usize {
        1 + varint_bytes(self.bytes.len()) + self.bytes.len()
    }
}

/// The first frame on a connection: who is speaking, and in which dialect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The sender's node id; every message on the connection is from it.
    pub node: NodeId,
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The cluster the sender belongs to, so that two clusters sharing a
    /// network never exchange messages.
    pub cluster: String,
}

/// A decoded frame body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The connection's opening frame.
    Handshake(Handshake),
    /// A non-empty batch of messages, in send order.
    Batch(Vec<Message>),
}

/// Why a frame could not be encoded. Nothing was appended to the output.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body would exceed the frame bound.
    #[error("frame body of {body_bytes} bytes exceeds the bound of {frame_bytes_max}")]
    Oversized {
        /// The body's encoded size.
        body_bytes: usize,
        /// The bound in force.
        frame_bytes_max: u32,
    },
}

/// Why the byte stream could not be decoded into frames. Either way the
/// stream is no longer trustworthy and its connection should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix exceeds the frame bound. Nothing was consumed or
    /// allocated for the body.
    #[error("length prefix of {length_bytes} bytes exceeds the bound of {frame_bytes_max}")]
    Oversized {
        /// The length the prefix claimed.
        length_bytes: u32,
        /// The bound in force.
        frame_bytes_max: u32,
    },
    /// A complete body did not decode to a valid [`Frame`]. The frame's bytes
    /// were consumed.
    #[error("malformed frame: {0}")]
    Malformed(DecodeError),
}

/// Why a peer's handshake was refused. Refusing changes nothing but the
/// connection, which is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} (this node speaks {ours})")]
    ProtocolVersion {
        /// Ours, [`PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer belongs to another cluster.
    #[error("cluster {theirs:?} (this node is in {ours:?})")]
    Cluster {
        /// Our cluster name.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// The first frame was a batch, not a handshake.
    #[error("the first frame was not a handshake")]
    Missing,
    /// A second handshake arrived on an established connection.
    #[error("a second handshake on one connection")]
    Repeated,
}

impl Handshake {
    /// Our own handshake, at the current [`PROTOCOL_VERSION`].
    pub fn new(node: NodeId, cluster: impl Into<String>) -> Self {
        Handshake {
            node,
            protocol_version: PROTOCOL_VERSION,
            cluster: cluster.into(),
        }
    }

    /// Checks a peer's handshake against our protocol version and cluster.
    pub fn check(&self, cluster: &str) -> Result<(), HandshakeError> {
        if self.protocol_version != PROTOCOL_VERSION {
            return Err(HandshakeError::ProtocolVersion {
                ours: PROTOCOL_VERSION,
                theirs: self.protocol_version,
            });
        }
        if self.cluster != cluster {
            return Err(HandshakeError::Cluster {
                ours: cluster.to_owned(),
                theirs: self.cluster.clone(),
            });
        }
        Ok(())
    }
}

/// Appends `frame`, length prefix first, to `out`.
pub fn encode_frame(
    frame: &Frame,
    frame_bytes_max: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let body = codec::encode(frame);
    let oversized = EncodeError::Oversized {
        body_bytes: body.len(),
        frame_bytes_max,
    };
    let length = u32::try_from(body.len()).map_err(|_| oversized.clone())?;
    if length > frame_bytes_max {
        return Err(oversized);
    }
    out.reserve(LENGTH_PREFIX_BYTES + body.len());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// An incremental frame decoder: feed it bytes as they arrive, in pieces of
/// any size, and take out whole frames.
///
/// It buffers at most one partial frame, so with the bound checked on the
/// prefix its memory stays below `frame_bytes_max` plus what one
/// [`extend`](Self::extend) adds. After an error the stream cannot be
/// resynchronised: drop the decoder and close the connection.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Bytes before `start` are already decoded; they are dropped lazily so
    /// that many small frames in one read cost one move, not one each.
    start: usize,
    frame_bytes_max: u32,
}

impl FrameDecoder {
    /// A decoder that rejects frame bodies above `frame_bytes_max` bytes.
    pub fn new(frame_bytes_max: u32) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            start: 0,
            frame_bytes_max,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// The next whole frame, `None` if more bytes are needed, or an error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let pending = &self.buffer[self.start..];
        let Some((prefix, rest)) = pending.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let length_bytes = u32::from_be_bytes(*prefix);
        // Checked before waiting for the body, so an absurd prefix costs
        // nothing: no allocation, no buffering of what follows.
        if length_bytes > self.frame_bytes_max {
            return Err(FrameError::Oversized {
                length_bytes,
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        // u32 fits in usize on every platform calm builds for (64-bit only).
        let length = length_bytes as usize;
        let Some(body) = rest.get(..length) else {
            return Ok(None);
        };
        let decoded = codec::decode::<Frame>(body);
        self.start += LENGTH_PREFIX_BYTES + length;
        let frame = decoded.map_err(FrameError::Malformed)?;
        if matches!(&frame, Frame::Batch(messages) if messages.is_empty()) {
            return Err(FrameError::Malformed(DecodeError::Invalid(
                "empty batch".to_owned(),
            )));
        }
        Ok(Some(frame))
    }
}

/// Bytes of postcard's LEB128 varint encoding of `value`.
fn varint_bytes(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 4096;

    fn batch(payloads: &[(Channel, &[u8])]) -> Frame {
        Frame::Batch(
            payloads
                .iter()
                .map(|(channel, bytes)| Message {
                    channel: *channel,
                    bytes: bytes.to_vec(),
                })
                .collect(),
        )
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            encode_frame(frame, MAX, &mut out).expect("test frames fit the bound");
        }
        out
    }

    /// Feeds `stream` cut at `cuts`, collecting frames until the first error.
    fn decode_split(stream: &[u8], cuts: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
        let mut decoder = FrameDecoder::new(MAX);
        let mut frames = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut from = 0;
        for to in points {
            decoder.extend(&stream[from..to]);
            from = to;
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => return (frames, Some(error)),
                }
            }
        }
        (frames, None)
    }

    #[test]
    fn frames_round_trip_and_the_size_estimate_is_exact() {
        let frames = vec![
            Frame::Handshake(Handshake::new(NodeId(7), "prod")),
            batch(&[(Channel::Raft, b"vote"), (Channel::Membership, &[0; 300])]),
        ];
        let stream = encoded(&frames);
        assert_eq!(decode_split(&stream, &[1, 5, 9]), (frames.clone(), None));

        // The batcher packs frames with `encoded_bytes`; it must be exact, or a
        // packed batch could exceed the bound it was packed to.
        let Frame::Batch(messages) = &frames[1] else {
            unreachable!()
        };
        let mut single = Vec::new();
        encode_frame(&frames[1], MAX, &mut single).unwrap();
        let payload: usize = messages.iter().map(Message::encoded_bytes).sum();
        // Prefix, format version byte, variant tag, one-byte count, messages.
        assert_eq!(single.len(), LENGTH_PREFIX_BYTES + 1 + 1 + 1 + payload);
    }

    #[test]
    fn an_oversized_length_prefix_is_rejected_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(MAX);
        decoder.extend(&u32::MAX.to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::Oversized {
                length_bytes: u32::MAX,
                frame_bytes_max: MAX
            })
        );
        // Nothing was reserved for the claimed body.
        assert!(decoder.buffer.capacity() < 64);
    }

    #[test]
    fn the_encoder_refuses_a_body_above_the_bound_and_appends_nothing() {
        let mut out = vec![1, 2, 3];
        let frame = batch(&[(Channel::Replication, &[0; 100])]);
        assert!(matches!(
            encode_frame(&frame, 50, &mut out),
            Err(EncodeError::Oversized { .. })
        ));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn malformed_bodies_and_empty_batches_are_typed_errors() {
        let check = |body: &[u8]| {
            let mut stream = (body.len() as u32).to_be_bytes().to_vec();
            stream.extend_from_slice(body);
            let (frames, error) = decode_split(&stream, &[]);
            assert!(frames.is_empty());
            assert!(matches!(error, Some(FrameError::Malformed(_))), "{body:?}");
        };
        check(&[]); // no format version byte
        check(&[9, 0]); // unknown format version
        check(&[codec::FORMAT_VERSION, 7]); // unknown frame variant
        check(&codec::encode(&Frame::Batch(Vec::new())));
        let mut trailing = codec::encode(&Frame::Handshake(Handshake::new(NodeId(1), "c")));
        trailing.push(0);
        check(&trailing);
    }

    #[test]
    fn handshakes_from_another_cluster_or_version_are_refused() {
        let ours = Handshake::new(NodeId(1), "prod");
        assert_eq!(ours.check("prod"), Ok(()));
        assert!(matches!(
            ours.check("staging"),
            Err(HandshakeError::Cluster { .. })
        ));
        let future = Handshake {
            protocol_version: PROTOCOL_VERSION + 1,
            ..ours
        };
        assert!(matches!(
            future.check("prod"),
            Err(HandshakeError::ProtocolVersion { .. })
        ));
    }

    #[test]
    fn varint_sizes_match_postcard() {
        for value in [0usize, 1, 127, 128, 16_383, 16_384, u32::MAX as usize] {
            let bytes = postcard_len(value);
            assert_eq!(varint_bytes(value), bytes, "{value}");
        }
    }

    fn postcard_len(value: usize) -> usize {
        // A Vec<()> encodes as just its varint length.
        codec::encode(&vec![(); value]).len() - 1
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let channel = prop_oneof![
            Just(Channel::Membership),
            Just(Channel::Replication),
            Just(Channel::Raft),
            Just(Channel::AntiEntropy),
            Just(Channel::Ring),
            Just(Channel::Kv),
        ];
        let message = (channel, proptest::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(channel, bytes)| Message { channel, bytes });
        prop_oneof![
            (any::<u64>(), any::<u16>(), "[a-z]{0,12}").prop_map(|(n, v, cluster)| {
                Frame::Handshake(Handshake {
                    node: NodeId(n),
                    protocol_version: v,
                    cluster,
                })
            }),
            proptest::collection::vec(message, 1..8).prop_map(Frame::Batch),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        // Framing is independent of how TCP segments the stream: any split of
        // an encoded stream yields exactly the frames that were encoded.
        #[test]
        fn any_split_of_encoded_frames_yields_exactly_those_frames(
            frames in proptest::collection::vec(arb_frame(), 0..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let stream = encoded(&frames);
            prop_assert_eq!(decode_split(&stream, &cuts), (frames, None));
        }

        // Untrusted bytes, split anywhere, give frames or a typed error, never
        // a panic, and the same outcome whatever the split.
        #[test]
        fn arbitrary_bytes_decode_the_same_under_any_split_and_never_panic(
            stream in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            prop_assert_eq!(decode_split(&stream, &cuts), decode_split(&stream, &[]));
        }

        // A valid stream with a corrupted tail still yields its valid prefix
        // of frames before any error.
        #[test]
        fn frames_before_corruption_are_delivered_intact(
            frames in proptest::collection::vec(arb_frame(), 1..4),
            garbage in proptest::collection::vec(any::<u8>(), 1..64),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut stream = encoded(&frames);
            stream.extend_from_slice(&garbage);
            let (decoded, _) = decode_split(&stream, &cuts);
            prop_assert!(decoded.len() >= frames.len());
            prop_assert_eq!(&decoded[..frames.len()], &frames[..]);
        }
    }
}
