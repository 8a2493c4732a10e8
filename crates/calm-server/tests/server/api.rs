//! The `calm.v1` gRPC services end to end: each test serves a real replica
//! (or a stub that holds no replica) on a loopback port and drives it with
//! calm-proto's generated clients, checking the contract `calm.proto`
//! documents: values, response headers, status codes, typed error details,
//! forwarding and metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use calm_membership::MemberState as SwimState;
use calm_proto::calm::v1::bounded_counter_client::BoundedCounterClient;
use calm_proto::calm::v1::cluster_client::ClusterClient;
use calm_proto::calm::v1::counter_client::CounterClient;
use calm_proto::calm::v1::error_detail::Detail;
use calm_proto::calm::v1::map_client::MapClient;
use calm_proto::calm::v1::map_update_request::Update;
use calm_proto::calm::v1::register_client::RegisterClient;
use calm_proto::calm::v1::set_client::SetClient;
use calm_proto::calm::v1::*;
use calm_proto::google::rpc;
use calm_replica::RequestId;
use calm_replica::coordinator::Level as KvLevel;
use calm_replica::{Ack, Operation, Output, Replica, ReplicaConfig, ReplicaError, Request};
use calm_ring::{Ring, RingConfig};
use calm_server::api::{FORWARDED_HEADER, serve};
use calm_server::backend::{Backend, BackendError, MemberInfo, NodeStatus};
use calm_server::metrics::Metrics;
use calm_storage::{Limits, MemoryEngine};
use calm_types::NodeId;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};

// ---- Backends ----

/// A node holding one real replica of every key (a one-node ring).
struct ReplicaBackend {
    node: NodeId,
    /// A std Mutex: the replica is driven synchronously, and nothing awaits
    /// while it is held.
    replica: Mutex<Replica<MemoryEngine, Ring>>,
    next_request: AtomicU64,
    members: Vec<MemberInfo>,
}

impl ReplicaBackend {
    fn new(node: u64) -> Self {
        let node = NodeId(node);
        let ring = Ring::new(RingConfig::default(), &[node]).expect("a one-node ring");
        let engine = MemoryEngine::new(Limits::default());
        let replica = Replica::open(ReplicaConfig::new(node), ring, engine).expect("empty storage");
        Self {
            node,
            replica: Mutex::new(replica),
            next_request: AtomicU64::new(1),
            members: Vec::new(),
        }
    }
}

impl ReplicaBackend {
    /// Runs one request on the replica at `level` (`None`: `local`).
    fn run(
        &self,
        request: (Vec<u8>, Operation, Option<Vec<u8>>),
        level: Option<KvLevel>,
    ) -> Result<Ack, BackendError> {
        let (key, op, token) = request;
        let id = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        let mut replica = self.replica.lock().expect("no test panics holding it");
        // Time only orders LWW writes here; a request counter is enough.
        let request = Request { id, key, op, token };
        match level {
            None => replica.submit(request, 1_000 + id.0),
            Some(level) => replica.submit_at(request, level, 1_000 + id.0),
        }
        replica
            .flush()
            .map_err(|_| BackendError::Unavailable("flush failed"))?;
        let reply = replica
            .take_outputs()
            .into_iter()
            .find_map(|output| match output {
                Output::Reply(reply) if reply.id == id => Some(reply.result),
                _ => None,
            });
        // One node sees every write, so only a foreign token could park.
        reply
            .ok_or(BackendError::Unavailable("parked"))?
            .map_err(BackendError::from)
    }
}

impl Backend for ReplicaBackend {
    async fn submit(
        &self,
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
    ) -> Result<Ack, BackendError> {
        self.run((key, op, token), None)
    }

    async fn submit_at(
        &self,
        key: Vec<u8>,
        op: Operation,
        token: Option<Vec<u8>>,
        level: KvLevel,
    ) -> Result<Ack, BackendError> {
        self.run((key, op, token), Some(level))
    }

    fn node(&self) -> NodeId {
        self.node
    }

    fn client_addr(&self, _node: NodeId) -> Option<SocketAddr> {
        None
    }

    fn members(&self) -> Vec<MemberInfo> {
        self.members.clone()
    }

    fn status(&self) -> NodeStatus {
        NodeStatus {
            node: self.node,
            cluster: "test-cluster".to_owned(),
            version: "9.8.7",
            client_addr: addr(2379),
            peer_addr: addr(2380),
            ready: true,
            uptime_seconds: 0,
            keys: 42,
            key_bytes_max: 1024,
            payload_bytes_max: 65536,
            members: self.members.clone(),
            tax: Vec::new(),
            fsyncs: 0,
            messages_sent: Default::default(),
        }
    }
}

/// A node holding no replica of any key: every request is `NotReplica`,
/// naming `replica`, whose client address it knows if `replica_addr` is set.
struct Elsewhere {
    replica: NodeId,
    replica_addr: Option<SocketAddr>,
}

impl Backend for Elsewhere {
    async fn submit(
        &self,
        _key: Vec<u8>,
        _op: Operation,
        _token: Option<Vec<u8>>,
    ) -> Result<Ack, BackendError> {
        let replicas = vec![self.replica];
        Err(ReplicaError::NotReplica { replicas }.into())
    }

    fn node(&self) -> NodeId {
        NodeId(1)
    }

    fn client_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.replica_addr.filter(|_| node == self.replica)
    }

    fn members(&self) -> Vec<MemberInfo> {
        Vec::new()
    }

    fn status(&self) -> NodeStatus {
        unreachable!("no test asks a stub for its status")
    }
}

// ---- Harness ----

/// A backend served on a loopback port until dropped.
struct Served {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _stop: oneshot::Sender<()>,
}

async fn served<B: Backend>(backend: B) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    tokio::spawn(serve(
        listener,
        Arc::new(backend),
        Arc::clone(&metrics),
        shutdown,
    ));
    Served {
        addr,
        metrics,
        _stop: stop,
    }
}

impl Served {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the server is listening")
    }

    async fn counter(&self) -> CounterClient<Channel> {
        CounterClient::new(self.channel().await)
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn increment(key: &str, by: i64) -> CounterIncrementRequest {
    CounterIncrementRequest {
        key: key.into(),
        by,
        ..Default::default()
    }
}

fn counter_get(key: &str, causal_token: Vec<u8>) -> CounterGetRequest {
    CounterGetRequest {
        key: key.into(),
        causal_token,
        ..Default::default()
    }
}

/// The typed detail of a failed call, decoded the way `calm.proto` says a
/// client finds it: one `ErrorDetail` packed in an `Any` inside the
/// `google.rpc.Status` of the status details.
fn detail(status: &Status) -> Detail {
    let envelope = rpc::Status::decode(status.details()).expect("a google.rpc.Status");
    assert_eq!(envelope.code, status.code() as i32);
    assert_eq!(envelope.message, status.message());
    let [any] = envelope.details.as_slice() else {
        panic!("one detail expected, got {:?}", envelope.details)
    };
    assert_eq!(any.type_url, "type.googleapis.com/calm.v1.ErrorDetail");
    let detail = ErrorDetail::decode(any.value.as_slice()).expect("an ErrorDetail");
    detail.detail.expect("the detail is set")
}

fn header<T>(
    response: &tonic::Response<T>,
    header: impl Fn(&T) -> Option<&ResponseHeader>,
) -> ResponseHeader {
    header(response.get_ref())
        .cloned()
        .expect("every response has a header")
}

// ---- Counter ----

#[tokio::test]
async fn a_counter_sums_increments_and_decrements() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut counter = server.counter().await;
    let absent = counter.get(counter_get("hits", vec![])).await.unwrap();
    assert_eq!(absent.get_ref().value, 0, "an absent key reads 0");

    let ack = counter.increment(increment("hits", 5)).await.unwrap();
    let written = header(&ack, |r| r.header.as_ref());
    assert_eq!(written.node_id, 1);
    assert_eq!(
        written.level,
        Level::Local as i32,
        "the default level is served as LOCAL"
    );
    assert!(!written.causal_token.is_empty());
    counter.increment(increment("hits", -2)).await.unwrap();

    let read = counter.get(counter_get("hits", vec![])).await.unwrap();
    assert_eq!(read.get_ref().value, 3);
}

#[tokio::test]
async fn a_causal_token_is_accepted_on_its_key_only() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut counter = server.counter().await;
    let ack = counter.increment(increment("a", 7)).await.unwrap();
    let token = header(&ack, |r| r.header.as_ref()).causal_token;

    let read = counter.get(counter_get("a", token.clone())).await.unwrap();
    assert_eq!(read.get_ref().value, 7);
    let read_token = header(&read, |r| r.header.as_ref()).causal_token;
    assert!(
        !read_token.is_empty(),
        "a read's token covers what it observed"
    );

    // calm.proto: a token issued for another key is INVALID_ARGUMENT.
    let refused = counter.get(counter_get("b", token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let malformed = counter
        .get(counter_get("a", b"garbage".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
}

// ---- Set ----

#[tokio::test]
async fn a_set_adds_removes_and_lists_members_in_bytewise_order() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut set = SetClient::new(server.channel().await);
    for element in ["pear", "apple", "fig"] {
        let add = SetAddRequest {
            key: b"fruit".to_vec(),
            element: element.into(),
            ..Default::default()
        };
        set.add(add).await.unwrap();
    }
    let remove = SetRemoveRequest {
        key: b"fruit".to_vec(),
        element: b"fig".to_vec(),
        ..Default::default()
    };
    set.remove(remove).await.unwrap();

    let list = SetMembersRequest {
        key: b"fruit".to_vec(),
        ..Default::default()
    };
    let members = set.members(list).await.unwrap().into_inner().members;
    assert_eq!(members, [b"apple".to_vec(), b"pear".to_vec()]);
}

// ---- Register ----

async fn register_write(
    client: &mut RegisterClient<Channel>,
    key: &str,
    value: &str,
    kind: RegisterKind,
) -> Result<(), Status> {
    let request = RegisterSetRequest {
        key: key.into(),
        value: value.into(),
        kind: kind as i32,
        ..Default::default()
    };
    client.set(request).await.map(drop)
}

async fn register_read(
    client: &mut RegisterClient<Channel>,
    key: &str,
) -> (RegisterKind, Vec<Vec<u8>>) {
    let request = RegisterGetRequest {
        key: key.into(),
        ..Default::default()
    };
    let response = client.get(request).await.unwrap().into_inner();
    (response.kind(), response.values)
}

#[tokio::test]
async fn registers_of_both_kinds_read_their_last_write() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut register = RegisterClient::new(server.channel().await);
    assert_eq!(
        register_read(&mut register, "lww").await,
        (RegisterKind::Unspecified, vec![])
    );

    // An unspecified kind writes an LWW register.
    register_write(&mut register, "lww", "one", RegisterKind::Unspecified)
        .await
        .unwrap();
    register_write(&mut register, "lww", "two", RegisterKind::Lww)
        .await
        .unwrap();
    assert_eq!(
        register_read(&mut register, "lww").await,
        (RegisterKind::Lww, vec![b"two".to_vec()])
    );

    register_write(&mut register, "mv", "x", RegisterKind::MultiValue)
        .await
        .unwrap();
    register_write(&mut register, "mv", "y", RegisterKind::MultiValue)
        .await
        .unwrap();
    let expected = (RegisterKind::MultiValue, vec![b"y".to_vec()]);
    assert_eq!(
        register_read(&mut register, "mv").await,
        expected,
        "a write supersedes what it saw"
    );

    // calm.proto: FAILED_PRECONDITION (`wrong_type`) if the key holds the other kind.
    let refused = register_write(&mut register, "mv", "z", RegisterKind::Lww)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let wrong = WrongType {
        found: ObjectKind::MultiRegister as i32,
        expected: ObjectKind::Register as i32,
    };
    assert_eq!(detail(&refused), Detail::WrongType(wrong));
}

// ---- Map ----

async fn map_update(
    client: &mut MapClient<Channel>,
    field: &str,
    update: Update,
) -> Result<(), Status> {
    let request = MapUpdateRequest {
        key: b"profile".to_vec(),
        field: field.into(),
        update: Some(update),
        ..Default::default()
    };
    client.update(request).await.map(drop)
}

#[tokio::test]
async fn a_map_updates_reads_and_removes_fields() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut map = MapClient::new(server.channel().await);
    map_update(&mut map, "name", Update::RegisterWrite(b"ada".to_vec()))
        .await
        .unwrap();
    map_update(&mut map, "visits", Update::CounterIncrement(5))
        .await
        .unwrap();
    map_update(&mut map, "visits", Update::CounterIncrement(-1))
        .await
        .unwrap();
    map_update(&mut map, "tags", Update::SetAdd(b"b".to_vec()))
        .await
        .unwrap();
    map_update(&mut map, "tags", Update::SetAdd(b"a".to_vec()))
        .await
        .unwrap();
    map_update(&mut map, "tags", Update::SetRemove(b"b".to_vec()))
        .await
        .unwrap();
    map_update(&mut map, "old", Update::RegisterWrite(b"gone".to_vec()))
        .await
        .unwrap();
    let remove = MapRemoveFieldRequest {
        key: b"profile".to_vec(),
        field: b"old".to_vec(),
        ..Default::default()
    };
    map.remove_field(remove).await.unwrap();

    let get = MapGetRequest {
        key: b"profile".to_vec(),
        ..Default::default()
    };
    let fields = map.get(get).await.unwrap().into_inner();
    let register = MapRegisterField {
        field: b"name".to_vec(),
        values: vec![b"ada".to_vec()],
    };
    assert_eq!(fields.registers, [register]);
    let counter = MapCounterField {
        field: b"visits".to_vec(),
        value: 4,
    };
    assert_eq!(fields.counters, [counter]);
    let set = MapSetField {
        field: b"tags".to_vec(),
        members: vec![b"a".to_vec()],
    };
    assert_eq!(fields.sets, [set]);
}

// ---- BoundedCounter ----

#[tokio::test]
async fn a_bounded_counter_spends_and_transfers_only_the_rights_it_holds() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut bounded = BoundedCounterClient::new(server.channel().await);
    let key = || b"seats".to_vec();
    let increment = BoundedCounterIncrementRequest {
        key: key(),
        amount: 10,
        ..Default::default()
    };
    bounded.increment(increment).await.unwrap();
    let decrement = |amount| BoundedCounterDecrementRequest {
        key: key(),
        amount,
        ..Default::default()
    };
    bounded.decrement(decrement(3)).await.unwrap();
    let transfer = |to_node_id| BoundedCounterTransferRequest {
        key: key(),
        to_node_id,
        amount: 4,
        ..Default::default()
    };
    bounded.transfer(transfer(2)).await.unwrap();

    let get = BoundedCounterGetRequest {
        key: key(),
        ..Default::default()
    };
    let read = bounded.get(get).await.unwrap().into_inner();
    assert_eq!((read.value, read.local_rights), (7, 3));
    let rights = [
        NodeRights {
            node_id: 1,
            rights: 3,
        },
        NodeRights {
            node_id: 2,
            rights: 4,
        },
    ];
    assert_eq!(read.rights, rights);

    // calm.proto: FAILED_PRECONDITION (`insufficient_rights`) if it holds fewer.
    let refused = bounded.decrement(decrement(5)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let short = InsufficientRights {
        node_id: 1,
        available: 3,
        requested: 5,
    };
    assert_eq!(detail(&refused), Detail::InsufficientRights(short));

    // calm.proto: INVALID_ARGUMENT if `to_node_id` is the receiving node.
    let to_self = bounded.transfer(transfer(1)).await.unwrap_err();
    assert_eq!(to_self.code(), Code::InvalidArgument);
}

// ---- Errors shared by every service ----

#[tokio::test]
async fn an_operation_on_another_kind_of_object_names_both_kinds() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut set = SetClient::new(server.channel().await);
    let add = SetAddRequest {
        key: b"k".to_vec(),
        element: b"e".to_vec(),
        ..Default::default()
    };
    set.add(add).await.unwrap();
    let mut counter = server.counter().await;
    let expected = Detail::WrongType(WrongType {
        found: ObjectKind::Set as i32,
        expected: ObjectKind::Counter as i32,
    });

    let write = counter.increment(increment("k", 1)).await.unwrap_err();
    assert_eq!(write.code(), Code::FailedPrecondition);
    assert_eq!(detail(&write), expected);
    // Reads run on any kind in the core; the service checks the kind.
    let read = counter.get(counter_get("k", vec![])).await.unwrap_err();
    assert_eq!(read.code(), Code::FailedPrecondition);
    assert_eq!(detail(&read), expected);
}

#[tokio::test]
async fn crdt_levels_are_served_up_to_all_and_linearizable_is_refused() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut counter = server.counter().await;
    let mut check = async |level: i32, expected: Code| {
        let request = CounterIncrementRequest {
            level,
            ..increment("levels", 1)
        };
        let code = match counter.increment(request).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        assert_eq!(code, expected, "level {level}");
    };
    check(Level::Unspecified as i32, Code::Ok).await;
    check(Level::Local as i32, Code::Ok).await;
    // One node of a keyspace with N = 3: `one` is served by it alone;
    // `quorum` and `all` lack owners, and say how many.
    check(Level::One as i32, Code::Ok).await;
    for level in [Level::Quorum, Level::All] {
        check(level as i32, Code::Unavailable).await;
    }
    let request = CounterIncrementRequest {
        level: Level::Quorum as i32,
        ..increment("levels", 1)
    };
    let refused = server.counter().await.increment(request).await.unwrap_err();
    assert_eq!(
        detail(&refused),
        Detail::QuorumUnavailable(QuorumUnavailable { needed: 2, up: 1 })
    );
    check(Level::Linearizable as i32, Code::Unimplemented).await;
    for unknown in [-1, 6, 99] {
        check(unknown, Code::InvalidArgument).await;
    }
    let read = counter.get(counter_get("levels", vec![])).await.unwrap();
    assert_eq!(read.get_ref().value, 3, "refused levels changed nothing");
}

#[tokio::test]
async fn bad_input_is_an_invalid_argument_and_changes_nothing() {
    let server = served(ReplicaBackend::new(1)).await;
    let channel = server.channel().await;
    let mut counter = CounterClient::new(channel.clone());
    let mut map = MapClient::new(channel.clone());
    let mut register = RegisterClient::new(channel.clone());
    let mut bounded = BoundedCounterClient::new(channel);

    let empty_key = counter.increment(increment("", 1)).await.unwrap_err();
    let zero_by = counter.increment(increment("k", 0)).await.unwrap_err();
    let unset = MapUpdateRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    let no_update = map.update(unset).await.unwrap_err();
    let zero_field = map_update(&mut map, "f", Update::CounterIncrement(0))
        .await
        .unwrap_err();
    let kind = RegisterSetRequest {
        key: b"k".to_vec(),
        kind: 7,
        ..Default::default()
    };
    let unknown_kind = register.set(kind).await.unwrap_err();
    let zero = BoundedCounterIncrementRequest {
        key: b"k".to_vec(),
        amount: 0,
        ..Default::default()
    };
    let zero_amount = bounded.increment(zero).await.unwrap_err();
    for refused in [
        empty_key,
        zero_by,
        no_update,
        zero_field,
        unknown_kind,
        zero_amount,
    ] {
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let read = counter.get(counter_get("k", vec![])).await.unwrap();
    assert_eq!(read.get_ref().value, 0, "the key was never created");
}

// ---- Forwarding ----

#[tokio::test]
async fn a_request_for_a_key_held_elsewhere_is_forwarded_to_a_replica() {
    let replica = served(ReplicaBackend::new(2)).await;
    let elsewhere = Elsewhere {
        replica: NodeId(2),
        replica_addr: Some(replica.addr),
    };
    let front = served(elsewhere).await;
    let mut counter = front.counter().await;

    let ack = counter.increment(increment("k", 4)).await.unwrap();
    assert_eq!(
        header(&ack, |r| r.header.as_ref()).node_id,
        2,
        "the replica answered"
    );
    let read = replica
        .counter()
        .await
        .get(counter_get("k", vec![]))
        .await
        .unwrap();
    assert_eq!(read.get_ref().value, 4, "the write landed on the replica");

    let text = front.metrics.encode();
    let forwarded = r#"calm_requests_forwarded_total{service="calm.v1.Counter",method="Increment",level="local"} 1"#;
    assert!(text.contains(forwarded), "{text}");
    let ok = r#"calm_requests_total{service="calm.v1.Counter",method="Increment",level="local",code="OK"} 1"#;
    assert!(text.contains(ok), "{text}");
}

#[tokio::test]
async fn a_forwarded_request_is_never_forwarded_again() {
    let replica = served(ReplicaBackend::new(2)).await;
    let elsewhere = Elsewhere {
        replica: NodeId(2),
        replica_addr: Some(replica.addr),
    };
    let front = served(elsewhere).await;
    let mut request = tonic::Request::new(increment("k", 4));
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, "1".parse().unwrap());

    let refused = front.counter().await.increment(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    let not_replica = NotReplica {
        replica_node_ids: vec![2],
    };
    assert_eq!(detail(&refused), Detail::NotReplica(not_replica));
    let read = replica
        .counter()
        .await
        .get(counter_get("k", vec![]))
        .await
        .unwrap();
    assert_eq!(read.get_ref().value, 0, "the replica never saw the request");
    assert!(
        !front
            .metrics
            .encode()
            .contains("calm_requests_forwarded_total{")
    );
}

#[tokio::test]
async fn an_unreachable_replica_leaves_the_original_error() {
    // A port that was bound and released: connecting to it is refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    for replica_addr in [None, Some(closed)] {
        let front = served(Elsewhere {
            replica: NodeId(2),
            replica_addr,
        })
        .await;
        let refused = front
            .counter()
            .await
            .increment(increment("k", 1))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unavailable,
            "{replica_addr:?}: {refused:?}"
        );
        let not_replica = NotReplica {
            replica_node_ids: vec![2],
        };
        assert_eq!(detail(&refused), Detail::NotReplica(not_replica));
    }
}

// ---- Cluster ----

fn member(node: u64, state: SwimState, client_port: Option<u16>) -> MemberInfo {
    MemberInfo {
        node: NodeId(node),
        peer_addr: addr(7000 + node as u16),
        client_addr: client_port.map(addr),
        state,
        incarnation: 3,
        ownership: 0.5,
    }
}

#[tokio::test]
async fn cluster_lists_members_ascending_and_reports_status() {
    let mut backend = ReplicaBackend::new(1);
    backend.members = vec![
        member(3, SwimState::Down, None),
        member(1, SwimState::Alive, Some(2379)),
    ];
    let server = served(backend).await;
    let mut cluster = ClusterClient::new(server.channel().await);

    let members = cluster
        .members(MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.header.map(|h| h.node_id), Some(1));
    let listed: Vec<_> = members
        .members
        .iter()
        .map(|m| (m.node_id, m.address.as_str(), m.state()))
        .collect();
    let expected = [
        (1, "127.0.0.1:2379", MemberState::Alive),
        (3, "127.0.0.1:7003", MemberState::Dead),
    ];
    assert_eq!(
        listed, expected,
        "client address if known, else the peer address"
    );
    assert_eq!(
        (
            members.members[0].incarnation,
            members.members[0].ownership_fraction
        ),
        (3, 0.5)
    );

    let status = cluster.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (status.server_version.as_str(), status.cluster_name.as_str()),
        ("9.8.7", "test-cluster")
    );
    assert_eq!(
        (status.members_total, status.members_alive, status.keys),
        (2, 1, 42)
    );
    assert_eq!(
        (status.key_bytes_max, status.payload_bytes_max),
        (1024, 65536)
    );
}

// ---- Metrics ----

#[tokio::test]
async fn every_request_is_counted_by_code_and_timed() {
    let server = served(ReplicaBackend::new(1)).await;
    let mut counter = server.counter().await;
    counter.increment(increment("k", 1)).await.unwrap();
    counter.increment(increment("k", 0)).await.unwrap_err();
    ClusterClient::new(server.channel().await)
        .members(MembersRequest {})
        .await
        .unwrap();

    let text = server.metrics.encode();
    for line in [
        r#"calm_requests_total{service="calm.v1.Counter",method="Increment",level="local",code="OK"} 1"#,
        r#"calm_requests_total{service="calm.v1.Counter",method="Increment",level="local",code="INVALID_ARGUMENT"} 1"#,
        r#"calm_requests_total{service="calm.v1.Cluster",method="Members",level="none",code="OK"} 1"#,
        r#"calm_request_duration_seconds_count{service="calm.v1.Counter",method="Increment",level="local"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}
