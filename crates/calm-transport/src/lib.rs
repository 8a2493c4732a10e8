//! The peer transport: length-prefixed, versioned frames over TCP, with bounded per-peer queues.
//!
//! Nodes talk over one TCP connection per peer and direction. The dialling
//! side opens with a [`Handshake`] (its node id, the [`PROTOCOL_VERSION`] and
//! the cluster name) and then sends batch frames, each carrying messages
//! tagged with a [`Channel`]; the bytes of a message belong to the core that
//! sent it and the transport never looks inside. The accepting side only
//! reads. The framing is a sans-IO codec you can drive by hand:
//!
//! ```
//! use calm_transport::{Channel, Frame, FrameDecoder, FrameError, Handshake, Message, encode_frame};
//! use calm_types::NodeId;
//!
//! let frame_bytes_max = 64 * 1024;
//! let mut wire = Vec::new();
//! let hello = Frame::Handshake(Handshake::new(NodeId(1), "prod"));
//! encode_frame(&hello, frame_bytes_max, &mut wire).unwrap();
//! let batch = Frame::Batch(vec![
//!     Message { channel: Channel::Membership, bytes: b"ping".to_vec() },
//!     Message { channel: Channel::Raft, bytes: b"append".to_vec() },
//! ]);
//! encode_frame(&batch, frame_bytes_max, &mut wire).unwrap();
//!
//! // The decoder takes bytes in whatever pieces TCP delivers them.
//! let mut decoder = FrameDecoder::new(frame_bytes_max);
//! let mut frames = Vec::new();
//! for piece in wire.chunks(3) {
//!     decoder.extend(piece);
//!     while let Some(frame) = decoder.next_frame().unwrap() {
//!         frames.push(frame);
//!     }
//! }
//! assert_eq!(frames, [hello, batch]);
//!
//! // Untrusted bytes give a typed error, and an absurd length prefix is
//! // refused before anything is allocated for it.
//! decoder.extend(&u32::MAX.to_be_bytes());
//! assert!(matches!(decoder.next_frame(), Err(FrameError::Oversized { .. })));
//! ```
//!
//! The tokio driver is [`Transport`]: `send` never blocks, it queues on a
//! bounded per-peer queue and answers [`SendError::QueueFull`] when the peer
//! cannot keep up; a writer task per peer dials (redialling with capped,
//! fully jittered exponential backoff), batches everything queued into one
//! frame, and writes it. Delivery is ordered per peer and at-most-once.
//!
//! ```
//! use std::time::Duration;
//! use calm_transport::{Channel, Transport, TransportConfig};
//! use calm_types::NodeId;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let any_port = "127.0.0.1:0".parse().unwrap();
//! let (a, _a_inbox) = Transport::bind(TransportConfig::new(NodeId(1), "prod", any_port)).await.unwrap();
//! let (b, mut b_inbox) = Transport::bind(TransportConfig::new(NodeId(2), "prod", any_port)).await.unwrap();
//!
//! a.send(NodeId(2), b.local_addr(), Channel::Membership, b"ping".to_vec()).unwrap();
//! let received = b_inbox.recv().await.unwrap();
//! assert_eq!((received.from, received.channel), (NodeId(1), Channel::Membership));
//! assert_eq!(received.bytes, b"ping");
//! assert_eq!(a.stats().frames_sent, 1);
//!
//! assert!(a.shutdown(Duration::from_secs(1)).await);
//! b.shutdown(Duration::from_secs(1)).await;
//! # });
//! ```
//!
//! Modules: [`frame`] (the codec), [`Transport`] and [`TransportConfig`]
//! (the driver and every bound), [`TransportStats`] (the counters),
//! [`Backoff`] (the redial schedule).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backoff;
pub mod frame;
mod inbound;
mod outbound;
mod stats;
mod transport;

pub use backoff::Backoff;
pub use frame::{
    Channel, EncodeError, Frame, FrameDecoder, FrameError, Handshake, HandshakeError, Message,
    PROTOCOL_VERSION, encode_frame,
};
pub use inbound::Inbound;
pub use stats::{CloseReason, CloseRecord, TransportStats};
pub use transport::{BindError, SendError, Transport, TransportConfig};
