//! `calm node`: runs one server process until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use calm_server::config::{NodeArgs, NodeConfig};
use tracing_subscriber::EnvFilter;

/// Runs one calm node. Every flag has a `CALM_*` variable and a key of the
/// same name in the `--config` TOML file; flags win over variables, which
/// win over the file.
#[derive(Debug, clap::Args)]
pub struct NodeCommand {
    #[command(flatten)]
    args: NodeArgs,
}

/// Runs the node; the exit code says whether it started and stopped cleanly.
pub fn run(command: NodeCommand) -> ExitCode {
    let config = match NodeConfig::load(&command.args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("Error: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_level);
    let Some(runtime) = multi_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(serve(config))
}

async fn serve(config: NodeConfig) -> ExitCode {
    let server = match calm_server::server::start(&config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("Error: {error}");
            return ExitCode::FAILURE;
        }
    };
    terminated().await;
    tracing::info!("stop requested");
    server.stop().await;
    ExitCode::SUCCESS
}

/// A multi-threaded runtime (the node syncs to disk in place on one of
/// its workers), or `None` after printing why there is none.
pub fn multi_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("Error: cannot start the runtime: {error}");
            None
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs to stderr at `level` unless `RUST_LOG` says otherwise.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
