//! [`Coordinated`] on a node: each etcd request becomes one command for
//! the event loop, which proposes it to Raft, reads through ReadIndex, or
//! answers from the applied state.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use calm_proto::calm::raft::v1::command::Request;
use calm_proto::etcd::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusResponse, TxnRequest,
    TxnResponse, WatchCreateRequest,
};
use calm_raft::Response;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::coordination::{Answer, EtcdCommand};
use super::{Command, NodeHandle};
use crate::etcd::{Coordinated, WatchEvents};

/// The alignment etcdctl checks a snapshot's length against.
const SNAPSHOT_ALIGN_BYTES: usize = 512;

/// Responses a watch may have queued before the node pauses it and lets it
/// catch up from the store instead.
const WATCH_QUEUE_MAX: usize = 256;

impl NodeHandle {
    /// Sends `make(reply)` to the loop and waits for the answer.
    async fn etcd<T>(&self, make: impl FnOnce(Answer<T>) -> EtcdCommand) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Etcd(make(reply)))
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?
    }

    async fn write(&self, request: Request) -> Result<Response, Status> {
        let work = self.etcd(|reply| EtcdCommand::Write { request, reply });
        self.timed("linearizable", work).await
    }

    /// Runs `work`, recording its latency at `level` for `/status` if it
    /// succeeds.
    async fn timed<T>(
        &self,
        level: &'static str,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = work.await;
        if result.is_ok() {
            let seconds = started.elapsed().as_secs_f64();
            self.shared.metrics.recent_latencies.record(level, seconds);
        }
        result
    }
}

/// The response a write got, when it is the kind the caller expects.
macro_rules! expect {
    ($response:expr, $variant:ident) => {
        match $response {
            Response::$variant(response) => Ok(response),
            other => Err(Status::internal(format!(
                "unexpected response to a {} request: {other:?}",
                stringify!($variant)
            ))),
        }
    };
}

impl Coordinated for NodeHandle {
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        let level = match request.serializable {
            true => "serializable",
            false => "linearizable",
        };
        let work = self.etcd(|reply| EtcdCommand::Range { request, reply });
        self.timed(level, work).await
    }

    async fn put(&self, request: PutRequest) -> Result<PutResponse, Status> {
        expect!(self.write(Request::Put(request)).await?, Put)
    }

    async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        expect!(
            self.write(Request::DeleteRange(request)).await?,
            DeleteRange
        )
    }

    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        if calm_raft::txn_writes(&request) {
            expect!(self.write(Request::Txn(request)).await?, Txn)
        } else {
            let work = self.etcd(|reply| EtcdCommand::ReadTxn { request, reply });
            self.timed("linearizable", work).await
        }
    }

    async fn compact(&self, request: CompactionRequest) -> Result<CompactionResponse, Status> {
        expect!(self.write(Request::Compaction(request)).await?, Compaction)
    }

    async fn watch(&self, request: WatchCreateRequest) -> Result<WatchEvents, Status> {
        let (events, receiver) = mpsc::channel(WATCH_QUEUE_MAX);
        self.commands
            .send(Command::Etcd(EtcdCommand::Watch { request, events }))
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(receiver)
    }

    async fn progress(&self) -> Result<ResponseHeader, Status> {
        self.etcd(|reply| EtcdCommand::Progress { reply }).await
    }

    async fn lease_grant(
        &self,
        mut request: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, Status> {
        if request.id == 0 {
            // The proposer picks the id, so every replica grants the same
            // lease; 63 random bits make a collision (refused as "lease
            // already exists") vanishingly rare.
            request.id = (rand::random::<u64>() >> 1).max(1) as i64;
        }
        expect!(self.write(Request::LeaseGrant(request)).await?, LeaseGrant)
    }

    async fn lease_revoke(
        &self,
        request: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, Status> {
        expect!(
            self.write(Request::LeaseRevoke(request)).await?,
            LeaseRevoke
        )
    }

    async fn lease_keep_alive(
        &self,
        request: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let id = request.id;
        let ttl = match self
            .etcd(|reply| EtcdCommand::KeepAlive { id, reply })
            .await
        {
            Ok(ttl) => ttl,
            // etcd answers a keep-alive for a lease it does not know with
            // TTL 0, not an error.
            Err(status) if status.code() == tonic::Code::NotFound => 0,
            Err(status) => return Err(status),
        };
        let header = Some(self.progress().await?);
        Ok(LeaseKeepAliveResponse { header, id, ttl })
    }

    async fn lease_time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        self.etcd(|reply| EtcdCommand::TimeToLive { request, reply })
            .await
    }

    async fn lease_leases(&self) -> Result<LeaseLeasesResponse, Status> {
        self.etcd(|reply| EtcdCommand::Leases { reply }).await
    }

    async fn member_list(&self, _request: MemberListRequest) -> Result<MemberListResponse, Status> {
        self.etcd(|reply| EtcdCommand::Members { reply }).await
    }

    async fn member_add(&self, request: MemberAddRequest) -> Result<MemberAddResponse, Status> {
        self.etcd(|reply| EtcdCommand::MemberAdd { request, reply })
            .await
    }

    async fn member_remove(
        &self,
        request: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, Status> {
        let id = request.id;
        self.etcd(|reply| EtcdCommand::MemberRemove { id, reply })
            .await
    }

    async fn member_update(
        &self,
        request: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, Status> {
        self.etcd(|reply| EtcdCommand::MemberUpdate { request, reply })
            .await
    }

    async fn member_promote(
        &self,
        request: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, Status> {
        let id = request.id;
        self.etcd(|reply| EtcdCommand::MemberPromote { id, reply })
            .await
    }

    async fn status(&self) -> Result<StatusResponse, Status> {
        self.etcd(|reply| EtcdCommand::Status { reply }).await
    }

    async fn forward_target(&self) -> Option<SocketAddr> {
        self.etcd(|reply| EtcdCommand::ForwardTarget { reply })
            .await
            .ok()
            .flatten()
    }

    async fn alarm(&self, request: AlarmRequest) -> Result<AlarmResponse, Status> {
        expect!(self.write(Request::Alarm(request)).await?, Alarm)
    }

    async fn hash_kv(&self, request: HashKvRequest) -> Result<HashKvResponse, Status> {
        let revision = request.revision;
        self.etcd(|reply| EtcdCommand::HashKv { revision, reply })
            .await
    }

    async fn defragment(&self) -> Result<DefragmentResponse, Status> {
        // The MVCC store keeps its history in memory and redb reuses freed
        // pages, so there is nothing to rewrite: defragmenting never stops
        // the node (see ARCHITECTURE.md).
        let header = Some(self.progress().await?);
        Ok(DefragmentResponse { header })
    }

    async fn move_leader(&self, request: MoveLeaderRequest) -> Result<MoveLeaderResponse, Status> {
        let target = request.target_id;
        self.etcd(|reply| EtcdCommand::MoveLeader { target, reply })
            .await?;
        let header = Some(self.progress().await?);
        Ok(MoveLeaderResponse { header })
    }

    async fn snapshot(&self) -> Result<Vec<u8>, Status> {
        let mut blob = self.etcd(|reply| EtcdCommand::Snapshot { reply }).await?;
        // `etcdctl snapshot save` accepts only a database whose length is a
        // multiple of 512 (bbolt's page alignment); zeros after the
        // snapshot's end are ignored when it is read back.
        blob.resize(
            blob.len().div_ceil(SNAPSHOT_ALIGN_BYTES) * SNAPSHOT_ALIGN_BYTES,
            0,
        );
        Ok(blob)
    }
}
