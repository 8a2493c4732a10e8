//! The node's Prometheus metrics: one registry, every family named
//! `calm_*`, served as text at the admin port's `/metrics`.
//!
//! Counters the cores keep themselves (replica and transport stats) are
//! mirrored here by the node loop, which adds each snapshot's growth; the
//! API layer counts requests directly.

use std::collections::VecDeque;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a client request: the gRPC service and method, the level
/// asked for, and the outcome's gRPC code name (`OK`, `INVALID_ARGUMENT`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `calm.v1.Counter` and so on.
    pub service: &'static str,
    /// `Increment`, `Get`, ...
    pub method: &'static str,
    /// `local`, `one`, `quorum`, `all`, `linearizable`, `unknown`, or
    /// `none` for requests without a level (cluster RPCs).
    pub level: &'static str,
    /// The gRPC status code name.
    pub code: &'static str,
}

/// Labels of a request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `calm.v1.Counter` and so on.
    pub service: &'static str,
    /// `Increment`, `Get`, ...
    pub method: &'static str,
    /// As in [`RequestLabels::level`].
    pub level: &'static str,
}

/// A peer channel label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// `membership`, `replication`, `anti_entropy`, `ring` or `raft`.
    pub channel: &'static str,
}

/// A peer label: the peer's node id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node id, in decimal.
    pub peer: String,
}

/// A reason label (why a connection closed, why a session failed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A short snake_case reason.
    pub reason: String,
}

/// A member-state label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: &'static str,
}

/// A coordination level label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    /// `local`, `one`, `quorum`, `all`, `linearizable` or `serializable`.
    pub level: &'static str,
}

/// Every level the coordination tax is counted at, in the order `/status`
/// lists them.
pub const TAX_LEVELS: [&str; 6] = [
    "local",
    "one",
    "quorum",
    "all",
    "linearizable",
    "serializable",
];

/// Latencies kept per level for `/status`.
const RECENT_LATENCIES_MAX: usize = 1024;

/// The latencies of the most recent requests at each level, for the
/// median and p99 `/status` shows (a Prometheus histogram has only
/// cumulative buckets, which cannot say what happened lately).
#[derive(Debug, Default)]
pub struct RecentLatencies {
    /// A std Mutex, not a tokio one: it is held only to push or copy a
    /// few numbers, never across an await.
    levels: std::sync::Mutex<std::collections::HashMap<&'static str, VecDeque<f64>>>,
}

impl RecentLatencies {
    /// Records one request at `level` that took `seconds`.
    pub fn record(&self, level: &'static str, seconds: f64) {
        let mut levels = self
            .levels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let recent = levels.entry(level).or_default();
        if recent.len() == RECENT_LATENCIES_MAX {
            recent.pop_front();
        }
        recent.push_back(seconds);
    }

    /// The median and the 99th percentile of `level`'s recent latencies, in
    /// milliseconds; zeros before any request.
    pub fn quantiles_ms(&self, level: &str) -> (f64, f64) {
        let mut sorted: Vec<f64> = {
            let levels = self
                .levels
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            levels
                .get(level)
                .map(|recent| recent.iter().copied().collect())
                .unwrap_or_default()
        };
        if sorted.is_empty() {
            return (0.0, 0.0);
        }
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] * 1_000.0;
        (at(0.5), at(0.99))
    }
}

/// An event label of the KV levels' counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// What happened: `stored`, `refused`, `delivered`, `expired` for
    /// hints; `sent`, `won` for hedges.
    pub event: &'static str,
}

/// The version label of `calm_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// calm's version.
    pub version: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric a node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `calm_requests_total{service,method,level,code}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `calm_request_duration_seconds{service,method,level}`.
    pub request_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// `calm_requests_forwarded_total{service,method,level}`: requests sent on to
    /// a replica because this node holds none, or had not caught up.
    pub requests_forwarded: Family<MethodLabels, Counter>,
    /// `calm_storage_fsyncs_total`: group-commit syncs.
    pub fsyncs: Counter,
    /// `calm_storage_fsync_duration_seconds`: how long each group-commit
    /// sync took.
    pub fsync_duration: Histogram,
    /// `calm_replica_keys`: keys this node holds a replica of.
    pub keys: Gauge,
    /// `calm_replica_deltas_dropped_total`: deltas dropped from a full peer buffer.
    pub deltas_dropped: Counter,
    /// `calm_replica_deltas_refused_total`: received states refused by a bound.
    pub deltas_refused: Counter,
    /// `calm_replica_catch_up_timeouts_total`: requests whose causal token
    /// was not seen in time.
    pub catch_up_timeouts: Counter,
    /// `calm_replica_read_repairs_total`: CRDT owners sent the merged state
    /// after a read at `quorum`/`all` found them behind.
    pub replica_read_repairs: Counter,
    /// `calm_replica_hedges_total`: CRDT reads at `quorum`/`all` that asked
    /// more owners after the hedging delay.
    pub replica_hedges: Counter,
    /// `calm_replica_writes_in_doubt_total`: CRDT writes at `quorum`/`all`
    /// answered in doubt (fewer than `w` acks by the deadline).
    pub replica_writes_in_doubt: Counter,
    /// `calm_hlc_clock_rejections_total`: peer messages refused because the
    /// sender's clock was too far ahead.
    pub clock_rejections: Counter,
    /// `calm_peer_messages_sent_total{channel}`.
    pub peer_messages_sent: Family<ChannelLabels, Counter>,
    /// `calm_peer_messages_received_total{channel}`.
    pub peer_messages_received: Family<ChannelLabels, Counter>,
    /// `calm_peer_messages_dropped_total{reason}`: messages the transport
    /// refused to queue, or the node could not decode.
    pub peer_messages_dropped: Family<ReasonLabels, Counter>,
    /// `calm_peer_queue_depth_messages{peer}`: messages waiting in each
    /// peer's send queue.
    pub peer_queue_depth: Family<PeerLabels, Gauge>,
    /// `calm_peer_bytes_sent_total`.
    pub peer_bytes_sent: Counter,
    /// `calm_peer_bytes_received_total`.
    pub peer_bytes_received: Counter,
    /// `calm_peer_connections_closed_total{reason}`.
    pub peer_connections_closed: Family<ReasonLabels, Counter>,
    /// `calm_membership_members{state}`.
    pub members: Family<StateLabels, Gauge>,
    /// `calm_membership_local_health`: the Lifeguard local health
    /// multiplier's score (0 is healthy).
    pub local_health: Gauge,
    /// `calm_anti_entropy_sessions_total{reason}`: finished sessions
    /// (`reason="completed"`) and failed ones.
    pub anti_entropy_sessions: Family<ReasonLabels, Counter>,
    /// `calm_anti_entropy_bytes_total`: session bytes sent and received.
    pub anti_entropy_bytes: Counter,
    /// `calm_anti_entropy_ranges_compared_total`: Merkle tree nodes whose
    /// hashes sessions compared.
    pub anti_entropy_ranges_compared: Counter,
    /// `calm_anti_entropy_keys_repaired_total`: key states shipped.
    pub anti_entropy_keys_repaired: Counter,
    /// `calm_coordinated_requests_total{level}`: requests this node
    /// coordinated (not the ones it forwarded), by level.
    pub coordinated_requests: Family<LevelLabels, Counter>,
    /// `calm_coordinated_round_trips_total{level}`: network round trips on
    /// the critical path of those requests, plus one per forward (counted
    /// by the forwarding node).
    pub coordinated_round_trips: Family<LevelLabels, Counter>,
    /// The recent latencies per level, for `/status`.
    pub recent_latencies: RecentLatencies,
    /// `calm_kv_hints`: hints this node holds for down owners.
    pub kv_hints: Gauge,
    /// `calm_kv_hint_bytes`: their size; new hints are refused at the
    /// configured `hint-bytes-max`.
    pub kv_hint_bytes: Gauge,
    /// `calm_kv_hint_events_total{event}`: hints stored, refused at the
    /// bound, delivered to their owner, or expired.
    pub kv_hint_events: Family<EventLabels, Counter>,
    /// `calm_kv_hedges_total{event}`: reads sent to one more replica after
    /// the hedging delay (`sent`), and those whose reply completed the
    /// read quorum (`won`).
    pub kv_hedges: Family<EventLabels, Counter>,
    /// `calm_kv_read_repairs_total`: repairs sent to stale replicas.
    pub kv_read_repairs: Counter,
    /// `calm_kv_tombstones_reaped_total`: tombstones removed once every
    /// owner held them past the grace period.
    pub kv_tombstones_reaped: Counter,
    /// `calm_build_info{version}`: always 1.
    pub build_info: Family<BuildLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding every family, with `calm_build_info` set.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "calm_requests",
            "Client requests, by service, method and gRPC code",
            requests.clone(),
        );
        let request_duration: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "calm_request_duration_seconds",
            "Client request latency, by service and method",
            request_duration.clone(),
        );
        let requests_forwarded = Family::default();
        registry.register(
            "calm_requests_forwarded",
            "Client requests forwarded to another replica",
            requests_forwarded.clone(),
        );
        let fsyncs = Counter::default();
        registry.register(
            "calm_storage_fsyncs",
            "Group-commit syncs of the data store",
            fsyncs.clone(),
        );
        let fsync_duration = latency_histogram();
        registry.register(
            "calm_storage_fsync_duration_seconds",
            "Duration of each group-commit sync",
            fsync_duration.clone(),
        );
        let keys = Gauge::default();
        registry.register(
            "calm_replica_keys",
            "Keys this node holds a replica of",
            keys.clone(),
        );
        let deltas_dropped = Counter::default();
        registry.register(
            "calm_replica_deltas_dropped",
            "Deltas dropped because a peer's buffer was full (anti-entropy repairs them)",
            deltas_dropped.clone(),
        );
        let deltas_refused = Counter::default();
        registry.register(
            "calm_replica_deltas_refused",
            "Received deltas or states refused by a size or key-count bound",
            deltas_refused.clone(),
        );
        let catch_up_timeouts = Counter::default();
        registry.register(
            "calm_replica_catch_up_timeouts",
            "Requests whose causal token this replica had not seen in time",
            catch_up_timeouts.clone(),
        );
        let replica_read_repairs = Counter::default();
        registry.register(
            "calm_replica_read_repairs",
            "CRDT owners sent the merged state after a quorum read found them behind",
            replica_read_repairs.clone(),
        );
        let replica_hedges = Counter::default();
        registry.register(
            "calm_replica_hedges",
            "CRDT quorum reads that asked more owners after the hedging delay",
            replica_hedges.clone(),
        );
        let replica_writes_in_doubt = Counter::default();
        registry.register(
            "calm_replica_writes_in_doubt",
            "CRDT quorum writes answered in doubt: fewer than w acks by the deadline",
            replica_writes_in_doubt.clone(),
        );
        let clock_rejections = Counter::default();
        registry.register(
            "calm_hlc_clock_rejections",
            "Peer messages refused because the sender's clock was too far ahead",
            clock_rejections.clone(),
        );
        let peer_messages_sent = Family::default();
        registry.register(
            "calm_peer_messages_sent",
            "Messages queued to peers, by channel",
            peer_messages_sent.clone(),
        );
        let peer_messages_received = Family::default();
        registry.register(
            "calm_peer_messages_received",
            "Messages received from peers, by channel",
            peer_messages_received.clone(),
        );
        let peer_messages_dropped = Family::default();
        registry.register(
            "calm_peer_messages_dropped",
            "Peer messages not sent or not accepted, by reason",
            peer_messages_dropped.clone(),
        );
        let peer_queue_depth = Family::default();
        registry.register(
            "calm_peer_queue_depth_messages",
            "Messages waiting in each peer's send queue",
            peer_queue_depth.clone(),
        );
        let peer_bytes_sent = Counter::default();
        registry.register(
            "calm_peer_bytes_sent",
            "Frame bytes written to peers",
            peer_bytes_sent.clone(),
        );
        let peer_bytes_received = Counter::default();
        registry.register(
            "calm_peer_bytes_received",
            "Frame bytes read from peers",
            peer_bytes_received.clone(),
        );
        let peer_connections_closed = Family::default();
        registry.register(
            "calm_peer_connections_closed",
            "Peer connections closed, by reason",
            peer_connections_closed.clone(),
        );
        let members = Family::default();
        registry.register(
            "calm_membership_members",
            "Members of the cluster as this node sees them, by state",
            members.clone(),
        );
        let local_health = Gauge::default();
        registry.register(
            "calm_membership_local_health",
            "Lifeguard local health score (0 is healthy; higher stretches probe timeouts)",
            local_health.clone(),
        );
        let anti_entropy_sessions = Family::default();
        registry.register(
            "calm_anti_entropy_sessions",
            "Anti-entropy sessions this node initiated, by outcome",
            anti_entropy_sessions.clone(),
        );
        let anti_entropy_bytes = Counter::default();
        registry.register(
            "calm_anti_entropy_bytes",
            "Bytes of anti-entropy session messages sent and received",
            anti_entropy_bytes.clone(),
        );
        let anti_entropy_ranges_compared = Counter::default();
        registry.register(
            "calm_anti_entropy_ranges_compared",
            "Merkle tree nodes whose hashes anti-entropy sessions compared",
            anti_entropy_ranges_compared.clone(),
        );
        let anti_entropy_keys_repaired = Counter::default();
        registry.register(
            "calm_anti_entropy_keys_repaired",
            "Key states shipped to a peer by anti-entropy",
            anti_entropy_keys_repaired.clone(),
        );
        let coordinated_requests = Family::default();
        registry.register(
            "calm_coordinated_requests",
            "Requests this node coordinated, by level",
            coordinated_requests.clone(),
        );
        let coordinated_round_trips = Family::default();
        registry.register(
            "calm_coordinated_round_trips",
            "Network round trips on the critical path of coordinated requests, by level",
            coordinated_round_trips.clone(),
        );
        let kv_hints = Gauge::default();
        registry.register(
            "calm_kv_hints",
            "Hints this node holds for down owners of KV keys",
            kv_hints.clone(),
        );
        let kv_hint_bytes = Gauge::default();
        registry.register(
            "calm_kv_hint_bytes",
            "Bytes of hints this node holds for down owners of KV keys",
            kv_hint_bytes.clone(),
        );
        let kv_hint_events = Family::default();
        registry.register(
            "calm_kv_hint_events",
            "Hints stored, refused at the bound, delivered to their owner, or expired",
            kv_hint_events.clone(),
        );
        let kv_hedges = Family::default();
        registry.register(
            "calm_kv_hedges",
            "KV reads hedged to one more replica, and hedges that completed the quorum",
            kv_hedges.clone(),
        );
        let kv_read_repairs = Counter::default();
        registry.register(
            "calm_kv_read_repairs",
            "Read repairs sent to stale KV replicas",
            kv_read_repairs.clone(),
        );
        let kv_tombstones_reaped = Counter::default();
        registry.register(
            "calm_kv_tombstones_reaped",
            "KV tombstones removed once every owner held them",
            kv_tombstones_reaped.clone(),
        );
        let build_info: Family<BuildLabels, Gauge> = Family::default();
        registry.register(
            "calm_build_info",
            "calm's version; always 1",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Metrics {
            registry,
            requests,
            request_duration,
            requests_forwarded,
            fsyncs,
            fsync_duration,
            keys,
            deltas_dropped,
            deltas_refused,
            catch_up_timeouts,
            replica_read_repairs,
            replica_hedges,
            replica_writes_in_doubt,
            clock_rejections,
            peer_messages_sent,
            peer_messages_received,
            peer_messages_dropped,
            peer_queue_depth,
            peer_bytes_sent,
            peer_bytes_received,
            peer_connections_closed,
            members,
            local_health,
            anti_entropy_sessions,
            anti_entropy_bytes,
            anti_entropy_ranges_compared,
            anti_entropy_keys_repaired,
            coordinated_requests,
            coordinated_round_trips,
            recent_latencies: RecentLatencies::default(),
            kv_hints,
            kv_hint_bytes,
            kv_hint_events,
            kv_hedges,
            kv_read_repairs,
            kv_tombstones_reaped,
            build_info,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Invariant: writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding into a String");
        text
    }
}

/// Adds to `counter` the growth from `before` to `now` of a monotonic
/// count the cores keep, and returns `now` for the next call.
pub fn mirror(counter: &Counter, before: u64, now: u64) -> u64 {
    counter.inc_by(now.saturating_sub(before));
    now
}

impl Metrics {
    /// The tax each level has cost so far, for `/status`.
    pub fn tax(&self) -> Vec<crate::backend::LevelTax> {
        TAX_LEVELS
            .into_iter()
            .map(|level| {
                let labels = LevelLabels { level };
                let (latency_p50_ms, latency_p99_ms) = self.recent_latencies.quantiles_ms(level);
                crate::backend::LevelTax {
                    level,
                    requests: self.coordinated_requests.get_or_create(&labels).get(),
                    round_trips: self.coordinated_round_trips.get_or_create(&labels).get(),
                    latency_p50_ms,
                    latency_p99_ms,
                }
            })
            .collect()
    }

    /// Peer messages sent so far, by channel.
    pub fn messages_sent(&self) -> std::collections::BTreeMap<String, u64> {
        [
            "membership",
            "replication",
            "raft",
            "anti_entropy",
            "ring",
            "kv",
        ]
        .into_iter()
        .map(|channel| {
            let count = self
                .peer_messages_sent
                .get_or_create(&ChannelLabels { channel })
                .get();
            (channel.to_owned(), count)
        })
        .collect()
    }

    /// Counts one request coordinated at `level` with `round_trips` on its
    /// critical path.
    pub fn coordinated(&self, level: &'static str, round_trips: u64) {
        let labels = LevelLabels { level };
        self.coordinated_requests.get_or_create(&labels).inc();
        self.coordinated_round_trips
            .get_or_create(&labels)
            .inc_by(round_trips);
    }

    /// Counts a forward of a request at `level`: one round trip more.
    pub fn forwarded_round_trip(&self, level: &'static str) {
        self.coordinated_round_trips
            .get_or_create(&LevelLabels { level })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_latencies_report_the_median_and_p99_of_the_newest_requests() {
        let recent = RecentLatencies::default();
        assert_eq!(recent.quantiles_ms("quorum"), (0.0, 0.0));
        // 2,048 requests: the first half slow, the newest 1,024 at 1..=1024 ms.
        for _ in 0..RECENT_LATENCIES_MAX {
            recent.record("quorum", 9.0);
        }
        for ms in 1..=RECENT_LATENCIES_MAX {
            recent.record("quorum", ms as f64 / 1_000.0);
        }
        let (p50, p99) = recent.quantiles_ms("quorum");
        assert!((p50 - 512.0).abs() <= 1.0, "median {p50}");
        assert!((p99 - 1_014.0).abs() <= 1.0, "p99 {p99}");
        assert_eq!(recent.quantiles_ms("local"), (0.0, 0.0));
    }
}
