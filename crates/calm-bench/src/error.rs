//! Why a bench could not run: [`BenchError`]. Failed *operations* are not
//! errors of the bench; they are counted by gRPC code in the report.

use calm_client::ClientError;

/// Why a bench could not start. No measured operation was sent in any
/// case; only [`BenchError::Setup`] follows requests (the setup's own).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The arguments describe no valid run (a bound exceeded, a zero
    /// count).
    #[error("invalid bench: {0}")]
    InvalidPlan(String),
    /// The clients could not be built (a malformed endpoint, too many
    /// endpoints).
    #[error("cannot build the clients: {0}")]
    Client(#[from] ClientError),
    /// An etcd workload's endpoint is not a valid URI; nothing was sent.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// An etcd workload could not set up before measuring (create its
    /// watchers, grant its leases, read the revisions it compares with).
    /// Whatever it had created is released or left to expire (leases
    /// carry a TTL).
    #[error("cannot set up the workload: {0}")]
    Setup(String),
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
