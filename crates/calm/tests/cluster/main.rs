//! The integration tests: real `calm` processes on loopback. Nodes are
//! killed with SIGKILL, stopped with SIGTERM and partitioned by fault
//! proxies; the CLI and `calm dev` run as a user would run them.

mod cli;
mod crdt_levels;
mod forward;
mod harness;
mod kv;
mod linearizable;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use calm_client::Client;
use harness::{Cluster, eventually};

/// Increments of 1 to `key` through `client`, `count` times: returns how
/// many were acknowledged and how many are in doubt (an error: the write
/// may or may not have been applied).
async fn increment(client: &Client, key: &str, count: u64) -> (u64, u64) {
    let (mut acked, mut in_doubt) = (0, 0);
    for _ in 0..count {
        match client.counter_increment(key, 1).await {
            Ok(_) => acked += 1,
            Err(error) if error.is_in_doubt() => in_doubt += 1,
            // Refused before anything was applied (e.g. not ready).
            Err(_) => {}
        }
    }
    (acked, in_doubt)
}

/// Reads `key` on node `index` with a fresh client (no token, so the node's
/// own replica answers).
async fn value_at(cluster: &Cluster, index: usize, key: &str) -> Option<i64> {
    cluster
        .client(index)
        .counter_get(key)
        .await
        .ok()
        .map(|reply| reply.value)
}

/// Waits until every running node in `indices` reads `key` within
/// `acked..=acked + in_doubt`, and all read the same; returns the values.
async fn converge(
    cluster: &Cluster,
    indices: &[usize],
    key: &str,
    acked: u64,
    in_doubt: u64,
) -> BTreeMap<usize, Option<i64>> {
    let mut last = BTreeMap::new();
    let settled = eventually(Duration::from_secs(30), async || {
        last.clear();
        for &index in indices {
            last.insert(index, value_at(cluster, index, key).await);
        }
        let first = last.values().next().copied().flatten();
        last.values().all(|v| *v == first)
            && first.is_some_and(|v| {
                let v = v as u64;
                acked <= v && v <= acked + in_doubt
            })
    })
    .await;
    assert!(
        settled,
        "no convergence on {key}: {last:?}, acked {acked}, in doubt {in_doubt}\n{}",
        cluster.logs()
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_take_concurrent_increments_through_every_node() {
    let cluster = Cluster::start(3).await;
    let writers: Vec<_> = (0..3)
        .map(|index| {
            let client = cluster.client(index);
            tokio::spawn(async move { increment(&client, "hits", 50).await })
        })
        .collect();
    let (mut acked, mut in_doubt) = (0, 0);
    for writer in writers {
        let (a, d) = writer.await.unwrap();
        acked += a;
        in_doubt += d;
    }
    assert_eq!(
        (acked, in_doubt),
        (150, 0),
        "a healthy cluster acknowledges all"
    );
    // Counter semantics: every replica ends at exactly the acknowledged sum.
    converge(&cluster, &[0, 1, 2], "hits", acked, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_no_acknowledged_increment() {
    let mut cluster = Cluster::start(3).await;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();
    let writers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(async move { increment(&client, "stream", 150).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGKILL: whatever node 3 acknowledged was synced first, and whatever
    // it had not synced was never acknowledged.
    cluster.kill(2);
    let (mut acked, mut in_doubt) = (0, 0);
    for writer in writers {
        let (a, d) = writer.await.unwrap();
        acked += a;
        in_doubt += d;
    }
    assert!(
        acked >= 300,
        "the two live nodes kept acknowledging: {acked}"
    );
    // Writes node 3 acknowledged just before it died may exist only on its
    // disk until it returns; anti-entropy then spreads them.
    cluster.spawn(2);
    cluster.wait_until_formed().await;
    converge(&cluster, &[0, 1, 2], "stream", acked, in_doubt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_converges() {
    let cluster = Cluster::start(3).await;
    cluster.links.partition(&[1], &[2, 3]);
    // Both sides keep taking writes: the local level needs no quorum.
    let (left, _) = increment(&cluster.client(0), "split", 20).await;
    let (right, _) = increment(&cluster.client(1), "split", 30).await;
    assert_eq!((left, right), (20, 30));
    let cut_off = eventually(Duration::from_secs(5), async || {
        value_at(&cluster, 0, "split").await == Some(20)
            && value_at(&cluster, 1, "split").await == Some(30)
    })
    .await;
    assert!(cut_off, "each side sees only its own writes while cut off");
    cluster.links.heal();
    converge(&cluster, &[0, 1, 2], "split", 50, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_the_others_see_it_leave() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .client(2)
        .counter_increment("kept", 7)
        .await
        .unwrap();
    let status = cluster.terminate(2);
    assert!(status.success(), "a graceful stop exits 0: {status}");
    let client = cluster.client(0);
    let seen_left = eventually(Duration::from_secs(10), async || {
        client.members().await.is_ok_and(|members| {
            members
                .iter()
                .any(|m| m.node_id == 3 && m.state == calm_client::MemberState::Left)
        })
    })
    .await;
    assert!(seen_left, "the leave is gossiped\n{}", cluster.logs());
    // The stopped node's acknowledged write is on the others too.
    converge(&cluster, &[0, 1], "kept", 7, 0).await;
    assert!(cluster.data_dir(2).exists());
}

/// Whether node `index` sees every node in `others` in `state`.
async fn sees(
    cluster: &Cluster,
    index: usize,
    others: &[u64],
    state: calm_client::MemberState,
) -> bool {
    cluster.client(index).members().await.is_ok_and(|members| {
        others.iter().all(|&node| {
            members
                .iter()
                .any(|m| m.node_id == node && m.state == state)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_cut_off_until_declared_dead_rejoins_after_the_heal() {
    use calm_client::MemberState::{Alive, Dead};
    // Node 1 founded the cluster and has no seeds: after a partition long
    // enough for each side to declare the other dead, neither side probes
    // the other any more, and only a reconnect attempt re-forms the
    // cluster.
    let cluster = Cluster::start(3).await;
    cluster.links.partition(&[1], &[2, 3]);
    let apart = eventually(Duration::from_secs(30), async || {
        sees(&cluster, 0, &[2, 3], Dead).await && sees(&cluster, 1, &[1], Dead).await
    })
    .await;
    assert!(
        apart,
        "each side declares the other dead\n{}",
        cluster.logs()
    );
    cluster.links.heal();
    let together = eventually(Duration::from_secs(40), async || {
        sees(&cluster, 0, &[2, 3], Alive).await
            && sees(&cluster, 1, &[1, 3], Alive).await
            && sees(&cluster, 2, &[1, 2], Alive).await
    })
    .await;
    assert!(
        together,
        "the cluster re-forms after the heal\n{}",
        cluster.logs()
    );
    // And data flows again: a write through node 1 reaches node 3.
    cluster
        .client(0)
        .counter_increment("rejoined", 3)
        .await
        .unwrap();
    converge(&cluster, &[0, 1, 2], "rejoined", 3, 0).await;
}
