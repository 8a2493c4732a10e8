//! The accept loop and the per-connection reader: handshake, then decode batches and deliver them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use calm_types::NodeId;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::frame::{Channel, Frame, FrameDecoder, FrameError, HandshakeError};
use crate::stats::{CloseReason, CloseRecord, bump};
use crate::transport::Shared;

/// Bytes asked of the socket per read: a few segments' worth, so a stream of
/// small batches costs few reads without a large idle buffer per connection.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How long the accept loop pauses after an accept error. Errors such as
/// running out of file descriptors persist; the pause keeps the loop from
/// spinning on them.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// A message received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The sender, as named in its connection's handshake.
    pub from: NodeId,
    /// The core the message is for.
    pub channel: Channel,
    /// The message, as the sending core encoded it.
    pub bytes: Vec<u8>,
}

/// Accepts connections until aborted, serving each on its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
) {
    // Dropping the JoinSet when this task is aborted aborts every reader.
    let mut readers = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while readers.try_join_next().is_some() {}
        let Ok((stream, remote)) = accepted else {
            sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
            continue;
        };
        if readers.len() >= shared.config.inbound_connections_max {
            bump(&shared.counters.connections_refused, 1);
            continue;
        }
        bump(&shared.counters.connections_accepted, 1);
        let connection = Connection {
            stream,
            remote,
            decoder: FrameDecoder::new(shared.config.frame_bytes_max),
            chunk: vec![0; READ_CHUNK_BYTES],
            shared: Arc::clone(&shared),
        };
        readers.spawn(connection.serve(inbound.clone()));
    }
}

/// Why an inbound connection is closed by this node.
#[derive(Debug)]
enum ConnectionError {
    Frame(FrameError),
    Handshake(HandshakeError),
    Io(io::Error),
}

impl From<FrameError> for ConnectionError {
    fn from(error: FrameError) -> Self {
        ConnectionError::Frame(error)
    }
}

impl From<HandshakeError> for ConnectionError {
    fn from(error: HandshakeError) -> Self {
        ConnectionError::Handshake(error)
    }
}

impl From<io::Error> for ConnectionError {
    fn from(error: io::Error) -> Self {
        ConnectionError::Io(error)
    }
}

impl ConnectionError {
    fn reason(&self) -> CloseReason {
        match self {
            ConnectionError::Frame(FrameError::Oversized { .. }) => CloseReason::OversizedFrame,
            ConnectionError::Frame(FrameError::Malformed(_)) => CloseReason::MalformedFrame,
            ConnectionError::Handshake(_) => CloseReason::HandshakeMismatch,
            ConnectionError::Io(_) => CloseReason::Io,
        }
    }

    fn detail(&self) -> String {
        match self {
            ConnectionError::Frame(error) => error.to_string(),
            ConnectionError::Handshake(error) => error.to_string(),
            ConnectionError::Io(error) => error.to_string(),
        }
    }
}

/// How a connection ended without an error.
enum Ended {
    /// The peer closed it (or never spoke).
    PeerClosed,
    /// The inbound receiver was dropped; nobody wants the messages.
    ReceiverGone,
}

struct Connection {
    stream: TcpStream,
    remote: SocketAddr,
    decoder: FrameDecoder,
    chunk: Vec<u8>,
    shared: Arc<Shared>,
}

impl Connection {
    /// Serves the connection to its end, counting why it ended. Returning
    /// drops the stream, which closes the connection.
    async fn serve(mut self, inbound: mpsc::Sender<Inbound>) {
        let handshake_timeout = Duration::from_millis(self.shared.config.handshake_timeout_ms);
        let peer = match timeout(handshake_timeout, self.handshake()).await {
            Ok(Ok(Some(peer))) => peer,
            Ok(Ok(None)) => return bump(&self.shared.counters.closed_by_peer, 1),
            Ok(Err(error)) => return self.record_close(error.reason(), None, error.detail()),
            Err(_) => {
                let detail = format!("no handshake within {}ms", handshake_timeout.as_millis());
                return self.record_close(CloseReason::HandshakeTimeout, None, detail);
            }
        };
        match self.relay(peer, &inbound).await {
            Ok(Ended::PeerClosed) => bump(&self.shared.counters.closed_by_peer, 1),
            Ok(Ended::ReceiverGone) => {}
            Err(error) => self.record_close(error.reason(), Some(peer), error.detail()),
        }
    }

    /// Reads the opening handshake: the peer's node id, or `None` if the
    /// peer closed before sending one.
    async fn handshake(&mut self) -> Result<Option<NodeId>, ConnectionError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                bump(&self.shared.counters.frames_received, 1);
                let Frame::Handshake(handshake) = frame else {
                    return Err(HandshakeError::Missing.into());
                };
                handshake.check(&self.shared.config.cluster)?;
                return Ok(Some(handshake.node));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Delivers every message of every batch, in order, until the end.
    async fn relay(
        &mut self,
        from: NodeId,
        inbound: &mpsc::Sender<Inbound>,
    ) -> Result<Ended, ConnectionError> {
        // A clone of the Arc, so the counters stay at hand while `self` reads.
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        loop {
            while let Some(frame) = self.decoder.next_frame()? {
                bump(&counters.frames_received, 1);
                let Frame::Batch(messages) = frame else {
                    return Err(HandshakeError::Repeated.into());
                };
                for message in messages {
                    let delivery = Inbound {
                        from,
                        channel: message.channel,
                        bytes: message.bytes,
                    };
                    // Awaiting a full receiver stops this reader, which fills
                    // the socket buffers and so pushes back on the sender.
                    if inbound.send(delivery).await.is_err() {
                        return Ok(Ended::ReceiverGone);
                    }
                    bump(&counters.messages_received, 1);
                }
            }
            if !self.read_more().await? {
                return Ok(Ended::PeerClosed);
            }
        }
    }

    /// Reads what the socket has into the decoder; `false` at end of stream.
    async fn read_more(&mut self) -> io::Result<bool> {
        let read_bytes = self.stream.read(&mut self.chunk).await?;
        if read_bytes == 0 {
            return Ok(false);
        }
        bump(&self.shared.counters.bytes_received, read_bytes as u64);
        self.decoder.extend(&self.chunk[..read_bytes]);
        Ok(true)
    }

    fn record_close(&self, reason: CloseReason, peer: Option<NodeId>, detail: String) {
        self.shared.counters.record_close(CloseRecord {
            reason,
            remote: self.remote,
            peer,
            detail,
        });
    }
}
