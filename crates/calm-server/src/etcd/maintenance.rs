//! The `Maintenance` service (`v3rpc/maintenance.go`): calls pass through,
//! `Snapshot` streams the backend's blob in chunks followed by its
//! SHA-256, and `Hash` and `Downgrade` are not offered.
//!
//! The checksum is not optional: `etcdctl snapshot save` (3.4 and 3.5)
//! refuses a download unless its length is a multiple of 512 plus 32, the
//! trailing SHA-256 of the rest (`clientv3/snapshot/v3_snapshot.go`,
//! `hasChecksum`). The backend's blob must therefore be a multiple of
//! 512 bytes long for `etcdctl` to save it, as a bbolt file always is.

use std::pin::Pin;
use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::maintenance_server::Maintenance;
use calm_proto::etcd::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use sha2::{Digest, Sha256};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Limits;
use super::backend::Coordinated;
use super::error::unknown_method;

/// The `Maintenance` service over a backend.
pub(crate) struct MaintenanceService<B> {
    backend: Arc<B>,
    limits: Limits,
}

impl<B> MaintenanceService<B> {
    pub(crate) fn new(backend: Arc<B>, limits: Limits) -> Self {
        Self { backend, limits }
    }
}

/// The snapshot's chunks, then its checksum.
type SnapshotChunks = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Coordinated> Maintenance for MaintenanceService<B> {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let request = request.into_inner();
        self.backend.alarm(request).await.map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.backend.status().await.map(Response::new)
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.backend.defragment().await.map(Response::new)
    }

    /// etcd hashes its whole bbolt file here; calm has no such file, and
    /// `HashKV` (which etcd's corruption checks use) covers the keyspace.
    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(unknown_method("etcdserverpb.Maintenance", "Hash"))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let request = request.into_inner();
        self.backend.hash_kv(request).await.map(Response::new)
    }

    type SnapshotStream = SnapshotChunks;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let blob = self.backend.snapshot().await?;
        let chunks = snapshot_responses(blob, self.limits.snapshot_chunk_bytes);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks).map(Ok))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let request = request.into_inner();
        self.backend.move_leader(request).await.map(Response::new)
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unknown_method("etcdserverpb.Maintenance", "Downgrade"))
    }
}

/// etcd's snapshot stream: the blob in chunks of `chunk_bytes`, each
/// saying how many bytes remain after it, then one response whose blob is
/// the SHA-256 of the whole (and 0 remaining). Built lazily, so the blob is
/// held once.
pub(crate) fn snapshot_responses(
    blob: Vec<u8>,
    chunk_bytes: usize,
) -> impl Iterator<Item = SnapshotResponse> + Send {
    let checksum = Sha256::digest(&blob).to_vec();
    let chunk_bytes = chunk_bytes.max(1);
    let total = blob.len();
    let chunks = (0..total.div_ceil(chunk_bytes)).map(move |index| {
        let start = index * chunk_bytes;
        let end = total.min(start.saturating_add(chunk_bytes));
        SnapshotResponse {
            remaining_bytes: (total - end) as u64,
            blob: blob[start..end].to_vec(),
            ..SnapshotResponse::default()
        }
    });
    chunks.chain(std::iter::once(SnapshotResponse {
        remaining_bytes: 0,
        blob: checksum,
        ..SnapshotResponse::default()
    }))
}
