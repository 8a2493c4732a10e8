//! Checks the generated `calm.v1` code: the wire format of representative
//! messages, and the generated Counter service called end to end over a real
//! loopback connection, including an error status with its typed detail.

use std::collections::HashMap;
use std::sync::Mutex;

use calm_proto::calm::v1::counter_client::CounterClient;
use calm_proto::calm::v1::counter_server::{Counter, CounterServer};
use calm_proto::calm::v1::{
    BoundedCounterGetResponse, CounterGetRequest, CounterGetResponse, CounterIncrementRequest,
    CounterIncrementResponse, ErrorDetail, InsufficientRights, Level, MapUpdateRequest, Member,
    MemberState, MembersResponse, NodeRights, ObjectKind, RegisterGetResponse, RegisterKind,
    ResponseHeader, WrongType, error_detail, map_update_request,
};
use calm_proto::google::rpc;
use prost::Message;
use tonic::{Code, Request, Response, Status};

/// The type URL a packed `ErrorDetail` carries, as the `.proto` documents.
const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/calm.v1.ErrorDetail";

/// Encodes `message`, decodes it back, and checks nothing was lost.
fn check_round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: M) {
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
