//! Forwarding: a data request this node cannot serve (it holds no replica
//! of the key, or has not caught up with the request's causal token) is
//! sent on, unchanged, to a replica that can, over a cached gRPC channel.
//!
//! A forwarded request carries [`FORWARDED_HEADER`], and a request that
//! carries it is never forwarded again, so forwarding cannot loop: the
//! second node answers with its own error instead.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use calm_proto::calm::v1::bounded_counter_client::BoundedCounterClient;
use calm_proto::calm::v1::counter_client::CounterClient;
use calm_proto::calm::v1::kv_client::KvClient;
use calm_proto::calm::v1::map_client::MapClient;
use calm_proto::calm::v1::register_client::RegisterClient;
use calm_proto::calm::v1::set_client::SetClient;
use calm_proto::calm::v1::*;
use calm_replica::ReplicaError;
use calm_types::NodeId;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::backend::{Backend, BackendError, KvRefusal};

/// The request metadata key marking a forwarded request (value `1`).
pub const FORWARDED_HEADER: &str = "calm-forwarded";

/// How long a forwarded request may take, connecting included, before the
/// client gets UNAVAILABLE.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Most cached channels. One per member's client address is needed; the
/// bound only matters if addresses keep changing, and then the cache is
/// emptied and refilled lazily.
const CHANNELS_MAX: usize = 1024;

/// The common fields (1 to 3) every data request has.
pub(crate) struct Common<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) level: i32,
    pub(crate) causal_token: &'a [u8],
}

/// A data RPC: its request type, its names, and how to send it to another
/// node with the generated client.
pub(crate) trait DataRpc: Send + Sync + Sized + 'static {
    /// The RPC's response.
    type Response: Send + 'static;
    /// The full gRPC service name, as the metrics label it.
    const SERVICE: &'static str;
    /// The method name.
    const METHOD: &'static str;
    /// The request's common fields.
    fn common(&self) -> Common<'_>;
    /// Sends `request` to the node at the end of `channel`.
    fn send(
        channel: Channel,
        request: Request<Self>,
    ) -> impl Future<Output = Result<Response<Self::Response>, Status>> + Send;
}

macro_rules! data_rpc {
    ($request:ident => $response:ident, $service:literal, $method:literal, $client:ident::$call:ident) => {
        impl DataRpc for $request {
            type Response = $response;
            const SERVICE: &'static str = $service;
            const METHOD: &'static str = $method;

            fn common(&self) -> Common<'_> {
                Common {
                    key: &self.key,
                    level: self.level,
                    causal_token: &self.causal_token,
                }
            }

            async fn send(
                channel: Channel,
                request: Request<Self>,
            ) -> Result<Response<$response>, Status> {
                $client::new(channel).$call(request).await
            }
        }
    };
}

data_rpc!(CounterIncrementRequest => CounterIncrementResponse,
    "calm.v1.Counter", "Increment", CounterClient::increment);
data_rpc!(CounterGetRequest => CounterGetResponse,
    "calm.v1.Counter", "Get", CounterClient::get);
data_rpc!(SetAddRequest => SetAddResponse,
    "calm.v1.Set", "Add", SetClient::add);
data_rpc!(SetRemoveRequest => SetRemoveResponse,
    "calm.v1.Set", "Remove", SetClient::remove);
data_rpc!(SetMembersRequest => SetMembersResponse,
    "calm.v1.Set", "Members", SetClient::members);
data_rpc!(RegisterSetRequest => RegisterSetResponse,
    "calm.v1.Register", "Set", RegisterClient::set);
data_rpc!(RegisterGetRequest => RegisterGetResponse,
    "calm.v1.Register", "Get", RegisterClient::get);
data_rpc!(MapUpdateRequest => MapUpdateResponse,
    "calm.v1.Map", "Update", MapClient::update);
data_rpc!(MapRemoveFieldRequest => MapRemoveFieldResponse,
    "calm.v1.Map", "RemoveField", MapClient::remove_field);
data_rpc!(MapGetRequest => MapGetResponse,
    "calm.v1.Map", "Get", MapClient::get);
data_rpc!(BoundedCounterIncrementRequest => BoundedCounterIncrementResponse,
    "calm.v1.BoundedCounter", "Increment", BoundedCounterClient::increment);
data_rpc!(BoundedCounterDecrementRequest => BoundedCounterDecrementResponse,
    "calm.v1.BoundedCounter", "Decrement", BoundedCounterClient::decrement);
data_rpc!(BoundedCounterTransferRequest => BoundedCounterTransferResponse,
    "calm.v1.BoundedCounter", "Transfer", BoundedCounterClient::transfer);
data_rpc!(BoundedCounterGetRequest => BoundedCounterGetResponse,
    "calm.v1.BoundedCounter", "Get", BoundedCounterClient::get);
data_rpc!(KvPutRequest => KvPutResponse,
    "calm.v1.Kv", "Put", KvClient::put);
data_rpc!(KvGetRequest => KvGetResponse,
    "calm.v1.Kv", "Get", KvClient::get);
data_rpc!(KvDeleteRequest => KvDeleteResponse,
    "calm.v1.Kv", "Delete", KvClient::delete);

/// The replica a request is forwarded to.
pub(crate) struct Target {
    node: NodeId,
    addr: SocketAddr,
}

/// Lazily connected channels to other nodes' client addresses.
#[derive(Default)]
pub(crate) struct Forwarder {
    /// A std Mutex, not a tokio one: it is held only to look up or insert
    /// a channel, never across an await.
    channels: Mutex<HashMap<SocketAddr, Channel>>,
}

/// Where to forward a request that failed with `error`, if anywhere: the
/// first replica the error names, other than this node, whose client
/// address is known. Never for a request that was forwarded already.
pub(crate) fn target<B: Backend, R>(
    backend: &B,
    error: &BackendError,
    request: &Request<R>,
) -> Option<Target> {
    let replicas = match error {
        BackendError::Replica(
            ReplicaError::NotReplica { replicas } | ReplicaError::CatchUpTimeout { replicas },
        ) => replicas,
        BackendError::Kv(KvRefusal::NotOwner { owners }) => owners,
        _ => return None,
    };
    if request.metadata().contains_key(FORWARDED_HEADER) {
        return None;
    }
    let this = backend.node();
    replicas
        .iter()
        .filter(|&&node| node != this)
        .find_map(|&node| {
            Some(Target {
                node,
                addr: backend.client_addr(node)?,
            })
        })
}

impl Forwarder {
    /// Sends `message` to `target` and returns the replica's answer, or
    /// `None` if the call failed in transport (typically a refused
    /// connection), so that the caller returns its own error, which names
    /// the replicas a client may try.
    ///
    /// One attempt only: once a request may have reached a replica, sending
    /// it to a second one could apply a non-idempotent write twice.
    pub(crate) async fn forward<R: DataRpc>(
        &self,
        target: Target,
        message: R,
    ) -> Option<Result<Response<R::Response>, Status>> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
        let channel = self.channel(target.addr);
        match tokio::time::timeout(FORWARD_TIMEOUT, R::send(channel, request)).await {
            Err(_) => Some(Err(Status::deadline_exceeded(format!(
                "the request forwarded to replica {} at {} timed out; it may have been applied there",
                target.node.0, target.addr
            )))),
            // A status tonic made locally carries its transport error as the
            // source; a status the replica sent has none.
            Ok(Err(status)) if std::error::Error::source(&status).is_some() => None,
            Ok(answer) => Some(answer),
        }
    }

    /// The cached channel to `addr`, created (unconnected) on first use.
    fn channel(&self, addr: SocketAddr) -> Channel {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if channels.len() >= CHANNELS_MAX && !channels.contains_key(&addr) {
            channels.clear();
        }
        channels
            .entry(addr)
            .or_insert_with(|| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a socket address makes a valid URI")
                    .connect_timeout(FORWARD_TIMEOUT)
                    .connect_lazy()
            })
            .clone()
    }
}
