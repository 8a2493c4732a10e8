//! CRDT types at `one`/`quorum`/`all` on whole nodes over loopback: a
//! quorum increment is read at once through any other node, a stopped
//! owner leaves `quorum` served and `all` refused with nothing written,
//! and each level is counted with its round trips.

use calm_replica::coordinator::Level;
use calm_replica::{Ack, Operation, ReplicaError, Value};
use calm_server::backend::{Backend, BackendError};
use calm_server::node::NodeHandle;

use super::node::{eventually, three_nodes};

async fn increment(
    node: &NodeHandle,
    key: &str,
    by: u64,
    level: Level,
) -> Result<Ack, BackendError> {
    let key = key.as_bytes().to_vec();
    node.submit_at(key, Operation::Increment(by), None, level)
        .await
}

async fn counter(node: &NodeHandle, key: &str, level: Level) -> i128 {
    let key = key.as_bytes().to_vec();
    match node.submit_at(key, Operation::Read, None, level).await {
        Ok(Ack {
            value: Some(Value::Counter(value)),
            ..
        }) => value,
        Ok(Ack {
            value: Some(Value::Absent),
            ..
        }) => 0,
        other => panic!("a counter read failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_increment_is_seen_at_once_by_a_quorum_read_through_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    // W + R > N: with no wait for deltas to spread, every read that starts
    // after an increment's ack sees it, whichever nodes took part.
    for i in 0..30u64 {
        let writer = &nodes[(i % 3) as usize];
        increment(writer, "hits", 1, Level::Quorum).await.unwrap();
        let reader = &nodes[((i + 1) % 3) as usize];
        assert_eq!(
            counter(reader, "hits", Level::Quorum).await,
            i128::from(i) + 1
        );
    }
    // `all` reads every owner: the same total.
    assert_eq!(counter(&nodes[2], "hits", Level::All).await, 30);
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_owner_stopped_quorum_is_served_and_all_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path()).await;
    increment(&nodes[0], "k", 5, Level::All).await.unwrap();
    nodes.pop().expect("three nodes").shutdown().await;
    // Once node 3 is seen gone, `all` cannot be met: refused, and nothing
    // was written (the later quorum read still reads 5 + 1).
    eventually("a write at all is refused with node 3 gone", async || {
        matches!(
            increment(&nodes[0], "k", 100, Level::All).await,
            Err(BackendError::Replica(ReplicaError::Unavailable {
                needed: 3,
                up: 2
            }))
        )
    })
    .await;
    increment(&nodes[1], "k", 1, Level::Quorum).await.unwrap();
    assert_eq!(counter(&nodes[0], "k", Level::Quorum).await, 6);
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_crdt_level_is_counted_with_its_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    for level in [Level::One, Level::Quorum, Level::All] {
        for _ in 0..4 {
            increment(&nodes[0], level.name(), 1, level).await.unwrap();
        }
        counter(&nodes[0], level.name(), level).await;
    }
    let tax = nodes[0].status().tax;
    let at = |name: &str| {
        let level = tax.iter().find(|t| t.level == name).expect("listed");
        (level.requests, level.round_trips)
    };
    // One copy is this node's own; quorum and all wait one round.
    assert_eq!(at("one"), (5, 0));
    assert_eq!(at("quorum"), (5, 5));
    assert_eq!(at("all"), (5, 5));
    for node in &nodes {
        node.shutdown().await;
    }
}
