//! `etcd-lease-keepalive`: lease renewal round trips, what every etcd
//! session (locks, elections, service registration) spends while idle.
//!
//! Before the run, each bench client is granted a lease and opens a
//! `LeaseKeepAlive` stream; an operation sends one keep-alive on the
//! client's stream and waits for its answer, as etcd's Go client does for
//! each of its leases. A client whose stream failed opens a new lease and
//! stream on its next operation. After the run the leases are revoked.

use std::time::Duration;

use calm_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use calm_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::Streaming;
use tonic::transport::Channel;

use super::{EtcdChannels, within};
use crate::error::BenchError;
use crate::workload::{Done, OpError, Workload};

/// The TTL the bench's leases are granted with, seconds: far above the
/// gap between two keep-alives of a client, and short enough that leases
/// a killed bench leaves behind soon expire.
pub const LEASE_TTL_S: i64 = 60;

/// One client's lease and its keep-alive stream.
#[derive(Debug)]
struct Session {
    lease: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

/// `etcd-lease-keepalive`: one keep-alive round trip per operation, on the
/// client's own lease and stream.
#[derive(Debug)]
pub struct EtcdLeaseKeepAlive {
    channels: EtcdChannels,
    timeout: Duration,
    // Tokio mutexes, because the stream is awaited while one is held; a
    // client has one operation in flight at most, so none is contended.
    sessions: Vec<Mutex<Option<Session>>>,
}

impl EtcdLeaseKeepAlive {
    /// Grants a lease and opens a keep-alive stream for each of `clients`
    /// bench clients, on the client's connection; each call is bounded by
    /// `timeout`.
    pub async fn start(
        channels: EtcdChannels,
        clients: usize,
        timeout: Duration,
    ) -> Result<EtcdLeaseKeepAlive, BenchError> {
        let workload = EtcdLeaseKeepAlive {
            channels,
            timeout,
            sessions: (0..clients.max(1)).map(|_| Mutex::new(None)).collect(),
        };
        for (client, slot) in workload.sessions.iter().enumerate() {
            match open_session(workload.channels.channel(client), timeout).await {
                Ok(session) => *slot.lock().await = Some(session),
                Err(error) => {
                    workload.revoke_all().await;
                    return Err(BenchError::Setup(format!(
                        "granting client {client}'s lease on {}: {}",
                        workload.channels.endpoint(client),
                        error.message
                    )));
                }
            }
        }
        Ok(workload)
    }

    /// Revokes every client's lease, best effort: a lease this misses
    /// expires after [`LEASE_TTL_S`].
    pub async fn revoke_all(&self) {
        for (client, slot) in self.sessions.iter().enumerate() {
            let Some(session) = slot.lock().await.take() else {
                continue;
            };
            let mut leases = LeaseClient::new(self.channels.channel(client));
            let revoke = LeaseRevokeRequest { id: session.lease };
            let _ = within(self.timeout, leases.lease_revoke(revoke)).await;
        }
    }
}

impl Workload for EtcdLeaseKeepAlive {
    async fn operate(&self, client: usize, _key: u64) -> Result<Done, OpError> {
        let mut slot = self.sessions[client % self.sessions.len()].lock().await;
        let mut session = match slot.take() {
            Some(session) => session,
            None => open_session(self.channels.channel(client), self.timeout).await?,
        };
        keep_alive(&mut session, self.timeout).await?;
        // Put back only a stream that answered; a failed one is dropped
        // (its lease expires) and the next operation opens another.
        *slot = Some(session);
        Ok(Done::default())
    }
}

/// Grants a lease on `channel`, opens its keep-alive stream and renews it
/// once.
async fn open_session(channel: Channel, timeout: Duration) -> Result<Session, OpError> {
    let mut leases = LeaseClient::new(channel);
    let grant = LeaseGrantRequest {
        ttl: LEASE_TTL_S,
        id: 0,
    };
    let granted = within(timeout, leases.lease_grant(grant))
        .await?
        .into_inner();
    if !granted.error.is_empty() || granted.id == 0 {
        return Err(OpError {
            code: Code::FailedPrecondition,
            message: format!("lease not granted: {:?}", granted.error),
        });
    }
    let (requests, outgoing) = mpsc::channel(1);
    // The first keep-alive goes before the call: a server may send its
    // headers only with its first answer.
    let first = LeaseKeepAliveRequest { id: granted.id };
    requests.send(first).await.map_err(|_| closed())?;
    let mut responses = within(
        timeout,
        leases.lease_keep_alive(ReceiverStream::new(outgoing)),
    )
    .await?
    .into_inner();
    let answer = within(timeout, responses.message()).await?;
    check_keep_alive(granted.id, answer.as_ref())?;
    Ok(Session {
        lease: granted.id,
        requests,
        responses,
    })
}

/// One keep-alive round trip on `session`.
async fn keep_alive(session: &mut Session, timeout: Duration) -> Result<(), OpError> {
    let round_trip = async {
        let request = LeaseKeepAliveRequest { id: session.lease };
        if session.requests.send(request).await.is_err() {
            return Ok(None);
        }
        session.responses.message().await
    };
    let answer = within(timeout, round_trip).await?;
    check_keep_alive(session.lease, answer.as_ref())
}

fn closed() -> OpError {
    OpError {
        code: Code::Unavailable,
        message: "the keep-alive stream ended".to_owned(),
    }
}

/// Whether `answer`, the next message of lease `lease`'s keep-alive
/// stream, renewed it: an ended stream is `UNAVAILABLE`, an answer for
/// another lease `INTERNAL`, a TTL of 0 or less (etcd's answer for a lease
/// that expired or was revoked) `NOT_FOUND`.
pub fn check_keep_alive(
    lease: i64,
    answer: Option<&LeaseKeepAliveResponse>,
) -> Result<(), OpError> {
    let answer = answer.ok_or_else(closed)?;
    if answer.id != lease {
        return Err(OpError {
            code: Code::Internal,
            message: format!(
                "a keep-alive of lease {lease:x} answered for {:x}",
                answer.id
            ),
        });
    }
    if answer.ttl <= 0 {
        return Err(OpError {
            code: Code::NotFound,
            message: format!("lease {lease:x} expired or was revoked"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: i64, ttl: i64) -> LeaseKeepAliveResponse {
        LeaseKeepAliveResponse {
            header: None,
            id,
            ttl,
        }
    }

    #[test]
    fn a_keep_alive_renews_only_with_a_positive_ttl_for_its_own_lease() {
        let check = |answer: Option<&LeaseKeepAliveResponse>, expected: Option<Code>| {
            let outcome = check_keep_alive(7, answer);
            assert_eq!(outcome.err().map(|e| e.code), expected, "{answer:?}");
        };
        check(Some(&answer(7, LEASE_TTL_S)), None);
        check(Some(&answer(7, 1)), None);
        // etcd answers TTL -1 (3.4: 0) for a lease it no longer has.
        check(Some(&answer(7, 0)), Some(Code::NotFound));
        check(Some(&answer(7, -1)), Some(Code::NotFound));
        check(Some(&answer(8, LEASE_TTL_S)), Some(Code::Internal));
        check(None, Some(Code::Unavailable));
    }
}
