//! What the bench sends: the [`Workload`] trait the drivers call, the
//! [`Pool`] of clients that spreads bench clients over the endpoints, and
//! the workloads built on `calm-client` ([`CounterWorkload`]).
//!
//! A new workload is a type implementing [`Workload`], a variant of
//! [`WorkloadName`] and one arm in `run`; the drivers, key distributions
//! and reports need no change.

use std::future::Future;
use std::sync::Arc;

use calm_client::{Client, ClientConfig, ClientError, Code};

/// One kind of operation, sent over and over by the drivers.
///
/// The driver picks the key (a number below the plan's key count) and
/// times the call; the workload turns the key number into a request, sends
/// it as bench client `client` and resolves when the answer is in.
/// Implementations are shared by every bench client, hence `&self`, `Send`
/// and `Sync`.
pub trait Workload: Send + Sync + 'static {
    /// Sends one operation for bench client `client` on key number `key`.
    fn operate(&self, client: usize, key: u64) -> impl Future<Output = Result<(), OpError>> + Send;
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

/// The workloads `calm bench --workload` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadName {
    /// `Counter.Increment` by 1 on the chosen key.
    CounterIncr,
    /// `Counter.Get` of the chosen key.
    CounterGet,
}

impl WorkloadName {
    /// The name as the CLI spells it (`counter-incr`).
    pub fn name(self) -> &'static str {
        match self {
            WorkloadName::CounterIncr => "counter-incr",
            WorkloadName::CounterGet => "counter-get",
        }
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
    async fn operate(&self, client: usize, key: u64) -> Result<(), OpError> {
        let client = self.pool.client(client);
        let key = key_name("counter", key);
        match self.operation {
            CounterOperation::Increment => client.counter_increment(&key, 1).await.map(drop)?,
            CounterOperation::Get => client.counter_get(&key).await.map(drop)?,
        }
        Ok(())
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
