//! `calm bench usl --nodes`: one local cluster per node count, started as
//! `calm dev --nodes K`, benched at one concurrency and stopped before
//! the next starts, so N counts nodes.
//!
//! The cluster is a child process, not an in-process one: `calm dev`
//! already spawns, forms and stops nodes, and the bench stays free of the
//! server crates. `calm dev` prints `endpoints: LIST` once the cluster
//! has formed; the sweep waits for that line and stops the cluster with
//! SIGTERM (through `kill`, as the bench has no signal crate), which
//! `calm dev` handles by stopping its nodes; SIGKILL would orphan them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use indicatif::ProgressBar;

use super::sweep::{UslArgs, UslReport, UslStep};
use crate::args::BenchArgs;
use crate::error::BenchError;
use crate::{Target, bench};

/// How long a cluster gets to form and print its endpoints.
pub const FORMATION_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a cluster gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// The line `calm dev` prints once its cluster has formed.
const ENDPOINTS_PREFIX: &str = "endpoints: ";

/// A running `calm dev` child; stopped when dropped.
struct DevCluster {
    child: Child,
    endpoints: Vec<String>,
}

impl DevCluster {
    /// Starts `calm dev --nodes nodes` and waits for its endpoints.
    fn start(calm: &[OsString], nodes: u16) -> Result<DevCluster, BenchError> {
        let setup =
            |reason: String| BenchError::Setup(format!("calm dev --nodes {nodes}: {reason}"));
        let (program, leading) = calm
            .split_first()
            .ok_or_else(|| setup("no program to run".to_owned()))?;
        let mut child = Command::new(program)
            .args(leading)
            .args(["dev", "--nodes", &nodes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| setup(format!("cannot start {}: {error}", program.display())))?;
        let stdout = child.stdout.take();
        let mut cluster = DevCluster {
            child,
            endpoints: Vec::new(),
        };
        let stdout = stdout.ok_or_else(|| setup("no stdout".to_owned()))?;
        // A thread reads the lines, so the wait for them can time out.
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + FORMATION_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(list) = line.strip_prefix(ENDPOINTS_PREFIX) {
                        cluster.endpoints = list.split(',').map(str::to_owned).collect();
                        return Ok(cluster);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(setup(format!("no endpoints within {FORMATION_TIMEOUT:?}")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(setup("exited before the cluster formed".to_owned()));
                }
            }
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the one `--clients` concurrency against a fresh `calm dev`
/// cluster of each `--nodes` count, in order, and fits them. `calm` is
/// the command that runs the calm binary (the program, then any leading
/// arguments); `dev --nodes K` is appended. `target` gives the level and
/// the request timeout; its endpoints are replaced by each cluster's.
pub async fn usl_node_sweep(
    args: &UslArgs,
    calm: &[OsString],
    target: &Target,
    progress: impl Fn(&BenchArgs) -> ProgressBar,
) -> Result<UslReport, BenchError> {
    args.validate()?;
    let clients = args.clients.first().copied().unwrap_or(1);
    let step = args.step(clients);
    let mut steps = Vec::with_capacity(args.nodes.len());
    for &nodes in &args.nodes {
        // Starting blocks on the child's output: off the runtime's
        // workers.
        let owned = calm.to_vec();
        let cluster = tokio::task::spawn_blocking(move || DevCluster::start(&owned, nodes))
            .await
            .map_err(|error| BenchError::Setup(format!("calm dev --nodes {nodes}: {error}")))??;
        let cluster_target = Target {
            endpoints: cluster.endpoints.clone(),
            ..target.clone()
        };
        let bar = progress(&step);
        let outcome = bench(&step, &cluster_target, &bar).await;
        bar.finish_and_clear();
        // Stopped before the next starts (and on error), off the workers.
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
        steps.push(UslStep {
            n: usize::from(nodes),
            report: outcome?,
        });
    }
    Ok(UslReport::new("nodes", steps))
}
