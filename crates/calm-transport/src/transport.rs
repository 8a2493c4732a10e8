//! The tokio driver's public face: configuration, `bind`, `send`, `stats` and `shutdown`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use calm_types::NodeId;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;

use crate::frame::{
    BATCH_OVERHEAD_BYTES_MAX, Channel, FRAME_BYTES_MAX_DEFAULT, Frame, Handshake,
    MESSAGE_OVERHEAD_BYTES_MAX, Message, encode_frame,
};
use crate::inbound::{Inbound, accept_loop};
use crate::outbound::{PeerHandle, spawn_writer};
use crate::stats::{Counters, TransportStats, bump};

/// Every bound and timing of a transport. Build with [`TransportConfig::new`]
/// and adjust fields; [`Transport::bind`] checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// This node's id, sent in every handshake.
    pub node: NodeId,
    /// The cluster name; connections from other clusters are refused.
    pub cluster: String,
    /// Where to listen; port 0 picks a free port (see [`Transport::local_addr`]).
    pub listen_addr: SocketAddr,
    /// The largest frame body, in bytes, sent or accepted.
    pub frame_bytes_max: u32,
    /// The most messages in one batch frame.
    pub batch_messages_max: usize,
    /// The most messages queued per peer before `send` refuses.
    pub peer_queue_messages_max: usize,
    /// The most received messages waiting in the inbound receiver before
    /// readers stop reading (and TCP pushes back on the senders).
    pub inbound_queue_messages_max: usize,
    /// The most inbound connections served at once; more are closed on accept.
    pub inbound_connections_max: usize,
    /// The first redial delay ceiling, in milliseconds.
    pub backoff_initial_ms: u64,
    /// The cap on the redial delay ceiling, in milliseconds.
    pub backoff_max_ms: u64,
    /// How long one dial (connect and handshake write) may take.
    pub dial_timeout_ms: u64,
    /// How long an inbound connection may take to send its handshake.
    pub handshake_timeout_ms: u64,
    /// How long one frame write may stall before the connection is dropped;
    /// bounds how long a peer that stops reading holds up its queue.
    pub write_timeout_ms: u64,
    /// The seed of the redial jitter.
    pub rng_seed: u64,
}

impl TransportConfig {
    /// A configuration with production defaults for every bound.
    pub fn new(node: NodeId, cluster: impl Into<String>, listen_addr: SocketAddr) -> Self {
        TransportConfig {
            node,
            cluster: cluster.into(),
            listen_addr,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            batch_messages_max: 256,
            peer_queue_messages_max: 4096,
            inbound_queue_messages_max: 16 * 1024,
            inbound_connections_max: 1024,
            backoff_initial_ms: 50,
            backoff_max_ms: 5_000,
            dial_timeout_ms: 2_000,
            handshake_timeout_ms: 2_000,
            write_timeout_ms: 10_000,
            rng_seed: node.0,
        }
    }

    /// The largest message payload `send` accepts: what fits a frame alone,
    /// with the varint headers counted at their widest.
    pub fn message_bytes_max(&self) -> usize {
        (self.frame_bytes_max as usize)
            .saturating_sub(BATCH_OVERHEAD_BYTES_MAX + MESSAGE_OVERHEAD_BYTES_MAX)
    }

    fn check(&self) -> Result<(), BindError> {
        let invalid = |what| Err(BindError::InvalidConfig(what));
        if self.batch_messages_max == 0 {
            return invalid("batch_messages_max must be at least 1");
        }
        if self.peer_queue_messages_max == 0 || self.inbound_queue_messages_max == 0 {
            return invalid("queue bounds must be at least 1");
        }
        if self.inbound_connections_max == 0 {
            return invalid("inbound_connections_max must be at least 1");
        }
        // A zero ceiling would redial an unreachable peer in a tight loop.
        if self.backoff_initial_ms == 0 {
            return invalid("backoff_initial_ms must be at least 1");
        }
        if self.dial_timeout_ms == 0 || self.handshake_timeout_ms == 0 || self.write_timeout_ms == 0
        {
            return invalid("timeouts must be at least 1ms");
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return invalid("backoff_initial_ms must not exceed backoff_max_ms");
        }
        if self.message_bytes_max() == 0 {
            return invalid("frame_bytes_max leaves no room for a message");
        }
        Ok(())
    }
}

/// Why [`Transport::bind`] failed. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A bound in the configuration is unusable.
    #[error("invalid transport config: {0}")]
    InvalidConfig(&'static str),
    /// The listening socket could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] io::Error),
}

/// Why [`Transport::send`] refused a message. In every case the message was
/// not queued and nothing else changed, apart from the counter named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Backpressure: the peer's queue holds `peer_queue_messages_max`
    /// messages. The message is dropped and counted in
    /// `messages_dropped_queue_full`; the caller may retry later or let the
    /// core's own retransmission cover it.
    #[error("queue to {peer} is full ({queue_messages_max} messages)")]
    QueueFull {
        /// The peer whose queue is full.
        peer: NodeId,
        /// The bound in force.
        queue_messages_max: usize,
    },
    /// The message can never fit a frame.
    #[error("message of {message_bytes} bytes exceeds the bound of {message_bytes_max}")]
    MessageTooLarge {
        /// The payload's size.
        message_bytes: usize,
        /// [`TransportConfig::message_bytes_max`].
        message_bytes_max: usize,
    },
    /// [`Transport::shutdown`] has begun.
    #[error("the transport is shut down")]
    ShutDown,
}

/// State shared by the transport and all its tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: TransportConfig,
    pub counters: Counters,
    /// Our handshake, encoded once at bind.
    pub handshake_frame: Vec<u8>,
}

/// One node's peer transport: a listener, and a writer task per peer sent to.
///
/// Driver contract: [`bind`](Self::bind) inside a tokio runtime; then
/// [`send`](Self::send) from any thread (it never blocks or awaits) and read
/// deliveries from the returned receiver; finally
/// [`shutdown`](Self::shutdown). Dropping the transport aborts its tasks
/// without flushing.
///
/// Delivery is at-most-once and ordered per peer: a batch whose write fails
/// is dropped, not retried, and messages queued behind it go out on the next
/// connection. A batch written into the socket just before the peer dies may
/// also be lost without an error, as with any TCP sender that has no
/// application acknowledgement. The cores above tolerate loss.
#[derive(Debug)]
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    runtime: Handle,
    /// `None` once shutdown has begun. A std Mutex, not a tokio one: nothing
    /// awaits while it is held.
    peers: Mutex<Option<HashMap<NodeId, PeerHandle>>>,
    /// Taken by shutdown, which awaits it so the listener is closed on return.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl Transport {
    /// Starts listening on `config.listen_addr`; returns the transport and
    /// the receiver of inbound messages. Must run inside a tokio runtime.
    pub async fn bind(
        config: TransportConfig,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), BindError> {
        config.check()?;
        let mut handshake_frame = Vec::new();
        let handshake = Frame::Handshake(Handshake::new(config.node, config.cluster.clone()));
        encode_frame(&handshake, config.frame_bytes_max, &mut handshake_frame)
            .map_err(|_| BindError::InvalidConfig("the cluster name does not fit a frame"))?;
        let listener = TcpListener::bind(config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_queue_messages_max);
        let shared = Arc::new(Shared {
            config,
            counters: Counters::default(),
            handshake_frame,
        });
        let runtime = Handle::current();
        let acceptor = runtime.spawn(accept_loop(listener, Arc::clone(&shared), inbound_tx));
        let transport = Transport {
            shared,
            local_addr,
            runtime,
            peers: Mutex::new(Some(HashMap::new())),
            acceptor: Mutex::new(Some(acceptor)),
        };
        Ok((transport, inbound_rx))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.shared.config.node
    }

    /// Queues `bytes` for `to`, dialling it at `addr` if needed. Never blocks.
    ///
    /// A later `addr` for the same peer replaces the earlier one from its
    /// next dial on. Accepted messages to one peer are sent in order.
    pub fn send(
        &self,
        to: NodeId,
        addr: SocketAddr,
        channel: Channel,
        bytes: Vec<u8>,
    ) -> Result<(), SendError> {
        let message_bytes_max = self.shared.config.message_bytes_max();
        if bytes.len() > message_bytes_max {
            return Err(SendError::MessageTooLarge {
                message_bytes: bytes.len(),
                message_bytes_max,
            });
        }
        let mut peers = self.lock_peers();
        let peers = peers.as_mut().ok_or(SendError::ShutDown)?;
        let peer = peers
            .entry(to)
            .or_insert_with(|| spawn_writer(&self.runtime, Arc::clone(&self.shared), to, addr));
        *peer.addr.lock().unwrap_or_else(|p| p.into_inner()) = addr;
        match peer.queue.try_send(Message { channel, bytes }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                bump(&self.shared.counters.messages_dropped_queue_full, 1);
                Err(SendError::QueueFull {
                    peer: to,
                    queue_messages_max: self.shared.config.peer_queue_messages_max,
                })
            }
            // The writer ends only when its queue closes, which happens only
            // at shutdown, so a closed queue means the transport is shutting
            // down (or its runtime is).
            Err(TrySendError::Closed(_)) => Err(SendError::ShutDown),
        }
    }

    /// Drops everything kept for `peer`: its queue (and the messages in it),
    /// its connection and its writer task. Returns whether there was any. The
    /// next `send` to it starts afresh; call this when membership declares a
    /// peer gone, since nothing else ever removes one.
    pub fn forget(&self, peer: NodeId) -> bool {
        let removed = self
            .lock_peers()
            .as_mut()
            .and_then(|peers| peers.remove(&peer));
        // Aborted, not drained: a writer draining to a dead peer would dial
        // it forever.
        removed.map(|handle| handle.writer.abort()).is_some()
    }

    /// A snapshot of the counters and the current queue depths.
    pub fn stats(&self) -> TransportStats {
        let mut stats = self.shared.counters.snapshot();
        if let Some(peers) = self.lock_peers().as_ref() {
            for (node, peer) in peers {
                let depth = peer.queue.max_capacity() - peer.queue.capacity();
                stats.queue_depth_messages.insert(*node, depth);
            }
        }
        stats
    }

    /// Stops accepting sends, writes what is queued best-effort within
    /// `deadline`, then closes every connection and the listener.
    ///
    /// Returns whether every queue was written out before the deadline;
    /// written means handed to the kernel, not acknowledged by the peer.
    /// Inbound connections are served until the flush ends, so two nodes
    /// shutting down together still drain to each other. On return the
    /// listener and outbound connections are closed; inbound readers are
    /// cancelled and close when the runtime next polls them.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let peers = self.lock_peers().take().unwrap_or_default();
        let mut writers = Vec::with_capacity(peers.len());
        for peer in peers.into_values() {
            // Dropping the last sender closes the queue; the writer drains
            // what is left and ends.
            drop(peer.queue);
            writers.push(peer.writer);
        }
        let flushed = tokio::time::timeout(deadline, async {
            // Each finished writer leaves the list, since a JoinHandle must
            // not be polled again after it completed.
            while let Some(writer) = writers.last_mut() {
                // A writer that panicked has nothing left to flush.
                let _ = writer.await;
                writers.pop();
            }
        })
        .await
        .is_ok();
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Awaiting the aborted tasks, not just aborting them, makes sure their
        // sockets are dropped before this returns, so the port is free.
        for task in writers.into_iter().chain(acceptor) {
            task.abort();
            let _ = task.await;
        }
        flushed
    }

    fn lock_peers(&self) -> MutexGuard<'_, Option<HashMap<NodeId, PeerHandle>>> {
        // Nothing panics while holding this lock except spawning a writer
        // outside any runtime, which leaves the map whole.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Some(acceptor) = self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            acceptor.abort();
        }
        if let Some(peers) = self.lock_peers().take() {
            for peer in peers.into_values() {
                peer.writer.abort();
            }
        }
    }
}
