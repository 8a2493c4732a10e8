//! CRDT types at `quorum` on real processes: the CLI's `--level`, and
//! acknowledged quorum increments that a quorum read finds after the
//! coordinator is killed with SIGKILL, through the one replica that was
//! cut off while they were written and the one that acknowledged them.

use std::time::Duration;

use calm_client::{Client, ClientConfig, Level};

use crate::cli::{calm, ok};
use crate::harness::{Cluster, eventually};
use crate::increment;

/// A client of node `index` whose requests are at `quorum`.
fn quorum_client(cluster: &Cluster, index: usize) -> Client {
    let endpoint = cluster
        .endpoints()
        .split(',')
        .nth(index)
        .expect("a node")
        .to_owned();
    let config = ClientConfig {
        timeout: Duration::from_secs(3),
        level: Level::Quorum,
        ..ClientConfig::default()
    };
    Client::connect_with(&[endpoint], config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_increments_survive_the_coordinators_kill_and_are_read_at_once() {
    let mut cluster = Cluster::start(3).await;
    let all = cluster.endpoints();
    let nodes: Vec<&str> = all.split(',').collect();
    // The CLI: a quorum increment through node 1 is read at quorum through
    // node 2 at once, with no wait for replication.
    let incr = [
        "--level", "quorum", "counter", "incr", "visits", "--by", "5",
    ];
    assert_eq!(ok(nodes[0], &incr), "OK");
    assert_eq!(
        ok(nodes[1], &["--level", "quorum", "counter", "get", "visits"]),
        "5"
    );
    let (success, _, stderr) = calm(
        nodes[0],
        &["--level", "linearizable", "counter", "incr", "visits"],
    );
    assert!(!success && stderr.contains("UNIMPLEMENTED"), "{stderr}");
    assert_eq!(
        ok(nodes[2], &["--level", "all", "counter", "get", "visits"]),
        "5"
    );

    // Node 3 is cut off while node 2 coordinates 20 increments: each is
    // acknowledged once node 1 holds it durably.
    cluster.links.partition(&[3], &[1, 2]);
    let (acked, in_doubt) = increment(&quorum_client(&cluster, 1), "hits", 20).await;
    assert_eq!((acked, in_doubt), (20, 0), "node 1 acknowledges them all");
    // SIGKILL the coordinator, then heal: node 3 has none of the writes,
    // node 2 is gone, so only node 1's durable copies can answer.
    cluster.kill(1);
    cluster.links.heal();
    let reader = quorum_client(&cluster, 2);
    let mut first = None;
    let served = eventually(Duration::from_secs(30), async || {
        first = reader
            .counter_get("hits")
            .await
            .ok()
            .map(|reply| reply.value);
        first.is_some()
    })
    .await;
    assert!(
        served,
        "node 3 serves quorum reads again\n{}",
        cluster.logs()
    );
    assert_eq!(
        first,
        Some(20),
        "the first quorum read after the kill saw every ack"
    );
    // Node 2 returns: every owner holds the 20 increments.
    cluster.spawn(1);
    cluster.wait_until_formed().await;
    let all_agree = eventually(Duration::from_secs(30), async || {
        calm(&all, &["--level", "all", "counter", "get", "hits"])
            .1
            .trim()
            == "20"
    })
    .await;
    assert!(all_agree, "a read at all reads 20\n{}", cluster.logs());
}
