//! Checks the generated code: the wire format of representative `calm.v1`
//! messages, the generated Counter service called end to end over a real
//! loopback connection, including an error status with its typed detail,
//! and etcd's v3 API: etcd's wire encoding, etcd's gRPC paths, and an etcd
//! service sharing one port with a `calm.v1` service.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;

use calm_proto::calm::v1::counter_client::CounterClient;
use calm_proto::calm::v1::counter_server::{Counter, CounterServer};
use calm_proto::calm::v1::{
    BoundedCounterGetResponse, CounterGetRequest, CounterGetResponse, CounterIncrementRequest,
    CounterIncrementResponse, ErrorDetail, InsufficientRights, Level, MapUpdateRequest, Member,
    MemberState, MembersResponse, NodeRights, ObjectKind, RegisterGetResponse, RegisterKind,
    ResponseHeader, WrongType, error_detail, map_update_request,
};
use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::kv_server::{Kv, KvServer};
use calm_proto::etcd::etcdserverpb::{
    self, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest,
    TxnResponse,
};
use calm_proto::etcd::mvccpb::KeyValue;
use calm_proto::etcd::{v3electionpb, v3lockpb};
use calm_proto::google::rpc;
use prost::Message;
use tonic::codegen::BoxStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// The type URL a packed `ErrorDetail` carries, as the `.proto` documents.
const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/calm.v1.ErrorDetail";

/// Encodes `message`, decodes it back, and checks nothing was lost.
fn check_round_trip<M: Message + Default + PartialEq + Debug>(message: M) {
    let bytes = message.encode_to_vec();
    let decoded = M::decode(bytes.as_slice()).expect("bytes this test encoded decode");
    assert_eq!(decoded, message);
}

fn header(node_id: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        causal_token: vec![0xca, 0x11],
        node_id,
        level: Level::Local.into(),
    })
}

#[test]
fn representative_messages_survive_an_encode_decode_round_trip() {
    check_round_trip(MapUpdateRequest {
        key: b"cart".to_vec(),
        level: Level::Quorum.into(),
        causal_token: vec![1, 2, 3],
        field: b"items".to_vec(),
        update: Some(map_update_request::Update::CounterIncrement(-7)),
    });
    // An empty byte string in a oneof is still a set oneof (proto3 presence).
    check_round_trip(MapUpdateRequest {
        update: Some(map_update_request::Update::SetAdd(Vec::new())),
        ..MapUpdateRequest::default()
    });
    check_round_trip(RegisterGetResponse {
        header: header(2),
        kind: RegisterKind::MultiValue.into(),
        values: vec![b"a".to_vec(), b"b".to_vec()],
    });
    check_round_trip(BoundedCounterGetResponse {
        header: header(3),
        value: 10,
        local_rights: 4,
        rights: vec![
            NodeRights {
                node_id: 3,
                rights: 4,
            },
            NodeRights {
                node_id: 5,
                rights: 6,
            },
        ],
    });
    check_round_trip(MembersResponse {
        header: header(1),
        members: vec![Member {
            node_id: 1,
            address: "127.0.0.1:7000".to_owned(),
            state: MemberState::Suspect.into(),
            incarnation: 9,
            ownership_fraction: 0.25,
        }],
    });
}

#[test]
fn common_request_fields_keep_their_pinned_wire_numbers() {
    // The API contract: key = 1, level = 2, causal_token = 3 in every data
    // request, and counter amounts are zigzag-encoded sint64.
    let request = CounterIncrementRequest {
        key: b"k".to_vec(),
        level: Level::Local.into(),
        causal_token: vec![0xff],
        by: -3,
    };
    let expected = [
        0x0a, 1, b'k', // field 1, length-delimited
        0x10, 1, // field 2, varint: LEVEL_LOCAL
        0x1a, 1, 0xff, // field 3, length-delimited
        0x20, 5, // field 4, varint: zigzag(-3) = 5
    ];
    assert_eq!(request.encode_to_vec(), expected);
}

#[test]
fn an_unknown_level_decodes_and_is_left_for_the_server_to_refuse() {
    // A newer client may send a level this build does not know; prost keeps
    // the raw number, so the server can answer INVALID_ARGUMENT instead of
    // silently serving the default level.
    let bytes = CounterGetRequest {
        level: 99,
        ..CounterGetRequest::default()
    }
    .encode_to_vec();
    let decoded = CounterGetRequest::decode(bytes.as_slice()).expect("a valid message");
    assert_eq!(decoded.level, 99);
    assert!(Level::try_from(decoded.level).is_err());
}

#[test]
fn an_error_detail_round_trips_inside_a_google_rpc_status() {
    let detail = ErrorDetail {
        detail: Some(error_detail::Detail::InsufficientRights(
            InsufficientRights {
                node_id: 4,
                available: 2,
                requested: 5,
            },
        )),
    };
    let status = packed_status(Code::FailedPrecondition, "too few rights", &detail);
    check_round_trip(status.clone());
    assert_eq!(unpacked_detail(&status.encode_to_vec()), detail);
}

/// A `google.rpc.Status` holding `detail` packed in an `Any`, as the
/// `.proto` says servers send it.
fn packed_status(code: Code, message: &str, detail: &ErrorDetail) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: vec![prost_types::Any {
            type_url: ERROR_DETAIL_TYPE_URL.to_owned(),
            value: detail.encode_to_vec(),
        }],
    }
}

/// The one `ErrorDetail` in a status's binary details.
fn unpacked_detail(status_details: &[u8]) -> ErrorDetail {
    let status = rpc::Status::decode(status_details).expect("details hold a google.rpc.Status");
    let [any] = status.details.as_slice() else {
        panic!("expected exactly one detail, got {:?}", status.details);
    };
    assert_eq!(any.type_url, ERROR_DETAIL_TYPE_URL);
    ErrorDetail::decode(any.value.as_slice()).expect("the Any holds an ErrorDetail")
}

/// A toy `Counter` service: counters in a map, and one key that pretends
/// to hold a set, so the wrong-type error path can be exercised.
struct ToyCounters {
    node_id: u64,
    // A std Mutex, not a tokio one: nothing awaits while it is held.
    values: Mutex<HashMap<Vec<u8>, i64>>,
}

/// The key the toy service treats as holding a set.
const SET_KEY: &[u8] = b"a-set";

impl ToyCounters {
    fn response_header(&self) -> Option<ResponseHeader> {
        header(self.node_id)
    }
}

#[tonic::async_trait]
impl Counter for ToyCounters {
    async fn increment(
        &self,
        request: Request<CounterIncrementRequest>,
    ) -> Result<Response<CounterIncrementResponse>, Status> {
        let request = request.into_inner();
        if request.by == 0 {
            return Err(Status::invalid_argument("a zero increment"));
        }
        if request.key == SET_KEY {
            let detail = ErrorDetail {
                detail: Some(error_detail::Detail::WrongType(WrongType {
                    found: ObjectKind::Set.into(),
                    expected: ObjectKind::Counter.into(),
                })),
            };
            let message = "the key holds a set";
            let status = packed_status(Code::FailedPrecondition, message, &detail);
            let details = status.encode_to_vec().into();
            return Err(Status::with_details(
                Code::FailedPrecondition,
                message,
                details,
            ));
        }
        let mut values = self.values.lock().expect("no test thread panics");
        let value = values.entry(request.key).or_insert(0);
        *value = value
            .checked_add(request.by)
            .ok_or_else(|| Status::out_of_range("the counter would overflow"))?;
        Ok(Response::new(CounterIncrementResponse {
            header: self.response_header(),
        }))
    }

    async fn get(
        &self,
        request: Request<CounterGetRequest>,
    ) -> Result<Response<CounterGetResponse>, Status> {
        let request = request.into_inner();
        let values = self.values.lock().expect("no test thread panics");
        Ok(Response::new(CounterGetResponse {
            header: self.response_header(),
            value: values.get(&request.key).copied().unwrap_or(0),
        }))
    }
}

fn increment(key: &[u8], by: i64) -> CounterIncrementRequest {
    CounterIncrementRequest {
        key: key.to_vec(),
        by,
        ..CounterIncrementRequest::default()
    }
}

#[tokio::test]
async fn generated_counter_service_is_callable_end_to_end_and_errors_keep_their_code() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    let service = CounterServer::new(ToyCounters {
        node_id: 7,
        values: Mutex::new(HashMap::new()),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            service,
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                // Either a send or the sender's drop ends the server.
                let _ = stopped.await;
            },
        ),
    );

    let mut client = CounterClient::connect(format!("http://{address}"))
        .await
        .expect("the server is listening");
    for by in [5, -2] {
        let reply = client.increment(increment(b"hits", by)).await;
        let header = reply.expect("a valid increment").into_inner().header;
        assert_eq!(header.map(|h| h.node_id), Some(7));
    }
    let read = client
        .get(CounterGetRequest {
            key: b"hits".to_vec(),
            ..CounterGetRequest::default()
        })
        .await
        .expect("a valid read")
        .into_inner();
    assert_eq!(read.value, 3);

    let zero = client.increment(increment(b"hits", 0)).await;
    assert_eq!(
        zero.expect_err("zero is refused").code(),
        Code::InvalidArgument
    );

    let wrong = client
        .increment(increment(SET_KEY, 1))
        .await
        .expect_err("a set is not a counter");
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert_eq!(wrong.message(), "the key holds a set");
    let Some(error_detail::Detail::WrongType(kinds)) = unpacked_detail(wrong.details()).detail
    else {
        panic!("expected a wrong-type detail");
    };
    assert_eq!(kinds.found(), ObjectKind::Set);
    assert_eq!(kinds.expected(), ObjectKind::Counter);

    stop.send(()).expect("the server is still running");
    server
        .await
        .expect("the server task did not panic")
        .expect("the server shut down cleanly");
}

/// Checks that `message` encodes to exactly `expected`, etcd's encoding
/// worked out by hand from the field numbers in etcd's `.proto` files, and
/// that etcd's bytes decode back to `message`.
fn check_etcd_wire<M: Message + Default + PartialEq + Debug>(message: M, expected: &[u8]) {
    assert_eq!(message.encode_to_vec(), expected, "{message:?}");
    let decoded = M::decode(expected).expect("etcd's encoding decodes");
    assert_eq!(decoded, message);
}

#[test]
fn etcd_messages_keep_etcds_wire_encoding() {
    // rpc.proto, RangeRequest: key = 1, range_end = 2, limit = 3 and
    // revision = 4; this is `etcdctl get foo --prefix --limit 10 --rev 5`.
    check_etcd_wire(
        RangeRequest {
            key: b"foo".to_vec(),
            range_end: b"fop".to_vec(),
            limit: 10,
            revision: 5,
            ..RangeRequest::default()
        },
        &[
            0x0a, 3, b'f', b'o', b'o', // field 1, length-delimited
            0x12, 3, b'f', b'o', b'p', // field 2, length-delimited
            0x18, 10, // field 3, varint
            0x20, 5, // field 4, varint
        ],
    );
    // rpc.proto, PutRequest: key = 1, value = 2, lease = 3 (absent: zero)
    // and prev_kv = 4.
    check_etcd_wire(
        PutRequest {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            prev_kv: true,
            ..PutRequest::default()
        },
        &[
            0x0a, 3, b'f', b'o', b'o', // field 1, length-delimited
            0x12, 3, b'b', b'a', b'r', // field 2, length-delimited
            0x20, 1, // field 4, varint: true
        ],
    );
    // A reply crossing packages: RangeResponse's header = 1
    // (ResponseHeader's revision = 3), kvs = 2 (mvccpb.KeyValue's key = 1,
    // mod_revision = 3, value = 5) and count = 4.
    check_etcd_wire(
        RangeResponse {
            header: Some(etcdserverpb::ResponseHeader {
                revision: 5,
                ..etcdserverpb::ResponseHeader::default()
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                mod_revision: 5,
                value: b"bar".to_vec(),
                ..KeyValue::default()
            }],
            more: false,
            count: 1,
        },
        &[
            0x0a, 2, 0x18, 5, // field 1: a header holding revision 5
            0x12, 12, // field 2: one key-value pair of 12 bytes
            0x0a, 3, b'f', b'o', b'o', // its key
            0x18, 5, // its mod_revision
            0x2a, 3, b'b', b'a', b'r', // its value
            0x20, 1, // field 4, varint
        ],
    );
}

#[test]
fn etcd_services_keep_etcds_grpc_service_names() {
    // A gRPC path is "/{service name}/{method}", and etcd's clients call
    // "/etcdserverpb.KV/Range" and its siblings, so the names must be
    // etcd's package-qualified ones, case included.
    let names = [
        (<KvServer<StubKv> as NamedService>::NAME, "etcdserverpb.KV"),
        (
            etcdserverpb::watch_server::SERVICE_NAME,
            "etcdserverpb.Watch",
        ),
        (
            etcdserverpb::lease_server::SERVICE_NAME,
            "etcdserverpb.Lease",
        ),
        (
            etcdserverpb::cluster_server::SERVICE_NAME,
            "etcdserverpb.Cluster",
        ),
        (
            etcdserverpb::maintenance_server::SERVICE_NAME,
            "etcdserverpb.Maintenance",
        ),
        (etcdserverpb::auth_server::SERVICE_NAME, "etcdserverpb.Auth"),
        (v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock"),
        (
            v3electionpb::election_server::SERVICE_NAME,
            "v3electionpb.Election",
        ),
    ];
    for (generated, etcds) in names {
        assert_eq!(generated, etcds);
    }
}

/// The revision in the header of every answer the stub etcd service gives.
const STUB_REVISION: i64 = 42;

/// A stand-in etcd KV service: a range answers with the requested key at
/// [`STUB_REVISION`], a put with the previous pair if asked for it, and the
/// other methods are unimplemented. Every answer echoes the request, so a
/// test sees that the request arrived intact.
struct StubKv;

fn stub_header() -> Option<etcdserverpb::ResponseHeader> {
    Some(etcdserverpb::ResponseHeader {
        revision: STUB_REVISION,
        ..etcdserverpb::ResponseHeader::default()
    })
}

#[tonic::async_trait]
impl Kv for StubKv {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(RangeResponse {
            header: stub_header(),
            kvs: vec![KeyValue {
                key: request.key,
                mod_revision: STUB_REVISION,
                value: b"stub".to_vec(),
                ..KeyValue::default()
            }],
            more: false,
            count: 1,
        }))
    }

    type RangeStreamStream = BoxStream<RangeStreamResponse>;

    async fn range_stream(
        &self,
        _request: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented("the stub has no streaming range"))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        let prev_kv = request.prev_kv.then(|| KeyValue {
            key: request.key,
            value: b"previous".to_vec(),
            ..KeyValue::default()
        });
        Ok(Response::new(PutResponse {
            header: stub_header(),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        _request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("the stub does not delete"))
    }

    async fn txn(&self, _request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("the stub has no transactions"))
    }

    async fn compact(
        &self,
        _request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("the stub does not compact"))
    }
}

/// Calls `path` with a range request through a bare gRPC client: the path
/// is spelled out here, not taken from the generated client, so a path the
/// generated client and server agreed on but etcd does not use would fail.
async fn range_at_path(
    channel: Channel,
    path: &'static str,
) -> Result<Response<RangeResponse>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let codec = tonic_prost::ProstCodec::<RangeRequest, RangeResponse>::default();
    let request = RangeRequest {
        key: b"by-path".to_vec(),
        ..RangeRequest::default()
    };
    grpc.unary(
        Request::new(request),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
}

#[tokio::test]
async fn etcd_and_calm_services_share_one_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    // One router, one listener: the port a node would give clients.
    let routes = Routes::new(KvServer::new(StubKv)).add_service(CounterServer::new(ToyCounters {
        node_id: 7,
        values: Mutex::new(HashMap::new()),
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    // Either a send or the sender's drop ends the server.
                    let _ = stopped.await;
                },
            ),
    );
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("a well-formed address")
        .connect()
        .await
        .expect("the server is listening");

    let mut kv = KvClient::new(channel.clone());
    let range = kv
        .range(RangeRequest {
            key: b"foo".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect("the stub answers a range")
        .into_inner();
    assert_eq!(range.header.map(|h| h.revision), Some(STUB_REVISION));
    let keys: Vec<&[u8]> = range.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [b"foo".as_slice()]);
    let put = kv
        .put(PutRequest {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            prev_kv: true,
            ..PutRequest::default()
        })
        .await
        .expect("the stub answers a put")
        .into_inner();
    assert_eq!(put.prev_kv.map(|kv| kv.key), Some(b"foo".to_vec()));
    let txn = kv.txn(TxnRequest::default()).await;
    assert_eq!(
        txn.expect_err("no transactions").code(),
        Code::Unimplemented
    );

    let mut counters = CounterClient::new(channel.clone());
    let increment = counters.increment(increment(b"hits", 2)).await;
    let header = increment.expect("a valid increment").into_inner().header;
    assert_eq!(header.map(|h| h.node_id), Some(7));

    // etcd's literal path reaches the etcd service; the same name in
    // another case does not, since gRPC paths are case-sensitive.
    let by_path = range_at_path(channel.clone(), "/etcdserverpb.KV/Range").await;
    let by_path = by_path.expect("etcd's path is served").into_inner();
    let keys: Vec<Vec<u8>> = by_path.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, [b"by-path".to_vec()]);
    let miscased = range_at_path(channel, "/etcdserverpb.Kv/Range").await;
    assert_eq!(
        miscased.expect_err("no such service").code(),
        Code::Unimplemented
    );

    stop.send(()).expect("the server is still running");
    server
        .await
        .expect("the server task did not panic")
        .expect("the server shut down cleanly");
}
