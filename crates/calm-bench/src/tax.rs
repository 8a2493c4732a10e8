//! The coordination tax of a run: peer messages, network round trips and
//! fsyncs per operation, from the counters every calm node keeps.
//!
//! Each node counts the requests it coordinated per level, the round trips
//! on their critical paths, its durable commits and the peer messages it
//! sent per channel, and reports them in `calm.v1.Cluster/Status`. A run is
//! measured by two snapshots of every endpoint, before and after, and the
//! tax is the cluster-wide growth divided by the requests coordinated at
//! the run's level:
//!
//! * msgs/op: messages on the level's channel (`local` deltas travel on
//!   `replication`, `one`/`quorum`/`all` on `kv`, `linearizable` on
//!   `raft`; a `serializable` read sends none) per request;
//! * RTTs/op: round trips on the critical path per request, as the nodes
//!   count them (see `calm.v1.LevelTax`);
//! * fsyncs/op: durable commits per request.
//!
//! Background traffic during the run (gossip, anti-entropy on the same
//! channel, the Raft heartbeat) is counted in too, so figures are upper
//! bounds; it is small beside a loaded run. Both snapshots include the
//! warmup, which divides out. Against etcd, which has no such counters, or
//! when a node does not answer, there is no tax.

mod levels;

pub use levels::{TAX_RUNS, TaxArgs, TaxReport, render_tax_table, run_tax, tax_runs};

use std::collections::BTreeMap;
use std::time::Duration;

use calm_proto::calm::v1::StatusRequest;
use calm_proto::calm::v1::cluster_client::ClusterClient;
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::WorkloadName;

/// The tax of one run at one level.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tax {
    /// Requests the nodes coordinated at the level during the run (warmup
    /// included).
    pub requests: u64,
    /// Peer messages per request.
    pub msgs_per_op: f64,
    /// Network round trips on the critical path per request.
    pub rtts_per_op: f64,
    /// Durable commits per request.
    pub fsyncs_per_op: f64,
}

/// One node's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeCounters {
    /// Per level: requests coordinated and their round trips.
    pub levels: BTreeMap<String, (u64, u64)>,
    /// Durable commits.
    pub fsyncs: u64,
    /// Peer messages sent, by channel.
    pub messages: BTreeMap<String, u64>,
}

/// Every endpoint's counters, in endpoint order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot(pub Vec<NodeCounters>);

/// The counters of every endpoint, or `None` if any does not answer
/// `Status` with them (an etcd endpoint, a node down).
pub async fn snapshot(endpoints: &[String], timeout: Duration) -> Option<Snapshot> {
    let mut nodes = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        nodes.push(node_counters(endpoint, timeout).await?);
    }
    Some(Snapshot(nodes))
}

async fn node_counters(endpoint: &str, timeout: Duration) -> Option<NodeCounters> {
    let channel = Endpoint::from_shared(format!("http://{endpoint}"))
        .ok()?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .ok()?;
    let status = ClusterClient::new(channel)
        .status(StatusRequest {})
        .await
        .ok()?
        .into_inner();
    if status.tax.is_empty() {
        return None;
    }
    Some(NodeCounters {
        levels: status
            .tax
            .into_iter()
            .map(|tax| (tax.level, (tax.requests, tax.round_trips)))
            .collect(),
        fsyncs: status.fsyncs,
        messages: status
            .messages_sent
            .into_iter()
            .map(|count| (count.channel, count.count))
            .collect(),
    })
}

/// The peer channel `workload`'s requests at `level` travel on: the CRDT
/// replicas' at every leaderless level, the `Kv` service's own, Raft's for
/// everything linearizable; `None` for reads that send nothing
/// (serializable).
pub fn channel_of(workload: WorkloadName, level: &str) -> Option<&'static str> {
    match (workload, level) {
        (_, "linearizable") => Some("raft"),
        (WorkloadName::KvPut | WorkloadName::KvGet, "one" | "quorum" | "all") => Some("kv"),
        (
            WorkloadName::CounterIncr | WorkloadName::CounterGet,
            "local" | "one" | "quorum" | "all",
        ) => Some("replication"),
        _ => None,
    }
}

/// The tax at `level` between two snapshots of the same endpoints, counting
/// the messages sent on `channel` (see [`channel_of`]); `None` if the nodes
/// coordinated no request at that level in between, or the snapshots do
/// not match.
pub fn tax(before: &Snapshot, after: &Snapshot, level: &str, channel: Option<&str>) -> Option<Tax> {
    if before.0.len() != after.0.len() {
        return None;
    }
    let (mut requests, mut round_trips, mut fsyncs, mut messages) = (0, 0, 0, 0);
    for (was, is) in before.0.iter().zip(&after.0) {
        let at = |node: &NodeCounters| node.levels.get(level).copied().unwrap_or_default();
        let (requests_was, round_trips_was) = at(was);
        let (requests_is, round_trips_is) = at(is);
        requests += requests_is.saturating_sub(requests_was);
        round_trips += round_trips_is.saturating_sub(round_trips_was);
        fsyncs += is.fsyncs.saturating_sub(was.fsyncs);
        if let Some(channel) = channel {
            let sent = |node: &NodeCounters| node.messages.get(channel).copied().unwrap_or(0);
            messages += sent(is).saturating_sub(sent(was));
        }
    }
    if requests == 0 {
        return None;
    }
    let per_op = |count: u64| count as f64 / requests as f64;
    Some(Tax {
        requests,
        msgs_per_op: per_op(messages),
        rtts_per_op: per_op(round_trips),
        fsyncs_per_op: per_op(fsyncs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(level: &str, requests: u64, round_trips: u64, fsyncs: u64, kv: u64) -> NodeCounters {
        NodeCounters {
            levels: [(level.to_owned(), (requests, round_trips))].into(),
            fsyncs,
            messages: [("kv".to_owned(), kv), ("raft".to_owned(), 1_000)].into(),
        }
    }

    #[test]
    fn the_tax_is_the_cluster_wide_growth_per_coordinated_request() {
        // Two nodes coordinate 100 quorum writes between them: 200 round
        // trips would be 2 each; 400 kv messages (a store and an ack to
        // each of two peers per write) and 300 fsyncs over three turns'
        // worth of commits.
        let before = Snapshot(vec![
            node("quorum", 10, 10, 5, 50),
            node("quorum", 0, 0, 7, 0),
        ]);
        let after = Snapshot(vec![
            node("quorum", 70, 70, 205, 350),
            node("quorum", 40, 40, 107, 100),
        ]);
        let tax = tax(&before, &after, "quorum", Some("kv")).expect("requests were coordinated");
        assert_eq!(tax.requests, 100);
        assert_eq!(tax.rtts_per_op, 1.0);
        assert_eq!(tax.msgs_per_op, 4.0);
        assert_eq!(tax.fsyncs_per_op, 3.0);
    }

    #[test]
    fn a_level_without_requests_or_mismatched_snapshots_has_no_tax() {
        let before = Snapshot(vec![node("quorum", 10, 10, 5, 50)]);
        let after = Snapshot(vec![node("quorum", 10, 10, 9, 60)]);
        assert_eq!(tax(&before, &after, "quorum", Some("kv")), None);
        assert_eq!(tax(&before, &after, "local", Some("replication")), None);
        assert_eq!(
            tax(&before, &Snapshot::default(), "quorum", Some("kv")),
            None
        );
    }

    #[test]
    fn a_serializable_read_counts_no_messages_whatever_the_channels_did() {
        let counters = |requests, raft| NodeCounters {
            levels: [("serializable".to_owned(), (requests, 0))].into(),
            fsyncs: 0,
            messages: [("raft".to_owned(), raft)].into(),
        };
        let before = Snapshot(vec![counters(0, 0)]);
        let after = Snapshot(vec![counters(50, 500)]);
        let channel = channel_of(WorkloadName::EtcdRange, "serializable");
        let tax = tax(&before, &after, "serializable", channel).expect("reads were served");
        assert_eq!((tax.msgs_per_op, tax.rtts_per_op), (0.0, 0.0));
    }

    #[test]
    fn each_workload_counts_the_channel_its_level_uses() {
        use WorkloadName::*;
        // The CRDT counter travels on the replicas' channel at every
        // leaderless level, the Kv service on its own.
        for level in ["one", "quorum", "all"] {
            assert_eq!(channel_of(CounterIncr, level), Some("replication"));
            assert_eq!(channel_of(CounterGet, level), Some("replication"));
            assert_eq!(channel_of(KvPut, level), Some("kv"));
        }
        assert_eq!(channel_of(CounterIncr, "local"), Some("replication"));
        for workload in [CounterIncr, CounterGet, EtcdPut, EtcdTxn] {
            assert_eq!(channel_of(workload, "linearizable"), Some("raft"));
        }
        assert_eq!(channel_of(EtcdRange, "serializable"), None);
    }
}
