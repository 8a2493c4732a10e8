//! The `one`/`quorum`/`all` levels on whole nodes over loopback: siblings
//! and contexts, deletes, hinted handoff to an owner that returns, the
//! coordination tax each level is counted at, and refusals that change
//! nothing.

use std::sync::Arc;

use calm_replica::coordinator::{CoordinatorError, Level, Overrides, QuorumError};
use calm_replica::kv::{KvError, KvObject};
use calm_server::backend::{Backend, BackendError, KvAnswer, KvCall, KvOp, KvRefusal};
use calm_server::metrics::Metrics;
use calm_server::node::NodeHandle;

use super::node::{any_port, boot, boot_with, eventually, sample, sees_all_alive, three_nodes};

fn call(key: &str, op: KvOp, level: Level) -> KvCall {
    KvCall {
        key: key.as_bytes().to_vec(),
        op,
        level,
        overrides: Overrides::default(),
    }
}

fn put(key: &str, value: &str, context: Vec<u8>, level: Level) -> KvCall {
    let op = KvOp::Put {
        value: value.as_bytes().to_vec(),
        context,
    };
    call(key, op, level)
}

async fn read(node: &NodeHandle, key: &str, level: Level) -> KvObject {
    match node.kv(call(key, KvOp::Get, level)).await {
        Ok(KvAnswer::Read { object, .. }) => object,
        other => panic!("a read of {key} failed: {other:?}"),
    }
}

fn values(object: &KvObject, key: &str) -> Vec<String> {
    let mut values: Vec<String> = object
        .get(key.as_bytes())
        .values()
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect();
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blind_writes_become_siblings_that_a_contextual_write_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    // Two blind writes through different owners are concurrent: both stay.
    for (node, colour) in [(&nodes[0], "blue"), (&nodes[1], "green")] {
        let answer = node
            .kv(put("colour", colour, Vec::new(), Level::Quorum))
            .await;
        assert!(
            matches!(answer, Ok(KvAnswer::Written { acks: 2.., .. })),
            "{answer:?}"
        );
    }
    // W + R > N: a read that starts after both acks sees both.
    let object = read(&nodes[2], "colour", Level::Quorum).await;
    assert_eq!(values(&object, "colour"), ["blue", "green"]);
    // A write with the read's context supersedes exactly what it saw.
    let context = object.get(b"colour").context;
    nodes[2]
        .kv(put("colour", "teal", context, Level::Quorum))
        .await
        .unwrap();
    let object = read(&nodes[0], "colour", Level::All).await;
    assert_eq!(values(&object, "colour"), ["teal"]);
    // A delete with the context leaves the key absent everywhere.
    let context = object.get(b"colour").context;
    let delete = call("colour", KvOp::Delete { context }, Level::All);
    nodes[1].kv(delete).await.unwrap();
    for node in &nodes {
        let read = read(node, "colour", Level::One).await;
        assert!(read.get(b"colour").is_absent(), "{read:?}");
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    let node = &nodes[0];
    let huge = "x".repeat(2 * 1024 * 1024);
    let refused = node.kv(put("big", &huge, Vec::new(), Level::Quorum)).await;
    assert!(
        matches!(
            refused,
            Err(BackendError::Kv(KvRefusal::Object(
                KvError::ValueTooLarge { .. }
            )))
        ),
        "{refused:?}"
    );
    let mut beyond = put("k", "v", Vec::new(), Level::Quorum);
    beyond.overrides.n = Some(5);
    let refused = node.kv(beyond).await;
    assert!(
        matches!(
            refused,
            Err(BackendError::Kv(KvRefusal::Coordinator(
                CoordinatorError::Quorum(QuorumError::ReplicasBeyondCluster { n: 5, .. })
            )))
        ),
        "{refused:?}"
    );
    let mut r_above_n = call("k", KvOp::Get, Level::Quorum);
    r_above_n.overrides.r = Some(4);
    assert!(node.kv(r_above_n).await.is_err());
    let forged = put("k", "v", b"not a context".to_vec(), Level::Quorum);
    assert!(matches!(
        node.kv(forged).await,
        Err(BackendError::Kv(KvRefusal::Object(KvError::BadContext(_))))
    ));
    // Nothing was written by any of them.
    for key in ["big", "k"] {
        assert_eq!(read(node, key, Level::All).await, KvObject::new());
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_for_a_stopped_owner_are_hinted_and_handed_over_when_it_returns() {
    // Dynamo §4.6: with an owner down, level `all` still gets N acks, one
    // of them a hint at a fallback, which goes to the owner on its return.
    let dir = tempfile::tempdir().unwrap();
    let metrics: Vec<Arc<Metrics>> = (0..4).map(|_| Arc::new(Metrics::new())).collect();
    let first = boot_with(dir.path(), 1, vec![], any_port(), Arc::clone(&metrics[0])).await;
    let seed = first.peer_addr();
    let mut nodes = vec![first];
    for id in 2..=4u64 {
        let node = boot_with(
            dir.path(),
            id,
            vec![seed],
            any_port(),
            Arc::clone(&metrics[id as usize - 1]),
        );
        nodes.push(node.await);
    }
    for node in &nodes {
        eventually("four nodes see each other", async || {
            sees_all_alive(node, 4)
        })
        .await;
    }
    let fourth_peer = nodes[3].peer_addr();
    nodes.pop().expect("four nodes").shutdown().await;
    let mut hinted = 0;
    for i in 0..40 {
        let key = format!("hinted-{i}");
        // Only an owner coordinates a write (the API forwards to one); and
        // until the others see node 4 leave, a write may still pick it.
        let written = 'written: loop {
            for node in &nodes {
                match node.kv(put(&key, "v", Vec::new(), Level::All)).await {
                    Ok(KvAnswer::Written { hinted, .. }) => break 'written hinted,
                    Err(BackendError::Kv(KvRefusal::NotOwner { .. })) => {}
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    other => panic!("{other:?}"),
                }
            }
        };
        hinted += written;
    }
    // Node 4 owns about three quarters of the keys with N = 3 of 4.
    assert!(hinted >= 10, "only {hinted} of 40 writes were hinted");
    let held = |m: &Metrics| sample(&m.encode(), "calm_kv_hints");
    // Gauges are mirrored once a second.
    eventually("every hinted ack is a held hint", async || {
        let holding: f64 = metrics[..3].iter().map(|m| held(m)).sum();
        holding as usize == hinted
    })
    .await;
    nodes.push(boot(dir.path(), 4, vec![seed], fourth_peer).await);
    eventually("every hint is handed over", async || {
        metrics[..3].iter().all(|m| held(m) == 0.0)
    })
    .await;
    let delivered: f64 = metrics[..3]
        .iter()
        .map(|m| {
            sample(
                &m.encode(),
                r#"calm_kv_hint_events_total{event="delivered"}"#,
            )
        })
        .sum();
    assert_eq!(delivered as usize, hinted);
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_level_is_counted_with_the_round_trips_on_its_critical_path() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    for level in [Level::One, Level::Quorum, Level::All] {
        for i in 0..5 {
            let key = format!("{}-{i}", level.name());
            nodes[0]
                .kv(put(&key, "v", Vec::new(), level))
                .await
                .unwrap();
        }
    }
    let tax = nodes[0].status().tax;
    let at = |name: &str| {
        let level = tax
            .iter()
            .find(|t| t.level == name)
            .expect("every level is listed");
        (level.requests, level.round_trips)
    };
    // W = 1 is this owner's own synced copy; W = 2 and W = 3 wait a round.
    assert_eq!(at("one"), (5, 0));
    assert_eq!(at("quorum"), (5, 5));
    assert_eq!(at("all"), (5, 5));
    assert_eq!(at("linearizable"), (0, 0));
    for node in &nodes {
        node.shutdown().await;
    }
}
