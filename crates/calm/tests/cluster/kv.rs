//! The `one`/`quorum`/`all` levels on real processes: `calm kv` as a user
//! runs it, and acknowledged writes that survive a partition and a kill -9.

use std::collections::BTreeMap;
use std::time::Duration;

use calm_client::{Client, KvOptions, Level};

use crate::cli::{calm, ok};
use crate::harness::{Cluster, eventually};

/// The context line of a `kv get` or `kv put`.
fn context(output: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix("context: "))
        .expect("a context line")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calm_kv_shows_siblings_resolves_them_with_a_context_and_deletes() {
    let cluster = Cluster::start(3).await;
    let all = cluster.endpoints();
    let first: Vec<&str> = all.split(',').collect();
    // Two blind writes through different nodes are concurrent: both stay.
    assert!(ok(first[0], &["kv", "put", "colour", "blue"]).starts_with("OK"));
    ok(
        first[1],
        &["kv", "put", "colour", "green", "--level", "all"],
    );
    let read = ok(&all, &["kv", "get", "colour"]);
    let mut siblings: Vec<&str> = read
        .lines()
        .filter(|l| !l.starts_with("context:"))
        .collect();
    siblings.sort();
    assert_eq!(siblings, ["blue", "green"], "{read}");
    // A write with that context replaces exactly those siblings.
    ok(
        &all,
        &["kv", "put", "colour", "teal", "--context", &context(&read)],
    );
    let read = ok(&all, &["kv", "get", "colour", "--level", "all"]);
    assert_eq!(read.lines().next(), Some("teal"), "{read}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&all, &["-w", "json", "kv", "get", "colour"])).unwrap();
    assert_eq!(json["siblings"][0]["value"], "teal");
    assert_eq!(json["siblings"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["replies"], 2);
    // A delete with the context leaves only its tombstone.
    ok(&all, &["kv", "del", "colour", "--context", &context(&read)]);
    let read = ok(&all, &["kv", "get", "colour", "--level", "all"]);
    assert_eq!(read.lines().next(), Some("<deleted>"), "{read}");

    // Bad input: a clear error, and nothing is written.
    let (success, _, stderr) = calm(&all, &["kv", "put", "k", "v", "--level", "twice"]);
    assert!(!success && stderr.contains("twice"), "{stderr}");
    // (An oversized value cannot go through argv; the server-side bound is
    // tested in calm-server. An oversized key can.)
    let huge = "k".repeat(2048);
    let (success, _, stderr) = calm(&all, &["kv", "put", &huge, "v"]);
    assert!(!success && stderr.contains("exceeds"), "{stderr}");
    let (success, _, stderr) = calm(&all, &["kv", "put", "k", "v", "--w", "4"]);
    assert!(!success && stderr.contains("w = 4"), "{stderr}");
    // No sibling: the key was never written.
    let read = ok(&all, &["kv", "get", "k", "--level", "all"]);
    assert!(
        read.lines()
            .next()
            .is_some_and(|l| l.starts_with("context: ")),
        "{read}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_acknowledged_through_a_partition_and_a_kill_survive_the_heal() {
    // N = 3, W = R = 2: node 3 is cut off, then node 2 is killed -9 and
    // restarted, while writes go on through node 1. Every write that was
    // acknowledged must be readable at level all after the heal.
    let mut cluster = Cluster::start(3).await;
    let writer = cluster.client(0);
    let options = KvOptions {
        level: Some(Level::Quorum),
        ..KvOptions::default()
    };
    let mut acknowledged = BTreeMap::new();
    cluster.links.partition(&[3], &[1, 2]);
    write(&writer, &options, 0..20, &mut acknowledged).await;
    cluster.kill(1);
    write(&writer, &options, 20..25, &mut acknowledged).await;
    cluster.spawn(1);
    let restarted = cluster.client(1);
    assert!(
        eventually(Duration::from_secs(30), async || restarted
            .status()
            .await
            .is_ok())
        .await,
        "node 2 serves again"
    );
    write(&writer, &options, 25..45, &mut acknowledged).await;
    cluster.links.heal();
    assert!(
        acknowledged.len() >= 30,
        "only {} writes were acknowledged",
        acknowledged.len()
    );
    let reader = cluster.client(2);
    let all = KvOptions {
        level: Some(Level::All),
        ..KvOptions::default()
    };
    for (key, value) in &acknowledged {
        let seen = eventually(Duration::from_secs(30), async || {
            reader
                .kv_get(key, &all)
                .await
                .is_ok_and(|read| read.values().any(|v| v.as_slice() == value.as_bytes()))
        })
        .await;
        assert!(
            seen,
            "acknowledged {key} = {value} was lost\n{}",
            cluster.logs()
        );
    }
}

/// Puts `survivor-i = value-i` for each `i` in `range`, recording the
/// acknowledged ones.
async fn write(
    writer: &Client,
    options: &KvOptions,
    range: std::ops::Range<u32>,
    acknowledged: &mut BTreeMap<String, String>,
) {
    for i in range {
        let (key, value) = (format!("survivor-{i}"), format!("value-{i}"));
        if writer.kv_put(&key, &value, options).await.is_ok() {
            acknowledged.insert(key, value);
        }
    }
}
