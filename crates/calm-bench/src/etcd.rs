//! The workloads on etcd's v3 gRPC API, which run against any endpoints
//! serving it: an etcd cluster, or calm, whose every node serves it on its
//! client port. [`EtcdChannels`] spreads the bench clients over the
//! endpoints; [`EtcdPut`] and [`EtcdRange`] send the single-key requests of
//! etcd's `benchmark put` and `benchmark range`; [`EtcdTxn`] (compare and
//! put), [`EtcdCounter`] (the linearizable counter, an optimistic
//! read-modify-write of a decimal value), [`EtcdWatchLatency`] (watch
//! delivery) and [`EtcdLeaseKeepAlive`] (lease renewal) keep state and
//! live in their own modules.
//!
//! Requests are built by plain functions ([`put_request`],
//! [`range_request`], [`txn_request`]) so that their shapes are tested
//! without a server; every call runs under the request timeout, and a call
//! that misses it counts as `DEADLINE_EXCEEDED`.

mod counter;
mod lease;
mod revisions;
mod txn;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use counter::{
    COUNTER_KIND, EtcdCounter, INCREMENT_ATTEMPTS_MAX, Incremented, counter_key,
    counter_key_number, counter_prefix, counter_value,
};
pub use lease::{EtcdLeaseKeepAlive, LEASE_TTL_S, check_keep_alive};
pub use txn::{COMPARE_FAILED, EtcdTxn, compare_and_put, failed_read, revision_after, txn_request};
pub use watch::{EtcdWatchLatency, WATCH_ID_BYTES, watch_create_request, watch_id, watch_value};

use crate::args::BenchArgs;
use crate::driver::{Measurement, Plan, drive};
use crate::error::BenchError;
use crate::workload::{CounterOperation, Done, OpError, Workload, WorkloadName, key_name};

/// `--consistency`: the guarantee of an etcd range, spelled as etcd's
/// `benchmark range --consistency` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// Linearizable: the answering member confirms with a quorum that it
    /// has applied everything committed (etcd's read index).
    #[value(name = "l", alias = "linearizable")]
    Linearizable,
    /// Serializable: the answering member's own applied state, possibly
    /// stale, with no round to the others.
    #[value(name = "s", alias = "serializable")]
    Serializable,
}

impl Consistency {
    /// The name the report's level column shows.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Serializable => "serializable",
        }
    }
}

/// The gRPC connections the bench clients of an etcd workload share.
///
/// Connection `j` goes to endpoint `j % endpoints` and bench client `i`
/// sends on connection `i % conns`, so with `conns` at least the endpoint
/// count every endpoint takes load (etcd's `benchmark --conns --clients`
/// shares connections the same way, though its connections balance over
/// all endpoints). A connection is one HTTP/2 connection multiplexing the
/// calls of its clients; it opens on first use and reconnects by itself.
#[derive(Clone, Debug)]
pub struct EtcdChannels {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    connect_timeout: Duration,
}

impl EtcdChannels {
    /// `conns` connections over `endpoints` (`host:port`, or a URI with
    /// its scheme). Fails on an empty list, a malformed endpoint or no
    /// connection; connections open lazily, so this sends nothing. Must run
    /// inside a tokio runtime.
    pub fn connect(
        endpoints: &[String],
        conns: usize,
        connect_timeout: Duration,
    ) -> Result<EtcdChannels, BenchError> {
        if endpoints.is_empty() {
            return Err(calm_client::ClientError::NoEndpoints.into());
        }
        if conns == 0 {
            return Err(BenchError::InvalidPlan(
                "--conns must be at least 1".to_owned(),
            ));
        }
        let channels = (0..conns)
            .map(|conn| channel_to(&endpoints[conn % endpoints.len()], connect_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EtcdChannels {
            endpoints: endpoints.to_vec(),
            channels,
            connect_timeout,
        })
    }

    /// The connection bench client `client` sends on (a cheap handle).
    pub fn channel(&self, client: usize) -> Channel {
        self.channels[client % self.channels.len()].clone()
    }

    /// The endpoint bench client `client`'s connection goes to.
    pub fn endpoint(&self, client: usize) -> &str {
        &self.endpoints[(client % self.channels.len()) % self.endpoints.len()]
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// How many shared connections there are.
    pub fn conns(&self) -> usize {
        self.channels.len()
    }

    /// A connection of its own to endpoint `endpoint % endpoints`, for a
    /// long-lived stream that should not share a connection with the
    /// clients' calls (a watcher).
    pub fn dedicated(&self, endpoint: usize) -> Result<Channel, BenchError> {
        channel_to(
            &self.endpoints[endpoint % self.endpoints.len()],
            self.connect_timeout,
        )
    }
}

/// A lazily connecting channel to `endpoint`.
fn channel_to(endpoint: &str, connect_timeout: Duration) -> Result<Channel, BenchError> {
    let invalid = |reason: String| BenchError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let port = authority.rsplit_once(':').map(|(_, port)| port);
    if port.is_none_or(|port| port.parse::<u16>().is_err()) {
        return Err(invalid("expected host:port".to_owned()));
    }
    let uri = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let channel = Endpoint::from_shared(uri)
        .map_err(|error| invalid(error.to_string()))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(channel)
}

/// Awaits `call` for at most `timeout`; a refusal becomes an [`OpError`]
/// with the status's code, a miss `DEADLINE_EXCEEDED`. Dropping the call
/// on a miss cancels it on the wire.
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(status)) => Err(status_error(&status)),
        Err(_) => Err(OpError {
            code: Code::DeadlineExceeded,
            message: format!("no answer within {timeout:?}"),
        }),
    }
}

/// A gRPC status as a failed operation.
pub(crate) fn status_error(status: &Status) -> OpError {
    OpError {
        code: status.code(),
        message: status.message().to_owned(),
    }
}

/// The kind in the KV workloads' key names: `etcd-put`, `etcd-range` and
/// `etcd-txn` share `bench/etcd/<n>`, so a range reads what a put wrote.
pub const KV_KIND: &str = "etcd";

/// The key bytes of KV key number `key`.
pub fn kv_key(key: u64) -> Vec<u8> {
    key_name(KV_KIND, key).into_bytes()
}

/// The prefix of every KV key (`bench/etcd/`).
pub fn kv_prefix() -> Vec<u8> {
    kind_prefix(KV_KIND)
}

/// The prefix of the keys [`key_name`] makes for `kind`.
pub(crate) fn kind_prefix(kind: &str) -> Vec<u8> {
    let mut key = key_name(kind, 0).into_bytes();
    // key_name ends with the key number, here the single digit 0.
    key.pop();
    key
}

/// The number of a KV key (`bench/etcd/42` is 42); `None` for any other
/// key.
pub fn kv_key_number(key: &[u8]) -> Option<u64> {
    kind_key_number(KV_KIND, key)
}

/// The number of a key [`key_name`] made for `kind`; `None` for any other
/// key (one of another kind, or with more after the prefix than a number).
pub(crate) fn kind_key_number(kind: &str, key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(kind_prefix(kind).as_slice())?)
        .ok()?
        .parse()
        .ok()
}

/// The end of the range of every key starting with `prefix` (etcd's
/// `--prefix`: the prefix with its last byte incremented, shorter past
/// 0xff bytes; `\0`, every key, when all bytes are 0xff).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A value of `bytes` seeded random bytes: incompressible, like etcd's
/// `benchmark put` values, and the same for the same seed.
pub fn bench_value(bytes: usize, seed: u64) -> Vec<u8> {
    use rand::Rng;
    let mut value = vec![0; bytes];
    StdRng::seed_from_u64(seed).fill_bytes(&mut value);
    value
}

/// `etcd-put`'s request: `value` to KV key `key`.
pub fn put_request(key: u64, value: &[u8]) -> PutRequest {
    PutRequest {
        key: kv_key(key),
        value: value.to_vec(),
        ..PutRequest::default()
    }
}

/// `etcd-range`'s request: KV key `key` alone, at `consistency`.
pub fn range_request(key: u64, consistency: Consistency) -> RangeRequest {
    RangeRequest {
        key: kv_key(key),
        serializable: consistency == Consistency::Serializable,
        ..RangeRequest::default()
    }
}

/// `etcd-put`: `KV.Put` of one fixed value to the chosen key.
#[derive(Debug)]
pub struct EtcdPut {
    channels: EtcdChannels,
    value: Vec<u8>,
    timeout: Duration,
}

impl EtcdPut {
    /// Puts `value` through `channels`, each call bounded by `timeout`.
    pub fn new(channels: EtcdChannels, value: Vec<u8>, timeout: Duration) -> EtcdPut {
        EtcdPut {
            channels,
            value,
            timeout,
        }
    }
}

impl Workload for EtcdPut {
    async fn operate(&self, client: usize, key: u64) -> Result<Done, OpError> {
        let mut kv = KvClient::new(self.channels.channel(client));
        within(self.timeout, kv.put(put_request(key, &self.value))).await?;
        Ok(Done::default())
    }
}

/// `etcd-range`: `KV.Range` of the chosen key.
#[derive(Debug)]
pub struct EtcdRange {
    channels: EtcdChannels,
    consistency: Consistency,
    timeout: Duration,
}

impl EtcdRange {
    /// Ranges at `consistency` through `channels`, each call bounded by
    /// `timeout`.
    pub fn new(channels: EtcdChannels, consistency: Consistency, timeout: Duration) -> EtcdRange {
        EtcdRange {
            channels,
            consistency,
            timeout,
        }
    }
}

impl Workload for EtcdRange {
    async fn operate(&self, client: usize, key: u64) -> Result<Done, OpError> {
        let mut kv = KvClient::new(self.channels.channel(client));
        within(self.timeout, kv.range(range_request(key, self.consistency))).await?;
        Ok(Done::default())
    }
}

/// The level the report shows for etcd workload `workload`: the range's
/// consistency, `linearizable` for writes (every etcd write goes through
/// Raft) and for the counter, whose reads are linearizable ranges whatever
/// `--consistency` says, `-` for watches and leases, which have no such
/// choice.
pub fn etcd_level(workload: WorkloadName, consistency: Consistency) -> &'static str {
    match workload {
        WorkloadName::EtcdRange => consistency.name(),
        WorkloadName::EtcdPut
        | WorkloadName::EtcdTxn
        | WorkloadName::CounterIncr
        | WorkloadName::CounterGet => Consistency::Linearizable.name(),
        _ => "-",
    }
}

/// Runs the etcd workload `args` names on `endpoints` under `plan`: sets it
/// up, drives it and releases what the setup took (leases). The counter
/// workloads run here as the linearizable counter (the caller sends them
/// here only at `--level linearizable`, see
/// [`WorkloadName::speaks_etcd`]). The caller reports it.
pub(crate) async fn measure(
    args: &BenchArgs,
    plan: &Plan,
    channels: EtcdChannels,
    timeout: Duration,
    progress: &ProgressBar,
) -> Result<Measurement, BenchError> {
    let value = bench_value(args.value_bytes, args.seed);
    match args.workload {
        WorkloadName::EtcdPut => {
            let workload = EtcdPut::new(channels, value, timeout);
            drive(Arc::new(workload), plan, progress).await
        }
        WorkloadName::EtcdRange => {
            let workload = EtcdRange::new(channels, args.consistency, timeout);
            drive(Arc::new(workload), plan, progress).await
        }
        WorkloadName::EtcdTxn => {
            let workload = EtcdTxn::start(channels, value, timeout, plan.keys.keys()).await?;
            drive(Arc::new(workload), plan, progress).await
        }
        WorkloadName::EtcdWatchLatency => {
            let workload = EtcdWatchLatency::start(channels, args.value_bytes, timeout).await?;
            drive(Arc::new(workload), plan, progress).await
        }
        WorkloadName::EtcdLeaseKeepalive => {
            let workload =
                Arc::new(EtcdLeaseKeepAlive::start(channels, plan.clients, timeout).await?);
            let measured = drive(workload.clone(), plan, progress).await;
            workload.revoke_all().await;
            measured
        }
        WorkloadName::CounterIncr | WorkloadName::CounterGet => {
            let operation = match args.workload {
                WorkloadName::CounterIncr => CounterOperation::Increment,
                _ => CounterOperation::Get,
            };
            let workload =
                EtcdCounter::start(channels, operation, timeout, plan.keys.keys()).await?;
            drive(Arc::new(workload), plan, progress).await
        }
        WorkloadName::KvPut | WorkloadName::KvGet => Err(BenchError::InvalidPlan(format!(
            "{} is not an etcd workload",
            args.workload.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(list: &[&str]) -> Vec<String> {
        list.iter().map(|e| (*e).to_owned()).collect()
    }

    #[tokio::test]
    async fn clients_spread_round_robin_over_connections_and_endpoints() {
        let three = endpoints(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        // One connection per endpoint: client i on endpoint i % 3.
        let shared = EtcdChannels::connect(&three, 3, Duration::from_secs(1)).expect("valid");
        assert_eq!(shared.conns(), 3);
        for client in 0..7 {
            assert_eq!(
                shared.endpoint(client),
                three[client % 3],
                "client {client}"
            );
        }
        // One connection per client: still endpoint i % 3.
        let own = EtcdChannels::connect(&three, 16, Duration::from_secs(1)).expect("valid");
        assert_eq!(own.conns(), 16);
        for client in 0..16 {
            assert_eq!(own.endpoint(client), three[client % 3], "client {client}");
        }
        // Fewer connections than endpoints: only the first ones take load.
        let one = EtcdChannels::connect(&three, 1, Duration::from_secs(1)).expect("valid");
        assert!((0..5).all(|client| one.endpoint(client) == three[0]));
    }

    #[tokio::test]
    async fn malformed_endpoints_and_empty_lists_are_refused() {
        let check = |list: &[&str], conns: usize, expected: &str| match EtcdChannels::connect(
            &endpoints(list),
            conns,
            Duration::from_secs(1),
        ) {
            Err(error) => assert!(error.to_string().contains(expected), "{list:?}: {error}"),
            Ok(_) => panic!("{list:?} should be refused"),
        };
        check(&[], 1, "no endpoint");
        check(&["no-port"], 1, "host:port");
        check(&["127.0.0.1:99999"], 1, "host:port");
        check(&["127.0.0.1:2379"], 0, "--conns");
        // A scheme is accepted, as etcdctl's endpoints carry one.
        assert!(
            EtcdChannels::connect(
                &endpoints(&["http://127.0.0.1:2379"]),
                1,
                Duration::from_secs(1)
            )
            .is_ok()
        );
    }

    #[test]
    fn puts_and_ranges_name_the_bench_key_and_carry_the_asked_shape() {
        let value = bench_value(64, 7);
        let put = put_request(42, &value);
        assert_eq!(put.key, b"bench/etcd/42");
        assert_eq!(put.value, value);
        // No lease, no previous value asked for: etcd benchmark's put.
        assert_eq!((put.lease, put.prev_kv), (0, false));

        let linearizable = range_request(42, Consistency::Linearizable);
        let serializable = range_request(42, Consistency::Serializable);
        assert_eq!(linearizable.key, b"bench/etcd/42");
        // A single key: no range end, no limit, values included.
        assert!(linearizable.range_end.is_empty());
        assert_eq!((linearizable.limit, linearizable.keys_only), (0, false));
        assert!(!linearizable.serializable);
        assert!(serializable.serializable);
    }

    #[test]
    fn values_are_seeded_and_of_the_asked_size() {
        assert_eq!(bench_value(0, 1), Vec::<u8>::new());
        assert_eq!(bench_value(1024, 1).len(), 1024);
        assert_eq!(bench_value(256, 1), bench_value(256, 1));
        assert_ne!(bench_value(256, 1), bench_value(256, 2));
    }

    #[test]
    fn kv_key_numbers_round_trip_and_foreign_keys_have_none() {
        assert_eq!(kv_prefix(), b"bench/etcd/");
        for key in [0, 7, 42, u64::MAX] {
            assert_eq!(kv_key_number(&kv_key(key)), Some(key));
        }
        assert_eq!(kv_key_number(b"bench/watch/1"), None);
        assert_eq!(kv_key_number(b"bench/etcd/"), None);
        assert_eq!(kv_key_number(b"bench/etcd/x1"), None);
    }

    #[test]
    fn prefix_ends_follow_etcds_rule() {
        // clientv3.GetPrefixRangeEnd.
        assert_eq!(prefix_end(b"bench/etcd/"), b"bench/etcd0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn the_level_column_says_what_guarantee_the_workload_had() {
        let l = Consistency::Linearizable;
        let s = Consistency::Serializable;
        assert_eq!(etcd_level(WorkloadName::EtcdRange, s), "serializable");
        assert_eq!(etcd_level(WorkloadName::EtcdRange, l), "linearizable");
        // --consistency is for ranges; writes are linearizable regardless.
        assert_eq!(etcd_level(WorkloadName::EtcdPut, s), "linearizable");
        assert_eq!(etcd_level(WorkloadName::EtcdTxn, s), "linearizable");
        // The counter reads linearizably whatever --consistency says.
        assert_eq!(etcd_level(WorkloadName::CounterIncr, s), "linearizable");
        assert_eq!(etcd_level(WorkloadName::CounterGet, s), "linearizable");
        assert_eq!(etcd_level(WorkloadName::EtcdWatchLatency, l), "-");
    }
}
