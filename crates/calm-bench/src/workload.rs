//! What the bench sends: the [`Workload`] trait the drivers call, what a
//! successful operation reports ([`Done`]), the [`Pool`] of clients that
//! spreads bench clients over the endpoints, and the workloads built on
//! `calm-client` ([`CounterWorkload`]). The workloads on etcd's API are in
//! `crate::etcd`.
//!
//! A new workload is a type implementing [`Workload`], a variant of
//! [`WorkloadName`] and one arm in `bench`; the drivers, key distributions
//! and reports need no change.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use calm_client::{Client, ClientConfig, ClientError, Code, KvOptions, Level};

/// One kind of operation, sent over and over by the drivers.
///
/// The driver picks the key (a number below the plan's key count) and
/// times the call; the workload turns the key number into a request, sends
/// it as bench client `client` and resolves when the answer is in.
/// Implementations are shared by every bench client, hence `&self`, `Send`
/// and `Sync`.
pub trait Workload: Send + Sync + 'static {
    /// Sends one operation for bench client `client` on key number `key`.
    fn operate(
        &self,
        client: usize,
        key: u64,
    ) -> impl Future<Output = Result<Done, OpError>> + Send;
}

/// What a successful operation tells the driver besides succeeding; most
/// workloads answer `Done::default()`: time the call, count nothing else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// The latency to record instead of the call's own, for a workload
    /// whose figure is one part of its operation (a watch event's delivery
    /// after the put that caused it was acknowledged). The open loop's
    /// correction does not apply to it: it is recorded as both latency and
    /// service time.
    pub latency: Option<Duration>,
    /// A label to count the operation under in the report's outcomes, and
    /// how many times (a transaction whose compare failed, once; an
    /// increment that succeeded after three failed compares, three times):
    /// a normal answer worth telling apart, not an error.
    pub outcome: Option<(&'static str, u64)>,
}

impl Done {
    /// Done, with `latency` recorded in place of the call's.
    pub fn with_latency(latency: Duration) -> Done {
        Done {
            latency: Some(latency),
            outcome: None,
        }
    }

    /// Done, and counted once under `outcome`.
    pub fn counted(outcome: &'static str) -> Done {
        Done::counted_times(outcome, 1)
    }

    /// Done, and counted `times` times under `outcome` (not at all for 0).
    pub fn counted_times(outcome: &'static str, times: u64) -> Done {
        Done {
            latency: None,
            outcome: (times > 0).then_some((outcome, times)),
        }
    }
}

/// A failed operation: the gRPC code it is counted under, and the
/// message, of which the report keeps the first per code.
#[derive(Clone, Debug, PartialEq)]
pub struct OpError {
    /// The gRPC status code (client-side failures map to the code a server
    /// would use; a timeout is `DEADLINE_EXCEEDED`).
    pub code: Code,
    /// For people.
    pub message: String,
}

impl From<ClientError> for OpError {
    fn from(error: ClientError) -> OpError {
        OpError {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// The workloads `calm bench --workload` offers: calm's own API, and
/// etcd's v3 API (`etcd-*`, and the counters at `--level linearizable`),
/// which runs against any endpoints serving it, calm's or an etcd
/// cluster's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadName {
    /// Increment by 1 of the chosen counter. At `--level` local, one,
    /// quorum or all: calm's CRDT `Counter.Increment`. At linearizable,
    /// which CRDTs do not offer: the counter an etcd user builds, an etcd
    /// key (`bench/etcd/counter/<n>`) holding a decimal i64, incremented by
    /// a `KV.Txn` that puts the value plus one if the key's mod revision
    /// is the one last seen and reads the key otherwise, retried with what
    /// it read until it succeeds. One operation is one successful
    /// increment, retries included in its latency; each failed compare is
    /// counted as `compare-failed`.
    CounterIncr,
    /// Read of the chosen counter: calm's CRDT `Counter.Get` at `--level`
    /// local, one, quorum or all; at linearizable, a linearizable etcd
    /// `KV.Range` of the `counter-incr` key, its decimal value parsed (an
    /// absent key is 0; a value that is not a decimal i64 is an error).
    CounterGet,
    /// `Kv.Put` of a `--value-bytes` value to the chosen key at `--level`
    /// one, quorum or all, with the context of the key's last write, so
    /// siblings stay bounded by the clients writing it at once.
    KvPut,
    /// `Kv.Get` of the chosen key at `--level` (run `kv-put` first for
    /// keys with values; absent keys are read too).
    KvGet,
    /// etcd `KV.Put` of a `--value-bytes` value to the chosen key.
    EtcdPut,
    /// etcd `KV.Range` of the chosen key, linearizable or serializable by
    /// `--consistency`.
    EtcdRange,
    /// etcd `KV.Txn`: compare-and-put on the chosen key (its mod revision
    /// as last seen; a failed compare reads the key instead and is counted
    /// as `compare-failed`).
    EtcdTxn,
    /// etcd `Watch`: one watcher per endpoint on the bench's prefix; each
    /// operation puts a key and records the time from the put's
    /// acknowledgement until every watcher has the event.
    EtcdWatchLatency,
    /// etcd `Lease.LeaseKeepAlive`: one granted lease and keep-alive stream
    /// per client; each operation is one keep-alive round trip.
    EtcdLeaseKeepalive,
}

impl WorkloadName {
    /// The name as the CLI spells it (`counter-incr`).
    pub fn name(self) -> &'static str {
        match self {
            WorkloadName::CounterIncr => "counter-incr",
            WorkloadName::CounterGet => "counter-get",
            WorkloadName::KvPut => "kv-put",
            WorkloadName::KvGet => "kv-get",
            WorkloadName::EtcdPut => "etcd-put",
            WorkloadName::EtcdRange => "etcd-range",
            WorkloadName::EtcdTxn => "etcd-txn",
            WorkloadName::EtcdWatchLatency => "etcd-watch-latency",
            WorkloadName::EtcdLeaseKeepalive => "etcd-lease-keepalive",
        }
    }

    /// Whether the workload speaks etcd's API whatever the level (and
    /// ignores `--level`).
    pub fn is_etcd(self) -> bool {
        !matches!(
            self,
            WorkloadName::CounterIncr
                | WorkloadName::CounterGet
                | WorkloadName::KvPut
                | WorkloadName::KvGet
        )
    }

    /// Whether the workload speaks etcd's API at `level`: the `etcd-*`
    /// workloads always, the counters at linearizable, where the counter is
    /// an etcd key in the coordinated keyspace.
    pub fn speaks_etcd(self, level: Level) -> bool {
        let counter = matches!(self, WorkloadName::CounterIncr | WorkloadName::CounterGet);
        self.is_etcd() || (counter && level == Level::Linearizable)
    }
}

/// One [`Client`] per endpoint, shared by the bench clients: bench client
/// `i` uses endpoint `i % E`, so every node takes load.
///
/// Each client lists all endpoints, its own first, so a node that stops
/// fails over instead of failing the rest of the run. A shared client is
/// one HTTP/2 connection carrying many concurrent calls, as gRPC clients
/// are used in production.
#[derive(Debug)]
pub struct Pool {
    clients: Vec<Arc<Client>>,
}

impl Pool {
    /// Builds one client per endpoint with `config`. Connections open on
    /// first use; this fails only on malformed endpoints or configuration,
    /// and must run inside a tokio runtime.
    pub fn connect(endpoints: &[String], config: &ClientConfig) -> Result<Pool, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let clients = (0..endpoints.len())
            .map(|first| {
                let rotated: Vec<&str> = endpoints[first..]
                    .iter()
                    .chain(&endpoints[..first])
                    .map(String::as_str)
                    .collect();
                Client::connect_with(&rotated, config.clone()).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool { clients })
    }

    /// The client bench client `client` sends through.
    pub fn client(&self, client: usize) -> &Client {
        &self.clients[client % self.clients.len()]
    }

    /// How many endpoints (and clients) the pool has.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Always false: a pool has at least one client.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// The counter operations: `Counter.Increment` by 1, or `Counter.Get`.
/// Both ignore the value size.
#[derive(Debug)]
pub struct CounterWorkload {
    pool: Pool,
    operation: CounterOperation,
}

/// Which counter RPC a [`CounterWorkload`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterOperation {
    /// `Counter.Increment` by 1.
    Increment,
    /// `Counter.Get`.
    Get,
}

impl CounterWorkload {
    /// The workload sending `operation` through `pool`.
    pub fn new(pool: Pool, operation: CounterOperation) -> CounterWorkload {
        CounterWorkload { pool, operation }
    }
}

impl Workload for CounterWorkload {
    async fn operate(&self, client: usize, key: u64) -> Result<Done, OpError> {
        let client = self.pool.client(client);
        let key = key_name("counter", key);
        match self.operation {
            CounterOperation::Increment => client.counter_increment(&key, 1).await.map(drop)?,
            CounterOperation::Get => client.counter_get(&key).await.map(drop)?,
        }
        Ok(Done::default())
    }
}

/// The `Kv` operations: a put carrying the context of the key's last
/// write (shared by the bench clients), or a get.
#[derive(Debug)]
pub struct KvWorkload {
    pool: Pool,
    put: Option<Vec<u8>>,
    /// The context each key's last write returned. A std Mutex, not a
    /// tokio one: it is held only to copy a context in or out.
    contexts: std::sync::Mutex<std::collections::HashMap<u64, Vec<u8>>>,
}

impl KvWorkload {
    /// Puts of `value_bytes`-long values (`Some`), or gets (`None`),
    /// through `pool`.
    pub fn new(pool: Pool, put_value_bytes: Option<usize>) -> KvWorkload {
        KvWorkload {
            pool,
            put: put_value_bytes.map(|bytes| vec![b'v'; bytes]),
            contexts: std::sync::Mutex::default(),
        }
    }

    fn contexts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Vec<u8>>> {
        self.contexts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Workload for KvWorkload {
    async fn operate(&self, client: usize, key: u64) -> Result<Done, OpError> {
        let client = self.pool.client(client);
        let name = key_name("kv", key);
        let Some(value) = &self.put else {
            client.kv_get(&name, &KvOptions::default()).await?;
            return Ok(Done::default());
        };
        let options = KvOptions {
            context: self.contexts().get(&key).cloned().unwrap_or_default(),
            ..KvOptions::default()
        };
        let written = client.kv_put(&name, value, &options).await?;
        self.contexts().insert(key, written.context);
        Ok(Done::default())
    }
}

/// The key bytes for key number `key` of a workload's `kind`
/// (`bench/counter/42`): every workload of one kind reads what the others
/// wrote, so `counter-get` after `counter-incr` reads live counters, and a
/// bench never touches keys outside `bench/`.
pub fn key_name(kind: &str, key: u64) -> String {
    format!("bench/{kind}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_match_the_cli_spelling() {
        use clap::ValueEnum;
        for workload in WorkloadName::value_variants() {
            let spelled = workload.to_possible_value().expect("no variant is skipped");
            assert_eq!(spelled.get_name(), workload.name());
            assert_eq!(workload.is_etcd(), workload.name().starts_with("etcd-"));
        }
    }

    #[test]
    fn counters_speak_etcd_at_linearizable_only_and_kv_never() {
        use WorkloadName::*;
        for level in Level::ALL {
            let linearizable = level == Level::Linearizable;
            assert_eq!(CounterIncr.speaks_etcd(level), linearizable, "{level:?}");
            assert_eq!(CounterGet.speaks_etcd(level), linearizable, "{level:?}");
            assert!(!KvPut.speaks_etcd(level) && !KvGet.speaks_etcd(level));
            assert!(EtcdPut.speaks_etcd(level) && EtcdTxn.speaks_etcd(level));
        }
    }

    #[test]
    fn key_names_are_namespaced_by_kind() {
        assert_eq!(key_name("counter", 42), "bench/counter/42");
        assert_ne!(key_name("counter", 1), key_name("register", 1));
    }

    #[tokio::test]
    async fn bench_clients_spread_round_robin_over_the_endpoints() {
        let endpoints: Vec<String> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .map(String::from)
            .into();
        let pool = Pool::connect(&endpoints, &ClientConfig::default()).expect("valid endpoints");
        assert_eq!(pool.len(), 3);
        for client in 0..7 {
            let chosen = pool.client(client);
            assert_eq!(chosen.current_endpoint(), endpoints[client % 3]);
            // The others follow, for failover.
            assert_eq!(chosen.endpoints().len(), 3);
        }
        assert_eq!(
            pool.client(1).endpoints(),
            ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]
        );
    }

    #[tokio::test]
    async fn an_empty_or_malformed_endpoint_list_is_refused() {
        let config = ClientConfig::default();
        assert!(matches!(
            Pool::connect(&[], &config),
            Err(ClientError::NoEndpoints)
        ));
        assert!(matches!(
            Pool::connect(&["no-port".to_owned()], &config),
            Err(ClientError::InvalidEndpoint { .. })
        ));
    }
}
