//! etcd's v3 API on a whole one-node server (a one-voter coordinated
//! keyspace), spoken to with etcd's generated clients.

use std::net::SocketAddr;
use std::time::Duration;

use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use calm_proto::etcd::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
use calm_proto::etcd::v3lockpb::LockRequest;
use calm_proto::etcd::v3lockpb::lock_client::LockClient;
use calm_server::config::NodeConfig;
use calm_server::server::{self, RunningServer};
use tonic::transport::Channel;

async fn one_node(dir: &tempfile::TempDir) -> RunningServer {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        listen_client: any_port,
        listen_peer: any_port,
        listen_admin: any_port,
        anti_entropy_interval_ms: 0,
        ..NodeConfig::default()
    };
    server::start(&config).await.expect("the node starts")
}

async fn channel(server: &RunningServer) -> Channel {
    let endpoint = format!("http://{}", server.client_addr());
    Channel::from_shared(endpoint)
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("the client port accepts connections")
}

/// The resource a lock protects, as the docs show it: it remembers the
/// highest fencing token it has seen and refuses writes carrying a lower
/// one, so a holder that lost its lock without knowing cannot do harm.
#[derive(Default)]
struct FencedResource {
    highest_token: i64,
    writes: Vec<(i64, &'static str)>,
}

impl FencedResource {
    fn write(&mut self, token: i64, what: &'static str) -> Result<(), String> {
        if token < self.highest_token {
            return Err(format!(
                "stale fencing token {token}: {} was already seen",
                self.highest_token
            ));
        }
        self.highest_token = token;
        self.writes.push((token, what));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_paused_past_its_lease_is_fenced_off_by_the_revision_token() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = one_node(&dir).await;
    let channel = channel(&server).await;
    let mut leases = LeaseClient::new(channel.clone());
    let mut locks = LockClient::new(channel.clone());
    let mut resource = FencedResource::default();

    // Holder A takes the lock on a short lease and writes with its token.
    let lease_a = leases
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .expect("a lease for A")
        .into_inner()
        .id;
    let held_a = locks
        .lock(LockRequest {
            name: b"printer".to_vec(),
            lease: lease_a,
        })
        .await
        .expect("A locks")
        .into_inner();
    let token_a = held_a.header.expect("a header").revision;
    resource
        .write(token_a, "A's first page")
        .expect("A holds the lock");

    // A pauses (a GC pause, a SIGSTOP) and stops keeping its lease alive.
    // B asks for the lock: it is granted once A's lease expires.
    let lease_b = leases
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("a lease for B")
        .into_inner()
        .id;
    let held_b = tokio::time::timeout(
        Duration::from_secs(15),
        locks.lock(LockRequest {
            name: b"printer".to_vec(),
            lease: lease_b,
        }),
    )
    .await
    .expect("B gets the lock once A's lease expires")
    .expect("B locks")
    .into_inner();
    let token_b = held_b.header.expect("a header").revision;
    assert!(
        token_b > token_a,
        "fencing tokens grow: {token_a} then {token_b}"
    );
    resource
        .write(token_b, "B's page")
        .expect("B holds the lock");

    // A's key went with its lease.
    let mut kv = KvClient::new(channel);
    let a_key = kv
        .range(RangeRequest {
            key: held_a.key.clone(),
            ..RangeRequest::default()
        })
        .await
        .expect("a range")
        .into_inner();
    assert_eq!(a_key.count, 0, "the expired holder's lock key is deleted");

    // A wakes up believing it still holds the lock: the resource refuses.
    let refused = resource.write(token_a, "A's second page");
    assert!(refused.is_err(), "the stale holder is fenced off");
    assert_eq!(
        resource.writes,
        vec![(token_a, "A's first page"), (token_b, "B's page")]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_survives_a_restart_of_a_one_voter_keyspace() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = one_node(&dir).await;
    let mut kv = KvClient::new(channel(&server).await);
    let put = kv
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })
        .await
        .expect("a put")
        .into_inner();
    let revision = put.header.expect("a header").revision;
    assert_eq!(
        revision, 2,
        "etcd semantics: a fresh store is at revision 1"
    );
    server.stop().await;

    let server = one_node(&dir).await;
    let mut kv = KvClient::new(channel(&server).await);
    let range = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect("a linearizable range after the restart")
        .into_inner();
    assert_eq!(range.kvs.len(), 1);
    assert_eq!(range.kvs[0].value, b"v");
    assert_eq!(range.kvs[0].mod_revision, revision);
    server.stop().await;
}
