//! `Lease`: keep-alive answers each request in order; a missing lease is
//! TTL 0 (keep-alive) or -1 (time-to-live), as etcd answers.

use calm_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use calm_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{promptly, refused, start};
use crate::etcd::EtcdError;

async fn grant(client: &mut LeaseClient<tonic::transport::Channel>, ttl: i64) -> i64 {
    let grant = LeaseGrantRequest { ttl, id: 0 };
    client
        .lease_grant(grant)
        .await
        .expect("grant")
        .into_inner()
        .id
}

#[tokio::test]
async fn keep_alive_stream_answers_each_request_in_order() {
    let node = start().await;
    let mut leases = LeaseClient::new(node.channel.clone());
    let short = grant(&mut leases, 10).await;
    let long = grant(&mut leases, 30).await;
    let (requests, outbound) = mpsc::channel(8);
    let mut responses = leases
        .lease_keep_alive(ReceiverStream::new(outbound))
        .await
        .expect("keep-alive stream")
        .into_inner();
    let unknown = 12345;
    for (id, ttl) in [(short, 10), (unknown, 0), (long, 30), (short, 10)] {
        let request = LeaseKeepAliveRequest { id };
        requests.send(request).await.expect("stream open");
        let response = promptly(responses.message())
            .await
            .expect("no error")
            .expect("a response");
        // A lease that is gone is TTL 0, and the stream goes on.
        assert_eq!((response.id, response.ttl), (id, ttl));
        assert!(response.header.is_some());
    }
    drop(requests);
    let end = promptly(responses.message()).await.expect("no error");
    assert!(end.is_none(), "the stream ends with the client's");
}

#[tokio::test]
async fn time_to_live_of_a_missing_lease_is_minus_one() {
    let node = start().await;
    let mut leases = LeaseClient::new(node.channel.clone());
    let id = grant(&mut leases, 10).await;
    let revoke = LeaseRevokeRequest { id };
    leases.lease_revoke(revoke).await.expect("revoke");
    let asked = LeaseTimeToLiveRequest { id, keys: false };
    let answer = leases.lease_time_to_live(asked).await.expect("answered");
    assert_eq!((answer.get_ref().id, answer.get_ref().ttl), (id, -1));
    let listed = leases
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("list");
    assert!(listed.into_inner().leases.is_empty());
    refused(
        leases.lease_revoke(LeaseRevokeRequest { id }).await,
        EtcdError::LeaseNotFound,
    );
}

#[tokio::test]
async fn a_ttl_above_etcds_maximum_is_refused_before_the_backend() {
    let node = start().await;
    let mut leases = LeaseClient::new(node.channel.clone());
    let too_long = LeaseGrantRequest {
        ttl: 9_000_000_001,
        id: 0,
    };
    refused(
        leases.lease_grant(too_long).await,
        EtcdError::LeaseTtlTooLarge,
    );
    assert_eq!(node.fake.calls(), 0);
}
