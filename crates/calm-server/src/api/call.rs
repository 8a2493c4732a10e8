//! The one path every RPC takes: the common checks of a data request
//! (level, key, token), the backend call, forwarding when another replica
//! must answer, the error table, and the request metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use calm_proto::calm::v1::{Level, ResponseHeader};
use calm_replica::coordinator::Level as KvLevel;
use calm_replica::{Operation, Value};
use tonic::{Request, Response, Status};

use super::error::{code_name, status_of};
use super::forward::{self, DataRpc, Forwarder};
use crate::backend::{Backend, BackendError, KvAnswer, KvCall};
use crate::metrics::{MethodLabels, Metrics, RequestLabels};

/// What every service shares: the node, the metrics, and the channels to
/// the replicas requests are forwarded to.
pub(crate) struct Api<B> {
    pub(crate) backend: Arc<B>,
    metrics: Arc<Metrics>,
    forwarder: Forwarder,
}

impl<B: Backend> Api<B> {
    pub(crate) fn new(backend: Arc<B>, metrics: Arc<Metrics>) -> Self {
        Self {
            backend,
            metrics,
            forwarder: Forwarder::default(),
        }
    }

    /// Serves one data RPC: after the common checks, `op` turns the request
    /// into the operation (or refuses it), and `reply` turns the value read
    /// (`Absent` for a write) and the response header into the response.
    pub(crate) async fn call<R: DataRpc>(
        &self,
        request: Request<R>,
        op: impl FnOnce(&R) -> Result<Operation, Status> + Send,
        reply: impl FnOnce(Value, ResponseHeader) -> Result<R::Response, Status> + Send,
    ) -> Result<Response<R::Response>, Status> {
        let level = level_label(request.get_ref().common().level);
        self.measured(
            R::SERVICE,
            R::METHOD,
            level,
            self.submit(request, op, reply),
        )
        .await
    }

    /// Runs `work` as the RPC `service`/`method`, counting its outcome and
    /// timing it.
    pub(crate) async fn measured<T>(
        &self,
        service: &'static str,
        method: &'static str,
        level: &'static str,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = work.await;
        if result.is_ok() && level != "none" {
            let seconds = started.elapsed().as_secs_f64();
            self.metrics.recent_latencies.record(level, seconds);
        }
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        let labels = RequestLabels {
            service,
            method,
            level,
            code: code_name(code),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        let labels = MethodLabels {
            service,
            method,
            level,
        };
        self.metrics
            .request_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn submit<R: DataRpc>(
        &self,
        request: Request<R>,
        op: impl FnOnce(&R) -> Result<Operation, Status>,
        reply: impl FnOnce(Value, ResponseHeader) -> Result<R::Response, Status>,
    ) -> Result<Response<R::Response>, Status> {
        let common = request.get_ref().common();
        let (level, coordinated) = served_level(common.level)?;
        if common.key.is_empty() {
            return Err(Status::invalid_argument("the key is empty"));
        }
        let key = common.key.to_vec();
        // An empty token is the proto3 default: the client has none.
        let token = (!common.causal_token.is_empty()).then(|| common.causal_token.to_vec());
        let op = op(request.get_ref())?;
        let node = self.backend.node();
        let answer = match coordinated {
            None => self.backend.submit(key, op, token).await,
            Some(at) => self.backend.submit_at(key, op, token, at).await,
        };
        let error = match answer {
            Ok(ack) => {
                let header = ResponseHeader {
                    causal_token: ack.token.encode(),
                    node_id: node.0,
                    level: level as i32,
                };
                return reply(ack.value.unwrap_or(Value::Absent), header).map(Response::new);
            }
            Err(error) => error,
        };
        let label = level_label(request.get_ref().common().level);
        self.forward_or_fail(request, error, label).await
    }

    /// Serves one RPC of the `Kv` service: `call` turns the request into
    /// the node's request (or refuses it), and `reply` turns the outcome
    /// into the response. A write sent to a node that does not own the key
    /// is forwarded to an owner.
    pub(crate) async fn kv<R: DataRpc>(
        &self,
        request: Request<R>,
        call: impl FnOnce(&R) -> Result<KvCall, Status> + Send,
        reply: impl FnOnce(KvAnswer, KvHeader) -> Result<R::Response, Status> + Send,
    ) -> Result<Response<R::Response>, Status> {
        let label = match Level::try_from(request.get_ref().common().level) {
            Ok(Level::Unspecified) => "quorum",
            _ => level_label(request.get_ref().common().level),
        };
        let work = async {
            let call = call(request.get_ref())?;
            let key = call.key.clone();
            let level = match call.level {
                KvLevel::One => Level::One,
                KvLevel::Quorum => Level::Quorum,
                KvLevel::All => Level::All,
            };
            let error = match self.backend.kv(call).await {
                Ok(answer) => {
                    let header = ResponseHeader {
                        causal_token: Vec::new(),
                        node_id: self.backend.node().0,
                        level: level as i32,
                    };
                    return reply(answer, KvHeader { header, key }).map(Response::new);
                }
                Err(error) => error,
            };
            self.forward_or_fail(request, error, label).await
        };
        self.measured(R::SERVICE, R::METHOD, label, work).await
    }

    /// Forwards a request that failed here with `error` to the node the
    /// error names, or returns the error's status.
    async fn forward_or_fail<R: DataRpc>(
        &self,
        request: Request<R>,
        error: BackendError,
        level: &'static str,
    ) -> Result<Response<R::Response>, Status> {
        let node = self.backend.node();
        match forward::target(&*self.backend, &error, &request) {
            Some(target) => {
                let labels = MethodLabels {
                    service: R::SERVICE,
                    method: R::METHOD,
                    level,
                };
                self.metrics.requests_forwarded.get_or_create(&labels).inc();
                self.metrics.forwarded_round_trip(level);
                self.forwarder
                    .forward(target, request.into_inner())
                    .await
                    .unwrap_or_else(|| Err(status_of(error, node)))
            }
            None => Err(status_of(error, node)),
        }
    }
}

/// A `Kv` response's header, with the key its context is bound to.
pub(crate) struct KvHeader {
    /// The response header.
    pub(crate) header: ResponseHeader,
    /// The request's key.
    pub(crate) key: Vec<u8>,
}

/// The metrics label of a request's level; an absent level is the
/// service's default, `local`.
fn level_label(level: i32) -> &'static str {
    match Level::try_from(level) {
        Ok(Level::Unspecified | Level::Local) => "local",
        Ok(Level::One) => "one",
        Ok(Level::Quorum) => "quorum",
        Ok(Level::All) => "all",
        Ok(Level::Linearizable) => "linearizable",
        Err(_) => "unknown",
    }
}

/// The level a CRDT request is served at, and the replicas it waits for:
/// `LEVEL_LOCAL` (the default) answers from one replica; `LEVEL_ONE`,
/// `LEVEL_QUORUM` and `LEVEL_ALL` are coordinated among the key's owners.
/// CRDT types are not kept in the coordinated keyspace, so
/// `LEVEL_LINEARIZABLE` is refused before anything is done.
fn served_level(level: i32) -> Result<(Level, Option<KvLevel>), Status> {
    match Level::try_from(level) {
        Ok(Level::Unspecified | Level::Local) => Ok((Level::Local, None)),
        Ok(Level::One) => Ok((Level::One, Some(KvLevel::One))),
        Ok(Level::Quorum) => Ok((Level::Quorum, Some(KvLevel::Quorum))),
        Ok(Level::All) => Ok((Level::All, Some(KvLevel::All))),
        Ok(Level::Linearizable) => Err(Status::unimplemented(
            "LEVEL_LINEARIZABLE is not offered for CRDT types (the etcd API serves the \
             coordinated keyspace); LEVEL_LOCAL, LEVEL_ONE, LEVEL_QUORUM and LEVEL_ALL are",
        )),
        Err(_) => Err(Status::invalid_argument(format!("unknown level {level}"))),
    }
}

/// Refuses a zero amount, which the API defines as bad input rather than a
/// write that changes nothing.
pub(crate) fn nonzero(amount: u64, field: &str) -> Result<u64, Status> {
    match amount {
        0 => Err(Status::invalid_argument(format!("`{field}` is zero"))),
        amount => Ok(amount),
    }
}

/// The operation adding the signed `by`: an increment or a decrement of its
/// magnitude, built by `increment` and `decrement`.
pub(crate) fn signed(
    by: i64,
    field: &str,
    increment: impl FnOnce(u64) -> Operation,
    decrement: impl FnOnce(u64) -> Operation,
) -> Result<Operation, Status> {
    let magnitude = nonzero(by.unsigned_abs(), field)?;
    Ok(if by > 0 {
        increment(magnitude)
    } else {
        decrement(magnitude)
    })
}

/// A counter value as the API's signed 64-bit field.
pub(crate) fn counter_value(value: i128) -> Result<i64, Status> {
    i64::try_from(value).map_err(|_| super::error::out_of_range(value))
}
