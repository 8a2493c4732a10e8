//! The plain Rust values the client returns and takes, converted by hand
//! from and to the generated `calm.v1` messages, so no generated type
//! appears in the client's API.

use std::fmt;

use calm_proto::calm::v1 as pb;

use crate::tokens::CausalToken;

/// How much coordination a request pays for (see `calm.proto`'s `Level`).
/// The CRDT services serve [`Level::Local`] today; other levels are passed
/// through, and a server that does not offer one answers `UNIMPLEMENTED`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Level {
    /// Durable on the receiving node before the acknowledgement, replicated
    /// asynchronously.
    #[default]
    Local,
    /// Acknowledged by one replica of the key's preference list.
    One,
    /// Acknowledged (or read) by a majority of the key's replicas.
    Quorum,
    /// Acknowledged (or read) by all of the key's replicas.
    All,
    /// Linearizable, through the coordinated keyspace.
    Linearizable,
}

impl Level {
    /// Every level, cheapest first.
    pub const ALL: [Level; 5] = [
        Level::Local,
        Level::One,
        Level::Quorum,
        Level::All,
        Level::Linearizable,
    ];

    /// The level's lower-case name, as the CLI spells it (`local`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Local => "local",
            Level::One => "one",
            Level::Quorum => "quorum",
            Level::All => "all",
            Level::Linearizable => "linearizable",
        }
    }

    pub(crate) fn to_proto(self) -> pb::Level {
        match self {
            Level::Local => pb::Level::Local,
            Level::One => pb::Level::One,
            Level::Quorum => pb::Level::Quorum,
            Level::All => pb::Level::All,
            Level::Linearizable => pb::Level::Linearizable,
        }
    }

    /// The level a response header names; `None` when unspecified (as in
    /// `Cluster` replies) or unknown to this client.
    pub(crate) fn from_proto(level: i32) -> Option<Level> {
        match pb::Level::try_from(level).ok()? {
            pb::Level::Unspecified => None,
            pb::Level::Local => Some(Level::Local),
            pb::Level::One => Some(Level::One),
            pb::Level::Quorum => Some(Level::Quorum),
            pb::Level::All => Some(Level::All),
            pb::Level::Linearizable => Some(Level::Linearizable),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A successful data call's value, with what its response header says.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply<T> {
    /// The call's result (`()` for writes).
    pub value: T,
    /// The token covering this write, or everything this read observed.
    /// The client already keeps it for the key; it is here for callers
    /// that pass tokens between processes.
    pub token: CausalToken,
    /// The node that answered. Bounded-counter rights are per node, so a
    /// refused decrement names the node to transfer rights to.
    pub node_id: u64,
    /// The level the server served the request at; `None` if the server
    /// named none, or one this client does not know.
    pub level: Option<Level>,
}

impl<T> Reply<T> {
    /// Replaces the value, keeping the header.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reply<U> {
        Reply {
            value: f(self.value),
            token: self.token,
            node_id: self.node_id,
            level: self.level,
        }
    }
}

/// The kind of object a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// No object: the key is absent.
    Absent,
    /// A PN-counter.
    Counter,
    /// An add-wins observed-remove set.
    Set,
    /// A last-writer-wins register.
    Register,
    /// A multi-value register.
    MultiRegister,
    /// An observed-remove map.
    Map,
    /// A bounded (escrow) counter.
    BoundedCounter,
    /// A kind a newer server knows and this client does not; the raw
    /// enum number.
    Unknown(i32),
}

impl ObjectKind {
    pub(crate) fn from_proto(kind: i32) -> ObjectKind {
        match pb::ObjectKind::try_from(kind) {
            Ok(pb::ObjectKind::Unspecified) => ObjectKind::Absent,
            Ok(pb::ObjectKind::Counter) => ObjectKind::Counter,
            Ok(pb::ObjectKind::Set) => ObjectKind::Set,
            Ok(pb::ObjectKind::Register) => ObjectKind::Register,
            Ok(pb::ObjectKind::MultiRegister) => ObjectKind::MultiRegister,
            Ok(pb::ObjectKind::Map) => ObjectKind::Map,
            Ok(pb::ObjectKind::BoundedCounter) => ObjectKind::BoundedCounter,
            Err(_) => ObjectKind::Unknown(kind),
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKind::Absent => f.write_str("no object"),
            ObjectKind::Counter => f.write_str("a counter"),
            ObjectKind::Set => f.write_str("a set"),
            ObjectKind::Register => f.write_str("an LWW register"),
            ObjectKind::MultiRegister => f.write_str("a multi-value register"),
            ObjectKind::Map => f.write_str("a map"),
            ObjectKind::BoundedCounter => f.write_str("a bounded counter"),
            ObjectKind::Unknown(number) => write!(f, "an unknown kind ({number})"),
        }
    }
}

/// Which register a key holds; fixed by the key's first write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RegisterKind {
    /// Last writer wins, by the writer's hybrid logical clock.
    #[default]
    Lww,
    /// Concurrent writes are all kept as siblings.
    MultiValue,
}

impl RegisterKind {
    pub(crate) fn to_proto(self) -> pb::RegisterKind {
        match self {
            RegisterKind::Lww => pb::RegisterKind::Lww,
            RegisterKind::MultiValue => pb::RegisterKind::MultiValue,
        }
    }
}

/// A register read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterValue {
    /// The register's kind; `None` when the key is absent (or the server
    /// names a kind this client does not know).
    pub kind: Option<RegisterKind>,
    /// LWW: one value (none if absent). Multi-value: every concurrent
    /// sibling, ascending bytewise.
    pub values: Vec<Vec<u8>>,
}

impl RegisterValue {
    pub(crate) fn from_proto(reply: pb::RegisterGetResponse) -> RegisterValue {
        let kind = match reply.kind() {
            pb::RegisterKind::Lww => Some(RegisterKind::Lww),
            pb::RegisterKind::MultiValue => Some(RegisterKind::MultiValue),
            pb::RegisterKind::Unspecified => None,
        };
        RegisterValue {
            kind,
            values: reply.values,
        }
    }
}

/// One change to one field of a map. Each field kind has its own
/// namespace: the register field "a" and the counter field "a" differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapUpdate {
    /// Writes the (multi-value) register field.
    RegisterWrite(Vec<u8>),
    /// Adds to the counter field (negative: subtracts); zero is refused.
    CounterIncrement(i64),
    /// Adds an element to the set field.
    SetAdd(Vec<u8>),
    /// Removes an element from the set field, as observed by the receiver.
    SetRemove(Vec<u8>),
}

impl MapUpdate {
    pub(crate) fn to_proto(&self) -> pb::map_update_request::Update {
        use pb::map_update_request::Update;
        match self {
            MapUpdate::RegisterWrite(value) => Update::RegisterWrite(value.clone()),
            MapUpdate::CounterIncrement(by) => Update::CounterIncrement(*by),
            MapUpdate::SetAdd(element) => Update::SetAdd(element.clone()),
            MapUpdate::SetRemove(element) => Update::SetRemove(element.clone()),
        }
    }
}

/// A map read: every field, per kind, ascending bytewise by field name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapValue {
    /// The register fields.
    pub registers: Vec<MapRegister>,
    /// The counter fields.
    pub counters: Vec<MapCounter>,
    /// The set fields.
    pub sets: Vec<MapSet>,
}

/// A register field of a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRegister {
    /// The field name.
    pub field: Vec<u8>,
    /// Every concurrent value (one without concurrency), ascending.
    pub values: Vec<Vec<u8>>,
}

/// A counter field of a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCounter {
    /// The field name.
    pub field: Vec<u8>,
    /// The counter's value.
    pub value: i64,
}

/// A set field of a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSet {
    /// The field name.
    pub field: Vec<u8>,
    /// The elements, ascending.
    pub members: Vec<Vec<u8>>,
}

impl MapValue {
    pub(crate) fn from_proto(reply: pb::MapGetResponse) -> MapValue {
        MapValue {
            registers: reply
                .registers
                .into_iter()
                .map(|r| MapRegister {
                    field: r.field,
                    values: r.values,
                })
                .collect(),
            counters: reply
                .counters
                .into_iter()
                .map(|c| MapCounter {
                    field: c.field,
                    value: c.value,
                })
                .collect(),
            sets: reply
                .sets
                .into_iter()
                .map(|s| MapSet {
                    field: s.field,
                    members: s.members,
                })
                .collect(),
        }
    }
}

/// A bounded counter read, as the answering replica sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoundedCounterValue {
    /// The value, never below zero.
    pub value: u64,
    /// The rights the answering node holds: what a decrement sent to it
    /// may spend now.
    pub local_rights: u64,
    /// Every node holding rights, ascending by node id; they add up to
    /// `value`.
    pub rights: Vec<NodeRights>,
}

/// The rights one node holds in a bounded counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRights {
    /// The node.
    pub node_id: u64,
    /// What it may decrement or transfer without coordination.
    pub rights: u64,
}

impl BoundedCounterValue {
    pub(crate) fn from_proto(reply: pb::BoundedCounterGetResponse) -> BoundedCounterValue {
        BoundedCounterValue {
            value: reply.value,
            local_rights: reply.local_rights,
            rights: reply
                .rights
                .into_iter()
                .map(|r| NodeRights {
                    node_id: r.node_id,
                    rights: r.rights,
                })
                .collect(),
        }
    }
}

/// A member's liveness, from the SWIM failure detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; declared dead unless it refutes the suspicion.
    Suspect,
    /// Declared dead; it keeps its ring ranges.
    Dead,
    /// Left the cluster by its own notice.
    Left,
    /// A state the server did not name, or one newer than this client;
    /// the raw enum number.
    Unknown(i32),
}

impl MemberState {
    fn from_proto(state: i32) -> MemberState {
        match pb::MemberState::try_from(state) {
            Ok(pb::MemberState::Alive) => MemberState::Alive,
            Ok(pb::MemberState::Suspect) => MemberState::Suspect,
            Ok(pb::MemberState::Dead) => MemberState::Dead,
            Ok(pb::MemberState::Left) => MemberState::Left,
            Ok(pb::MemberState::Unspecified) | Err(_) => MemberState::Unknown(state),
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberState::Alive => f.write_str("alive"),
            MemberState::Suspect => f.write_str("suspect"),
            MemberState::Dead => f.write_str("dead"),
            MemberState::Left => f.write_str("left"),
            MemberState::Unknown(number) => write!(f, "unknown({number})"),
        }
    }
}

/// One member of the cluster, as the answering node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The member's node id.
    pub node_id: u64,
    /// Its client API address, `host:port`.
    pub address: String,
    /// Its liveness.
    pub state: MemberState,
    /// Its SWIM incarnation number.
    pub incarnation: u64,
    /// The fraction of the ring it owns as a primary, in [0, 1].
    pub ownership_fraction: f64,
}

impl Member {
    pub(crate) fn from_proto(member: pb::Member) -> Member {
        Member {
            node_id: member.node_id,
            address: member.address,
            state: MemberState::from_proto(member.state),
            incarnation: member.incarnation,
            ownership_fraction: member.ownership_fraction,
        }
    }
}

/// One node's own state and bounds (`Cluster.Status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node that answered.
    pub node_id: u64,
    /// Its calm release.
    pub server_version: String,
    /// The cluster name its members share.
    pub cluster_name: String,
    /// Members it knows of.
    pub members_total: u32,
    /// Of those, the ones alive.
    pub members_alive: u32,
    /// Keys it holds at the `local` level.
    pub keys: u64,
    /// The bound on a key's length, in bytes.
    pub key_bytes_max: u64,
    /// The bound on an element, value or field name, in bytes.
    pub payload_bytes_max: u64,
}

impl NodeStatus {
    pub(crate) fn from_proto(node_id: u64, reply: pb::StatusResponse) -> NodeStatus {
        NodeStatus {
            node_id,
            server_version: reply.server_version,
            cluster_name: reply.cluster_name,
            members_total: reply.members_total,
            members_alive: reply.members_alive,
            keys: reply.keys,
            key_bytes_max: reply.key_bytes_max,
            payload_bytes_max: reply.payload_bytes_max,
        }
    }
}

/// The levels the `Kv` service serves: how many of a key's N replicas a
/// request waits for. A type of its own, not [`Level`], so a `Kv` request
/// cannot name `local` or `linearizable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvLevel {
    /// R = W = 1: the first replica's answer.
    One,
    /// R = W = N / 2 + 1: a majority, so a read overlaps every write.
    Quorum,
    /// R = W = N: every replica.
    All,
}

impl KvLevel {
    /// Every `Kv` level, cheapest first.
    pub const ALL: [KvLevel; 3] = [KvLevel::One, KvLevel::Quorum, KvLevel::All];

    /// The level's lower-case name, as the CLI spells it (`quorum`).
    pub fn name(self) -> &'static str {
        Level::from(self).name()
    }
}

impl From<KvLevel> for Level {
    fn from(level: KvLevel) -> Level {
        match level {
            KvLevel::One => Level::One,
            KvLevel::Quorum => Level::Quorum,
            KvLevel::All => Level::All,
        }
    }
}

impl fmt::Display for KvLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvLevel {
    type Err = ParseKvLevelError;

    /// Parses `one`, `quorum` or `all`, exactly as [`KvLevel::name`]
    /// spells them.
    fn from_str(text: &str) -> Result<KvLevel, ParseKvLevelError> {
        KvLevel::ALL
            .into_iter()
            .find(|level| level.name() == text)
            .ok_or_else(|| ParseKvLevelError(text.to_owned()))
    }
}

/// A name that is not a [`KvLevel`]; it holds the name as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown Kv level {0:?}: expected one, quorum or all")]
pub struct ParseKvLevelError(pub String);

/// How a `Kv` request is served: its level and its causal context, and
/// overrides of the keyspace's N, R and W.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvOptions {
    /// `None` uses the client's level ([`ClientConfig::level`]) when it is
    /// `one`, `quorum` or `all`, and the server's default (`quorum`) when
    /// it is `local`; a client configured `linearizable` sends that, and
    /// the server refuses it with `UNIMPLEMENTED`.
    ///
    /// [`ClientConfig::level`]: crate::ClientConfig::level
    pub level: Option<KvLevel>,
    /// The context of the read a write follows; empty for a blind write.
    pub context: Vec<u8>,
    /// Replicas of the key for this request.
    pub n: Option<u32>,
    /// Replies a read waits for.
    pub r: Option<u32>,
    /// Acks a write waits for.
    pub w: Option<u32>,
}

impl KvOptions {
    /// The options of a blind write, or a read, at `level`.
    pub fn at(level: KvLevel) -> KvOptions {
        KvOptions {
            level: Some(level),
            ..KvOptions::default()
        }
    }

    /// These options, carrying `context` (a read's or a write's) so the
    /// write supersedes exactly the siblings it covers.
    pub fn with_context(mut self, context: impl Into<Vec<u8>>) -> KvOptions {
        self.context = context.into();
        self
    }

    /// These options, overriding the keyspace's N, R and W for this
    /// request (`None` keeps the keyspace's N and the level's R or W).
    pub fn with_quorum(mut self, n: Option<u32>, r: Option<u32>, w: Option<u32>) -> KvOptions {
        (self.n, self.r, self.w) = (n, r, w);
        self
    }

    /// The API's overrides; absent when none is set.
    pub(crate) fn quorum(&self) -> Option<pb::KvQuorum> {
        if self.n.is_none() && self.r.is_none() && self.w.is_none() {
            return None;
        }
        Some(pb::KvQuorum {
            n: self.n.unwrap_or(0),
            r: self.r.unwrap_or(0),
            w: self.w.unwrap_or(0),
        })
    }
}

/// A `Kv.Get`: every sibling (`None` for a concurrent delete) and the
/// context to write back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvValue {
    /// Every sibling in the server's stable order; empty if never written.
    pub siblings: Vec<Option<Vec<u8>>>,
    /// Pass it to the next put or delete of the key.
    pub context: Vec<u8>,
    /// Replies merged.
    pub replies: u32,
    /// The node that coordinated the read.
    pub node_id: u64,
}

impl KvValue {
    /// The live values, tombstones skipped.
    pub fn values(&self) -> impl Iterator<Item = &Vec<u8>> + '_ {
        self.siblings.iter().flatten()
    }
}

/// A `Kv.Put` or `Kv.Delete`: what the coordinating owner holds after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvWritten {
    /// Every sibling the owner holds, the new write included (none for a
    /// delete's reply).
    pub siblings: Vec<Option<Vec<u8>>>,
    /// The context that supersedes exactly those siblings.
    pub context: Vec<u8>,
    /// Acks before the reply (W).
    pub acks: u32,
    /// How many of them were hints held for a down replica.
    pub hinted_acks: u32,
    /// The node that coordinated the write.
    pub node_id: u64,
}

/// The API's siblings as plain options.
pub(crate) fn siblings(siblings: Vec<pb::KvSibling>) -> Vec<Option<Vec<u8>>> {
    siblings
        .into_iter()
        .map(|sibling| (!sibling.tombstone).then_some(sibling.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_levels_parse_as_the_cli_spells_them_and_nothing_else() {
        for level in KvLevel::ALL {
            assert_eq!(level.name().parse::<KvLevel>(), Ok(level));
            assert_eq!(level.to_string(), level.name());
        }
        for refused in ["local", "linearizable", "Quorum", "", "two"] {
            let error = refused.parse::<KvLevel>().unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("unknown Kv level {refused:?}: expected one, quorum or all")
            );
        }
    }

    #[test]
    fn kv_options_send_overrides_only_when_one_is_set() {
        assert_eq!(KvOptions::default().quorum(), None);
        let options = KvOptions::at(KvLevel::All).with_quorum(Some(5), None, Some(4));
        assert_eq!(
            options.quorum(),
            Some(pb::KvQuorum { n: 5, r: 0, w: 4 }),
            "zero asks for the keyspace's or the level's value"
        );
        let options = options.with_context(vec![7]);
        assert_eq!(
            (options.level, options.context),
            (Some(KvLevel::All), vec![7])
        );
    }

    #[test]
    fn a_tombstone_sibling_reads_as_none_and_an_empty_value_as_some() {
        let sibling = |value: &[u8], tombstone| pb::KvSibling {
            value: value.to_vec(),
            tombstone,
        };
        let read = siblings(vec![
            sibling(b"a", false),
            sibling(b"", true),
            sibling(b"", false),
        ]);
        assert_eq!(read, [Some(b"a".to_vec()), None, Some(Vec::new())]);
    }
}
