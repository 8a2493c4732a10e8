//! `calm dev`: a local cluster of `calm node` child processes on loopback.
//!
//! Every node gets free loopback ports for its client, peer and admin
//! listeners, a data directory under one root (a temporary one unless
//! `--data-dir` is given) and a log file beside it. Node 1 founds the
//! cluster; the others join through it. Once every node reports the whole
//! cluster alive, `calm dev` prints the `endpoints:` line, an example
//! command and then a live status line; Ctrl-C or SIGTERM stops every node
//! with SIGTERM (a graceful leave) and waits for them.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use calm_client::{Client, ClientConfig};
use rustix::process::{Pid, Signal, kill_process};
use tokio::process::{Child, Command};

use crate::node::{multi_thread_runtime, terminated};

/// How long the nodes get to form the cluster before `calm dev` gives up.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the status line refreshes.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// The most nodes of a dev cluster that vote in Raft.
const RAFT_VOTERS: u16 = 5;

/// How long a node gets to leave gracefully before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The most nodes `calm dev` starts on one machine.
const NODES_MAX: u16 = 32;

/// Starts a local cluster on loopback.
#[derive(Debug, clap::Args)]
pub struct DevCommand {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=i64::from(NODES_MAX)))]
    nodes: u16,
    /// Keep the nodes' data here (reused on the next start) instead of a
    /// temporary directory removed on exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The replication factor N (at most the number of nodes).
    #[arg(long, default_value_t = 3)]
    replication_factor: usize,
    /// How often each node runs an anti-entropy round, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    anti_entropy_interval_ms: u64,
    /// More `calm node` flags for every node, after `--` (for example
    /// `calm dev -- --hedged-reads false`).
    #[arg(last = true, value_name = "NODE_FLAGS")]
    node_flags: Vec<String>,
}

/// One child node.
struct DevNode {
    index: u16,
    client: SocketAddr,
    child: Child,
    exited: Option<String>,
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub fn run(command: DevCommand) -> ExitCode {
    let Some(runtime) = multi_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(dev(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn dev(command: DevCommand) -> Result<(), String> {
    let nodes = command.nodes;
    let replication_factor = command.replication_factor.min(usize::from(nodes)).max(1);
    let (_temp, root) = match &command.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("calm-dev-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            let root = temp.path().to_path_buf();
            (Some(temp), root)
        }
    };
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let ports = free_ports(3 * usize::from(nodes))?;
    let mut children = Vec::with_capacity(usize::from(nodes));
    let seed = ports[1];
    // Up to five nodes all vote in the coordinated keyspace; beyond that
    // the first five do (more voters only slow every write).
    let voters: Vec<String> = (1..=nodes.min(RAFT_VOTERS))
        .map(|n| n.to_string())
        .collect();
    let voters = voters.join(",");
    for index in 0..nodes {
        let at = 3 * usize::from(index);
        let (client, peer, admin) = (ports[at], ports[at + 1], ports[at + 2]);
        let spawned = spawn_node(
            &root,
            index + 1,
            [client, peer, admin],
            (index > 0).then_some(seed),
            replication_factor,
            &command,
            &voters,
        );
        match spawned {
            Ok(child) => children.push(DevNode {
                index: index + 1,
                client,
                child,
                exited: None,
            }),
            Err(error) => {
                stop_all(&mut children).await;
                return Err(error);
            }
        }
    }
    let endpoints: Vec<String> = children.iter().map(|n| n.client.to_string()).collect();
    let client = Client::connect_with(
        &endpoints,
        ClientConfig {
            timeout: Duration::from_millis(800),
            ..ClientConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "starting {nodes} nodes; data and logs in {}",
        root.display()
    );
    let outcome = tokio::select! {
        formed = wait_for_cluster(&client, &mut children, nodes) => formed,
        () = terminated() => Err("interrupted before the cluster formed".to_string()),
    };
    if let Err(error) = outcome {
        stop_all(&mut children).await;
        return Err(error);
    }
    let list = endpoints.join(",");
    println!("endpoints: {list}");
    println!("try: calm --endpoints {list} counter incr hits --by 5");
    let _ = std::io::stdout().flush();
    tokio::select! {
        () = live_status(&client, &mut children) => {}
        () = terminated() => {}
    }
    eprintln!();
    eprintln!("stopping {nodes} nodes");
    stop_all(&mut children).await;
    Ok(())
}

/// Starts node `index` with its client, peer and admin ports.
fn spawn_node(
    root: &Path,
    index: u16,
    [client, peer, admin]: [SocketAddr; 3],
    seed: Option<SocketAddr>,
    replication_factor: usize,
    dev: &DevCommand,
    voters: &str,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the calm binary: {e}"))?;
    let log_path = root.join(format!("node-{index}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("node")
        .args(["--node-id", &index.to_string()])
        .arg("--data-dir")
        .arg(root.join(format!("node-{index}")))
        .args(["--cluster", "dev"])
        .args(["--listen-client", &client.to_string()])
        .args(["--listen-peer", &peer.to_string()])
        .args(["--listen-admin", &admin.to_string()])
        .args(["--replication-factor", &replication_factor.to_string()])
        .args(["--raft-voters", voters])
        .args([
            "--anti-entropy-interval-ms",
            &dev.anti_entropy_interval_ms.to_string(),
        ])
        .args(&dev.node_flags)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // A dev cluster must not outlive its parent's handle.
        .kill_on_drop(true);
    // Configuration from the caller's environment must not leak into the
    // dev nodes; each gets exactly the flags above.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CALM_") {
            command.env_remove(name);
        }
    }
    if let Some(seed) = seed {
        command.args(["--seeds", &seed.to_string()]);
    }
    command
        .spawn()
        .map_err(|e| format!("cannot start node {index}: {e}"))
}

/// Waits until every node answers and sees all `nodes` alive, each owning
/// a share of the ring (so each has joined it and serves requests).
async fn wait_for_cluster(
    client: &Client,
    children: &mut [DevNode],
    nodes: u16,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + FORMATION_TIMEOUT;
    loop {
        check_exits(children);
        if let Some(node) = children.iter().find(|n| n.exited.is_some()) {
            return Err(format!(
                "node {} exited during start ({}); see its log",
                node.index,
                node.exited.as_deref().unwrap_or("")
            ));
        }
        let mut formed = true;
        for i in 0..children.len() {
            formed &= node_sees_cluster(client, i, nodes).await;
        }
        // The coordinated keyspace is ready once every voter knows its
        // leader, so the first etcdctl command does not wait out an
        // election.
        for i in 0..children.len().min(usize::from(RAFT_VOTERS)) {
            formed = formed && node_knows_raft_leader(client, i).await;
        }
        if formed {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the cluster did not form within {}s",
                FORMATION_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the node at endpoint `index` sees `nodes` members, all alive
/// and owning part of the ring.
async fn node_sees_cluster(client: &Client, index: usize, nodes: u16) -> bool {
    let Ok(status) = client.status_of(index).await else {
        return false;
    };
    if status.members_alive != u32::from(nodes) {
        return false;
    }
    // Members come from whichever node answers; ask this one directly.
    let Some(endpoint) = client.endpoints().get(index).map(|e| e.to_string()) else {
        return false;
    };
    let Ok(single) = Client::connect(&[endpoint]) else {
        return false;
    };
    single.members().await.is_ok_and(|members| {
        members.len() == usize::from(nodes) && members.iter().all(|m| m.ownership_fraction > 0.0)
    })
}

/// Whether the voter at endpoint `index` knows a Raft leader (etcd's
/// Maintenance.Status).
async fn node_knows_raft_leader(client: &Client, index: usize) -> bool {
    use calm_proto::etcd::etcdserverpb::StatusRequest;
    use calm_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
    let Some(endpoint) = client.endpoints().get(index).map(|e| format!("http://{e}")) else {
        return false;
    };
    let Ok(mut maintenance) = MaintenanceClient::connect(endpoint).await else {
        return false;
    };
    maintenance
        .status(StatusRequest {})
        .await
        .is_ok_and(|status| status.into_inner().leader != 0)
}

/// Refreshes one status line until interrupted: each node's view of how
/// many members are alive and how many keys it holds.
async fn live_status(client: &Client, children: &mut [DevNode]) {
    let terminal = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        check_exits(children);
        let mut parts = Vec::with_capacity(children.len());
        for (i, node) in children.iter().enumerate() {
            let part = match (&node.exited, client.status_of(i).await) {
                (Some(status), _) => format!("n{} exited ({status})", node.index),
                (None, Ok(s)) => format!(
                    "n{} {}/{} alive, {} keys",
                    node.index, s.members_alive, s.members_total, s.keys
                ),
                (None, Err(_)) => format!("n{} not answering", node.index),
            };
            parts.push(part);
        }
        let line = format!("status: {}", parts.join(" | "));
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else if line != last {
            eprintln!("{line}");
        }
        last = line;
        tokio::time::sleep(STATUS_PERIOD).await;
    }
}

fn check_exits(children: &mut [DevNode]) {
    for node in children.iter_mut().filter(|n| n.exited.is_none()) {
        if let Ok(Some(status)) = node.child.try_wait() {
            node.exited = Some(status.to_string());
        }
    }
}

/// SIGTERM to every running node, then waits; a node still running after
/// the grace period is killed.
async fn stop_all(children: &mut [DevNode]) {
    for node in children.iter() {
        // tokio's `kill` sends SIGKILL; a graceful stop needs SIGTERM.
        if let Some(pid) = node.child.id().and_then(|id| Pid::from_raw(id as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
    }
    for node in children.iter_mut() {
        let waited = tokio::time::timeout(STOP_GRACE, node.child.wait()).await;
        if waited.is_err() {
            let _ = node.child.kill().await;
        }
    }
}

/// `count` distinct free loopback ports, found by binding port 0. They are
/// released before the nodes bind them; a race with another process is
/// possible but unlikely, and shows as a node failing to start.
fn free_ports(count: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find free ports: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}
