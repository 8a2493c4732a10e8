//! The API's error table: which gRPC status each core error becomes, and
//! the typed `calm.v1.ErrorDetail` packed in a `google.rpc.Status` inside
//! the status details, as `calm.proto` documents them.

use calm_proto::calm::v1 as pb;
use calm_proto::calm::v1::error_detail::Detail;
use calm_proto::google::rpc;
use calm_replica::coordinator::CoordinatorError;
use calm_replica::kv::KvError;
use calm_replica::{ObjectError, ObjectKind, ReplicaError, Value};
use calm_types::NodeId;
use prost::Message;
use tonic::codegen::Bytes;
use tonic::{Code, Status};

use crate::backend::{BackendError, KvRefusal};

/// The type URL of an `ErrorDetail` packed in a `google.protobuf.Any`.
pub(crate) const DETAIL_TYPE_URL: &str = "type.googleapis.com/calm.v1.ErrorDetail";

/// The status a failed backend call returns to the client; `node` is the
/// answering node, named in an `InsufficientRights` detail.
pub(crate) fn status_of(error: BackendError, node: NodeId) -> Status {
    let message = error.to_string();
    let error = match error {
        BackendError::Unavailable(_) => return Status::unavailable(message),
        BackendError::Kv(refusal) => return kv_status(refusal, message),
        BackendError::Replica(error) => error,
    };
    match error {
        ReplicaError::KeyTooLarge { .. }
        | ReplicaError::PayloadTooLarge { .. }
        | ReplicaError::BadToken(_)
        | ReplicaError::TokenForOtherKey
        | ReplicaError::Object(ObjectError::TransferToSelf) => Status::invalid_argument(message),
        ReplicaError::Object(ObjectError::WrongType { found, expected }) => {
            wrong_type(found, expected)
        }
        ReplicaError::Object(ObjectError::InsufficientRights {
            available,
            requested,
        }) => with_detail(
            Code::FailedPrecondition,
            message,
            Detail::InsufficientRights(pb::InsufficientRights {
                node_id: node.0,
                available,
                requested,
            }),
        ),
        ReplicaError::Object(ObjectError::Overflow) => Status::out_of_range(message),
        ReplicaError::ObjectTooLarge { .. } | ReplicaError::TooManyKeys { .. } => {
            Status::resource_exhausted(message)
        }
        ReplicaError::NotReplica { replicas } => with_detail(
            Code::Unavailable,
            message,
            Detail::NotReplica(pb::NotReplica {
                replica_node_ids: node_ids(&replicas),
            }),
        ),
        ReplicaError::CatchUpTimeout { replicas } => with_detail(
            Code::Unavailable,
            message,
            Detail::CatchUp(pb::CatchUp {
                replica_node_ids: node_ids(&replicas),
            }),
        ),
        ReplicaError::Unavailable { needed, up } => quorum_unavailable(message, needed, up),
        ReplicaError::WriteInDoubt { acks, needed } => write_in_doubt(message, acks, needed),
        ReplicaError::Overloaded { .. }
        | ReplicaError::Poisoned
        | ReplicaError::ReadTimeout { .. } => Status::unavailable(message),
        ReplicaError::Storage(_) => Status::internal(message),
    }
}

/// The status of a refused or failed request of the `one`/`quorum`/`all`
/// levels, as the `Kv` service's error table says.
fn kv_status(refusal: KvRefusal, message: String) -> Status {
    match refusal {
        KvRefusal::Object(KvError::TooManySiblings {
            siblings,
            siblings_max,
        }) => with_detail(
            Code::FailedPrecondition,
            message,
            Detail::TooManySiblings(pb::TooManySiblings {
                siblings: saturate(siblings),
                siblings_max: saturate(siblings_max),
            }),
        ),
        KvRefusal::Object(_) | KvRefusal::Coordinator(CoordinatorError::Quorum(_)) => {
            Status::invalid_argument(message)
        }
        KvRefusal::Coordinator(CoordinatorError::Unavailable { needed, up }) => {
            quorum_unavailable(message, needed, up)
        }
        KvRefusal::Coordinator(CoordinatorError::WriteInDoubt { acks, needed }) => {
            write_in_doubt(message, acks, needed)
        }
        KvRefusal::Coordinator(
            CoordinatorError::Overloaded { .. }
            | CoordinatorError::ReadTimeout { .. }
            | CoordinatorError::ReadFailed { .. },
        ) => Status::unavailable(message),
        KvRefusal::NotOwner { owners } => with_detail(
            Code::Unavailable,
            message,
            Detail::NotReplica(pb::NotReplica {
                replica_node_ids: node_ids(&owners),
            }),
        ),
        // Request ids are the node's own and unique: a duplicate is a bug.
        KvRefusal::Coordinator(CoordinatorError::DuplicateRequest) | KvRefusal::Storage(_) => {
            Status::internal(message)
        }
    }
}

/// UNAVAILABLE with `quorum_unavailable`: `up` replicas, `needed` needed;
/// nothing changed.
fn quorum_unavailable(message: String, needed: usize, up: usize) -> Status {
    let detail = pb::QuorumUnavailable {
        needed: saturate(needed),
        up: saturate(up),
    };
    with_detail(
        Code::Unavailable,
        message,
        Detail::QuorumUnavailable(detail),
    )
}

/// DEADLINE_EXCEEDED with `write_in_doubt`: `acks` of the `needed` acks.
fn write_in_doubt(message: String, acks: usize, needed: usize) -> Status {
    let detail = pb::WriteInDoubt {
        acks: saturate(acks),
        needed: saturate(needed),
    };
    with_detail(
        Code::DeadlineExceeded,
        message,
        Detail::WriteInDoubt(detail),
    )
}

fn saturate(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// FAILED_PRECONDITION with a `WrongType` detail: the key holds a `found`,
/// the request needs an `expected`.
pub(crate) fn wrong_type(found: ObjectKind, expected: ObjectKind) -> Status {
    with_detail(
        Code::FailedPrecondition,
        format!("the key holds a {found:?}, the operation needs a {expected:?}"),
        Detail::WrongType(pb::WrongType {
            found: object_kind(found) as i32,
            expected: object_kind(expected) as i32,
        }),
    )
}

/// The status for a read whose value is of another kind than the service
/// reads: reads run on any kind, so the services check it themselves.
pub(crate) fn wrong_value(value: &Value, expected: ObjectKind) -> Status {
    match value_kind(value) {
        Some(found) => wrong_type(found, expected),
        // Absent keys read as each service's empty value, never reach here.
        None => Status::internal("an absent key was reported as a wrong type"),
    }
}

/// OUT_OF_RANGE for a value that does not fit the field's 64-bit type.
pub(crate) fn out_of_range(value: i128) -> Status {
    Status::out_of_range(format!("the value {value} does not fit a 64-bit field"))
}

/// A status whose details carry `detail` the way the error table says: an
/// `ErrorDetail` packed in an `Any` inside a `google.rpc.Status`.
fn with_detail(code: Code, message: String, detail: Detail) -> Status {
    let detail = pb::ErrorDetail {
        detail: Some(detail),
    };
    let envelope = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: DETAIL_TYPE_URL.to_owned(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, Bytes::from(envelope.encode_to_vec()))
}

fn node_ids(nodes: &[NodeId]) -> Vec<u64> {
    nodes.iter().map(|node| node.0).collect()
}

/// The API's name for a core object kind.
fn object_kind(kind: ObjectKind) -> pb::ObjectKind {
    match kind {
        ObjectKind::Counter => pb::ObjectKind::Counter,
        ObjectKind::Set => pb::ObjectKind::Set,
        ObjectKind::Register => pb::ObjectKind::Register,
        ObjectKind::MultiRegister => pb::ObjectKind::MultiRegister,
        ObjectKind::Map => pb::ObjectKind::Map,
        ObjectKind::BoundedCounter => pb::ObjectKind::BoundedCounter,
    }
}

/// The kind of object a read value came from; `None` for an absent key.
fn value_kind(value: &Value) -> Option<ObjectKind> {
    Some(match value {
        Value::Absent => return None,
        Value::Counter(_) => ObjectKind::Counter,
        Value::Set(_) => ObjectKind::Set,
        Value::Register(_) => ObjectKind::Register,
        Value::MultiRegister(_) => ObjectKind::MultiRegister,
        Value::Map(_) => ObjectKind::Map,
        Value::BoundedCounter { .. } => ObjectKind::BoundedCounter,
    })
}

/// The gRPC name of `code`, as the `code` label of the request metrics.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
