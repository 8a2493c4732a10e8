//! The per-peer writer task: drains one bounded queue into batch frames over one dialled connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_types::NodeId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::backoff::Backoff;
use crate::frame::{BATCH_OVERHEAD_BYTES_MAX, Frame, Message, encode_frame};
use crate::stats::{CloseReason, CloseRecord, bump};
use crate::transport::Shared;

/// What the transport keeps per peer: the sending half of its queue, where to
/// dial it, and the writer task draining the queue.
#[derive(Debug)]
pub(crate) struct PeerHandle {
    pub queue: mpsc::Sender<Message>,
    /// Shared with the writer, which reads it at every dial, so a peer that
    /// moved is reached at its new address from the next reconnect on. A std
    /// Mutex: nothing awaits while it is held.
    pub addr: Arc<Mutex<SocketAddr>>,
    pub writer: JoinHandle<()>,
}

/// Starts the writer task of `peer` on `runtime`.
pub(crate) fn spawn_writer(
    runtime: &Handle,
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
) -> PeerHandle {
    let config = &shared.config;
    let (queue, receiver) = mpsc::channel(config.peer_queue_messages_max);
    let addr = Arc::new(Mutex::new(addr));
    // Each peer draws its own jitter stream from the one seed, so peers lost
    // together do not redial in lockstep, and a run still replays.
    let seed = config.rng_seed ^ peer.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let writer = Writer {
        backoff: Backoff::new(config.backoff_initial_ms, config.backoff_max_ms, seed),
        shared: Arc::clone(&shared),
        peer,
        addr: Arc::clone(&addr),
        queue: receiver,
        stream: None,
        carry: None,
        dialled: false,
        out: Vec::new(),
    };
    let writer = runtime.spawn(writer.run());
    PeerHandle {
        queue,
        addr,
        writer,
    }
}

struct Writer {
    shared: Arc<Shared>,
    peer: NodeId,
    addr: Arc<Mutex<SocketAddr>>,
    queue: mpsc::Receiver<Message>,
    backoff: Backoff,
    stream: Option<TcpStream>,
    /// A message taken from the queue that did not fit the previous batch; it
    /// opens the next one, so order is kept.
    carry: Option<Message>,
    /// Whether any dial was made, so later dials count as reconnects.
    dialled: bool,
    /// The frame being written, kept to reuse its allocation.
    out: Vec<u8>,
}

impl Writer {
    /// Runs until the queue is closed (shutdown) and drained.
    async fn run(mut self) {
        while let Some(first) = self.next_message().await {
            let stream = match self.stream.take() {
                Some(stream) => stream,
                None => self.dial().await,
            };
            // The batch is filled after the dial, so everything queued while
            // the peer was unreachable leaves in as few frames as possible.
            let batch = self.fill_batch(first);
            self.write_batch(stream, batch).await;
        }
    }

    async fn next_message(&mut self) -> Option<Message> {
        match self.carry.take() {
            Some(message) => Some(message),
            None => self.queue.recv().await,
        }
    }

    /// Takes queued messages after `first` up to both batch bounds.
    fn fill_batch(&mut self, first: Message) -> Vec<Message> {
        let config = &self.shared.config;
        let frame_bytes_max = config.frame_bytes_max as usize;
        let mut batch_bytes = BATCH_OVERHEAD_BYTES_MAX + first.encoded_bytes();
        let mut batch = vec![first];
        while batch.len() < config.batch_messages_max {
            let Ok(message) = self.queue.try_recv() else {
                break;
            };
            if batch_bytes + message.encoded_bytes() > frame_bytes_max {
                self.carry = Some(message);
                break;
            }
            batch_bytes += message.encoded_bytes();
            batch.push(message);
        }
        batch
    }

    /// Writes one batch; on failure drops it and the connection.
    async fn write_batch(&mut self, mut stream: TcpStream, batch: Vec<Message>) {
        let config = &self.shared.config;
        let counters = &self.shared.counters;
        let messages = batch.len() as u64;
        self.out.clear();
        // `send` admits only messages that fit a frame alone, and
        // `fill_batch` packs with exact sizes, so a batch always fits.
        encode_frame(&Frame::Batch(batch), config.frame_bytes_max, &mut self.out)
            .expect("batches are packed within the frame bound");
        let write_timeout = Duration::from_millis(config.write_timeout_ms);
        let detail = match timeout(write_timeout, stream.write_all(&self.out)).await {
            Ok(Ok(())) => {
                bump(&counters.frames_sent, 1);
                bump(&counters.bytes_sent, self.out.len() as u64);
                bump(&counters.messages_sent, messages);
                self.stream = Some(stream);
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("write stalled for {}ms", config.write_timeout_ms),
        };
        // At-most-once: the batch is not retried, since part of it may have
        // reached the peer, and the cores above tolerate loss.
        bump(&counters.messages_dropped_connection_lost, messages);
        counters.record_close(CloseRecord {
            reason: CloseReason::Io,
            remote: self.current_addr(),
            peer: Some(self.peer),
            detail,
        });
    }

    /// Dials until a connection is open and our handshake written, waiting a
    /// jittered, capped, exponentially growing delay after each failure.
    async fn dial(&mut self) -> TcpStream {
        let config = &self.shared.config;
        let counters = &self.shared.counters;
        loop {
            if self.dialled {
                bump(&counters.reconnect_attempts, 1);
            }
            self.dialled = true;
            let dial_timeout = Duration::from_millis(config.dial_timeout_ms);
            let addr = self.current_addr();
            if let Ok(Ok(stream)) = timeout(dial_timeout, self.open(addr)).await {
                self.backoff.reset();
                bump(&counters.connections_opened, 1);
                bump(
                    &counters.bytes_sent,
                    self.shared.handshake_frame.len() as u64,
                );
                return stream;
            }
            bump(&counters.dial_failures, 1);
            sleep(Duration::from_millis(self.backoff.next_delay_ms())).await;
        }
    }

    async fn open(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect(addr).await?;
        // The writer batches on its own; Nagle's delay would only add latency.
        stream.set_nodelay(true)?;
        stream.write_all(&self.shared.handshake_frame).await?;
        Ok(stream)
    }

    fn current_addr(&self) -> SocketAddr {
        // A poisoned lock still holds a whole SocketAddr (Copy, assigned at once).
        *self.addr.lock().unwrap_or_else(|p| p.into_inner())
    }
}
