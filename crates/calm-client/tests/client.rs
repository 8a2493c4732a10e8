//! The client against fake calm nodes served in-process on loopback: each
//! fake implements every generated `calm.v1` service over a little state,
//! records the key, level and causal token of every request it receives,
//! and can be told to answer `UNAVAILABLE` or to stall.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_client::{
    BoundedCounterValue, Client, ClientConfig, ClientError, Code, ErrorDetail, Level, MapCounter,
    MapRegister, MapSet, MapUpdate, MapValue, MemberState, NodeRights, ObjectKind, RegisterKind,
    RegisterValue,
};
use calm_proto::calm::v1 as pb;
use calm_proto::google::rpc;
use pb::bounded_counter_server::{BoundedCounter, BoundedCounterServer};
use pb::cluster_server::{Cluster, ClusterServer};
use pb::counter_server::{Counter, CounterServer};
use pb::map_server::{Map, MapServer};
use pb::register_server::{Register, RegisterServer};
use pb::set_server::{Set, SetServer};
use prost::Message;
use tonic::{Request, Response, Status};

/// A key whose requests the fake answers only after a long sleep.
const SLOW_KEY: &[u8] = b"slow";

/// What a fake node saw of one request.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: &'static str,
    key: Vec<u8>,
    level: i32,
    token: Vec<u8>,
}

/// A register's kind (the raw enum number) and value.
type StoredRegister = (i32, Vec<u8>);

/// A fake calm node. Std mutexes, not tokio ones: nothing awaits while one
/// is held.
#[derive(Default)]
struct FakeNode {
    node_id: u64,
    /// When set, every call is answered UNAVAILABLE, like a stopping node.
    unavailable: AtomicBool,
    /// Numbers the tokens this node issues.
    issued: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    counters: Mutex<HashMap<Vec<u8>, i64>>,
    sets: Mutex<HashMap<Vec<u8>, BTreeSet<Vec<u8>>>>,
    registers: Mutex<HashMap<Vec<u8>, StoredRegister>>,
    /// Bounded counter rights per key, per node.
    rights: Mutex<HashMap<Vec<u8>, BTreeMap<u64, u64>>>,
    map_updates: Mutex<Vec<(Vec<u8>, pb::map_update_request::Update)>>,
}

impl FakeNode {
    fn new(node_id: u64) -> Arc<FakeNode> {
        Arc::new(FakeNode {
            node_id,
            ..FakeNode::default()
        })
    }

    /// Records a request, then stalls or refuses it as configured.
    async fn enter(
        &self,
        method: &'static str,
        key: &[u8],
        level: i32,
        token: &[u8],
    ) -> Result<(), Status> {
        self.seen.lock().expect("no test thread panics").push(Seen {
            method,
            key: key.to_vec(),
            level,
            token: token.to_vec(),
        });
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the fake node is stopping"));
        }
        if key == SLOW_KEY {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(())
    }

    /// A header with a fresh token naming this node, the key and a number.
    fn header(&self, key: &[u8]) -> Option<pb::ResponseHeader> {
        let number = self.issued.fetch_add(1, Ordering::SeqCst);
        let key = String::from_utf8_lossy(key);
        Some(pb::ResponseHeader {
            causal_token: format!("n{}/{key}/{number}", self.node_id).into_bytes(),
            node_id: self.node_id,
            level: pb::Level::Local.into(),
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("no test thread panics").clone()
    }

    fn calls(&self) -> usize {
        self.seen().len()
    }

    fn stop_serving(&self) {
        self.unavailable.store(true, Ordering::SeqCst);
    }
}

/// A `google.rpc.Status` with `detail` packed as the `.proto` documents,
/// encoded for a status's binary details.
fn packed_details(code: Code, message: &str, detail: pb::error_detail::Detail) -> Vec<u8> {
    let mut status = rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: vec![Default::default()],
    };
    // `Any` is prost-types', which this crate does not depend on; its
    // default is filled in field by field.
    status.details[0].type_url = "type.googleapis.com/calm.v1.ErrorDetail".to_owned();
    status.details[0].value = pb::ErrorDetail {
        detail: Some(detail),
    }
    .encode_to_vec();
    status.encode_to_vec()
}

#[tonic::async_trait]
impl Counter for FakeNode {
    async fn increment(
        &self,
        request: Request<pb::CounterIncrementRequest>,
    ) -> Result<Response<pb::CounterIncrementResponse>, Status> {
        let r = request.into_inner();
        self.enter("counter.increment", &r.key, r.level, &r.causal_token)
            .await?;
        if self.sets.lock().expect("no panics").contains_key(&r.key) {
            let message = "the key holds a set";
            let detail = pb::error_detail::Detail::WrongType(pb::WrongType {
                found: pb::ObjectKind::Set.into(),
                expected: pb::ObjectKind::Counter.into(),
            });
            let details = packed_details(Code::FailedPrecondition, message, detail);
            return Err(Status::with_details(
                Code::FailedPrecondition,
                message,
                details.into(),
            ));
        }
        *self
            .counters
            .lock()
            .expect("no panics")
            .entry(r.key.clone())
            .or_default() += r.by;
        Ok(Response::new(pb::CounterIncrementResponse {
            header: self.header(&r.key),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::CounterGetRequest>,
    ) -> Result<Response<pb::CounterGetResponse>, Status> {
        let r = request.into_inner();
        self.enter("counter.get", &r.key, r.level, &r.causal_token)
            .await?;
        let value = self
            .counters
            .lock()
            .expect("no panics")
            .get(&r.key)
            .copied();
        Ok(Response::new(pb::CounterGetResponse {
            header: self.header(&r.key),
            value: value.unwrap_or(0),
        }))
    }
}

#[tonic::async_trait]
impl Set for FakeNode {
    async fn add(
        &self,
        request: Request<pb::SetAddRequest>,
    ) -> Result<Response<pb::SetAddResponse>, Status> {
        let r = request.into_inner();
        self.enter("set.add", &r.key, r.level, &r.causal_token)
            .await?;
        let mut sets = self.sets.lock().expect("no panics");
        sets.entry(r.key.clone()).or_default().insert(r.element);
        Ok(Response::new(pb::SetAddResponse {
            header: self.header(&r.key),
        }))
    }

    async fn remove(
        &self,
        request: Request<pb::SetRemoveRequest>,
    ) -> Result<Response<pb::SetRemoveResponse>, Status> {
        let r = request.into_inner();
        self.enter("set.remove", &r.key, r.level, &r.causal_token)
            .await?;
        let mut sets = self.sets.lock().expect("no panics");
        sets.entry(r.key.clone()).or_default().remove(&r.element);
        Ok(Response::new(pb::SetRemoveResponse {
            header: self.header(&r.key),
        }))
    }

    async fn members(
        &self,
        request: Request<pb::SetMembersRequest>,
    ) -> Result<Response<pb::SetMembersResponse>, Status> {
        let r = request.into_inner();
        self.enter("set.members", &r.key, r.level, &r.causal_token)
            .await?;
        let sets = self.sets.lock().expect("no panics");
        let members = sets.get(&r.key).into_iter().flatten().cloned().collect();
        Ok(Response::new(pb::SetMembersResponse {
            header: self.header(&r.key),
            members,
        }))
    }
}

#[tonic::async_trait]
impl Register for FakeNode {
    async fn set(
        &self,
        request: Request<pb::RegisterSetRequest>,
    ) -> Result<Response<pb::RegisterSetResponse>, Status> {
        let r = request.into_inner();
        self.enter("register.set", &r.key, r.level, &r.causal_token)
            .await?;
        let mut registers = self.registers.lock().expect("no panics");
        registers.insert(r.key.clone(), (r.kind, r.value));
        Ok(Response::new(pb::RegisterSetResponse {
            header: self.header(&r.key),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::RegisterGetRequest>,
    ) -> Result<Response<pb::RegisterGetResponse>, Status> {
        let r = request.into_inner();
        self.enter("register.get", &r.key, r.level, &r.causal_token)
            .await?;
        let registers = self.registers.lock().expect("no panics");
        let (kind, values) = match registers.get(&r.key) {
            Some((kind, value)) => (*kind, vec![value.clone()]),
            None => (pb::RegisterKind::Unspecified.into(), Vec::new()),
        };
        Ok(Response::new(pb::RegisterGetResponse {
            header: self.header(&r.key),
            kind,
            values,
        }))
    }
}

#[tonic::async_trait]
impl Map for FakeNode {
    async fn update(
        &self,
        request: Request<pb::MapUpdateRequest>,
    ) -> Result<Response<pb::MapUpdateResponse>, Status> {
        let r = request.into_inner();
        self.enter("map.update", &r.key, r.level, &r.causal_token)
            .await?;
        let update = r
            .update
            .ok_or_else(|| Status::invalid_argument("no update"))?;
        let mut updates = self.map_updates.lock().expect("no panics");
        updates.push((r.field, update));
        Ok(Response::new(pb::MapUpdateResponse {
            header: self.header(&r.key),
        }))
    }

    async fn remove_field(
        &self,
        request: Request<pb::MapRemoveFieldRequest>,
    ) -> Result<Response<pb::MapRemoveFieldResponse>, Status> {
        let r = request.into_inner();
        self.enter("map.remove_field", &r.key, r.level, &r.causal_token)
            .await?;
        Ok(Response::new(pb::MapRemoveFieldResponse {
            header: self.header(&r.key),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::MapGetRequest>,
    ) -> Result<Response<pb::MapGetResponse>, Status> {
        let r = request.into_inner();
        self.enter("map.get", &r.key, r.level, &r.causal_token)
            .await?;
        // A fixed map with one field of each kind.
        Ok(Response::new(pb::MapGetResponse {
            header: self.header(&r.key),
            registers: vec![pb::MapRegisterField {
                field: b"color".to_vec(),
                values: vec![b"blue".to_vec(), b"red".to_vec()],
            }],
            counters: vec![pb::MapCounterField {
                field: b"apples".to_vec(),
                value: -2,
            }],
            sets: vec![pb::MapSetField {
                field: b"tags".to_vec(),
                members: vec![b"x".to_vec()],
            }],
        }))
    }
}

impl FakeNode {
    /// Spends `amount` of this node's rights on `key`, or refuses with the
    /// `insufficient_rights` detail.
    fn spend(&self, key: &[u8], amount: u64) -> Result<(), Status> {
        let mut rights = self.rights.lock().expect("no panics");
        let held = rights.entry(key.to_vec()).or_default();
        let available = held.get(&self.node_id).copied().unwrap_or(0);
        if available < amount {
            let message = "too few rights at this node";
            let detail = pb::error_detail::Detail::InsufficientRights(pb::InsufficientRights {
                node_id: self.node_id,
                available,
                requested: amount,
            });
            let details = packed_details(Code::FailedPrecondition, message, detail);
            return Err(Status::with_details(
                Code::FailedPrecondition,
                message,
                details.into(),
            ));
        }
        held.insert(self.node_id, available - amount);
        Ok(())
    }
}

#[tonic::async_trait]
impl BoundedCounter for FakeNode {
    async fn increment(
        &self,
        request: Request<pb::BoundedCounterIncrementRequest>,
    ) -> Result<Response<pb::BoundedCounterIncrementResponse>, Status> {
        let r = request.into_inner();
        self.enter("bounded.increment", &r.key, r.level, &r.causal_token)
            .await?;
        let mut rights = self.rights.lock().expect("no panics");
        *rights
            .entry(r.key.clone())
            .or_default()
            .entry(self.node_id)
            .or_default() += r.amount;
        Ok(Response::new(pb::BoundedCounterIncrementResponse {
            header: self.header(&r.key),
        }))
    }

    async fn decrement(
        &self,
        request: Request<pb::BoundedCounterDecrementRequest>,
    ) -> Result<Response<pb::BoundedCounterDecrementResponse>, Status> {
        let r = request.into_inner();
        self.enter("bounded.decrement", &r.key, r.level, &r.causal_token)
            .await?;
        self.spend(&r.key, r.amount)?;
        Ok(Response::new(pb::BoundedCounterDecrementResponse {
            header: self.header(&r.key),
        }))
    }

    async fn transfer(
        &self,
        request: Request<pb::BoundedCounterTransferRequest>,
    ) -> Result<Response<pb::BoundedCounterTransferResponse>, Status> {
        let r = request.into_inner();
        self.enter("bounded.transfer", &r.key, r.level, &r.causal_token)
            .await?;
        self.spend(&r.key, r.amount)?;
        let mut rights = self.rights.lock().expect("no panics");
        *rights
            .entry(r.key.clone())
            .or_default()
            .entry(r.to_node_id)
            .or_default() += r.amount;
        Ok(Response::new(pb::BoundedCounterTransferResponse {
            header: self.header(&r.key),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::BoundedCounterGetRequest>,
    ) -> Result<Response<pb::BoundedCounterGetResponse>, Status> {
        let r = request.into_inner();
        self.enter("bounded.get", &r.key, r.level, &r.causal_token)
            .await?;
        let rights = self.rights.lock().expect("no panics");
        let held = rights.get(&r.key).cloned().unwrap_or_default();
        Ok(Response::new(pb::BoundedCounterGetResponse {
            header: self.header(&r.key),
            value: held.values().sum(),
            local_rights: held.get(&self.node_id).copied().unwrap_or(0),
            rights: held
                .iter()
                .filter(|(_, rights)| **rights > 0)
                .map(|(node_id, rights)| pb::NodeRights {
                    node_id: *node_id,
                    rights: *rights,
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl Cluster for FakeNode {
    async fn members(
        &self,
        _request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        self.enter("cluster.members", b"", 0, b"").await?;
        let member = |node_id, state: pb::MemberState, ownership_fraction| pb::Member {
            node_id,
            address: format!("10.0.0.{node_id}:2379"),
            state: state.into(),
            incarnation: node_id * 10,
            ownership_fraction,
        };
        Ok(Response::new(pb::MembersResponse {
            header: Some(pb::ResponseHeader {
                node_id: self.node_id,
                ..pb::ResponseHeader::default()
            }),
            members: vec![
                member(1, pb::MemberState::Alive, 0.5),
                member(2, pb::MemberState::Suspect, 0.25),
                member(3, pb::MemberState::Left, 0.25),
            ],
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.enter("cluster.status", b"", 0, b"").await?;
        Ok(Response::new(pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                node_id: self.node_id,
                ..pb::ResponseHeader::default()
            }),
            server_version: "0.1.0".to_owned(),
            cluster_name: "test".to_owned(),
            members_total: 3,
            members_alive: 2,
            keys: 42,
            key_bytes_max: 1024,
            payload_bytes_max: 65536,
            ..pb::StatusResponse::default()
        }))
    }
}

/// A fake node serving on an ephemeral loopback port until dropped.
struct Served {
    address: String,
    node: Arc<FakeNode>,
    // Dropping the sender ends the server.
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(node_id: u64) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string();
    let node = FakeNode::new(node_id);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .add_service(CounterServer::from_arc(node.clone()))
        .add_service(SetServer::from_arc(node.clone()))
        .add_service(RegisterServer::from_arc(node.clone()))
        .add_service(MapServer::from_arc(node.clone()))
        .add_service(BoundedCounterServer::from_arc(node.clone()))
        .add_service(ClusterServer::from_arc(node.clone()));
    tokio::spawn(router.serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Served {
        address,
        node,
        _stop: stop,
    }
}

/// A loopback address where nothing listens: a port bound, then released.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string()
}

fn connect(endpoints: &[&str]) -> Client {
    Client::connect(endpoints).expect("valid endpoints")
}

#[tokio::test]
async fn a_first_endpoint_with_nothing_listening_fails_over_to_the_second() {
    let closed = closed_port().await;
    let node = serve(2).await;
    let client = connect(&[&closed, &node.address]);

    client
        .counter_increment("hits", 4)
        .await
        .expect("node 2 serves");
    let read = client.counter_get("hits").await.expect("node 2 serves");

    assert_eq!(read.value, 4);
    assert_eq!(read.node_id, 2);
    assert_eq!(client.current_endpoint(), node.address);
}

#[tokio::test]
async fn an_unavailable_node_fails_over_and_the_client_stays_on_the_serving_one() {
    let first = serve(1).await;
    let second = serve(2).await;
    first.node.stop_serving();
    let client = connect(&[&first.address, &second.address]);

    client.set_add("tags", "a").await.expect("node 2 serves");
    client.set_add("tags", "b").await.expect("node 2 serves");

    // The first endpoint was tried once; the second call went straight to
    // the endpoint that served.
    assert_eq!(first.node.calls(), 1);
    assert_eq!(second.node.calls(), 2);
    let members = client.set_members("tags").await.expect("node 2 serves");
    assert_eq!(members.value, vec![b"a".to_vec(), b"b".to_vec()]);
}

#[tokio::test]
async fn when_every_endpoint_fails_the_last_error_is_returned() {
    let first = serve(1).await;
    let closed = closed_port().await;
    first.node.stop_serving();
    let client = connect(&[&first.address, &closed]);

    let error = client
        .counter_get("hits")
        .await
        .expect_err("nothing serves");

    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.is_retryable());
    let ClientError::Status { endpoint, .. } = &error else {
        panic!("expected a status error, got {error:?}");
    };
    assert_eq!(*endpoint, closed);
    assert_eq!(first.node.calls(), 1);
}

#[tokio::test]
async fn an_error_that_is_not_unavailable_does_not_fail_over() {
    let first = serve(1).await;
    let second = serve(2).await;
    let client = connect(&[&first.address, &second.address]);

    let error = client
        .bounded_counter_decrement("seats", 5)
        .await
        .expect_err("node 1 holds no rights");

    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(!error.is_retryable());
    assert_eq!(second.node.calls(), 0);
}

#[tokio::test]
async fn a_write_token_is_sent_with_the_next_request_on_that_key_only() {
    // Session guarantees: the token of a write rides on the next read of
    // the same key (read-your-writes), and no other key gets it.
    let node = serve(1).await;
    let client = connect(&[&node.address]);

    let write = client.counter_increment("a", 1).await.expect("served");
    assert_eq!(client.token("a"), Some(write.token.clone()));
    let read = client.counter_get("a").await.expect("served");
    client.counter_get("b").await.expect("served");

    let seen = node.node.seen();
    let tokens: Vec<(&[u8], &[u8])> = seen
        .iter()
        .map(|s| (s.key.as_slice(), s.token.as_slice()))
        .collect();
    assert_eq!(
        tokens,
        [
            (&b"a"[..], &b""[..]),
            (b"a", write.token.as_bytes()),
            (b"b", b""),
        ]
    );
    // The read's token (covering what it observed) replaces the write's.
    assert_eq!(client.token("a"), Some(read.token));
    assert_ne!(client.token("a"), Some(write.token));
}

#[tokio::test]
async fn the_session_token_follows_a_failover_to_another_node() {
    // Read-your-writes across nodes: node 2 receives node 1's token.
    let first = serve(1).await;
    let second = serve(2).await;
    let client = connect(&[&first.address, &second.address]);

    let write = client
        .register_set("motd", "hi", RegisterKind::Lww)
        .await
        .expect("node 1 serves");
    assert_eq!(write.node_id, 1);
    first.node.stop_serving();
    let read = client.register_get("motd").await.expect("node 2 serves");

    assert_eq!(read.node_id, 2);
    let at_second = second.node.seen();
    assert_eq!(at_second.len(), 1);
    assert_eq!(at_second[0].token, write.token.as_bytes());
    assert!(client.token("motd").is_some_and(|t| t == read.token));
}

#[tokio::test]
async fn an_insufficient_rights_detail_decodes_into_the_plain_enum() {
    let node = serve(2).await;
    let client = connect(&[&node.address]);
    client
        .bounded_counter_increment("seats", 3)
        .await
        .expect("served");

    let error = client
        .bounded_counter_decrement("seats", 5)
        .await
        .expect_err("node 2 holds 3 rights");

    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(
        error.detail(),
        Some(&ErrorDetail::InsufficientRights {
            node_id: 2,
            available: 3,
            requested: 5,
        })
    );
    assert!(
        error.to_string().contains("needs 5 rights, node 2 holds 3"),
        "{error}"
    );
}

#[tokio::test]
async fn a_call_slower_than_the_timeout_fails_and_the_next_call_moves_on() {
    let first = serve(1).await;
    let second = serve(2).await;
    let config = ClientConfig {
        timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let client =
        Client::connect_with(&[&first.address, &second.address], config).expect("valid endpoints");

    let error = client
        .counter_get(SLOW_KEY)
        .await
        .expect_err("the fake stalls");

    assert!(
        matches!(&error, ClientError::Timeout { endpoint, .. } if *endpoint == first.address),
        "{error:?}"
    );
    assert_eq!(error.code(), Code::DeadlineExceeded);
    assert!(error.is_in_doubt());
    // A stalled endpoint would stall every call; the next starts elsewhere.
    assert_eq!(client.current_endpoint(), second.address);
}

#[tokio::test]
async fn every_request_carries_the_configured_level() {
    let node = serve(1).await;
    let config = ClientConfig {
        level: Level::Quorum,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&[&node.address], config).expect("valid endpoint");

    client.set_remove("tags", "a").await.expect("served");
    client.map_remove_field("cart", "x").await.expect("served");

    let levels: Vec<i32> = node.node.seen().iter().map(|s| s.level).collect();
    assert_eq!(levels, [pb::Level::Quorum as i32; 2]);
}

#[tokio::test]
async fn replies_convert_to_plain_types() {
    let node = serve(7).await;
    let client = connect(&[&node.address]);

    client
        .register_set("r", "v", RegisterKind::MultiValue)
        .await
        .expect("served");
    let register = client.register_get("r").await.expect("served");
    assert_eq!(
        register.value,
        RegisterValue {
            kind: Some(RegisterKind::MultiValue),
            values: vec![b"v".to_vec()],
        }
    );
    assert_eq!(register.level, Some(Level::Local));
    let absent = client.register_get("none").await.expect("served").value;
    assert_eq!(absent, RegisterValue::default());

    let map = client.map_get("cart").await.expect("served").value;
    assert_eq!(
        map,
        MapValue {
            registers: vec![MapRegister {
                field: b"color".to_vec(),
                values: vec![b"blue".to_vec(), b"red".to_vec()],
            }],
            counters: vec![MapCounter {
                field: b"apples".to_vec(),
                value: -2,
            }],
            sets: vec![MapSet {
                field: b"tags".to_vec(),
                members: vec![b"x".to_vec()],
            }],
        }
    );
}

#[tokio::test]
async fn map_updates_reach_the_server_as_the_matching_oneof() {
    use pb::map_update_request::Update;
    let node = serve(1).await;
    let client = connect(&[&node.address]);
    let updates = [
        MapUpdate::RegisterWrite(b"blue".to_vec()),
        MapUpdate::CounterIncrement(-3),
        MapUpdate::SetAdd(b"x".to_vec()),
        MapUpdate::SetRemove(b"y".to_vec()),
    ];
    for update in updates {
        client
            .map_update("cart", "f", update)
            .await
            .expect("served");
    }
    let received = node.node.map_updates.lock().expect("no panics").clone();
    let expected = [
        Update::RegisterWrite(b"blue".to_vec()),
        Update::CounterIncrement(-3),
        Update::SetAdd(b"x".to_vec()),
        Update::SetRemove(b"y".to_vec()),
    ];
    let received: Vec<Update> = received.into_iter().map(|(_, u)| u).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn bounded_counter_rights_move_by_transfer() {
    let node = serve(1).await;
    let client = connect(&[&node.address]);
    client
        .bounded_counter_increment("seats", 10)
        .await
        .expect("served");
    client
        .bounded_counter_transfer("seats", 4, 6)
        .await
        .expect("node 1 holds 10");
    client
        .bounded_counter_decrement("seats", 1)
        .await
        .expect("node 1 holds 4");

    let read = client.bounded_counter_get("seats").await.expect("served");
    assert_eq!(
        read.value,
        BoundedCounterValue {
            value: 9,
            local_rights: 3,
            rights: vec![
                NodeRights {
                    node_id: 1,
                    rights: 3
                },
                NodeRights {
                    node_id: 4,
                    rights: 6
                },
            ],
        }
    );
}

#[tokio::test]
async fn members_and_status_convert_and_status_asks_each_endpoint() {
    let first = serve(1).await;
    let second = serve(2).await;
    let client = connect(&[&first.address, &second.address]);

    let members = client.members().await.expect("served");
    let states: Vec<(u64, MemberState)> = members.iter().map(|m| (m.node_id, m.state)).collect();
    assert_eq!(
        states,
        [
            (1, MemberState::Alive),
            (2, MemberState::Suspect),
            (3, MemberState::Left)
        ]
    );
    assert_eq!(members[1].address, "10.0.0.2:2379");
    assert_eq!(members[1].incarnation, 20);
    assert_eq!(members[1].ownership_fraction, 0.25);

    let of_second = client.status_of(1).await.expect("node 2 serves");
    assert_eq!(of_second.node_id, 2);
    assert_eq!((of_second.members_alive, of_second.members_total), (2, 3));
    assert_eq!(of_second.keys, 42);
    // `status_of` does not fail over: a down endpoint reports its error.
    first.node.stop_serving();
    let down = client.status_of(0).await.expect_err("node 1 is down");
    assert_eq!(down.code(), Code::Unavailable);
    assert!(client.status_of(2).await.is_err());
}

#[tokio::test]
async fn a_wrong_type_detail_names_both_kinds() {
    let node = serve(1).await;
    let client = connect(&[&node.address]);
    client.set_add("k", "x").await.expect("served");

    let error = client
        .counter_increment("k", 1)
        .await
        .expect_err("a set is not a counter");

    assert_eq!(
        error.detail(),
        Some(&ErrorDetail::WrongType {
            found: ObjectKind::Set,
            expected: ObjectKind::Counter,
        })
    );
    assert!(
        error
            .to_string()
            .contains("the key holds a set, the operation needs a counter"),
        "{error}"
    );
}

#[tokio::test]
async fn bad_endpoints_are_refused_with_a_clear_error() {
    let none: [&str; 0] = [];
    assert_eq!(
        Client::connect(&none).expect_err("no endpoints"),
        ClientError::NoEndpoints
    );
    let error = Client::connect(&["127.0.0.1:2379", "localhost"]).expect_err("no port");
    assert!(
        matches!(&error, ClientError::InvalidEndpoint { endpoint, .. } if endpoint == "localhost"),
        "{error:?}"
    );
    assert!(error.to_string().contains("localhost"));
}

#[test]
fn a_client_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let error = Client::connect(&["127.0.0.1:2379"]).expect_err("no runtime here");
    assert_eq!(error, ClientError::NoRuntime);
}
