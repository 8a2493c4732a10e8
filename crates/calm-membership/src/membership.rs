//! The sans-IO membership core: foca's SWIM plus calm's leave notice, Lifeguard scaling and adaptive probe timeouts.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use calm_types::NodeId;
use calm_types::codec::DecodeError;
use foca::{Foca, Member, Message, NoCustomBroadcast, Notification, PostcardCodec, Runtime, State};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::Peer;
use crate::config::{ConfigError, MembershipConfig};
use crate::health::LocalHealth;
use crate::phi::{PhiAccrual, SampleWindow};
use crate::wire::{self, ENVELOPE_OVERHEAD_BYTES, Envelope};

/// RTT samples a peer needs before its own estimate replaces the
/// configured ceiling: the deviation of one or two samples means nothing.
const RTT_SAMPLES_MIN: usize = 3;

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Failed a probe; has until the suspicion timeout to refute.
    Suspect,
    /// Declared failed.
    Down,
    /// Left on purpose (this node received its leave notice).
    Left,
}

/// One row of the member table, as `calm members` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    /// Node id, address and generation.
    pub peer: Peer,
    /// The state this node believes the member is in.
    pub state: MemberState,
    /// The member's SWIM incarnation (raised only by the member, to refute).
    pub incarnation: u16,
}

/// A member changed state, as seen by this node: "`peer` is now `state`
/// at `incarnation`". Emitted once per change, in node id order. A down
/// member that foca forgets after `remove_down_after_ms` leaves the table
/// without an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEvent {
    /// The member's identity.
    pub peer: Peer,
    /// Its new state.
    pub state: MemberState,
    /// Its incarnation with that state.
    pub incarnation: u16,
}

/// Changes of this node's own standing in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalEvent {
    /// Some active member knows this node: the join succeeded.
    Active,
    /// Every known member left or is down; this node stopped probing.
    Idle,
    /// This node was declared down (or left) and cannot rejoin by itself.
    Defunct,
    /// This node was declared down and rejoined with a new generation.
    Rejoined {
        /// The identity it now uses.
        peer: Peer,
    },
}

/// An opaque timer; hand it back through [`Membership::handle_timer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer(foca::Timer<Peer>);

/// What the driver must do, in the order produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `bytes` as one datagram to `to.addr`. Loss is tolerated.
    Send {
        /// The recipient.
        to: Peer,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Call [`Membership::handle_timer`] with `timer` once `after_ms` have
    /// passed. Every timer must be delivered; late is fine, never is not.
    SetTimer {
        /// The timer to hand back.
        timer: Timer,
        /// Delay from the `now_ms` of the call that produced it.
        after_ms: u64,
    },
    /// Send `bytes` to whatever node listens at `addr`: a seed known only by
    /// its address. Loss is tolerated.
    SendToAddress {
        /// The seed's address.
        addr: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A member changed state.
    Notify(MemberEvent),
    /// This node's own standing changed.
    Local(LocalEvent),
}

/// Why an input was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MembershipError {
    /// The config broke a bound. No core was built.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// The datagram exceeds `packet_bytes_max`. Nothing changed.
    #[error("datagram of {len_bytes} bytes exceeds the {max_bytes}-byte bound")]
    PacketTooLarge {
        /// The datagram's length.
        len_bytes: usize,
        /// The configured bound.
        max_bytes: usize,
    },
    /// The datagram is not a membership message. Nothing changed.
    #[error("undecodable datagram: {0}")]
    Decode(#[from] DecodeError),
    /// Accepting the datagram would grow the table past `members_max`.
    /// Nothing changed.
    #[error("datagram would grow the table past {members_max} members")]
    TooManyMembers {
        /// The configured bound.
        members_max: usize,
    },
    /// More than `effects_backlog_max` effects await draining; drain with
    /// [`Membership::poll_effect`] and retry. Nothing changed.
    #[error("{pending} undrained effects (bound {max}); drain before new input")]
    EffectsBacklog {
        /// Effects waiting.
        pending: usize,
        /// The configured bound.
        max: usize,
    },
    /// A leave notice named this node itself, which only a forged or
    /// misrouted datagram can do. Nothing changed.
    #[error("leave notice about this node itself")]
    LeaveAboutSelf,
    /// More seeds than `members_max`. Nothing changed.
    #[error("{seeds} seeds exceed the {members_max}-member bound")]
    TooManySeeds {
        /// Seeds given.
        seeds: usize,
        /// The configured bound.
        members_max: usize,
    },
    /// foca refused the input after parsing it (for example a datagram
    /// claiming to come from this node). State MAY have changed: foca can
    /// apply the sender's liveness before refusing the message, and the
    /// effects it produced before failing are queued and must be drained.
    #[error("SWIM refused the input: {0}")]
    Swim(String),
}

/// The SWIM membership core of one node.
///
/// # Driver contract
///
/// Inputs (each takes `now_ms`, milliseconds since any epoch the driver
/// likes, never going backwards):
/// * [`Membership::join`] once, with seed identities ([`Peer::seed`]).
/// * [`Membership::handle_data`] for every datagram received.
/// * [`Membership::handle_timer`] for every [`Effect::SetTimer`], after its
///   delay. Every timer must be delivered exactly once; timers due at the
///   same instant are delivered in the order they were produced.
/// * [`Membership::leave_cluster`] on graceful shutdown; keep delivering
///   until the sends are drained, then stop.
///
/// Outputs: after every input, drain [`Membership::poll_effect`] until it
/// returns `None` and carry out each [`Effect`] in order. Nothing here must
/// be persisted before sending; the only durable state is the generation
/// (see [`Peer`]). If the driver lets more than `effects_backlog_max`
/// effects pile up, inputs are refused with
/// [`MembershipError::EffectsBacklog`].
///
/// Getters: [`Membership::members`], [`Membership::identity`],
/// [`Membership::local_health`], [`Membership::probe_timeout_ms`],
/// [`Membership::phi`].
///
/// # What foca does and what calm adds
///
/// foca runs SWIM: probes with indirect pings, suspicion with incarnations,
/// piggybacked dissemination, periodic gossip and announce, join by
/// announce/feed, and rejoin after a false "down" via [`Peer`]'s generation.
/// calm adds: (1) a leave notice so receivers show `Left` rather than
/// `Down`; (2) Lifeguard's local health multiplier, which foca lacks: foca
/// refuses to change `probe_period`/`probe_rtt` through `set_config`, so
/// calm scales the probe timers as foca submits them; (3) per-peer adaptive
/// probe timeouts from observed ack RTTs, and a phi-accrual suspicion level
/// per peer; (4) a bound on members and on undrained effects; (5) member
/// events for every state change, suspicion included, which foca does not
/// notify. Lifeguard's other two parts (dynamic suspicion timeouts and
/// buddy system) are not implemented.
pub struct Membership {
    config: MembershipConfig,
    foca: Foca<Peer, PostcardCodec, StdRng, NoCustomBroadcast>,
    io: IoState,
    /// The table as of the end of the last input, to diff against.
    table: BTreeMap<NodeId, MemberRow>,
    /// Members whose leave notice arrived, with the generation that left.
    left: BTreeMap<NodeId, u64>,
    left_self: bool,
}

/// Everything foca's runtime callbacks touch, apart from foca itself.
struct IoState {
    effects: VecDeque<Effect>,
    health: LocalHealth,
    probe: Option<ProbeInFlight>,
    peers: BTreeMap<NodeId, PeerTiming>,
    own_incarnation: u16,
    defunct: bool,
}

/// The direct probe of the current protocol period, followed from the
/// datagrams foca sends and receives.
struct ProbeInFlight {
    target: Peer,
    probe_number: u8,
    sent_ms: u64,
    timeout_ms: u64,
    resolved: bool,
}

/// What calm learned about one peer's timing.
struct PeerTiming {
    rtt: SampleWindow,
    acks: PhiAccrual,
}

impl Membership {
    /// A core for `identity`, drawing all randomness from `rng_seed`.
    pub fn new(
        identity: Peer,
        config: MembershipConfig,
        rng_seed: u64,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        let foca_config = config.to_foca(ENVELOPE_OVERHEAD_BYTES);
        let foca = Foca::new(
            identity,
            foca_config,
            StdRng::seed_from_u64(rng_seed),
            PostcardCodec,
        );
        let io = IoState {
            effects: VecDeque::new(),
            health: LocalHealth::new(config.local_health_max),
            probe: None,
            peers: BTreeMap::new(),
            own_incarnation: 0,
            defunct: false,
        };
        Ok(Self {
            config,
            foca,
            io,
            table: BTreeMap::new(),
            left: BTreeMap::new(),
            left_self: false,
        })
    }

    // ---- Inputs ----

    /// Asks each seed to let this node in. Seeds naming this node are skipped.
    pub fn join(&mut self, seeds: &[Peer], now_ms: u64) -> Result<(), MembershipError> {
        self.check_backlog()?;
        if seeds.len() > self.config.members_max {
            return Err(MembershipError::TooManySeeds {
                seeds: seeds.len(),
                members_max: self.config.members_max,
            });
        }
        let me = self.foca.identity().node;
        for seed in seeds.iter().filter(|s| s.node != me) {
            let result = self
                .foca
                .announce(seed.clone(), self.io.runtime(&self.config, now_ms));
            result.map_err(swim)?;
        }
        self.refresh();
        Ok(())
    }

    /// Asks the nodes at `seeds` to let this node in, knowing only their
    /// addresses: each gets a hello, answers with foca's announce, and the
    /// join proceeds as with [`join`](Self::join). Repeat until
    /// [`LocalEvent::Active`]; hellos are idempotent.
    pub fn join_addresses(&mut self, seeds: &[SocketAddr]) -> Result<(), MembershipError> {
        self.check_backlog()?;
        if seeds.len() > self.config.members_max {
            return Err(MembershipError::TooManySeeds {
                seeds: seeds.len(),
                members_max: self.config.members_max,
            });
        }
        let hello = Envelope::Hello(self.foca.identity().clone()).encode();
        let me = self.foca.identity().addr;
        for &addr in seeds.iter().filter(|&&addr| addr != me) {
            self.io.effects.push_back(Effect::SendToAddress {
                addr,
                bytes: hello.clone(),
            });
        }
        Ok(())
    }

    /// Handles one datagram from the network. Garbage is an error, never a panic.
    pub fn handle_data(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), MembershipError> {
        self.check_backlog()?;
        if bytes.len() > self.config.packet_bytes_max {
            return Err(MembershipError::PacketTooLarge {
                len_bytes: bytes.len(),
                max_bytes: self.config.packet_bytes_max,
            });
        }
        match Envelope::decode(bytes)? {
            Envelope::Swim(packet) => self.handle_swim(&packet, now_ms),
            Envelope::Leave(peer) => self.handle_leave(peer, now_ms),
            Envelope::Hello(peer) => self.handle_hello(peer, now_ms),
        }
    }

    /// Handles a timer produced earlier as [`Effect::SetTimer`].
    pub fn handle_timer(&mut self, timer: Timer, now_ms: u64) -> Result<(), MembershipError> {
        self.check_backlog()?;
        let result = self
            .foca
            .handle_timer(timer.0, self.io.runtime(&self.config, now_ms));
        self.refresh();
        result.map_err(swim)
    }

    /// Leaves the cluster: tells every active member directly, then lets foca
    /// spread "down" for this identity. The node then stays silent.
    pub fn leave_cluster(&mut self, now_ms: u64) -> Result<(), MembershipError> {
        self.check_backlog()?;
        let notice = Envelope::Leave(self.foca.identity().clone()).encode();
        for row in self.table.values().filter(|r| is_active(r.state)) {
            self.io.effects.push_back(Effect::Send {
                to: row.peer.clone(),
                bytes: notice.clone(),
            });
        }
        self.left_self = true;
        let result = self
            .foca
            .leave_cluster(self.io.runtime(&self.config, now_ms));
        self.refresh();
        result.map_err(swim)
    }

    // ---- Outputs ----

    /// The next effect to carry out, oldest first.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.io.effects.pop_front()
    }

    // ---- Getters ----

    /// This node's current identity (its generation rises on rejoin).
    pub fn identity(&self) -> &Peer {
        self.foca.identity()
    }

    /// The member table, this node first, then by node id.
    pub fn members(&self) -> Vec<MemberRow> {
        let state = if self.left_self {
            MemberState::Left
        } else if self.io.defunct {
            MemberState::Down
        } else {
            MemberState::Alive
        };
        let me = MemberRow {
            peer: self.foca.identity().clone(),
            state,
            incarnation: self.io.own_incarnation,
        };
        std::iter::once(me)
            .chain(self.table.values().cloned())
            .collect()
    }

    /// Lifeguard's local health multiplier, in `0..=local_health_max`.
    pub fn local_health(&self) -> u8 {
        self.io.health.score()
    }

    /// The direct-probe timeout `node` currently gets, before LHM scaling.
    pub fn probe_timeout_ms(&self, node: NodeId) -> u64 {
        self.io.adaptive_timeout_ms(&self.config, node)
    }

    /// The phi-accrual suspicion level of `node` at `now_ms`, from the
    /// arrival times of its acks; `None` before its first ack.
    pub fn phi(&self, node: NodeId, now_ms: u64) -> Option<f64> {
        self.io.peers.get(&node).map(|p| p.acks.phi(now_ms))
    }

    // ---- Internals ----

    fn check_backlog(&self) -> Result<(), MembershipError> {
        let pending = self.io.effects.len();
        if pending > self.config.effects_backlog_max {
            return Err(MembershipError::EffectsBacklog {
                pending,
                max: self.config.effects_backlog_max,
            });
        }
        Ok(())
    }

    fn handle_swim(&mut self, packet: &[u8], now_ms: u64) -> Result<(), MembershipError> {
        let parsed = wire::parse_packet(packet)?;
        self.check_members_bound(&parsed.header.src, &parsed.updates)?;
        self.io
            .observe_incoming(&self.config, &parsed.header, now_ms);
        let result = self
            .foca
            .handle_data(packet, self.io.runtime(&self.config, now_ms));
        self.refresh();
        result.map_err(swim)
    }

    /// Answers a hello with foca's announce, unless it is this node's own,
    /// or from a node the table cannot take.
    fn handle_hello(&mut self, peer: Peer, now_ms: u64) -> Result<(), MembershipError> {
        if peer.node == self.foca.identity().node || self.left_self {
            return Ok(());
        }
        self.check_members_bound(&peer, &[])?;
        let result = self
            .foca
            .announce(peer, self.io.runtime(&self.config, now_ms));
        self.refresh();
        result.map_err(swim)
    }

    /// Refuses a packet that names more new nodes than the table has room for.
    fn check_members_bound(
        &self,
        src: &Peer,
        updates: &[Member<Peer>],
    ) -> Result<(), MembershipError> {
        let me = self.foca.identity().node;
        let mut new_nodes: Vec<NodeId> = std::iter::once(src)
            .chain(updates.iter().map(|u| u.id()))
            .map(|p| p.node)
            .filter(|n| *n != me && !self.table.contains_key(n))
            .collect();
        new_nodes.sort_unstable();
        new_nodes.dedup();
        // The table plus this node plus the newcomers.
        if self.table.len() + 1 + new_nodes.len() > self.config.members_max {
            return Err(MembershipError::TooManyMembers {
                members_max: self.config.members_max,
            });
        }
        Ok(())
    }

    fn handle_leave(&mut self, peer: Peer, now_ms: u64) -> Result<(), MembershipError> {
        if peer.node == self.foca.identity().node {
            return Err(MembershipError::LeaveAboutSelf);
        }
        // Only a leave of the exact identity we know counts: a notice from
        // an older life of the node must not mark the newer one as left.
        let known = self
            .table
            .get(&peer.node)
            .is_some_and(|row| row.peer == peer);
        if !known {
            return Ok(());
        }
        self.left.insert(peer.node, peer.generation);
        // Feeding "down" to foca spreads it even if the leaver's own gossip
        // was lost.
        let down = std::iter::once(Member::down(peer));
        let result = self
            .foca
            .apply_many(down, true, self.io.runtime(&self.config, now_ms));
        self.refresh();
        result.map_err(swim)
    }

    /// Rebuilds the table from foca's and emits one event per changed row.
    fn refresh(&mut self) {
        let mut table = BTreeMap::new();
        for member in self.foca.iter_membership_state() {
            let peer = member.id().clone();
            let left = self.left.get(&peer.node) == Some(&peer.generation);
            let state = match member.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down if left => MemberState::Left,
                State::Down => MemberState::Down,
            };
            let row = MemberRow {
                peer,
                state,
                incarnation: member.incarnation(),
            };
            table.insert(row.peer.node, row);
        }
        for (node, row) in &table {
            if self.table.get(node) != Some(row) {
                self.io.effects.push_back(Effect::Notify(MemberEvent {
                    peer: row.peer.clone(),
                    state: row.state,
                    incarnation: row.incarnation,
                }));
            }
        }
        // Keep per-node side tables bounded by the member table.
        self.left.retain(|node, generation| {
            table
                .get(node)
                .is_some_and(|row| row.peer.generation == *generation)
        });
        self.io
            .peers
            .retain(|node, _| table.get(node).is_some_and(|row| is_active(row.state)));
        self.table = table;
    }
}

impl IoState {
    fn runtime<'a>(&'a mut self, config: &'a MembershipConfig, now_ms: u64) -> Io<'a> {
        Io {
            state: self,
            config,
            now_ms,
        }
    }

    /// The direct-probe timeout for `node`: mean + k·stddev of its ack
    /// RTTs, clamped to the configured bounds; the ceiling until enough
    /// samples exist, because a too-short first timeout would start the
    /// indirect stage (and a suspicion) for a peer that is merely far.
    fn adaptive_timeout_ms(&self, config: &MembershipConfig, node: NodeId) -> u64 {
        let (min, max) = (config.probe_timeout_min_ms, config.probe_timeout_max_ms);
        let Some(timing) = self
            .peers
            .get(&node)
            .filter(|t| t.rtt.len() >= RTT_SAMPLES_MIN)
        else {
            return max;
        };
        let mean = timing.rtt.mean_ms().unwrap_or(max as f64);
        let stddev = timing.rtt.stddev_ms().unwrap_or(0.0);
        let estimate = (mean + config.probe_timeout_stddevs * stddev).ceil();
        // `as` saturates for floats out of range, and the clamp bounds it anyway.
        (estimate as u64).clamp(min, max)
    }

    /// Follows acks to the probe in flight, for RTT samples and Lifeguard.
    fn observe_incoming(
        &mut self,
        config: &MembershipConfig,
        header: &foca::Header<Peer>,
        now_ms: u64,
    ) {
        let Some(probe) = self.probe.as_mut().filter(|p| !p.resolved) else {
            return;
        };
        match &header.message {
            Message::Ack(n) if *n == probe.probe_number && header.src == probe.target => {
                probe.resolved = true;
                let rtt_ms = now_ms.saturating_sub(probe.sent_ms);
                if rtt_ms <= probe.timeout_ms {
                    self.health.probe_succeeded();
                } else {
                    self.health.ack_late();
                }
                let timing = self
                    .peers
                    .entry(header.src.node)
                    .or_insert_with(|| PeerTiming {
                        rtt: SampleWindow::new(config.rtt_samples_max),
                        acks: PhiAccrual::new(
                            config.rtt_samples_max,
                            config.probe_period_ms as f64,
                            config.probe_timeout_min_ms as f64,
                        ),
                    });
                timing.rtt.push(rtt_ms as f64);
                timing.acks.heartbeat(now_ms);
            }
            // Reached through another member: alive, but the direct path
            // failed, so this says nothing about our own health either way.
            Message::ForwardedAck {
                origin,
                probe_number,
            } if *probe_number == probe.probe_number && *origin == probe.target => {
                probe.resolved = true;
            }
            _ => {}
        }
    }

    /// Follows what foca sends: probe starts, and incarnation bumps, which
    /// happen only when this node refutes a suspicion about itself.
    fn observe_outgoing(&mut self, to: &Peer, data: &[u8], now_ms: u64) {
        // foca's own encoding always parses; if it ever did not, skipping the
        // bookkeeping only costs a missed health signal.
        let Ok(header) = wire::parse_header(data) else {
            return;
        };
        if header.src_incarnation > self.own_incarnation {
            self.own_incarnation = header.src_incarnation;
            self.health.refuted();
        }
        if let Message::Ping(probe_number) = header.message {
            // A new probe closes the previous period: unanswered means failed.
            if self.probe.as_ref().is_some_and(|p| !p.resolved) {
                self.health.probe_failed();
            }
            self.probe = Some(ProbeInFlight {
                target: to.clone(),
                probe_number,
                sent_ms: now_ms,
                timeout_ms: u64::MAX,
                resolved: false,
            });
        }
    }
}

/// foca's runtime for one input: turns callbacks into queued effects.
struct Io<'a> {
    state: &'a mut IoState,
    config: &'a MembershipConfig,
    now_ms: u64,
}

impl Runtime<Peer> for Io<'_> {
    fn notify(&mut self, notification: Notification<'_, Peer>) {
        let event = match notification {
            Notification::Active => {
                self.state.defunct = false;
                LocalEvent::Active
            }
            Notification::Idle => LocalEvent::Idle,
            Notification::Defunct => {
                self.state.defunct = true;
                LocalEvent::Defunct
            }
            Notification::Rejoin(peer) => {
                // A new identity starts again at incarnation zero.
                self.state.own_incarnation = 0;
                self.state.defunct = false;
                LocalEvent::Rejoined { peer: peer.clone() }
            }
            // Member changes are reported by diffing the table after each
            // input, which also catches suspicion, which foca does not notify.
            _ => return,
        };
        self.state.effects.push_back(Effect::Local(event));
    }

    fn send_to(&mut self, to: Peer, data: &[u8]) {
        self.state.observe_outgoing(&to, data, self.now_ms);
        let bytes = Envelope::Swim(data.to_vec()).encode();
        self.state.effects.push_back(Effect::Send { to, bytes });
    }

    fn submit_after(&mut self, event: foca::Timer<Peer>, after: Duration) {
        let lhm = u64::from(self.state.health.multiplier());
        let after_ms = match &event {
            // Lifeguard §4.1: a struggling node probes less often...
            foca::Timer::ProbeRandomMember(_) => self.config.probe_period_ms * lhm,
            // ...and waits longer for acks. Both scale by the same LHM, read
            // in the same foca call, and the timeout is at most half the
            // period, so the indirect stage always fires before the next probe.
            foca::Timer::SendIndirectProbe { probed_id, .. } => {
                let timeout_ms = self.state.adaptive_timeout_ms(self.config, probed_id.node) * lhm;
                if let Some(probe) = self.state.probe.as_mut().filter(|p| p.target == *probed_id) {
                    probe.timeout_ms = timeout_ms;
                }
                timeout_ms
            }
            _ => u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        };
        self.state.effects.push_back(Effect::SetTimer {
            timer: Timer(event),
            after_ms,
        });
    }
}

fn is_active(state: MemberState) -> bool {
    matches!(state, MemberState::Alive | MemberState::Suspect)
}

fn swim(error: foca::Error) -> MembershipError {
    MembershipError::Swim(error.to_string())
}
