//! Nodes in one process, talking over real loopback sockets: membership,
//! ring agreement, replication, causal tokens across nodes, anti-entropy
//! after a restart, and graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use calm_membership::{MemberState, MembershipConfig};
use calm_replica::{Operation, ReplicaConfig, ReplicaError, Value};
use calm_ring::RingConfig;
use calm_server::backend::{Backend, BackendError};
use calm_server::metrics::Metrics;
use calm_server::node::{NodeHandle, NodeOptions, QuorumOptions, node_identity, start};
use calm_storage::{DiskEngine, Limits};
use calm_types::NodeId;

pub(crate) fn options(node: u64, seeds: Vec<SocketAddr>, peer_listen: SocketAddr) -> NodeOptions {
    NodeOptions {
        node: NodeId(node),
        cluster: "test".to_string(),
        peer_listen,
        peer_advertise: None,
        client_advertise: SocketAddr::from(([127, 0, 0, 1], 1)),
        seeds,
        replica: ReplicaConfig::new(NodeId(node)),
        membership: MembershipConfig {
            probe_period_ms: 300,
            probe_timeout_max_ms: 100,
            suspect_to_down_after_ms: 1_000,
            gossip_period_ms: 100,
            ..MembershipConfig::default()
        },
        ring: RingConfig {
            vnodes_per_node: 16,
            ..RingConfig::default()
        },
        anti_entropy_interval_ms: 300,
        sync_max_delay_ms: 0,
        coordination: None,
        quorum: QuorumOptions::default(),
        shutdown_grace_ms: 1_000,
    }
}

pub(crate) async fn boot(
    dir: &Path,
    node: u64,
    seeds: Vec<SocketAddr>,
    peer_listen: SocketAddr,
) -> NodeHandle {
    boot_with(dir, node, seeds, peer_listen, Arc::new(Metrics::new())).await
}

pub(crate) async fn boot_with(
    dir: &Path,
    node: u64,
    seeds: Vec<SocketAddr>,
    peer_listen: SocketAddr,
    metrics: Arc<Metrics>,
) -> NodeHandle {
    let storage = DiskEngine::open(dir.join(format!("n{node}.redb")), Limits::default()).unwrap();
    let id = node_identity(&storage, Some(node)).unwrap();
    assert_eq!(id, NodeId(node));
    start(options(node, seeds, peer_listen), storage, metrics)
        .await
        .unwrap()
}

pub(crate) fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Polls `check` every 50 ms for up to 20 s.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

pub(crate) fn sees_all_alive(node: &NodeHandle, count: usize) -> bool {
    let members = node.members();
    node.is_ready()
        && members.len() == count
        && members
            .iter()
            .all(|m| m.state == MemberState::Alive && m.ownership > 0.0)
}

pub(crate) async fn three_nodes(dir: &Path) -> Vec<NodeHandle> {
    let first = boot(dir, 1, vec![], any_port()).await;
    let seed = first.peer_addr();
    let second = boot(dir, 2, vec![seed], any_port()).await;
    let third = boot(dir, 3, vec![seed], any_port()).await;
    let nodes = vec![first, second, third];
    for node in &nodes {
        eventually("every node sees three alive owners", async || {
            sees_all_alive(node, 3)
        })
        .await;
    }
    nodes
}

async fn counter(
    node: &NodeHandle,
    key: &[u8],
    token: Option<Vec<u8>>,
) -> Result<i128, BackendError> {
    let ack = node.submit(key.to_vec(), Operation::Read, token).await?;
    match ack.value {
        Some(Value::Counter(value)) => Ok(value),
        Some(Value::Absent) | None => Ok(0),
        other => panic!("not a counter: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_on_the_ring_and_replicate_increments() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    // Ownership shares agree on every node and add up to the whole ring.
    let shares: Vec<Vec<(NodeId, f64)>> = nodes
        .iter()
        .map(|n| {
            let mut shares: Vec<_> = n.members().iter().map(|m| (m.node, m.ownership)).collect();
            shares.sort_by_key(|&(node, _)| node);
            shares
        })
        .collect();
    assert!(shares.windows(2).all(|w| w[0] == w[1]), "{shares:?}");
    assert!((shares[0].iter().map(|s| s.1).sum::<f64>() - 1.0).abs() < 1e-9);

    for (i, node) in nodes.iter().enumerate() {
        let by = i as u64 + 1;
        node.submit(b"hits".to_vec(), Operation::Increment(by), None)
            .await
            .unwrap();
    }
    // Every node converges on 1 + 2 + 3 through deltas alone.
    for node in &nodes {
        eventually("each replica holds every increment", async || {
            counter(node, b"hits", None).await == Ok(6)
        })
        .await;
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_node_is_honoured_by_another() {
    // Session guarantee: read-your-writes across nodes. The reading node
    // either has the write or waits for it; it never answers without it.
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    for round in 1..=20u64 {
        let key = format!("session-{round}").into_bytes();
        let ack = nodes[0]
            .submit(key.clone(), Operation::Increment(round), None)
            .await
            .unwrap();
        let token = ack.token.encode();
        let reader = &nodes[1 + (round as usize % 2)];
        match counter(reader, &key, Some(token)).await {
            Ok(value) => assert_eq!(value, i128::from(round)),
            // Allowed by the contract: a typed, retryable refusal.
            Err(BackendError::Replica(error @ ReplicaError::CatchUpTimeout { .. })) => {
                assert!(error.is_retryable())
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_carrying_the_last_token_never_go_back_in_time_across_nodes() {
    // Session guarantee: monotonic reads. A writer keeps incrementing
    // through node 1 while a reader alternates between nodes 2 and 3,
    // always presenting the token of its previous read: no read may return
    // less than one before it.
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    let writer = nodes[0].clone();
    let writes = tokio::spawn(async move {
        for _ in 0..200 {
            writer
                .submit(b"mono".to_vec(), Operation::Increment(1), None)
                .await
                .unwrap();
        }
    });
    let (mut token, mut last, mut reads) = (None, 0, 0);
    while !writes.is_finished() || reads < 20 {
        let reader = &nodes[1 + reads % 2];
        reads += 1;
        let ack = match reader
            .submit(b"mono".to_vec(), Operation::Read, token.clone())
            .await
        {
            Ok(ack) => ack,
            Err(BackendError::Replica(ReplicaError::CatchUpTimeout { .. })) => continue,
            Err(other) => panic!("unexpected error {other}"),
        };
        let value = match ack.value {
            Some(Value::Counter(value)) => value,
            _ => 0,
        };
        assert!(
            value >= last,
            "read {value} after {last}: time went backwards"
        );
        last = value;
        token = Some(ack.token.encode());
    }
    writes.await.unwrap();
    for node in &nodes {
        node.shutdown().await;
    }
}

/// The value of the sample named `series` (name and labels) in a text
/// exposition; 0 if absent.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_exports_its_replication_and_sync_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let first = boot_with(dir.path(), 1, vec![], any_port(), Arc::clone(&metrics)).await;
    let second = boot(dir.path(), 2, vec![first.peer_addr()], any_port()).await;
    for node in [&first, &second] {
        eventually("both nodes serve", async || sees_all_alive(node, 2)).await;
    }
    first
        .submit(b"m".to_vec(), Operation::Increment(1), None)
        .await
        .unwrap();
    // Core counters are mirrored into the registry once a second.
    eventually("the metrics show the write's sync and delta", async || {
        let text = metrics.encode();
        sample(
            &text,
            r#"calm_peer_messages_sent_total{channel="replication"}"#,
        ) >= 1.0
            && sample(&text, "calm_storage_fsyncs_total") >= 1.0
            && sample(&text, r#"calm_membership_members{state="alive"}"#) == 2.0
            && sample(&text, "calm_storage_fsync_duration_seconds_count") >= 1.0
    })
    .await;
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_writes_a_stopped_node_missed() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path()).await;
    let third_peer = nodes[2].peer_addr();
    nodes.pop().expect("three nodes").shutdown().await;
    eventually("the others see the third node leave", async || {
        nodes[0]
            .members()
            .iter()
            .any(|m| m.node == NodeId(3) && m.state == MemberState::Left)
    })
    .await;
    for i in 0..50u64 {
        let key = format!("missed-{i}").into_bytes();
        nodes[0]
            .submit(key, Operation::Increment(1), None)
            .await
            .unwrap();
    }
    // The third node returns on its old data and address; deltas sent while
    // it was away are gone, so only anti-entropy can bring the keys back.
    let seed = nodes[0].peer_addr();
    nodes.push(boot(dir.path(), 3, vec![seed], third_peer).await);
    eventually("the restarted node rejoins", async || {
        sees_all_alive(&nodes[2], 3)
    })
    .await;
    for i in 0..50u64 {
        let key = format!("missed-{i}").into_bytes();
        eventually("anti-entropy repairs every missed key", async || {
            counter(&nodes[2], &key, None).await == Ok(1)
        })
        .await;
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_keeps_its_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.redb");
    let storage = DiskEngine::open(&path, Limits::default()).unwrap();
    let drawn = node_identity(&storage, None).unwrap();
    assert_eq!(node_identity(&storage, None).unwrap(), drawn);
    let error = node_identity(&storage, Some(drawn.0 ^ 1)).unwrap_err();
    assert!(error.to_string().contains("belongs to node"), "{error}");
}
