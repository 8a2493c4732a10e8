//! The configuration of `calm node`: every key, its default and its bound,
//! and how the layers combine.
//!
//! A key is read from four layers, each overriding the one before:
//! defaults, the TOML file named by `--config`, a `CALM_*` environment
//! variable, and a command-line flag. The file uses the same kebab-case names
//! as the flags (`listen-client = "127.0.0.1:2379"`), and a variable is the
//! flag's name in screaming snake case after `CALM_` (`CALM_LISTEN_CLIENT`).
//! clap merges the last two layers into [`NodeArgs`]; [`NodeConfig::load`]
//! lays them over the first two and checks the result.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use calm_replica::coordinator::Quorum;
use calm_replica::kv::KvLimits;
use calm_replica::{MESSAGE_KEY_BYTES_MAX, ReplicaConfig};
use calm_types::NodeId;
use serde::{Deserialize, Serialize};

use calm_raft::{RaftConfig, StateConfig};

use crate::node::{CoordinationOptions, NODE_ID_MAX, QuorumOptions};

/// The most replicas a key may have (`replication-factor`).
pub const REPLICATION_FACTOR_MAX: usize = 7;

/// The longest a write may wait for others to share its sync
/// (`sync-max-delay-ms`): beyond it, batching buys little throughput and
/// costs every write latency.
pub const SYNC_MAX_DELAY_MS_MAX: u64 = 100;

/// The longest a request may wait for its causal token to be seen
/// (`catch-up-wait-ms`); clients' deadlines are shorter than this.
pub const CATCH_UP_WAIT_MS_MAX: u64 = 60_000;

/// The most seed addresses (`seeds`): a handful is enough to join.
pub const SEEDS_MAX: usize = 64;

/// The longest cluster name (`cluster`), in bytes; it travels in every
/// peer handshake.
pub const CLUSTER_BYTES_MAX: usize = 64;

/// The longest node label (`name`), in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// The most Raft voters (`raft-voters`): every write waits for a majority
/// of them, so more buys fault tolerance at the price of latency.
pub const RAFT_VOTERS_MAX: usize = 7;

/// The accepted values of `log-level`, least to most verbose.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Everything `calm node` is configured with. Keys are kebab-case in TOML;
/// a key left out keeps its default. Check a value built by hand with
/// [`NodeConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NodeConfig {
    /// A human label for this node, shown next to its id.
    pub name: Option<String>,
    /// This node's id, in `1..=2^63-1`. If unset, the node draws one on its
    /// first start and records it in the data directory.
    pub node_id: Option<u64>,
    /// Where the node keeps its data store. Default `./calm-data`.
    pub data_dir: PathBuf,
    /// The cluster name; peers of another cluster are refused. Default `calm`.
    pub cluster: String,
    /// Where the gRPC client API listens. Default `127.0.0.1:2379`.
    pub listen_client: SocketAddr,
    /// Where the peer transport listens. Default `127.0.0.1:2380`.
    pub listen_peer: SocketAddr,
    /// Where the HTTP admin endpoints (`/metrics`, `/readyz`, ...) listen.
    /// Default `127.0.0.1:2381`, etcd's metrics port.
    pub listen_admin: SocketAddr,
    /// The client address other members forward requests to; the listen
    /// address if unset.
    pub advertise_client: Option<SocketAddr>,
    /// The peer address other members dial; the listen address if unset.
    pub advertise_peer: Option<SocketAddr>,
    /// Peer addresses of existing members to join through; empty to found a
    /// new cluster.
    pub seeds: Vec<SocketAddr>,
    /// N: how many replicas each key has, `1..=7`. Default 3.
    pub replication_factor: usize,
    /// How often anti-entropy runs a round with one peer; 0 disables it.
    /// Default 10,000.
    pub anti_entropy_interval_ms: u64,
    /// Group commit: the longest a write waits for others to share its
    /// sync, at most 100. Default 0: sync as soon as the loop is idle.
    pub sync_max_delay_ms: u64,
    /// How long a request whose causal token is not yet covered waits for
    /// catch-up before failing, at most 60,000. Default 100.
    pub catch_up_wait_ms: u64,
    /// Longest key accepted, `1..=4096` bytes. Default 1,024.
    pub key_bytes_max: usize,
    /// Longest element, value or field name accepted, in bytes, at most the
    /// replica's object bound (1 MiB). Default 65,536.
    pub payload_bytes_max: usize,
    /// Most keys this node holds, at least 1. Default 1,000,000.
    pub keys_max: usize,
    /// One of `error`, `warn`, `info`, `debug`, `trace`. Default `info`.
    pub log_level: String,
    /// How long shutdown waits for in-flight work and queued peer messages.
    /// Default 5,000.
    pub shutdown_grace_ms: u64,
    /// Node ids of the coordinated keyspace's Raft voters (1 to 7; 3 or 5
    /// in production), the same list on every node. Empty: this node alone
    /// if it has no seeds (a one-node cluster), else no coordinated
    /// keyspace. Default empty.
    pub raft_voters: Vec<u64>,
    /// Milliseconds per Raft tick (heartbeat interval). Default 100.
    pub raft_tick_ms: u64,
    /// Ticks without a heartbeat before a follower campaigns (etcd's
    /// election timeout is 10 heartbeats). Default 10.
    pub raft_election_ticks: usize,
    /// Applied entries between state snapshots and Raft log compactions
    /// (etcd's `--snapshot-count`). Default 100,000, as etcd 3.4.
    pub snapshot_count: u64,
    /// The coordinated keyspace's size quota in bytes (etcd's
    /// `--quota-backend-bytes`). Default 2 GiB.
    pub quota_backend_bytes: u64,
    /// Serve linearizable reads on the leader's lease instead of a quorum
    /// round (Raft's lease reads): one round trip less, but correct only
    /// while clocks drift less than the election timeout and no process
    /// pauses: a leader frozen past an election resumes trusting its lease
    /// and answers stale reads (shown by calm-sim's
    /// `lease_based_reads_turn_stale_when_a_frozen_leader_resumes`).
    /// Default false.
    pub raft_lease_reads: bool,
    /// Whether `one`/`quorum`/`all` writes may use fallback nodes holding
    /// hints when an owner is down (Dynamo's sloppy quorum). Without it a
    /// write needs W of the key's natural owners up. Default true.
    pub sloppy_quorum: bool,
    /// The most bytes of hints this node keeps for down owners; at the
    /// bound, new hints are refused and those writes need their acks
    /// elsewhere. At least 1 MiB. Default 64 MiB.
    pub hint_bytes_max: u64,
    /// Whether a `one`/`quorum`/`all` read asks one more replica when an
    /// answer is slower than the recent p95 replica latency (hedging).
    /// Default true.
    pub hedged_reads: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let replica = ReplicaConfig::new(NodeId::default());
        NodeConfig {
            name: None,
            node_id: None,
            data_dir: PathBuf::from("./calm-data"),
            cluster: "calm".to_owned(),
            listen_client: SocketAddr::from(([127, 0, 0, 1], 2379)),
            listen_peer: SocketAddr::from(([127, 0, 0, 1], 2380)),
            listen_admin: SocketAddr::from(([127, 0, 0, 1], 2381)),
            advertise_client: None,
            advertise_peer: None,
            seeds: Vec::new(),
            replication_factor: replica.replication_factor,
            anti_entropy_interval_ms: 10_000,
            sync_max_delay_ms: 0,
            catch_up_wait_ms: replica.catch_up_wait_ms,
            key_bytes_max: replica.key_bytes_max,
            payload_bytes_max: replica.payload_bytes_max,
            keys_max: replica.keys_max,
            log_level: "info".to_owned(),
            shutdown_grace_ms: 5_000,
            raft_voters: Vec::new(),
            raft_tick_ms: 100,
            raft_election_ticks: 10,
            snapshot_count: 100_000,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            raft_lease_reads: false,
            sloppy_quorum: true,
            hint_bytes_max: QuorumOptions::default().hint_bytes_max,
            hedged_reads: true,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file is not TOML, names an unknown key, or gives a key a value
    /// of the wrong type.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file; `<string>` for [`NodeConfig::from_toml_str`].
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// A key's value is outside its bound or contradicts another key.
    #[error("{message}")]
    Invalid {
        /// The kebab-case key at fault.
        key: &'static str,
        /// A sentence naming the key, its value and the bound.
        message: String,
    },
}

impl NodeConfig {
    /// The configuration `calm node` runs with: defaults, overridden by the
    /// file `args.config` names (if any), overridden by every key `args`
    /// sets (clap has already let flags win over `CALM_*` variables); then
    /// checked with [`NodeConfig::validate`].
    pub fn load(args: &NodeArgs) -> Result<NodeConfig, ConfigError> {
        let mut config = match &args.config {
            Some(path) => read_file(path)?,
            None => NodeConfig::default(),
        };
        args.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text into a configuration; keys left out keep their
    /// defaults, and an unknown key is an error naming it. The values are
    /// not checked: call [`NodeConfig::validate`], or use
    /// [`NodeConfig::load`], which does.
    pub fn from_toml_str(text: &str) -> Result<NodeConfig, ConfigError> {
        parse(text, Path::new("<string>"))
    }

    /// Checks every bound and every rule between keys; the error names the
    /// first key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_identity()?;
        self.validate_addresses()?;
        self.validate_bounds()
    }

    /// The replica core's configuration for `node`: this configuration's
    /// keys over [`ReplicaConfig::new`]'s defaults.
    pub fn replica_config(&self, node: NodeId) -> ReplicaConfig {
        ReplicaConfig {
            replication_factor: self.replication_factor,
            key_bytes_max: self.key_bytes_max,
            payload_bytes_max: self.payload_bytes_max,
            keys_max: self.keys_max,
            catch_up_wait_ms: self.catch_up_wait_ms,
            ..ReplicaConfig::new(node)
        }
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.name {
            check_text("name", name, NAME_BYTES_MAX)?;
        }
        if let Some(node_id) = self.node_id {
            check_range("node-id", node_id, 1, NODE_ID_MAX)?;
        }
        check_text("cluster", &self.cluster, CLUSTER_BYTES_MAX)?;
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(invalid(
                "log-level",
                format!(
                    "log-level = {:?} is not one of {}",
                    self.log_level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn validate_addresses(&self) -> Result<(), ConfigError> {
        check_advertised(
            ("listen-client", self.listen_client),
            ("advertise-client", self.advertise_client),
        )?;
        check_advertised(
            ("listen-peer", self.listen_peer),
            ("advertise-peer", self.advertise_peer),
        )?;
        let listeners = [
            ("listen-client", self.listen_client),
            ("listen-peer", self.listen_peer),
            ("listen-admin", self.listen_admin),
        ];
        for (index, (key, addr)) in listeners.iter().enumerate() {
            // Port 0 asks the OS for a free port, so two of them never clash.
            let clash = listeners[..index]
                .iter()
                .find(|(_, other)| addr.port() != 0 && other == addr);
            if let Some((other_key, _)) = clash {
                return Err(invalid(
                    key,
                    format!("{key} = {addr} is also {other_key}; each listener needs its own"),
                ));
            }
        }
        if self.seeds.len() > SEEDS_MAX {
            return Err(invalid(
                "seeds",
                format!(
                    "seeds lists {} addresses, more than {SEEDS_MAX}",
                    self.seeds.len()
                ),
            ));
        }
        if let Some(seed) = self.seeds.iter().find(|seed| !dialable(**seed)) {
            return Err(invalid(
                "seeds",
                format!("seeds: {seed} is not an address a node can dial"),
            ));
        }
        Ok(())
    }

    fn validate_bounds(&self) -> Result<(), ConfigError> {
        let object_bytes_max = ReplicaConfig::new(NodeId::default()).object_bytes_max;
        check_range(
            "replication-factor",
            self.replication_factor,
            1,
            REPLICATION_FACTOR_MAX,
        )?;
        check_range(
            "sync-max-delay-ms",
            self.sync_max_delay_ms,
            0,
            SYNC_MAX_DELAY_MS_MAX,
        )?;
        check_range(
            "catch-up-wait-ms",
            self.catch_up_wait_ms,
            0,
            CATCH_UP_WAIT_MS_MAX,
        )?;
        check_range(
            "key-bytes-max",
            self.key_bytes_max,
            1,
            MESSAGE_KEY_BYTES_MAX,
        )?;
        // A payload that cannot fit an object could never be written.
        check_range(
            "payload-bytes-max",
            self.payload_bytes_max,
            1,
            object_bytes_max,
        )?;
        if self.keys_max == 0 {
            return Err(invalid(
                "keys-max",
                "keys-max = 0 must be at least 1".to_owned(),
            ));
        }
        self.validate_raft()
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        check_range("raft-voters", self.raft_voters.len(), 0, RAFT_VOTERS_MAX)?;
        let mut voters = self.raft_voters.clone();
        voters.sort_unstable();
        voters.dedup();
        if voters.len() != self.raft_voters.len() || voters.contains(&0) {
            return Err(invalid(
                "raft-voters",
                format!(
                    "raft-voters = {:?} must list distinct node ids, none 0",
                    self.raft_voters
                ),
            ));
        }
        check_range("raft-tick-ms", self.raft_tick_ms, 10, 1_000)?;
        check_range("raft-election-ticks", self.raft_election_ticks, 3, 100)?;
        check_range("snapshot-count", self.snapshot_count, 100, u64::MAX)?;
        check_range("hint-bytes-max", self.hint_bytes_max, 1024 * 1024, u64::MAX)?;
        check_range(
            "quota-backend-bytes",
            self.quota_backend_bytes,
            1024 * 1024,
            u64::MAX,
        )
    }

    /// The `one`/`quorum`/`all` levels' options: N is the replication
    /// factor, and `LEVEL_QUORUM` reads and writes a majority of it.
    pub fn quorum_options(&self) -> QuorumOptions {
        let n = self.replication_factor;
        let majority = n / 2 + 1;
        // Invariant: `validate` bounds the replication factor to 1..=7, and
        // a majority of it is within 1..=n.
        let quorum = Quorum::new(n, majority, majority).expect("a validated replication factor");
        let limits = KvLimits {
            key_bytes_max: self.key_bytes_max,
            ..KvLimits::default()
        };
        QuorumOptions {
            quorum,
            sloppy_quorum: self.sloppy_quorum,
            limits,
            hint_bytes_max: self.hint_bytes_max,
            hedged_reads: self.hedged_reads,
        }
    }

    /// The coordinated keyspace's options for `node`, or `None` when this
    /// configuration runs none (no voters listed and seeds given).
    pub fn coordination_options(&self, node: NodeId) -> Option<CoordinationOptions> {
        let voters: Vec<NodeId> = if self.raft_voters.is_empty() {
            if !self.seeds.is_empty() {
                return None;
            }
            vec![node]
        } else {
            self.raft_voters.iter().copied().map(NodeId).collect()
        };
        let raft = RaftConfig {
            election_tick: self.raft_election_ticks,
            lease_reads: self.raft_lease_reads,
            ..RaftConfig::new(node.0)
        };
        Some(CoordinationOptions {
            voters,
            raft,
            tick_ms: self.raft_tick_ms,
            snapshot_count: self.snapshot_count,
            state: StateConfig {
                quota_bytes: self.quota_backend_bytes,
                ..StateConfig::default()
            },
        })
    }
}

fn read_file(path: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
    toml::from_str(text).map_err(|error: toml::de::Error| ConfigError::Parse {
        path: path.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    })
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

fn check_range<T>(key: &'static str, value: T, min: T, max: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{key} = {value} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

fn check_text(key: &'static str, text: &str, bytes_max: usize) -> Result<(), ConfigError> {
    if text.is_empty() || text.len() > bytes_max {
        return Err(invalid(
            key,
            format!(
                "{key} = {text:?} is {} bytes long, outside 1..={bytes_max}",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// Other nodes must be able to reach what a node advertises: an
/// unspecified listen address (all interfaces) names no one address, so it
/// needs an explicit advertise address, and that must be dialable.
fn check_advertised(
    (listen_key, listen): (&'static str, SocketAddr),
    (advertise_key, advertise): (&'static str, Option<SocketAddr>),
) -> Result<(), ConfigError> {
    match advertise {
        None if listen.ip().is_unspecified() => Err(invalid(
            advertise_key,
            format!(
                "{advertise_key} is required when {listen_key} is unspecified ({})",
                listen.ip()
            ),
        )),
        Some(addr) if !dialable(addr) => Err(invalid(
            advertise_key,
            format!("{advertise_key} = {addr} is not an address other nodes can dial"),
        )),
        _ => Ok(()),
    }
}

fn dialable(addr: SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0
}

/// The flags of `calm node`: one per configuration key, each also read
/// from its `CALM_*` environment variable (a flag wins over its variable),
/// plus `--config`. A key left unset keeps the file's value or the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct NodeArgs {
    /// A TOML file of configuration keys (the flags' names without `--`).
    #[arg(long, env = "CALM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A human label for this node.
    #[arg(long, env = "CALM_NAME")]
    pub name: Option<String>,
    /// This node's id, 1..=2^63-1; drawn and recorded on first start if unset.
    #[arg(long, env = "CALM_NODE_ID")]
    pub node_id: Option<u64>,
    /// Where the node keeps its data [default: ./calm-data].
    #[arg(long, env = "CALM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The cluster name peers must share [default: calm].
    #[arg(long, env = "CALM_CLUSTER")]
    pub cluster: Option<String>,
    /// Where the gRPC client API listens [default: 127.0.0.1:2379].
    #[arg(long, env = "CALM_LISTEN_CLIENT", value_name = "ADDR")]
    pub listen_client: Option<SocketAddr>,
    /// Where the peer transport listens [default: 127.0.0.1:2380].
    #[arg(long, env = "CALM_LISTEN_PEER", value_name = "ADDR")]
    pub listen_peer: Option<SocketAddr>,
    /// Where /metrics, /livez, /readyz and /status listen [default: 127.0.0.1:2381].
    #[arg(long, env = "CALM_LISTEN_ADMIN", value_name = "ADDR")]
    pub listen_admin: Option<SocketAddr>,
    /// The client address other members forward to [default: listen-client].
    #[arg(long, env = "CALM_ADVERTISE_CLIENT", value_name = "ADDR")]
    pub advertise_client: Option<SocketAddr>,
    /// The peer address other members dial [default: listen-peer].
    #[arg(long, env = "CALM_ADVERTISE_PEER", value_name = "ADDR")]
    pub advertise_peer: Option<SocketAddr>,
    /// Peer addresses of existing members, comma-separated.
    #[arg(
        long,
        env = "CALM_SEEDS",
        value_name = "ADDR,...",
        value_delimiter = ','
    )]
    pub seeds: Option<Vec<SocketAddr>>,
    /// Replicas per key, 1..=7 [default: 3].
    #[arg(long, env = "CALM_REPLICATION_FACTOR", value_name = "N")]
    pub replication_factor: Option<usize>,
    /// Milliseconds between anti-entropy rounds; 0 disables [default: 10000].
    #[arg(long, env = "CALM_ANTI_ENTROPY_INTERVAL_MS", value_name = "MS")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Longest a write waits to share a sync, 0..=100 ms [default: 0].
    #[arg(long, env = "CALM_SYNC_MAX_DELAY_MS", value_name = "MS")]
    pub sync_max_delay_ms: Option<u64>,
    /// Longest a request waits for its causal token, in ms [default: 100].
    #[arg(long, env = "CALM_CATCH_UP_WAIT_MS", value_name = "MS")]
    pub catch_up_wait_ms: Option<u64>,
    /// Longest key accepted, in bytes [default: 1024].
    #[arg(long, env = "CALM_KEY_BYTES_MAX", value_name = "BYTES")]
    pub key_bytes_max: Option<usize>,
    /// Longest element, value or field name accepted, in bytes [default: 65536].
    #[arg(long, env = "CALM_PAYLOAD_BYTES_MAX", value_name = "BYTES")]
    pub payload_bytes_max: Option<usize>,
    /// Most keys this node holds [default: 1000000].
    #[arg(long, env = "CALM_KEYS_MAX", value_name = "N")]
    pub keys_max: Option<usize>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long, env = "CALM_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// How long shutdown waits for in-flight work, in ms [default: 5000].
    #[arg(long, env = "CALM_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Node ids of the Raft voters, comma-separated [default: this node
    /// alone when it has no seeds].
    #[arg(
        long,
        env = "CALM_RAFT_VOTERS",
        value_name = "ID,...",
        value_delimiter = ','
    )]
    pub raft_voters: Option<Vec<u64>>,
    /// Milliseconds per Raft tick, 10..=1000 [default: 100].
    #[arg(long, env = "CALM_RAFT_TICK_MS", value_name = "MS")]
    pub raft_tick_ms: Option<u64>,
    /// Raft ticks per election timeout, 3..=100 [default: 10].
    #[arg(long, env = "CALM_RAFT_ELECTION_TICKS", value_name = "N")]
    pub raft_election_ticks: Option<usize>,
    /// Applied entries between snapshots, 100.. [default: 100000].
    #[arg(long, env = "CALM_SNAPSHOT_COUNT", value_name = "N")]
    pub snapshot_count: Option<u64>,
    /// The coordinated keyspace's quota in bytes [default: 2147483648].
    #[arg(long, env = "CALM_QUOTA_BACKEND_BYTES", value_name = "BYTES")]
    pub quota_backend_bytes: Option<u64>,
    /// Linearizable reads on the leader's lease, not a quorum round; a
    /// leader paused (SIGSTOP, GC, VM) past an election can serve stale
    /// reads (true|false) [default: false].
    #[arg(long, env = "CALM_RAFT_LEASE_READS", value_name = "BOOL")]
    pub raft_lease_reads: Option<bool>,
    /// one/quorum/all writes may use fallbacks holding hints while an
    /// owner is down (true|false) [default: true].
    #[arg(long, env = "CALM_SLOPPY_QUORUM", value_name = "BOOL")]
    pub sloppy_quorum: Option<bool>,
    /// Most bytes of hints kept for down owners [default: 67108864].
    #[arg(long, env = "CALM_HINT_BYTES_MAX", value_name = "BYTES")]
    pub hint_bytes_max: Option<u64>,
    /// Hedge one/quorum/all reads to one more replica after the recent p95
    /// replica latency (true|false) [default: true].
    #[arg(long, env = "CALM_HEDGED_READS", value_name = "BOOL")]
    pub hedged_reads: Option<bool>,
}

impl NodeArgs {
    /// Overrides every key of `config` that these arguments set.
    fn apply(&self, config: &mut NodeConfig) {
        set_some(&mut config.name, &self.name);
        set_some(&mut config.node_id, &self.node_id);
        set(&mut config.data_dir, &self.data_dir);
        set(&mut config.cluster, &self.cluster);
        set(&mut config.listen_client, &self.listen_client);
        set(&mut config.listen_peer, &self.listen_peer);
        set(&mut config.listen_admin, &self.listen_admin);
        set_some(&mut config.advertise_client, &self.advertise_client);
        set_some(&mut config.advertise_peer, &self.advertise_peer);
        set(&mut config.seeds, &self.seeds);
        set(&mut config.replication_factor, &self.replication_factor);
        set(
            &mut config.anti_entropy_interval_ms,
            &self.anti_entropy_interval_ms,
        );
        set(&mut config.sync_max_delay_ms, &self.sync_max_delay_ms);
        set(&mut config.catch_up_wait_ms, &self.catch_up_wait_ms);
        set(&mut config.key_bytes_max, &self.key_bytes_max);
        set(&mut config.payload_bytes_max, &self.payload_bytes_max);
        set(&mut config.keys_max, &self.keys_max);
        set(&mut config.log_level, &self.log_level);
        set(&mut config.shutdown_grace_ms, &self.shutdown_grace_ms);
        set(&mut config.raft_voters, &self.raft_voters);
        set(&mut config.raft_tick_ms, &self.raft_tick_ms);
        set(&mut config.raft_election_ticks, &self.raft_election_ticks);
        set(&mut config.snapshot_count, &self.snapshot_count);
        set(&mut config.quota_backend_bytes, &self.quota_backend_bytes);
        set(&mut config.raft_lease_reads, &self.raft_lease_reads);
        set(&mut config.sloppy_quorum, &self.sloppy_quorum);
        set(&mut config.hint_bytes_max, &self.hint_bytes_max);
        set(&mut config.hedged_reads, &self.hedged_reads);
    }
}

fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
    if let Some(value) = value {
        *slot = value.clone();
    }
}

fn set_some<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
    if value.is_some() {
        slot.clone_from(value);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::{CommandFactory, Parser};

    use super::*;

    /// `calm node`'s flags, as the binary mounts them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: NodeArgs,
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test addresses are valid")
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("create a temp file");
        file.write_all(text.as_bytes())
            .expect("write the temp file");
        file
    }

    /// Asserts that `config` fails validation on `key`, with a message
    /// naming the key and containing `bound`.
    fn check_invalid(config: NodeConfig, key: &str, bound: &str) {
        match config.validate() {
            Err(ConfigError::Invalid {
                key: error_key,
                message,
            }) => {
                assert_eq!(error_key, key, "{message}");
                assert!(message.contains(key), "{message:?} names {key}");
                assert!(message.contains(bound), "{message:?} states {bound}");
            }
            other => panic!("expected {key} to be invalid, got {other:?}"),
        }
    }

    /// Every key a configuration can hold, each set to a non-default value.
    fn config_with_every_key() -> NodeConfig {
        NodeConfig {
            name: Some("east-1".to_owned()),
            node_id: Some(NODE_ID_MAX),
            data_dir: PathBuf::from("/var/lib/calm \"x\""),
            cluster: "prod".to_owned(),
            listen_client: addr("0.0.0.0:3379"),
            listen_peer: addr("[::]:3380"),
            listen_admin: addr("127.0.0.1:0"),
            advertise_client: Some(addr("10.0.0.1:3379")),
            advertise_peer: Some(addr("[fd00::1]:3380")),
            seeds: vec![addr("10.0.0.2:3380"), addr("10.0.0.3:3380")],
            replication_factor: 5,
            anti_entropy_interval_ms: 0,
            sync_max_delay_ms: 2,
            catch_up_wait_ms: 250,
            key_bytes_max: 4096,
            payload_bytes_max: 1024,
            keys_max: 10,
            log_level: "debug".to_owned(),
            shutdown_grace_ms: 1,
            raft_voters: vec![1, 2, 3],
            raft_tick_ms: 50,
            raft_election_ticks: 20,
            snapshot_count: 500,
            quota_backend_bytes: 8 * 1024 * 1024,
            raft_lease_reads: true,
            sloppy_quorum: false,
            hint_bytes_max: 2 * 1024 * 1024,
            hedged_reads: false,
        }
    }

    /// TOML text for a table of strings, integers and arrays of them:
    /// the crate's `toml` is built without its writer, so the test renders
    /// the table itself. A JSON string literal is a valid TOML basic string.
    fn render(table: &toml::Table) -> String {
        fn literal(value: &toml::Value) -> String {
            match value {
                toml::Value::String(text) => {
                    serde_json::to_string(text).expect("strings encode as JSON")
                }
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                toml::Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(literal).collect();
                    format!("[{}]", items.join(", "))
                }
                other => panic!("NodeConfig holds no {}", other.type_str()),
            }
        }
        table
            .iter()
            .map(|(key, item)| format!("{key} = {}\n", literal(item)))
            .collect()
    }

    #[test]
    fn defaults_validate() {
        let config = NodeConfig::default();
        config.validate().expect("the defaults are valid");
        assert_eq!(config.listen_admin, addr("127.0.0.1:2381"));
        assert_eq!(config.replication_factor, 3);
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = NodeConfig::from_toml_str("").expect("an empty file parses");
        assert_eq!(config, NodeConfig::default());
    }

    #[test]
    fn every_key_round_trips_through_toml_text() {
        for config in [NodeConfig::default(), config_with_every_key()] {
            let table = toml::Table::try_from(&config).expect("a config serializes to TOML");
            let parsed = NodeConfig::from_toml_str(&render(&table)).expect("rendered TOML parses");
            assert_eq!(parsed, config);
        }
    }

    #[test]
    fn every_key_has_a_flag_and_variable_of_the_same_name() {
        let table = toml::Table::try_from(config_with_every_key()).expect("serializes");
        let mut keys: Vec<String> = table.keys().cloned().collect();
        keys.push("config".to_owned());
        keys.sort();
        let command = Cli::command();
        let mut flags: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(str::to_owned))
            .collect();
        flags.sort();
        assert_eq!(flags, keys);
        for arg in command.get_arguments() {
            let long = arg.get_long().expect("every node flag is long");
            let variable = format!("CALM_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&variable)));
        }
    }

    #[test]
    fn arguments_override_the_file_which_overrides_the_defaults() {
        let file = config_file(
            "cluster = \"staging\"\nlisten-client = \"127.0.0.1:4000\"\nseeds = [\"127.0.0.1:5000\"]\n",
        );
        let args = NodeArgs {
            config: Some(file.path().to_owned()),
            listen_client: Some(addr("127.0.0.1:4001")),
            advertise_peer: Some(addr("127.0.0.1:4002")),
            ..NodeArgs::default()
        };
        let config = NodeConfig::load(&args).expect("a valid configuration");
        assert_eq!(config.listen_client, addr("127.0.0.1:4001"));
        assert_eq!(config.advertise_peer, Some(addr("127.0.0.1:4002")));
        assert_eq!(config.cluster, "staging");
        assert_eq!(config.seeds, vec![addr("127.0.0.1:5000")]);
        assert_eq!(config.listen_peer, NodeConfig::default().listen_peer);
    }

    #[test]
    fn load_validates_the_merged_configuration() {
        let file = config_file("replication-factor = 9\n");
        let mut args = NodeArgs {
            config: Some(file.path().to_owned()),
            ..NodeArgs::default()
        };
        let error = NodeConfig::load(&args).expect_err("the file's value is out of bounds");
        assert!(matches!(
            error,
            ConfigError::Invalid {
                key: "replication-factor",
                ..
            }
        ));
        args.replication_factor = Some(1);
        let config = NodeConfig::load(&args).expect("the flag repairs the file's value");
        assert_eq!(config.replication_factor, 1);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_file() {
        let file = config_file("cluster = \"a\"\nreplication_factor = 3\n");
        let args = NodeArgs {
            config: Some(file.path().to_owned()),
            ..NodeArgs::default()
        };
        let error = NodeConfig::load(&args).expect_err("snake case is not a key");
        let message = error.to_string();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        assert!(message.contains("replication_factor"), "{message}");
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn a_parse_error_reports_line_and_column() {
        let error = NodeConfig::from_toml_str("cluster = \"a\"\nkeys-max = \"many\"\n")
            .expect_err("a string is not a number");
        let message = error.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("column"), "{message}");
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let args = NodeArgs {
            config: Some(dir.path().join("absent.toml")),
            ..NodeArgs::default()
        };
        let error = NodeConfig::load(&args).expect_err("the file does not exist");
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    }

    #[test]
    fn each_bound_is_enforced() {
        let default = NodeConfig::default;
        let cases: Vec<(NodeConfig, &str, &str)> = vec![
            (
                NodeConfig {
                    replication_factor: 0,
                    ..default()
                },
                "replication-factor",
                "1..=7",
            ),
            (
                NodeConfig {
                    replication_factor: 8,
                    ..default()
                },
                "replication-factor",
                "1..=7",
            ),
            (
                NodeConfig {
                    node_id: Some(0),
                    ..default()
                },
                "node-id",
                "1..=9223372036854775807",
            ),
            (
                NodeConfig {
                    node_id: Some(1 << 63),
                    ..default()
                },
                "node-id",
                "1..=9223372036854775807",
            ),
            (
                NodeConfig {
                    listen_peer: addr("0.0.0.0:2380"),
                    ..default()
                },
                "advertise-peer",
                "listen-peer is unspecified (0.0.0.0)",
            ),
            (
                NodeConfig {
                    listen_client: addr("[::]:2379"),
                    ..default()
                },
                "advertise-client",
                "listen-client is unspecified (::)",
            ),
            (
                NodeConfig {
                    advertise_peer: Some(addr("10.0.0.1:0")),
                    ..default()
                },
                "advertise-peer",
                "can dial",
            ),
            (
                NodeConfig {
                    raft_voters: vec![1, 2, 2],
                    ..default()
                },
                "raft-voters",
                "distinct node ids",
            ),
            (
                NodeConfig {
                    raft_voters: (1..=8).collect(),
                    ..default()
                },
                "raft-voters",
                "0..=7",
            ),
            (
                NodeConfig {
                    raft_tick_ms: 5,
                    ..default()
                },
                "raft-tick-ms",
                "10..=1000",
            ),
            (
                NodeConfig {
                    raft_election_ticks: 2,
                    ..default()
                },
                "raft-election-ticks",
                "3..=100",
            ),
            (
                NodeConfig {
                    log_level: "loud".to_owned(),
                    ..default()
                },
                "log-level",
                "error, warn, info, debug, trace",
            ),
            (
                NodeConfig {
                    sync_max_delay_ms: 101,
                    ..default()
                },
                "sync-max-delay-ms",
                "0..=100",
            ),
            (
                NodeConfig {
                    key_bytes_max: 4097,
                    ..default()
                },
                "key-bytes-max",
                "1..=4096",
            ),
            (
                NodeConfig {
                    payload_bytes_max: 0,
                    ..default()
                },
                "payload-bytes-max",
                "1..=1048576",
            ),
            (
                NodeConfig {
                    keys_max: 0,
                    ..default()
                },
                "keys-max",
                "at least 1",
            ),
            (
                NodeConfig {
                    catch_up_wait_ms: 60_001,
                    ..default()
                },
                "catch-up-wait-ms",
                "0..=60000",
            ),
            (
                NodeConfig {
                    cluster: String::new(),
                    ..default()
                },
                "cluster",
                "1..=64",
            ),
            (
                NodeConfig {
                    name: Some("n".repeat(65)),
                    ..default()
                },
                "name",
                "1..=64",
            ),
            (
                NodeConfig {
                    seeds: vec![addr("0.0.0.0:2380")],
                    ..default()
                },
                "seeds",
                "can dial",
            ),
            (
                NodeConfig {
                    seeds: vec![addr("127.0.0.1:2380"); SEEDS_MAX + 1],
                    ..default()
                },
                "seeds",
                "more than 64",
            ),
            (
                NodeConfig {
                    listen_admin: addr("127.0.0.1:2380"),
                    ..default()
                },
                "listen-admin",
                "is also listen-peer",
            ),
        ];
        for (config, key, bound) in cases {
            check_invalid(config, key, bound);
        }
    }

    #[test]
    fn an_unspecified_listen_address_with_an_advertise_address_is_valid() {
        let config = NodeConfig {
            listen_peer: addr("0.0.0.0:2380"),
            advertise_peer: Some(addr("10.0.0.1:2380")),
            listen_client: addr("127.0.0.1:0"),
            listen_admin: addr("127.0.0.1:0"),
            ..NodeConfig::default()
        };
        config
            .validate()
            .expect("advertised and free ports are valid");
    }

    #[test]
    fn seeds_split_on_commas() {
        let cli = Cli::try_parse_from([
            "calm",
            "--seeds",
            "10.0.0.1:1,10.0.0.2:2",
            "--replication-factor",
            "1",
        ])
        .expect("valid flags");
        assert_eq!(
            cli.args.seeds,
            Some(vec![addr("10.0.0.1:1"), addr("10.0.0.2:2")])
        );
        assert_eq!(cli.args.replication_factor, Some(1));
    }

    #[test]
    fn a_malformed_flag_is_refused_by_clap() {
        let error = Cli::try_parse_from(["calm", "--listen-peer", "localhost"])
            .expect_err("not a socket address");
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn a_node_without_seeds_or_voters_is_a_one_voter_keyspace() {
        let alone = NodeConfig::default().coordination_options(NodeId(7));
        let voters = alone.map(|options| options.voters);
        assert_eq!(voters, Some(vec![NodeId(7)]));
        let joining = NodeConfig {
            seeds: vec![addr("10.0.0.2:2380")],
            ..NodeConfig::default()
        };
        assert!(
            joining.coordination_options(NodeId(7)).is_none(),
            "a joining node votes only when listed"
        );
        let listed = NodeConfig {
            raft_voters: vec![1, 2, 3],
            ..joining
        };
        let options = listed.coordination_options(NodeId(2)).expect("listed");
        assert_eq!(options.voters, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(options.raft.id, 2);
    }

    #[test]
    fn the_replica_gets_the_configured_bounds() {
        let config = config_with_every_key();
        let replica = config.replica_config(NodeId(9));
        let defaults = ReplicaConfig::new(NodeId(9));
        assert_eq!(
            replica,
            ReplicaConfig {
                replication_factor: 5,
                key_bytes_max: 4096,
                payload_bytes_max: 1024,
                keys_max: 10,
                catch_up_wait_ms: 250,
                ..defaults
            }
        );
    }
}
