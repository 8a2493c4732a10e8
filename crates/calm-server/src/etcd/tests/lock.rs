//! `Lock`: contenders are serialized, their headers are increasing
//! fencing tokens, and an abandoned wait leaves no key behind.

use calm_proto::etcd::etcdserverpb::LeaseTimeToLiveRequest;
use calm_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use calm_proto::etcd::v3lockpb::lock_client::LockClient;
use calm_proto::etcd::v3lockpb::{LockRequest, LockResponse, UnlockRequest};
use tonic::transport::Channel;

use super::{A_WHILE, Node, eventually, promptly, refused, start};
use crate::etcd::EtcdError;
use crate::etcd::concurrency::waiter_key;

async fn lease(node: &Node) -> i64 {
    let grant = calm_proto::etcd::etcdserverpb::LeaseGrantRequest { ttl: 30, id: 0 };
    let mut leases = LeaseClient::new(node.channel.clone());
    leases
        .lease_grant(grant)
        .await
        .expect("grant")
        .into_inner()
        .id
}

async fn lock(client: &mut LockClient<Channel>, name: &[u8], lease: i64) -> LockResponse {
    let request = LockRequest {
        name: name.to_vec(),
        lease,
    };
    client.lock(request).await.expect("locked").into_inner()
}

fn revision(response: &LockResponse) -> i64 {
    response.header.expect("header").revision
}

#[tokio::test]
async fn contenders_are_serialized_and_fenced_by_increasing_revisions() {
    let node = start().await;
    let (first_lease, second_lease) = (lease(&node).await, lease(&node).await);
    let mut client = LockClient::new(node.channel.clone());
    let first = lock(&mut client, b"job", first_lease).await;
    assert_eq!(first.key, waiter_key(b"job/", first_lease));

    let mut contender = client.clone();
    let second = tokio::spawn(async move { lock(&mut contender, b"job", second_lease).await });
    tokio::time::sleep(A_WHILE).await;
    assert!(!second.is_finished(), "the lock is held");
    // Waiting, the second contender has its key in line.
    let second_key = waiter_key(b"job/", second_lease);
    assert!(node.fake.value(&second_key).is_some());

    let unlock = UnlockRequest {
        key: first.key.clone(),
    };
    let unlocked = client.unlock(unlock).await.expect("unlocked").into_inner();
    let second = promptly(second).await.expect("lock task");
    assert_eq!(second.key, second_key);
    // Fencing: the second holder's token is past the first's release.
    let released = unlocked.header.expect("header").revision;
    assert!(revision(&first) < released && released <= revision(&second));
}

#[tokio::test]
async fn relocking_with_the_held_key_returns_at_once() {
    let node = start().await;
    let lease = lease(&node).await;
    let mut client = LockClient::new(node.channel.clone());
    let first = lock(&mut client, b"job", lease).await;
    let again = promptly(lock(&mut client, b"job", lease)).await;
    assert_eq!(again.key, first.key);
}

#[tokio::test]
async fn a_lock_without_a_lease_gets_a_sixty_second_session_lease() {
    let node = start().await;
    let mut client = LockClient::new(node.channel.clone());
    let locked = lock(&mut client, b"job", 0).await;
    let hex = locked.key.strip_prefix(b"job/").expect("under job/");
    let id = i64::from_str_radix(std::str::from_utf8(hex).expect("hex"), 16).expect("hex");
    let mut leases = LeaseClient::new(node.channel.clone());
    let asked = LeaseTimeToLiveRequest { id, keys: false };
    let live = leases.lease_time_to_live(asked).await.expect("ttl");
    assert_eq!(live.into_inner().granted_ttl, 60);
}

#[tokio::test]
async fn an_abandoned_wait_deletes_its_key() {
    let node = start().await;
    let (holder, waiter) = (lease(&node).await, lease(&node).await);
    let mut client = LockClient::new(node.channel.clone());
    lock(&mut client, b"job", holder).await;
    let mut contender = client.clone();
    let waiting = tokio::spawn(async move { lock(&mut contender, b"job", waiter).await });
    let waiter_key = waiter_key(b"job/", waiter);
    let fake = &node.fake;
    eventually(|| fake.value(&waiter_key).is_some()).await;
    // The client gives up: its call is dropped, the server's wait with it.
    waiting.abort();
    eventually(|| fake.value(&waiter_key).is_none()).await;
}

#[tokio::test]
async fn unlock_needs_a_key() {
    let node = start().await;
    let mut client = LockClient::new(node.channel.clone());
    let unlock = UnlockRequest { key: Vec::new() };
    refused(client.unlock(unlock).await, EtcdError::EmptyKey);
}
