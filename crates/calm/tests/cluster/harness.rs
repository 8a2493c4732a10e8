//! Real `calm node` processes on loopback, each behind a fault proxy.
//!
//! Every node advertises its proxy as its peer address, so all peer
//! traffic to a node passes its proxy. The proxy reads the transport's
//! handshake to learn which node dialled, and refuses or cuts connections
//! on blocked links: that is how the tests partition nodes, one way or both,
//! without root or network namespaces.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_client::{Client, ClientConfig};
use calm_transport::frame::FRAME_BYTES_MAX_DEFAULT;
use calm_transport::{Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The `calm` binary under test.
pub const CALM: &str = env!("CARGO_BIN_EXE_calm");

/// Links (from, to) whose traffic is dropped, by node index from 1.
#[derive(Clone, Default)]
pub struct Links {
    blocked: Arc<Mutex<HashSet<(u64, u64)>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Links {
    fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&self, left: &[u64], right: &[u64]) {
        {
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            for &a in left {
                for &b in right {
                    blocked.insert((a, b));
                    blocked.insert((b, a));
                }
            }
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.changed.send_modify(|generation| *generation += 1);
    }
}

/// Starts a proxy for node `to` on a free port, forwarding to `target`.
async fn proxy(to: u64, target: SocketAddr, links: Links) -> SocketAddr {
    // Another process may take the port between the check and this bind
    // (a second test run on the machine): take the next one then.
    let listener = loop {
        if let Ok(listener) = TcpListener::bind(free_port()).await {
            break listener;
        }
    };
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(relay(inbound, to, target, links.clone()));
        }
    });
    addr
}

/// Relays one connection unless its link is blocked; cuts it when the link
/// becomes blocked.
async fn relay(mut inbound: TcpStream, to: u64, target: SocketAddr, links: Links) {
    let mut head = Vec::new();
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
    let from = loop {
        let mut buffer = [0u8; 4096];
        let Ok(read) = inbound.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        head.extend_from_slice(&buffer[..read]);
        decoder.extend(&buffer[..read]);
        match decoder.next_frame() {
            Ok(Some(Frame::Handshake(handshake))) => break handshake.node.0,
            Ok(None) => continue,
            _ => return,
        }
    };
    if links.is_blocked(from, to) {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    if outbound.write_all(&head).await.is_err() {
        return;
    }
    let mut changed = links.changed.subscribe();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = async {
            loop {
                if changed.changed().await.is_err() || links.is_blocked(from, to) {
                    return;
                }
            }
        } => {}
    }
}

/// One node process and its addresses.
pub struct NodeProcess {
    /// The node's id (its index from 1).
    pub id: u64,
    /// Its client (gRPC) address.
    pub client: SocketAddr,
    /// Where its peer transport listens.
    pub peer: SocketAddr,
    /// The proxy in front of it, which it advertises.
    pub proxy: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of node processes.
pub struct Cluster {
    /// The nodes, by index (node id − 1).
    pub nodes: Vec<NodeProcess>,
    /// The fault proxies' link table.
    pub links: Links,
    /// Nodes 1 to `voters` vote in the coordinated keyspace; the others
    /// are outside it.
    voters: usize,
    _dir: tempfile::TempDir,
}

/// Ports handed out so far, counting up from a per-process base below
/// Linux's ephemeral range (32768 and up), so the kernel never gives one
/// of them to a socket bound to port 0 or to an outgoing connection, and
/// no two calls in this process return the same port.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback address on a port free now and never handed out before.
fn free_port() -> SocketAddr {
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    let _ = NEXT_PORT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_768, "ran out of test ports");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

impl Cluster {
    /// Starts `size` nodes: node 1 founds the cluster, the others join
    /// through its proxy. Returns once every node sees every node alive.
    pub async fn start(size: u64) -> Cluster {
        Cluster::start_with_voters(size, size as usize).await
    }

    /// Like [`start`](Self::start), with only nodes 1 to `voters` voting
    /// in the coordinated keyspace.
    pub async fn start_with_voters(size: u64, voters: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let links = Links::default();
        let mut nodes = Vec::new();
        for id in 1..=size {
            let peer = free_port();
            let proxy = proxy(id, peer, links.clone()).await;
            nodes.push(NodeProcess {
                id,
                client: free_port(),
                peer,
                proxy,
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                child: None,
            });
        }
        let mut cluster = Cluster {
            nodes,
            links,
            voters,
            _dir: dir,
        };
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index);
        }
        cluster.wait_until_formed().await;
        cluster
    }

    /// Starts (or restarts) node `index` on its data directory and ports.
    pub fn spawn(&mut self, index: usize) {
        let seed = self.nodes[0].proxy;
        let voters: Vec<String> = (1..=self.voters).map(|id| id.to_string()).collect();
        let voters = voters.join(",");
        let node = &mut self.nodes[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut command = Command::new(CALM);
        command
            .arg("node")
            .args(["--node-id", &node.id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--cluster", "test"])
            .args(["--listen-client", &node.client.to_string()])
            .args(["--listen-peer", &node.peer.to_string()])
            .args(["--advertise-peer", &node.proxy.to_string()])
            .args(["--listen-admin", "127.0.0.1:0"])
            .args(["--anti-entropy-interval-ms", "500"])
            .args(["--raft-voters", &voters])
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if node.id != 1 {
            command.args(["--seeds", &seed.to_string()]);
        }
        // The node reads its config from CALM_* variables too: the
        // caller's environment must not change what the tests run.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CALM_") {
                command.env_remove(name);
            }
        }
        node.child = Some(command.spawn().unwrap());
    }

    /// SIGKILL: no sync, no leave.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self, index: usize) -> std::process::ExitStatus {
        let mut child = self.nodes[index].child.take().expect("a running node");
        signal(&child, "-TERM");
        child.wait().unwrap()
    }

    /// Sends `name` (`-STOP`, `-CONT`, ...) to node `index`'s process.
    pub fn signal(&self, index: usize, name: &str) {
        if let Some(child) = &self.nodes[index].child {
            signal(child, name);
        }
    }

    /// Every client endpoint, comma-separated.
    pub fn endpoints(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(|n| n.client.to_string()).collect();
        all.join(",")
    }

    /// A client that talks to node `index` only.
    pub fn client(&self, index: usize) -> Client {
        let endpoint = self.nodes[index].client.to_string();
        Client::connect_with(
            &[endpoint],
            ClientConfig {
                timeout: Duration::from_secs(3),
                ..ClientConfig::default()
            },
        )
        .unwrap()
    }

    /// Waits until every node sees every node alive and owning a share of
    /// the ring (so every node has joined it and serves requests).
    pub async fn wait_until_formed(&self) {
        let size = self.nodes.len();
        for index in 0..self.nodes.len() {
            let client = self.client(index);
            let formed = eventually(Duration::from_secs(30), async || {
                client.members().await.is_ok_and(|members| {
                    members.len() == size
                        && members.iter().all(|m| {
                            m.state == calm_client::MemberState::Alive && m.ownership_fraction > 0.0
                        })
                })
            })
            .await;
            assert!(
                formed,
                "node {} did not see the cluster form\n{}",
                index + 1,
                self.logs()
            );
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all.push_str(&format!("--- node {} (last lines) ---\n", node.id));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// The data directory of node `index`.
    pub fn data_dir(&self, index: usize) -> &Path {
        &self.nodes[index].data_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends a signal by name (`-TERM`, `-STOP`, ...) to a child.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `check` every 100 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
