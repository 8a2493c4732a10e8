//! The client's errors: [`ClientError`], and [`ErrorDetail`], the plain Rust
//! form of the typed detail a server packs into a failed call's status.

use std::fmt;
use std::time::Duration;

use calm_proto::calm::v1 as pb;
use calm_proto::google::rpc;
use prost::Message;
use tonic::Code;

use crate::types::ObjectKind;

/// The type URL of a packed `calm.v1.ErrorDetail`; only its suffix is
/// checked, as the `Any` convention allows any host before the last `/`.
const ERROR_DETAIL_TYPE_NAME: &str = "calm.v1.ErrorDetail";

/// Why a call, or building a client, failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// [`crate::Client::connect`] was given no endpoint. Nothing was built.
    #[error("no endpoints given")]
    NoEndpoints,
    /// An endpoint is not `host:port`. Nothing was built.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A [`crate::ClientConfig`] bound is out of range. Nothing was built.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(&'static str),
    /// The client was built outside a tokio runtime, which its channels
    /// need for their background connection tasks. Nothing was built.
    #[error("a calm client must be created inside a tokio runtime")]
    NoRuntime,
    /// A server answered with an error status, or no endpoint could be
    /// reached (then this is the last endpoint's error). The status code
    /// says whether anything changed; see the error table of `calm.proto`
    /// and [`ClientError::is_retryable`].
    #[error("{message}{} [{} from {endpoint}]", DetailSuffix(detail.as_ref()), code_name(*code))]
    Status {
        /// The endpoint that answered (or could not be reached).
        endpoint: String,
        /// The gRPC status code.
        code: Code,
        /// The server's (or the transport's) message, for humans.
        message: String,
        /// The typed detail, if the status carried one.
        detail: Option<ErrorDetail>,
    },
    /// No reply came within the call's timeout. A write may or may not
    /// have been applied.
    #[error("no reply from {endpoint} within {timeout:?} [DEADLINE_EXCEEDED]")]
    Timeout {
        /// The endpoint the call was waiting on.
        endpoint: String,
        /// The call's timeout.
        timeout: Duration,
    },
    /// A server's reply broke the API contract (a missing header); the
    /// operation itself succeeded, so a write was applied.
    #[error("invalid reply from {endpoint}: {reason}")]
    InvalidReply {
        /// The endpoint that answered.
        endpoint: String,
        /// What was wrong with the reply.
        reason: &'static str,
    },
}

impl ClientError {
    /// The gRPC status code of the failure. Errors raised by the client
    /// itself map to the code a server would use: `INVALID_ARGUMENT` for bad
    /// endpoints or configuration, `DEADLINE_EXCEEDED` for a timeout,
    /// `FAILED_PRECONDITION` outside a runtime, `INTERNAL` for a bad reply.
    pub fn code(&self) -> Code {
        match self {
            ClientError::NoEndpoints
            | ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidConfig(_) => Code::InvalidArgument,
            ClientError::NoRuntime => Code::FailedPrecondition,
            ClientError::Status { code, .. } => *code,
            ClientError::Timeout { .. } => Code::DeadlineExceeded,
            ClientError::InvalidReply { .. } => Code::Internal,
        }
    }

    /// The typed detail the server attached, if any.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            ClientError::Status { detail, .. } => detail.as_ref(),
            _ => None,
        }
    }

    /// Whether the same request may simply be sent again: the failure
    /// changed nothing and may pass (`UNAVAILABLE`: the node is down,
    /// overloaded, not a replica, or still catching up to the token).
    ///
    /// Timeouts and `INTERNAL` errors are not retryable in this sense: a
    /// write may have been applied, so retrying an increment could count it
    /// twice; see [`ClientError::is_in_doubt`].
    pub fn is_retryable(&self) -> bool {
        self.code() == Code::Unavailable
    }

    /// Whether a write may or may not have been applied: the call timed
    /// out, the connection broke mid-call, or the server's storage failed.
    pub fn is_in_doubt(&self) -> bool {
        matches!(
            self.code(),
            Code::DeadlineExceeded | Code::Internal | Code::Unknown | Code::Cancelled
        )
    }

    /// Builds the error for `status`, received from (or produced while
    /// reaching) `endpoint`.
    pub(crate) fn from_status(endpoint: &str, status: &tonic::Status) -> ClientError {
        ClientError::Status {
            endpoint: endpoint.to_owned(),
            code: status.code(),
            message: status_message(status),
            detail: decode_detail(status.details()),
        }
    }
}

/// A status's message, followed by the causes of a locally raised transport
/// error ("tcp connect error: Connection refused"), which tonic keeps only
/// in the source chain.
fn status_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        source = cause.source();
    }
    if message.is_empty() {
        message = format!("{:?}", status.code());
    }
    message
}

/// Decodes the `ErrorDetail` packed in a status's binary details. Anything
/// unexpected (no details, another detail type, undecodable bytes) reads as
/// no detail: the code and message still describe the failure.
pub(crate) fn decode_detail(details: &[u8]) -> Option<ErrorDetail> {
    if details.is_empty() {
        return None;
    }
    let status = rpc::Status::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|any| any.type_url.rsplit('/').next() == Some(ERROR_DETAIL_TYPE_NAME))?;
    let detail = pb::ErrorDetail::decode(any.value.as_slice()).ok()?;
    Some(ErrorDetail::from_proto(detail.detail?))
}

/// The typed reason behind a failed call, as listed in `calm.proto`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorDetail {
    /// `FAILED_PRECONDITION`: the key holds another kind of object.
    WrongType {
        /// The kind the key holds.
        found: ObjectKind,
        /// The kind the operation needs.
        expected: ObjectKind,
    },
    /// `FAILED_PRECONDITION`: a bounded counter lacks rights at the node
    /// that received the request. Retry after transferring at least
    /// `requested - available` rights to `node_id`, or at a node that holds
    /// enough.
    InsufficientRights {
        /// The node that refused.
        node_id: u64,
        /// The rights it holds.
        available: u64,
        /// The rights the operation needs.
        requested: u64,
    },
    /// `UNAVAILABLE`: the node does not replicate the key.
    NotReplica {
        /// The key's live replicas, in preference order.
        replica_node_ids: Vec<u64>,
    },
    /// `UNAVAILABLE`: the node had not seen the request's causal token by
    /// its catch-up deadline.
    CatchUp {
        /// The key's other live replicas, which may have seen the token.
        replica_node_ids: Vec<u64>,
    },
    /// `FAILED_PRECONDITION`: a `Kv` write would leave more siblings than
    /// the bound; read, then write with the read's context.
    TooManySiblings {
        /// Siblings the write would have left.
        siblings: u32,
        /// The bound.
        siblings_max: u32,
    },
    /// `UNAVAILABLE`: fewer of the key's replicas are up than the request
    /// needs. Nothing changed.
    QuorumUnavailable {
        /// R or W.
        needed: u32,
        /// Usable replicas up.
        up: u32,
    },
    /// `DEADLINE_EXCEEDED`: a `Kv` write got fewer than W acks in time;
    /// some replicas hold it.
    WriteInDoubt {
        /// Acks received.
        acks: u32,
        /// W.
        needed: u32,
    },
}

impl ErrorDetail {
    fn from_proto(detail: pb::error_detail::Detail) -> ErrorDetail {
        use pb::error_detail::Detail;
        match detail {
            Detail::WrongType(kinds) => ErrorDetail::WrongType {
                found: ObjectKind::from_proto(kinds.found),
                expected: ObjectKind::from_proto(kinds.expected),
            },
            Detail::InsufficientRights(rights) => ErrorDetail::InsufficientRights {
                node_id: rights.node_id,
                available: rights.available,
                requested: rights.requested,
            },
            Detail::NotReplica(replicas) => ErrorDetail::NotReplica {
                replica_node_ids: replicas.replica_node_ids,
            },
            Detail::CatchUp(replicas) => ErrorDetail::CatchUp {
                replica_node_ids: replicas.replica_node_ids,
            },
            Detail::TooManySiblings(bound) => ErrorDetail::TooManySiblings {
                siblings: bound.siblings,
                siblings_max: bound.siblings_max,
            },
            Detail::QuorumUnavailable(quorum) => ErrorDetail::QuorumUnavailable {
                needed: quorum.needed,
                up: quorum.up,
            },
            Detail::WriteInDoubt(acks) => ErrorDetail::WriteInDoubt {
                acks: acks.acks,
                needed: acks.needed,
            },
        }
    }
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorDetail::WrongType { found, expected } => {
                write!(f, "the key holds {found}, the operation needs {expected}")
            }
            ErrorDetail::InsufficientRights {
                node_id,
                available,
                requested,
            } => write!(
                f,
                "needs {requested} rights, node {node_id} holds {available}"
            ),
            ErrorDetail::NotReplica { replica_node_ids } => {
                write!(f, "not a replica; replicas: {}", NodeList(replica_node_ids))
            }
            ErrorDetail::CatchUp { replica_node_ids } => write!(
                f,
                "not caught up to the causal token; other replicas: {}",
                NodeList(replica_node_ids)
            ),
            ErrorDetail::TooManySiblings {
                siblings,
                siblings_max,
            } => write!(
                f,
                "{siblings} siblings would exceed the bound of {siblings_max}; \
                 write with a read's context to resolve them"
            ),
            ErrorDetail::QuorumUnavailable { needed, up } => {
                write!(f, "{up} usable replicas are up, {needed} needed")
            }
            ErrorDetail::WriteInDoubt { acks, needed } => {
                write!(f, "write in doubt: {acks} of {needed} acks")
            }
        }
    }
}

/// Renders node ids as `1, 2, 3`, or `none`.
struct NodeList<'a>(&'a [u64]);

impl fmt::Display for NodeList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// Renders ` (detail)` after a message, or nothing.
struct DetailSuffix<'a>(Option<&'a ErrorDetail>);

impl fmt::Display for DetailSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(detail) => write!(f, " ({detail})"),
            None => Ok(()),
        }
    }
}

/// The canonical upper-case name of a gRPC code, as in the gRPC spec and
/// the error table of `calm.proto` (`FAILED_PRECONDITION`).
pub fn code_name(code: Code) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(type_url: &str, detail: &pb::ErrorDetail) -> Vec<u8> {
        let mut status = rpc::Status {
            code: Code::FailedPrecondition as i32,
            message: "refused".to_owned(),
            details: Vec::new(),
        };
        // `Any` is prost-types', which this crate does not name; its
        // default is filled in field by field.
        status.details.push(Default::default());
        status.details[0].type_url = type_url.to_owned();
        status.details[0].value = detail.encode_to_vec();
        status.encode_to_vec()
    }

    fn rights(node_id: u64, available: u64, requested: u64) -> pb::ErrorDetail {
        pb::ErrorDetail {
            detail: Some(pb::error_detail::Detail::InsufficientRights(
                pb::InsufficientRights {
                    node_id,
                    available,
                    requested,
                },
            )),
        }
    }

    #[test]
    fn a_packed_detail_decodes_into_the_plain_enum() {
        let bytes = packed("type.googleapis.com/calm.v1.ErrorDetail", &rights(2, 3, 5));
        let detail = decode_detail(&bytes);
        assert_eq!(
            detail,
            Some(ErrorDetail::InsufficientRights {
                node_id: 2,
                available: 3,
                requested: 5
            })
        );
        let text = detail.map(|d| d.to_string());
        assert_eq!(text.as_deref(), Some("needs 5 rights, node 2 holds 3"));
    }

    /// `detail` packed as a server packs it decodes to `expected`, which
    /// prints as `text`.
    fn check(detail: pb::error_detail::Detail, expected: ErrorDetail, text: &str) {
        let detail = pb::ErrorDetail {
            detail: Some(detail),
        };
        let bytes = packed("type.googleapis.com/calm.v1.ErrorDetail", &detail);
        let decoded = decode_detail(&bytes);
        assert_eq!(decoded.as_ref(), Some(&expected));
        assert_eq!(expected.to_string(), text);
    }

    #[test]
    fn the_kv_details_decode_into_their_variants() {
        use pb::error_detail::Detail;
        check(
            Detail::TooManySiblings(pb::TooManySiblings {
                siblings: 9,
                siblings_max: 8,
            }),
            ErrorDetail::TooManySiblings {
                siblings: 9,
                siblings_max: 8,
            },
            "9 siblings would exceed the bound of 8; write with a read's context to resolve them",
        );
        check(
            Detail::QuorumUnavailable(pb::QuorumUnavailable { needed: 2, up: 1 }),
            ErrorDetail::QuorumUnavailable { needed: 2, up: 1 },
            "1 usable replicas are up, 2 needed",
        );
        check(
            Detail::WriteInDoubt(pb::WriteInDoubt { acks: 1, needed: 3 }),
            ErrorDetail::WriteInDoubt { acks: 1, needed: 3 },
            "write in doubt: 1 of 3 acks",
        );
    }

    #[test]
    fn a_kv_quorum_shortfall_is_retryable_and_a_write_in_doubt_is_not() {
        let status = |code, detail| ClientError::Status {
            endpoint: "a:1".to_owned(),
            code,
            message: "kv".to_owned(),
            detail: Some(detail),
        };
        let unavailable = status(
            Code::Unavailable,
            ErrorDetail::QuorumUnavailable { needed: 2, up: 1 },
        );
        assert!(unavailable.is_retryable() && !unavailable.is_in_doubt());
        let in_doubt = status(
            Code::DeadlineExceeded,
            ErrorDetail::WriteInDoubt { acks: 1, needed: 2 },
        );
        assert!(!in_doubt.is_retryable() && in_doubt.is_in_doubt());
        let siblings = status(
            Code::FailedPrecondition,
            ErrorDetail::TooManySiblings {
                siblings: 5,
                siblings_max: 4,
            },
        );
        assert!(!siblings.is_retryable() && !siblings.is_in_doubt());
    }

    #[test]
    fn details_that_are_absent_foreign_or_garbled_read_as_none() {
        assert_eq!(decode_detail(&[]), None);
        let foreign = packed("type.googleapis.com/other.Detail", &rights(1, 1, 2));
        assert_eq!(decode_detail(&foreign), None);
        assert_eq!(decode_detail(&[0xff, 0xff, 0xff]), None);
        // An `ErrorDetail` with no variant set carries nothing to report.
        let empty = packed(
            "type.googleapis.com/calm.v1.ErrorDetail",
            &pb::ErrorDetail::default(),
        );
        assert_eq!(decode_detail(&empty), None);
    }

    #[test]
    fn only_unavailable_is_retryable_and_timeouts_are_in_doubt() {
        let status = |code| ClientError::Status {
            endpoint: "a:1".to_owned(),
            code,
            message: String::new(),
            detail: None,
        };
        assert!(status(Code::Unavailable).is_retryable());
        assert!(!status(Code::FailedPrecondition).is_retryable());
        assert!(!status(Code::Internal).is_retryable());
        assert!(status(Code::Internal).is_in_doubt());
        let timeout = ClientError::Timeout {
            endpoint: "a:1".to_owned(),
            timeout: Duration::from_secs(1),
        };
        assert!(!timeout.is_retryable());
        assert!(timeout.is_in_doubt());
        assert_eq!(timeout.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn a_status_error_names_its_detail_code_and_endpoint() {
        let error = ClientError::Status {
            endpoint: "10.0.0.2:2379".to_owned(),
            code: Code::FailedPrecondition,
            message: "too few rights".to_owned(),
            detail: Some(ErrorDetail::InsufficientRights {
                node_id: 2,
                available: 3,
                requested: 5,
            }),
        };
        assert_eq!(
            error.to_string(),
            "too few rights (needs 5 rights, node 2 holds 3) \
             [FAILED_PRECONDITION from 10.0.0.2:2379]"
        );
    }
}
