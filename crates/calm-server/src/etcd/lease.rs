//! The `Lease` service (`v3rpc/lease.go`): unary calls pass through, with
//! etcd's answers for a missing lease; `LeaseKeepAlive` renews once per
//! request on the stream and answers each in order.

use std::pin::Pin;
use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::lease_server::Lease;
use calm_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::backend::Coordinated;
use super::error::EtcdError;

/// etcd's largest lease TTL, in seconds (`lease.MaxLeaseTTL`).
const LEASE_TTL_MAX_SECONDS: i64 = 9_000_000_000;

/// The `Lease` service over a backend.
pub(crate) struct LeaseService<B> {
    backend: Arc<B>,
}

impl<B> LeaseService<B> {
    pub(crate) fn new(backend: Arc<B>) -> Self {
        Self { backend }
    }
}

/// The keep-alive responses, one per request, in order.
type KeepAlives = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Coordinated> Lease for LeaseService<B> {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        if request.ttl > LEASE_TTL_MAX_SECONDS {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        self.backend.lease_grant(request).await.map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.backend
            .lease_revoke(request.into_inner())
            .await
            .map(Response::new)
    }

    type LeaseKeepAliveStream = KeepAlives;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let backend = Arc::clone(&self.backend);
        // `then` awaits each renewal before reading the next request: one
        // response per request, in order, and no queue to bound.
        let responses = request
            .into_inner()
            .then(move |request| renew(Arc::clone(&backend), request));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let id = request.id;
        match self.backend.lease_time_to_live(request).await {
            // etcd answers a missing lease with TTL -1, not an error.
            Err(status) if EtcdError::LeaseNotFound.is(&status) => {
                Ok(Response::new(LeaseTimeToLiveResponse {
                    header: Some(self.backend.progress().await?),
                    id,
                    ttl: -1,
                    ..LeaseTimeToLiveResponse::default()
                }))
            }
            result => result.map(Response::new),
        }
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        match self.backend.lease_leases().await {
            // As etcd: "no lease" is an empty list.
            Err(status) if EtcdError::LeaseNotFound.is(&status) => {
                Ok(Response::new(LeaseLeasesResponse {
                    header: Some(self.backend.progress().await?),
                    leases: Vec::new(),
                }))
            }
            result => result.map(Response::new),
        }
    }
}

/// One keep-alive: the backend's answer, or TTL 0 for a lease that is
/// gone (etcd's answer, not an error, so the stream goes on).
async fn renew<B: Coordinated>(
    backend: Arc<B>,
    request: Result<LeaseKeepAliveRequest, Status>,
) -> Result<LeaseKeepAliveResponse, Status> {
    let request = request?;
    let id = request.id;
    match backend.lease_keep_alive(request).await {
        Err(status) if EtcdError::LeaseNotFound.is(&status) => Ok(LeaseKeepAliveResponse {
            header: Some(backend.progress().await?),
            id,
            ttl: 0,
        }),
        result => result,
    }
}
