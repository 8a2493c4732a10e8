//! Transport counters: plain atomics bumped by the tasks, read as a [`TransportStats`] snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use calm_types::NodeId;

/// Why a connection was closed by this node. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// A length prefix above the frame bound.
    OversizedFrame,
    /// A frame body that did not decode, or a frame out of place.
    MalformedFrame,
    /// A handshake from another cluster or protocol version, a missing one or
    /// a repeated one.
    HandshakeMismatch,
    /// No handshake arrived within the handshake timeout.
    HandshakeTimeout,
    /// A read or write failed.
    Io,
}

/// The most recent close, kept until a metrics and logging layer takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRecord {
    /// The counted reason.
    pub reason: CloseReason,
    /// The remote address of the closed connection.
    pub remote: SocketAddr,
    /// The peer, if its handshake had been accepted (inbound) or it was the
    /// dialled peer (outbound).
    pub peer: Option<NodeId>,
    /// The error, rendered for a human.
    pub detail: String,
}

/// A point-in-time copy of the transport's counters. Counters only grow;
/// `queue_depth_messages` is the current depth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Batch frames written (handshakes are not counted).
    pub frames_sent: u64,
    /// Bytes written, handshakes and length prefixes included.
    pub bytes_sent: u64,
    /// Messages written inside batch frames.
    pub messages_sent: u64,
    /// Frames decoded from inbound connections, handshakes included.
    pub frames_received: u64,
    /// Bytes read from inbound connections.
    pub bytes_received: u64,
    /// Messages delivered to the inbound receiver.
    pub messages_received: u64,
    /// Outbound connections established (handshake written).
    pub connections_opened: u64,
    /// Inbound connections accepted.
    pub connections_accepted: u64,
    /// Inbound connections refused at the `inbound_connections_max` bound.
    pub connections_refused: u64,
    /// Dials that followed a failed dial or a dropped connection.
    pub reconnect_attempts: u64,
    /// Dials that failed or timed out.
    pub dial_failures: u64,
    /// Connections closed for [`CloseReason::OversizedFrame`].
    pub closed_oversized_frame: u64,
    /// Connections closed for [`CloseReason::MalformedFrame`].
    pub closed_malformed_frame: u64,
    /// Connections closed for [`CloseReason::HandshakeMismatch`].
    pub closed_handshake_mismatch: u64,
    /// Connections closed for [`CloseReason::HandshakeTimeout`].
    pub closed_handshake_timeout: u64,
    /// Connections closed for [`CloseReason::Io`].
    pub closed_io_error: u64,
    /// Inbound connections the peer closed cleanly.
    pub closed_by_peer: u64,
    /// Messages refused by `send` because the peer's queue was full.
    pub messages_dropped_queue_full: u64,
    /// Messages lost in a batch whose write failed (at-most-once delivery).
    pub messages_dropped_connection_lost: u64,
    /// Messages queued per peer, not yet taken into a batch.
    pub queue_depth_messages: BTreeMap<NodeId, usize>,
    /// The most recent close, if any.
    pub last_close: Option<CloseRecord>,
}

/// The live counters, shared by every task of one transport.
///
/// Relaxed ordering throughout: each counter is independent and nothing is
/// synchronised through them; a snapshot may mix slightly different instants.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_received: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub reconnect_attempts: AtomicU64,
    pub dial_failures: AtomicU64,
    pub closed_oversized_frame: AtomicU64,
    pub closed_malformed_frame: AtomicU64,
    pub closed_handshake_mismatch: AtomicU64,
    pub closed_handshake_timeout: AtomicU64,
    pub closed_io_error: AtomicU64,
    pub closed_by_peer: AtomicU64,
    pub messages_dropped_queue_full: AtomicU64,
    pub messages_dropped_connection_lost: AtomicU64,
    /// A std Mutex, not a tokio one: nothing awaits while it is held.
    pub last_close: Mutex<Option<CloseRecord>>,
}

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// Counts a close and remembers it as the latest.
    pub fn record_close(&self, record: CloseRecord) {
        let counter = match record.reason {
            CloseReason::OversizedFrame => &self.closed_oversized_frame,
            CloseReason::MalformedFrame => &self.closed_malformed_frame,
            CloseReason::HandshakeMismatch => &self.closed_handshake_mismatch,
            CloseReason::HandshakeTimeout => &self.closed_handshake_timeout,
            CloseReason::Io => &self.closed_io_error,
        };
        bump(counter, 1);
        // A poisoned lock only means another task panicked mid-assignment of
        // an Option; the value is still a whole record or None.
        *self.last_close.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
    }

    /// Copies the counters; the caller fills in the queue depths.
    pub fn snapshot(&self) -> TransportStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: read(&self.frames_sent),
            bytes_sent: read(&self.bytes_sent),
            messages_sent: read(&self.messages_sent),
            frames_received: read(&self.frames_received),
            bytes_received: read(&self.bytes_received),
            messages_received: read(&self.messages_received),
            connections_opened: read(&self.connections_opened),
            connections_accepted: read(&self.connections_accepted),
            connections_refused: read(&self.connections_refused),
            reconnect_attempts: read(&self.reconnect_attempts),
            dial_failures: read(&self.dial_failures),
            closed_oversized_frame: read(&self.closed_oversized_frame),
            closed_malformed_frame: read(&self.closed_malformed_frame),
            closed_handshake_mismatch: read(&self.closed_handshake_mismatch),
            closed_handshake_timeout: read(&self.closed_handshake_timeout),
            closed_io_error: read(&self.closed_io_error),
            closed_by_peer: read(&self.closed_by_peer),
            messages_dropped_queue_full: read(&self.messages_dropped_queue_full),
            messages_dropped_connection_lost: read(&self.messages_dropped_connection_lost),
            queue_depth_messages: BTreeMap::new(),
            last_close: self
                .last_close
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
