//! The `one`/`quorum`/`all` levels on real processes: `calm kv` as a user
//! runs it, and acknowledged writes that survive a partition and a kill -9.

use std::collections::BTreeMap;
use std::time::Duration;

use calm_client::{Client, Code, ErrorDetail, KvLevel, KvOptions, MemberState};

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
    assert_eq!(json["siblings"][0]["tombstone"], false);
    assert_eq!(json["siblings"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["replies"], 2);
    // A delete with the JSON's context leaves only its tombstone.
    let json_context = json["context"].as_str().expect("a context string");
    ok(&all, &["kv", "del", "colour", "--context", json_context]);
    let read = ok(&all, &["kv", "get", "colour", "--level", "all"]);
    assert_eq!(read.lines().next(), Some("<deleted>"), "{read}");

    // Bad input: a clear error, and nothing is written.
    let (success, _, stderr) = calm(&all, &["kv", "put", "k", "v", "--level", "twice"]);
    assert!(!success && stderr.contains("twice"), "{stderr}");
    // A level the Kv service does not serve is refused, not served as
    // another.
    let (success, _, stderr) = calm(&all, &["--level", "linearizable", "kv", "put", "k", "v"]);
    assert!(
        !success && stderr.contains("not offered") && stderr.contains("UNIMPLEMENTED"),
        "{stderr}"
    );
    // An oversized value cannot go through argv (Linux caps one argument
    // at 128 KiB, the bound is 1 MiB), so the client sends it.
    let oversized = vec![b'v'; (1 << 20) + 1];
    let refused = cluster
        .client(0)
        .kv_put("k", &oversized, &KvOptions::default())
        .await
        .expect_err("a value beyond 1 MiB is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.to_string().contains("exceeds"), "{refused}");
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
    let options = KvOptions::at(KvLevel::Quorum);
    let mut acknowledged = BTreeMap::new();
    let mut refused = Vec::new();
    cluster.links.partition(&[3], &[1, 2]);
    write(&writer, &options, 0..20, &mut acknowledged, &mut refused).await;
    cluster.kill(1);
    // Once node 1 has declared both others dead it cannot make W = 2, and
    // says so before writing anything: `quorum_unavailable`.
    let both_dead = eventually(Duration::from_secs(30), async || {
        writer.members().await.is_ok_and(|members| {
            members
                .iter()
                .filter(|m| m.node_id != 1)
                .all(|m| m.state == MemberState::Dead)
        })
    })
    .await;
    assert!(
        both_dead,
        "node 1 sees nodes 2 and 3 dead\n{}",
        cluster.logs()
    );
    for i in 20..25 {
        let key = format!("survivor-{i}");
        let error = writer
            .kv_put(&key, "refused", &options)
            .await
            .expect_err("one replica up cannot acknowledge W = 2");
        assert_eq!(
            error.detail(),
            Some(&ErrorDetail::QuorumUnavailable { needed: 2, up: 1 }),
            "{error}"
        );
        assert!(error.is_retryable(), "{error}");
        refused.push(key);
    }
    cluster.spawn(1);
    // Writes resume once node 1 sees node 2 back (node 3 is still cut off).
    let back = eventually(Duration::from_secs(30), async || {
        writer.members().await.is_ok_and(|members| {
            members
                .iter()
                .any(|m| m.node_id == 2 && m.state == MemberState::Alive)
        })
    })
    .await;
    assert!(back, "node 1 sees node 2 again\n{}", cluster.logs());
    write(&writer, &options, 25..45, &mut acknowledged, &mut refused).await;
    cluster.links.heal();
    assert!(
        acknowledged.len() >= 30,
        "only {} writes were acknowledged",
        acknowledged.len()
    );
    let reader = cluster.client(2);
    let all = KvOptions::at(KvLevel::All);
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
    // calm.proto: a write refused for want of replicas changed nothing.
    for key in &refused {
        let read = reader.kv_get(key, &all).await.expect("every replica is up");
        assert_eq!(
            read.siblings,
            [] as [Option<Vec<u8>>; 0],
            "refused {key} was written"
        );
    }
}

/// Puts `survivor-i = value-i` for each `i` in `range`, recording the
/// acknowledged keys and the refused ones (`UNAVAILABLE`); a write
/// in doubt is recorded in neither, as a later read may or may not see it.
async fn write(
    writer: &Client,
    options: &KvOptions,
    range: std::ops::Range<u32>,
    acknowledged: &mut BTreeMap<String, String>,
    refused: &mut Vec<String>,
) {
    for i in range {
        let (key, value) = (format!("survivor-{i}"), format!("value-{i}"));
        match writer.kv_put(&key, &value, options).await {
            Ok(_) => {
                acknowledged.insert(key, value);
            }
            // UNAVAILABLE changed nothing (calm.proto's error table),
            // with or without the `quorum_unavailable` detail.
            Err(error) if error.is_retryable() => refused.push(key),
            Err(error) => assert!(error.is_in_doubt(), "{key}: {error}"),
        }
    }
}
