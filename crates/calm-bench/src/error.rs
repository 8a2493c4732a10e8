//! Why a bench could not run: [`BenchError`]. Failed *operations* are not
//! errors of the bench; they are counted by gRPC code in the report.

use calm_client::ClientError;

/// Why a bench could not start. No operation was sent in any case.
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
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
