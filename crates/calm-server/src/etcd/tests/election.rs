//! `Election`: campaign waits its turn, leader and observe follow the
//! leader's values, proclaim needs the leadership, resign hands it on.

use calm_proto::etcd::etcdserverpb::LeaseGrantRequest;
use calm_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use calm_proto::etcd::v3electionpb::election_client::ElectionClient;
use calm_proto::etcd::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use tonic::Streaming;
use tonic::transport::Channel;

use super::fake::Fake;
use super::{A_WHILE, Node, promptly, refused, start, start_with};
use crate::etcd::{EtcdError, Limits};

async fn lease(node: &Node) -> i64 {
    let grant = LeaseGrantRequest { ttl: 30, id: 0 };
    let mut leases = LeaseClient::new(node.channel.clone());
    leases
        .lease_grant(grant)
        .await
        .expect("grant")
        .into_inner()
        .id
}

async fn campaign(client: &mut ElectionClient<Channel>, lease: i64, value: &[u8]) -> LeaderKey {
    let request = CampaignRequest {
        name: b"e".to_vec(),
        lease,
        value: value.to_vec(),
    };
    let elected = client.campaign(request).await.expect("elected");
    elected.into_inner().leader.expect("leader key")
}

async fn proclaim(client: &mut ElectionClient<Channel>, leader: &LeaderKey, value: &[u8]) {
    let request = ProclaimRequest {
        leader: Some(leader.clone()),
        value: value.to_vec(),
    };
    client.proclaim(request).await.expect("proclaimed");
}

async fn leader_value(client: &mut ElectionClient<Channel>) -> Vec<u8> {
    let request = LeaderRequest {
        name: b"e".to_vec(),
    };
    let leader = client.leader(request).await.expect("a leader").into_inner();
    leader.kv.expect("kv").value
}

async fn observed(observing: &mut Streaming<LeaderResponse>) -> Vec<u8> {
    let response = promptly(observing.message())
        .await
        .expect("no error")
        .expect("a response");
    response.kv.expect("kv").value
}

#[tokio::test]
async fn campaign_leader_observe_proclaim_and_resign() {
    let node = start().await;
    let (first_lease, second_lease) = (lease(&node).await, lease(&node).await);
    let mut client = ElectionClient::new(node.channel.clone());
    let first = campaign(&mut client, first_lease, b"a").await;
    assert_eq!(first.key, format!("e/{first_lease:x}").into_bytes());
    assert_eq!(leader_value(&mut client).await, b"a");
    let observe = LeaderRequest {
        name: b"e".to_vec(),
    };
    let mut observing = client.observe(observe).await.expect("observe").into_inner();
    assert_eq!(observed(&mut observing).await, b"a");

    let mut rival = client.clone();
    let second = tokio::spawn(async move { campaign(&mut rival, second_lease, b"b").await });
    tokio::time::sleep(A_WHILE).await;
    assert!(!second.is_finished(), "the first candidate leads");

    proclaim(&mut client, &first, b"a2").await;
    assert_eq!(observed(&mut observing).await, b"a2");

    let resign = ResignRequest {
        leader: Some(first.clone()),
    };
    client.resign(resign).await.expect("resigned");
    let second = promptly(second).await.expect("campaign task");
    assert!(second.rev > first.rev);
    assert_eq!(observed(&mut observing).await, b"b");
    assert_eq!(leader_value(&mut client).await, b"b");

    // The old leader key no longer holds the election.
    let stale = ProclaimRequest {
        leader: Some(first),
        value: b"late".to_vec(),
    };
    refused(client.proclaim(stale).await, EtcdError::ElectionNotLeader);
}

#[tokio::test]
async fn observe_waits_for_the_first_candidate() {
    let node = start().await;
    let lease = lease(&node).await;
    let mut client = ElectionClient::new(node.channel.clone());
    let observe = LeaderRequest {
        name: b"e".to_vec(),
    };
    let mut observing = client.observe(observe).await.expect("observe").into_inner();
    // Give the observer time to find the election empty.
    tokio::time::sleep(A_WHILE).await;
    campaign(&mut client, lease, b"first").await;
    assert_eq!(observed(&mut observing).await, b"first");
}

#[tokio::test]
async fn campaigning_again_with_the_same_lease_proclaims_the_new_value() {
    let node = start().await;
    let lease = lease(&node).await;
    let mut client = ElectionClient::new(node.channel.clone());
    let first = campaign(&mut client, lease, b"a").await;
    let again = promptly(campaign(&mut client, lease, b"b")).await;
    assert_eq!((again.key, again.rev), (first.key, first.rev));
    assert_eq!(leader_value(&mut client).await, b"b");
}

#[tokio::test]
async fn an_empty_election_or_a_missing_leader_key_is_refused() {
    let node = start().await;
    let mut client = ElectionClient::new(node.channel.clone());
    let nobody = LeaderRequest {
        name: b"e".to_vec(),
    };
    refused(client.leader(nobody).await, EtcdError::ElectionNoLeader);
    let no_key = ProclaimRequest {
        leader: None,
        value: b"v".to_vec(),
    };
    refused(client.proclaim(no_key).await, EtcdError::MissingLeaderKey);
    let no_key = ResignRequest { leader: None };
    refused(client.resign(no_key).await, EtcdError::MissingLeaderKey);
}

#[tokio::test]
async fn the_first_candidate_of_a_store_at_revision_zero_is_elected_at_once() {
    // Its key is created at revision 1: no key can be older, and 0 must
    // not read as "no bound on the create revision".
    let node = start_with(Fake::starting_at(0, Vec::new()), Limits::default()).await;
    let lease = lease(&node).await;
    let mut client = ElectionClient::new(node.channel.clone());
    let leader = promptly(campaign(&mut client, lease, b"a")).await;
    assert_eq!(leader.rev, 1);
}
