//! End-to-end tests of the tokio transport on loopback: batching, order, reconnect, backpressure, hostile peers, shutdown.
//!
//! Every wait is guarded by a generous timeout that only turns a hang into a
//! failure; no assertion depends on how fast anything runs. The tests use
//! tokio's current-thread runtime, so a run of synchronous `send` calls
//! completes before any writer task runs, which makes queue and batch
//! counts deterministic.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use calm_transport::{
    BindError, Channel, CloseReason, Frame, Handshake, Inbound, Message, PROTOCOL_VERSION,
    SendError, Transport, TransportConfig, TransportStats, encode_frame,
};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;

/// Turns a hang into a failure; never reached by a passing run.
const HANG_GUARD: Duration = Duration::from_secs(10);

const CLUSTER: &str = "test-cluster";

fn config(node: u64, listen_addr: SocketAddr) -> TransportConfig {
    let mut config = TransportConfig::new(NodeId(node), CLUSTER, listen_addr);
    config.backoff_initial_ms = 5;
    config.backoff_max_ms = 50;
    config.handshake_timeout_ms = 300;
    config.rng_seed = 42 + node;
    config
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An address with nothing listening on it: bound once to get a free port,
/// then released so a transport can bind it later.
fn released_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind(any_port()).unwrap();
    listener.local_addr().unwrap()
}

async fn bind(config: TransportConfig) -> (Transport, Receiver<Inbound>) {
    Transport::bind(config).await.expect("loopback bind")
}

async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung waiting for {what}"))
}

async fn receive(inbox: &mut Receiver<Inbound>, count: usize) -> Vec<Inbound> {
    guarded("deliveries", async {
        let mut received = Vec::new();
        while received.len() < count {
            received.push(inbox.recv().await.expect("transport alive"));
        }
        received
    })
    .await
}

/// Polls `stats` until `done` holds.
async fn until(transport: &Transport, what: &str, done: impl Fn(&TransportStats) -> bool) {
    guarded(what, async {
        while !done(&transport.stats()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn payload(i: usize) -> Vec<u8> {
    format!("message {i}").into_bytes()
}

#[tokio::test]
async fn two_transports_exchange_batched_messages_in_order_per_channel() {
    let (a, mut a_inbox) = bind(config(1, any_port())).await;
    let mut b_config = config(2, any_port());
    b_config.batch_messages_max = 64;
    let (b, mut b_inbox) = bind(b_config).await;
    let channels = [Channel::Membership, Channel::Replication, Channel::Raft];

    for i in 0..300 {
        b.send(NodeId(1), a.local_addr(), channels[i % 3], payload(i))
            .unwrap();
    }
    a.send(NodeId(2), b.local_addr(), Channel::Raft, b"reply".to_vec())
        .unwrap();

    let at_a = receive(&mut a_inbox, 300).await;
    for (i, inbound) in at_a.iter().enumerate() {
        assert_eq!(inbound.from, NodeId(2));
        assert_eq!(
            (inbound.channel, &inbound.bytes),
            (channels[i % 3], &payload(i))
        );
    }
    let at_b = receive(&mut b_inbox, 1).await;
    assert_eq!(at_b[0].from, NodeId(1));
    assert_eq!(at_b[0].bytes, b"reply");

    // All 300 were queued before the writer ran, so they left in full
    // batches of 64: 64 * 4 + 44.
    let stats = b.stats();
    assert_eq!((stats.frames_sent, stats.messages_sent), (5, 300));
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(a.stats().messages_received, 300);
    assert_eq!(
        a.stats().frames_received,
        1 + 5,
        "a handshake, then batches"
    );
}

#[tokio::test]
async fn a_peer_that_is_down_at_first_is_reached_once_it_starts() {
    let b_addr = released_port();
    let (a, _a_inbox) = bind(config(1, any_port())).await;
    for i in 0..3 {
        a.send(NodeId(2), b_addr, Channel::Membership, payload(i))
            .unwrap();
    }
    until(&a, "failed dials", |s| s.dial_failures >= 3).await;
    assert_eq!(a.stats().connections_opened, 0);

    let (_b, mut b_inbox) = bind(config(2, b_addr)).await;
    let received = receive(&mut b_inbox, 3).await;
    let bytes: Vec<_> = received.into_iter().map(|m| m.bytes).collect();
    assert_eq!(bytes, [payload(0), payload(1), payload(2)]);
    let stats = a.stats();
    assert_eq!(stats.connections_opened, 1);
    // Every dial after the first is a reconnect; all but the last failed.
    assert_eq!(stats.reconnect_attempts, stats.dial_failures);
}

#[tokio::test]
async fn a_full_queue_refuses_with_a_typed_error_and_loses_nothing_it_accepted() {
    let b_addr = released_port();
    let mut a_config = config(1, any_port());
    a_config.peer_queue_messages_max = 8;
    let (a, _a_inbox) = bind(a_config).await;

    for i in 0..8 {
        a.send(NodeId(2), b_addr, Channel::Replication, payload(i))
            .unwrap();
    }
    assert_eq!(
        a.send(NodeId(2), b_addr, Channel::Replication, payload(8)),
        Err(SendError::QueueFull {
            peer: NodeId(2),
            queue_messages_max: 8
        })
    );
    let stats = a.stats();
    assert_eq!(stats.messages_dropped_queue_full, 1);
    assert_eq!(stats.queue_depth_messages.get(&NodeId(2)), Some(&8));

    let (_b, mut b_inbox) = bind(config(2, b_addr)).await;
    let received = receive(&mut b_inbox, 8).await;
    let bytes: Vec<_> = received.into_iter().map(|m| m.bytes).collect();
    assert_eq!(bytes, (0..8).map(payload).collect::<Vec<_>>());
    assert_eq!(a.stats().queue_depth_messages.get(&NodeId(2)), Some(&0));
}

#[tokio::test]
async fn a_message_that_cannot_fit_a_frame_is_refused_before_queueing() {
    let mut a_config = config(1, any_port());
    a_config.frame_bytes_max = 1024;
    let (a, _a_inbox) = bind(a_config.clone()).await;
    let too_big = vec![0; a_config.message_bytes_max() + 1];
    assert!(matches!(
        a.send(NodeId(2), any_port(), Channel::Raft, too_big),
        Err(SendError::MessageTooLarge { .. })
    ));
    assert!(a.stats().queue_depth_messages.is_empty());
}

#[tokio::test]
async fn the_largest_admitted_message_is_delivered_whole() {
    let mut small = config(2, any_port());
    small.frame_bytes_max = 1024;
    let (b, mut b_inbox) = bind(small.clone()).await;
    let mut a_config = config(1, any_port());
    a_config.frame_bytes_max = 1024;
    let (a, _a_inbox) = bind(a_config).await;
    let largest = vec![7; small.message_bytes_max()];
    // Two of them cannot share a frame, so they go out as two.
    for _ in 0..2 {
        a.send(NodeId(2), b.local_addr(), Channel::Raft, largest.clone())
            .unwrap();
    }
    let received = receive(&mut b_inbox, 2).await;
    assert!(received.iter().all(|m| m.bytes == largest));
    assert_eq!(a.stats().frames_sent, 2);
    assert_eq!(b.stats().closed_oversized_frame, 0);
}

/// Sends `bytes` from a raw TCP client and waits until the transport closes
/// the connection, returning the stats after the close.
async fn hostile(b: &Transport, bytes: &[u8]) -> TransportStats {
    let mut client = TcpStream::connect(b.local_addr()).await.unwrap();
    // The transport may close before reading everything; a failed write is
    // part of being disconnected.
    let _ = client.write_all(bytes).await;
    guarded("the transport to close the connection", async {
        let mut sink = [0u8; 256];
        // Ok(0) is a clean close and Err a reset: either way, closed.
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    // The close is recorded before the socket is dropped, so it is visible.
    b.stats()
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, u32::MAX, &mut out).unwrap();
    out
}

fn handshake(cluster: &str, protocol_version: u16) -> Vec<u8> {
    frame_bytes(&Frame::Handshake(Handshake {
        node: NodeId(66),
        protocol_version,
        cluster: cluster.to_owned(),
    }))
}

fn batch() -> Frame {
    Frame::Batch(vec![Message {
        channel: Channel::Raft,
        bytes: b"x".to_vec(),
    }])
}

#[tokio::test]
async fn hostile_connections_are_closed_and_counted_while_other_peers_are_served() {
    let (b, mut b_inbox) = bind(config(2, any_port())).await;
    let (a, _a_inbox) = bind(config(1, any_port())).await;
    let mut sent = 0;

    let mut check =
        async |bytes: Vec<u8>, reason: CloseReason, counter: fn(&TransportStats) -> u64| {
            let before = counter(&b.stats());
            let stats = hostile(&b, &bytes).await;
            assert_eq!(counter(&stats), before + 1, "{reason:?} for {bytes:?}");
            assert_eq!(stats.last_close.as_ref().map(|c| c.reason), Some(reason));
            // The legitimate peer is still served.
            a.send(
                NodeId(2),
                b.local_addr(),
                Channel::Membership,
                payload(sent),
            )
            .unwrap();
            let received = receive(&mut b_inbox, 1).await;
            assert_eq!(
                (received[0].from, &received[0].bytes),
                (NodeId(1), &payload(sent))
            );
            sent += 1;
        };

    let oversized = |s: &TransportStats| s.closed_oversized_frame;
    let malformed = |s: &TransportStats| s.closed_malformed_frame;
    let mismatch = |s: &TransportStats| s.closed_handshake_mismatch;
    let timeout = |s: &TransportStats| s.closed_handshake_timeout;

    check(
        u32::MAX.to_be_bytes().to_vec(),
        CloseReason::OversizedFrame,
        oversized,
    )
    .await;
    check(
        vec![0, 0, 0, 3, 9, 9, 9],
        CloseReason::MalformedFrame,
        malformed,
    )
    .await;
    check(
        handshake("other-cluster", PROTOCOL_VERSION),
        CloseReason::HandshakeMismatch,
        mismatch,
    )
    .await;
    check(
        handshake(CLUSTER, PROTOCOL_VERSION + 1),
        CloseReason::HandshakeMismatch,
        mismatch,
    )
    .await;
    check(
        frame_bytes(&batch()),
        CloseReason::HandshakeMismatch,
        mismatch,
    )
    .await;
    check(Vec::new(), CloseReason::HandshakeTimeout, timeout).await;

    // After a good handshake: a second handshake, then an oversized frame.
    let mut repeated = handshake(CLUSTER, PROTOCOL_VERSION);
    repeated.extend(handshake(CLUSTER, PROTOCOL_VERSION));
    check(repeated, CloseReason::HandshakeMismatch, mismatch).await;
    let mut late_oversized = handshake(CLUSTER, PROTOCOL_VERSION);
    late_oversized.extend(u32::MAX.to_be_bytes());
    check(late_oversized, CloseReason::OversizedFrame, oversized).await;
    assert_eq!(b.stats().last_close.unwrap().peer, Some(NodeId(66)));
}

#[tokio::test]
async fn random_bytes_close_the_connection_with_a_counted_reason_and_never_panic() {
    let (b, mut b_inbox) = bind(config(2, any_port())).await;
    let (a, _a_inbox) = bind(config(1, any_port())).await;
    let errors = |s: &TransportStats| {
        s.closed_oversized_frame
            + s.closed_malformed_frame
            + s.closed_handshake_mismatch
            + s.closed_handshake_timeout
    };
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..8 {
        let length = rng.random_range(1..200);
        let mut bytes: Vec<u8> = (0..length).map(|_| rng.random()).collect();
        if round % 2 == 1 {
            // A small length prefix, so the body is decoded rather than the
            // prefix refused.
            bytes[..4].copy_from_slice(&(length as u32 - 4).to_be_bytes());
        }
        let before = errors(&b.stats());
        let stats = hostile(&b, &bytes).await;
        assert_eq!(errors(&stats), before + 1, "round {round}: {bytes:?}");
    }
    a.send(
        NodeId(2),
        b.local_addr(),
        Channel::Raft,
        b"still here".to_vec(),
    )
    .unwrap();
    assert_eq!(receive(&mut b_inbox, 1).await[0].bytes, b"still here");
}

#[tokio::test]
async fn a_transport_of_another_cluster_is_refused_and_delivers_nothing() {
    let (b, mut b_inbox) = bind(config(2, any_port())).await;
    let mut stranger = config(3, any_port());
    stranger.cluster = "elsewhere".to_owned();
    let (c, _c_inbox) = bind(stranger).await;
    c.send(NodeId(2), b.local_addr(), Channel::Raft, b"hi".to_vec())
        .unwrap();
    until(&b, "the handshake refusal", |s| {
        s.closed_handshake_mismatch == 1
    })
    .await;
    assert!(b_inbox.try_recv().is_err());
    assert_eq!(b.stats().messages_received, 0);
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued_then_refuses_sends() {
    let (b, mut b_inbox) = bind(config(2, any_port())).await;
    let (a, _a_inbox) = bind(config(1, any_port())).await;
    for i in 0..100 {
        a.send(NodeId(2), b.local_addr(), Channel::Replication, payload(i))
            .unwrap();
    }
    assert!(guarded("shutdown", a.shutdown(HANG_GUARD / 2)).await);
    assert_eq!(
        a.send(NodeId(2), b.local_addr(), Channel::Raft, Vec::new()),
        Err(SendError::ShutDown)
    );
    let received = receive(&mut b_inbox, 100).await;
    let bytes: Vec<_> = received.into_iter().map(|m| m.bytes).collect();
    assert_eq!(bytes, (0..100).map(payload).collect::<Vec<_>>());
    until(&b, "the clean close", |s| s.closed_by_peer == 1).await;
}

#[tokio::test]
async fn a_forgotten_peer_loses_its_queue_and_starts_afresh() {
    let down = released_port();
    let (a, _a_inbox) = bind(config(1, any_port())).await;
    a.send(NodeId(2), down, Channel::Raft, b"stuck".to_vec())
        .unwrap();
    assert!(a.forget(NodeId(2)));
    assert!(!a.forget(NodeId(2)));
    assert!(a.stats().queue_depth_messages.is_empty());

    let (b, mut b_inbox) = bind(config(2, any_port())).await;
    a.send(NodeId(2), b.local_addr(), Channel::Raft, b"fresh".to_vec())
        .unwrap();
    assert_eq!(receive(&mut b_inbox, 1).await[0].bytes, b"fresh");
}

#[tokio::test]
async fn unusable_bounds_are_refused_at_bind() {
    let check = |edit: fn(&mut TransportConfig)| {
        let mut config = config(1, any_port());
        edit(&mut config);
        config
    };
    let broken: [fn(&mut TransportConfig); 5] = [
        |c| c.batch_messages_max = 0,
        |c| c.peer_queue_messages_max = 0,
        |c| c.backoff_initial_ms = 0,
        |c| c.backoff_max_ms = c.backoff_initial_ms - 1,
        |c| c.frame_bytes_max = 8,
    ];
    for edit in broken {
        let result = Transport::bind(check(edit)).await;
        assert!(matches!(result, Err(BindError::InvalidConfig(_))));
    }
}

#[tokio::test]
async fn shutdown_gives_up_at_the_deadline_on_an_unreachable_peer() {
    let (a, _a_inbox) = bind(config(1, any_port())).await;
    a.send(NodeId(2), released_port(), Channel::Raft, b"lost".to_vec())
        .unwrap();
    assert!(!guarded("shutdown", a.shutdown(Duration::from_millis(100))).await);
}

// At-most-once: when a connection drops, the batch in flight may be lost, but
// the writer redials and later messages arrive, still in order.
#[tokio::test]
async fn a_dropped_connection_is_redialled_and_later_messages_arrive_in_order() {
    let (b, mut b_inbox) = bind(config(2, any_port())).await;
    let b_addr = b.local_addr();
    let (a, _a_inbox) = bind(config(1, any_port())).await;
    a.send(NodeId(2), b_addr, Channel::Raft, payload(0))
        .unwrap();
    receive(&mut b_inbox, 1).await;

    b.shutdown(Duration::from_secs(1)).await;
    drop((b, b_inbox));
    let (_b, mut b_inbox) = bind(config(2, b_addr)).await;

    let mut received = Vec::new();
    guarded("a message over the new connection", async {
        for i in 1.. {
            a.send(NodeId(2), b_addr, Channel::Raft, payload(i))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            while let Ok(inbound) = b_inbox.try_recv() {
                received.push(inbound.bytes);
            }
            if !received.is_empty() {
                break;
            }
        }
    })
    .await;
    let stats = a.stats();
    assert_eq!(stats.connections_opened, 2);
    assert!(stats.reconnect_attempts >= 1);
    // Whatever arrived is in send order, with no duplicates.
    let indices: Vec<usize> = received
        .iter()
        .map(|b| String::from_utf8_lossy(b)[8..].parse().unwrap())
        .collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
}
