//! A node outside the coordinated keyspace's voters forwards etcd calls
//! (unary and streaming) to a voter, so that any node's endpoint serves the
//! etcd API; its calm.v1 calls stay its own.

use std::time::Duration;

use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use calm_proto::etcd::etcdserverpb::watch_client::WatchClient;
use calm_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use calm_proto::etcd::etcdserverpb::{
    PutRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest,
};
use tokio_stream::StreamExt;

use crate::harness::{Cluster, eventually};
use crate::linearizable::agreed_leader;

/// How long the cluster gets to elect a leader and gossip every address.
const READY_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_voters_forwards_etcd_calls_streams_included() {
    // Nodes 1 to 3 vote; node 4 is outside the keyspace.
    let cluster = Cluster::start_with_voters(4, 3).await;
    let elected = eventually(READY_WITHIN, async || {
        agreed_leader(&cluster, &[0, 1, 2]).await.is_some()
    })
    .await;
    assert!(elected, "no Raft leader\n{}", cluster.logs());
    let outsider = format!("http://{}", cluster.nodes[3].client);
    let voter = format!("http://{}", cluster.nodes[0].client);

    // A put through the outsider is applied by the voters.
    let mut kv = KvClient::connect(outsider.clone()).await.unwrap();
    let put = |value: &str| PutRequest {
        key: b"fwd/k".to_vec(),
        value: value.as_bytes().to_vec(),
        ..PutRequest::default()
    };
    let forwarded = eventually(READY_WITHIN, async || kv.put(put("one")).await.is_ok()).await;
    assert!(
        forwarded,
        "the outsider never forwarded a put\n{}",
        cluster.logs()
    );
    let range = RangeRequest {
        key: b"fwd/k".to_vec(),
        ..RangeRequest::default()
    };
    let mut at_voter = KvClient::connect(voter).await.unwrap();
    let read = at_voter.range(range.clone()).await.unwrap().into_inner();
    assert_eq!(
        read.kvs[0].value, b"one",
        "the voter holds the outsider's put"
    );

    // A watch through the outsider streams the voters' events.
    let mut watch = WatchClient::connect(outsider.clone()).await.unwrap();
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"fwd/k".to_vec(),
            start_revision: read.kvs[0].mod_revision,
            ..WatchCreateRequest::default()
        })),
    };
    let requests = tokio_stream::iter([create]).chain(tokio_stream::pending());
    let mut events = watch.watch(requests).await.unwrap().into_inner();
    at_voter.put(put("two")).await.unwrap();
    let mut values = Vec::new();
    while values.len() < 2 {
        let response = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("a watch response in time")
            .unwrap()
            .expect("the stream stays open");
        values.extend(response.events.into_iter().map(|e| e.kv.unwrap().value));
    }
    assert_eq!(values, [b"one".to_vec(), b"two".to_vec()]);

    // A linearizable read through the outsider sees the latest write, and
    // the answer is a voter's (its member id in the header).
    let read = kv.range(range).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].value, b"two");
    let mut maintenance = MaintenanceClient::connect(outsider).await.unwrap();
    let status = maintenance
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let member = status.header.unwrap().member_id;
    assert!((1..=3).contains(&member), "answered by voter {member}");

    // calm.v1 stays the outsider's own.
    let client = cluster.client(3);
    client.counter_increment("fwd-counter", 1).await.unwrap();
}
