//! Leases under the simulator, against real (virtual) time and skewed
//! clocks. A lease client grants leases, attaches one key to each, renews
//! some for a while and abandons them; the checker holds etcd's two lease
//! guarantees:
//!
//! * **never early**: no replica revokes a lease (deletes its key) before
//!   the TTL of its last acknowledged grant or renewal has passed, counted
//!   from when that request was *sent*, on the fastest clock the config
//!   allows (a leader whose clock runs fast by `r` sees the TTL pass in
//!   `TTL / (1 + r)`), less any forward clock jump since (a jumped leader
//!   expires early, which no lease design can prevent);
//! * **eventually**: once the client stops renewing and the cluster has
//!   been healthy for longer than the TTL plus the extension a new leader
//!   grants, every replica has revoked it.
//!
//! Lease writes bump the revision outside the clients' history, so runs
//! with leases are checked by [`KeyspaceSim::check_leases`] and every
//! checker but linearizability (see [`KeyspaceSim::check_all`]).

use std::collections::BTreeMap;

use calm_proto::calm::raft::v1::command::Request;
use calm_proto::etcd::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
use calm_raft::{KeyspaceError, LeaseQuestion, Reply, RequestId, Response};
use rand::RngExt;

use super::cluster::KeyspaceSim;
use super::node::{Call, Inbound};
use crate::check::Violation;

/// Request ids of the lease client start here, far from the workload's
/// (which count up from 1) and the membership changes' (which count down
/// from `u64::MAX`).
const LEASE_REQUEST_BASE: u64 = 1 << 62;
/// How often the revocation check looks at every replica, in ms.
const CHECK_PERIOD_MS: u64 = 10;
/// How long a lease request may go unanswered before the client sends it
/// again (to another node), in ms.
const RETRY_AFTER_MS: u64 = 300;

/// The lease client and what it was promised.
#[derive(Debug, Default)]
pub(super) struct LeaseClient {
    leases: Vec<SimLease>,
    pending: BTreeMap<RequestId, Pending>,
    next_request: u64,
    /// Set at the end of a run: no more renewals.
    stopped: bool,
    /// Every forward clock jump so far, in ms, summed.
    pub(super) jumped_ms: u64,
}

#[derive(Debug)]
struct SimLease {
    id: i64,
    ttl_s: i64,
    key: Vec<u8>,
    stage: Stage,
    /// The revision the attaching put got: replicas at or above it hold
    /// the key until the lease is revoked.
    attached: Option<i64>,
    /// When the client stops renewing, in real ms.
    abandon_at_ms: u64,
    next_renew_ms: u64,
    /// The latest promise: no revocation before `until_ms`, less the
    /// clock jumps after `jumped_ms` (the sum when the request was sent).
    promise: Option<(u64, u64)>,
    /// When a replica was first seen without the key.
    revoked_at_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Granting,
    Attaching,
    Renewing,
    /// Abandoned, refused or found gone: no more requests.
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    lease: usize,
    sent_ms: u64,
    jumped_ms: u64,
}

impl KeyspaceSim {
    /// Starts `config.leases` leases of 1 or 2 s, each abandoned at a
    /// random time within `horizon_ms` from now.
    pub(super) fn start_leases(&mut self, horizon_ms: u64) {
        for index in 0..self.config.leases {
            let abandon = self.now_ms + self.rng.random_range(0..=horizon_ms);
            self.leases.leases.push(SimLease {
                id: 1_000 + index as i64,
                ttl_s: self.rng.random_range(1..=2),
                key: format!("lease/{index}").into_bytes(),
                stage: Stage::Granting,
                attached: None,
                abandon_at_ms: abandon,
                next_renew_ms: 0,
                promise: None,
                revoked_at_ms: None,
            });
        }
    }

    /// Stops every renewal: the leases must now expire.
    pub(super) fn abandon_leases(&mut self) {
        self.leases.stopped = true;
    }

    /// The longest TTL of any lease, in ms.
    pub(super) fn lease_ttl_ms_max(&self) -> u64 {
        let max = self.leases.leases.iter().map(|l| l.ttl_s).max();
        max.unwrap_or(0) as u64 * 1_000
    }

    /// The lease client's turn: (re)sends grants, attaches and renewals
    /// that are due, each to a random running node.
    pub(super) fn leases_act(&mut self) {
        for index in 0..self.leases.leases.len() {
            let lease = &self.leases.leases[index];
            let waiting = self
                .leases
                .pending
                .values()
                .any(|p| p.lease == index && self.now_ms < p.sent_ms + RETRY_AFTER_MS);
            let call = match lease.stage {
                Stage::Done => continue,
                _ if waiting => continue,
                Stage::Granting => Call::Propose(Request::LeaseGrant(LeaseGrantRequest {
                    ttl: lease.ttl_s,
                    id: lease.id,
                })),
                // Every put's value is unique: the exactly-once checker
                // counts values.
                Stage::Attaching => Call::Propose(Request::Put(PutRequest {
                    key: lease.key.clone(),
                    value: format!("lease-{}", self.leases.next_request + 1).into_bytes(),
                    lease: lease.id,
                    ..PutRequest::default()
                })),
                Stage::Renewing if self.leases.stopped || self.now_ms >= lease.abandon_at_ms => {
                    self.leases.leases[index].stage = Stage::Done;
                    continue;
                }
                Stage::Renewing if self.now_ms < lease.next_renew_ms => continue,
                Stage::Renewing => Call::Ask(LeaseQuestion::Renew(lease.id)),
            };
            self.send_lease_request(index, call);
        }
    }

    fn send_lease_request(&mut self, lease: usize, call: Call) {
        let node = self.rng.random_range(0..self.nodes.len());
        if self.nodes[node].keyspace.is_none() {
            return;
        }
        self.leases.next_request += 1;
        let id = RequestId(LEASE_REQUEST_BASE + self.leases.next_request);
        let pending = Pending {
            lease,
            sent_ms: self.now_ms,
            jumped_ms: self.leases.jumped_ms,
        };
        self.leases.pending.insert(id, pending);
        self.nodes[node]
            .inbox
            .push_back(Inbound::Client { id, call });
        self.fold_trace(&[11, node as u8, lease as u8]);
    }

    /// Whether `id` is the lease client's.
    pub(super) fn is_lease_request(id: RequestId) -> bool {
        (LEASE_REQUEST_BASE..u64::MAX / 2).contains(&id.0)
    }

    /// A reply to the lease client.
    pub(super) fn lease_answered(&mut self, id: RequestId, result: Result<Reply, KeyspaceError>) {
        let Some(pending) = self.leases.pending.remove(&id) else {
            return;
        };
        let lease = &mut self.leases.leases[pending.lease];
        let ttl_s = match (lease.stage, result) {
            (Stage::Granting, Ok(Reply::Applied(Response::LeaseGrant(grant)))) => {
                lease.stage = Stage::Attaching;
                grant.ttl
            }
            (Stage::Attaching, Ok(Reply::Applied(Response::Put(put)))) => {
                lease.attached = put.header.map(|h| h.revision);
                lease.stage = Stage::Renewing;
                lease.next_renew_ms = self.now_ms;
                return;
            }
            (Stage::Renewing, Ok(Reply::Lease(ttl))) if ttl.ttl > 0 => ttl.ttl,
            // The lease is gone (it expired while cut off) or the put was
            // refused (it expired before the attach): nothing more to ask.
            (Stage::Renewing, Ok(Reply::Lease(_))) | (Stage::Attaching, Err(_)) => {
                lease.stage = Stage::Done;
                return;
            }
            // No leader, a timeout, a late answer to an earlier stage:
            // asked again when due.
            _ => return,
        };
        // The fastest allowed clock sees the TTL pass soonest.
        let rate = 1_000_000 + self.config.clock_rate_ppm_max;
        let ttl_ms = (ttl_s.max(0) as u64 * 1_000).saturating_mul(1_000_000) / rate;
        let until = pending.sent_ms + ttl_ms;
        if lease.promise.is_none_or(|(old, _)| until > old) {
            lease.promise = Some((until, pending.jumped_ms));
        }
        lease.next_renew_ms = self.now_ms + ttl_s.max(1) as u64 * 1_000 / 3;
    }

    /// The "never early" check, every [`CHECK_PERIOD_MS`]: a replica at or
    /// past a lease's attaching revision without its key has revoked it.
    pub(super) fn check_leases_now(&mut self) {
        if !self.now_ms.is_multiple_of(CHECK_PERIOD_MS) || self.leases.leases.is_empty() {
            return;
        }
        for index in 0..self.leases.leases.len() {
            let lease = &self.leases.leases[index];
            let Some(attached) = lease.attached else {
                continue;
            };
            if lease.revoked_at_ms.is_some() || !self.any_replica_revoked(&lease.key, attached) {
                continue;
            }
            self.leases.leases[index].revoked_at_ms = Some(self.now_ms);
            let lease = &self.leases.leases[index];
            if let Some((until, jumped_then)) = lease.promise {
                let jumps = self.leases.jumped_ms - jumped_then;
                if self.now_ms + jumps < until {
                    let detail = format!(
                        "lease {} (TTL {} s) was revoked at {} ms, before {until} ms, the \
                         earliest its last acknowledged renewal allows ({jumps} ms of clock \
                         jumps since)",
                        lease.id, lease.ttl_s, self.now_ms
                    );
                    let violation = self.violation("lease never early", detail);
                    self.seen.push(violation);
                }
            }
        }
    }

    fn any_replica_revoked(&self, key: &[u8], attached: i64) -> bool {
        self.nodes
            .iter()
            .filter_map(|n| n.keyspace.as_ref())
            .any(|keyspace| {
                let state = keyspace.state();
                if state.mvcc().revision() < attached {
                    return false;
                }
                let range = RangeRequest {
                    key: key.to_vec(),
                    ..RangeRequest::default()
                };
                state.range(&range).is_ok_and(|r| r.kvs.is_empty())
            })
    }

    /// The "eventually" check, for the end of a run that gave the leases
    /// time to expire: every attached lease's key is gone from every
    /// running replica.
    pub fn check_leases(&self) -> Result<(), Violation> {
        if let Some(violation) = self.seen.iter().find(|v| v.checker == "lease never early") {
            return Err(violation.clone());
        }
        for lease in &self.leases.leases {
            let Some(attached) = lease.attached else {
                continue;
            };
            for node in &self.nodes {
                let Some(keyspace) = node.keyspace.as_ref() else {
                    continue;
                };
                let held = keyspace.state().lessor().leases().contains(&lease.id);
                let range = RangeRequest {
                    key: lease.key.clone(),
                    ..RangeRequest::default()
                };
                let key = keyspace.state().range(&range).map(|r| r.kvs.len());
                if held
                    || key.is_ok_and(|n| n > 0) && keyspace.state().mvcc().revision() >= attached
                {
                    let detail = format!(
                        "lease {} (TTL {} s) outlived its last renewal on node {}",
                        lease.id, lease.ttl_s, node.id
                    );
                    return Err(self.violation("lease eventually", detail));
                }
            }
        }
        Ok(())
    }

    /// Leases the client attached a key to (for tests and reports).
    pub fn leases_attached(&self) -> usize {
        self.leases
            .leases
            .iter()
            .filter(|l| l.attached.is_some())
            .count()
    }

    /// Leases a replica was seen revoking while the run went on.
    pub fn leases_revoked_during_run(&self) -> usize {
        let revoked = self
            .leases
            .leases
            .iter()
            .filter(|l| l.revoked_at_ms.is_some());
        revoked.count()
    }
}
