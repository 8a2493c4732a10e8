//! The typed CRDT object a `local`-level key holds, the operations a client
//! may run on it, and the values reads return.
//!
//! A key holds exactly one [`Object`]; its kind is fixed by the first write.
//! Every operation is turned into a *delta* by the object's own delta
//! mutator (calm-crdt), so the replica core only ever joins: it applies the
//! delta locally and ships the same delta to the other replicas.

use std::collections::{BTreeMap, BTreeSet};

use calm_clock::HlcTimestamp;
use calm_crdt::{
    BoundedCounter, BoundedCounterError, CausalCounter, DeltaCrdt, LwwRegister, MvRegister, OrMap,
    OrSet, PnCounter,
};
use calm_types::NodeId;
use serde::{Deserialize, Serialize};

/// Element, value and field types are opaque bytes: the `local` level stores
/// what clients send and interprets none of it.
pub type Bytes = Vec<u8>;

/// The kind of an object (and of the object an operation needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A PN-counter.
    Counter,
    /// An add-wins observed-remove set of byte strings.
    Set,
    /// A last-writer-wins register ordered by the writer's HLC.
    Register,
    /// A multi-value register: concurrent writes are kept as siblings.
    MultiRegister,
    /// An observed-remove map of register, counter and set fields.
    Map,
    /// An escrow counter that never drops below zero.
    BoundedCounter,
}

/// The fields of a map object, one observed-remove map per field kind.
///
/// A field name lives in one namespace per kind, so the register field `a`
/// and the counter field `a` are different fields. Separate namespaces are
/// what keeps the map a lattice without a type check that could diverge:
/// two replicas that concurrently create `a` as a register and as a counter
/// both keep their field. [`Operation::MapRemoveField`] removes the name
/// from every namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MapObject {
    registers: OrMap<Bytes, MvRegister<Bytes>>,
    counters: OrMap<Bytes, CausalCounter>,
    sets: OrMap<Bytes, OrSet<Bytes>>,
}

/// What a read of a [`MapObject`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapValue {
    /// Register fields: every concurrent value (one without concurrency).
    pub registers: BTreeMap<Bytes, BTreeSet<Bytes>>,
    /// Counter fields.
    pub counters: BTreeMap<Bytes, i128>,
    /// Set fields.
    pub sets: BTreeMap<Bytes, BTreeSet<Bytes>>,
}

impl DeltaCrdt for MapObject {
    type Value = MapValue;

    fn value(&self) -> MapValue {
        MapValue {
            registers: self.registers.value(),
            counters: self.counters.value(),
            sets: self.sets.value(),
        }
    }

    fn join(&mut self, other: &Self) {
        self.registers.join(&other.registers);
        self.counters.join(&other.counters);
        self.sets.join(&other.sets);
    }

    fn validate(&self) -> Result<(), String> {
        self.registers.validate()?;
        self.counters.validate()?;
        self.sets.validate()
    }
}

/// The state of one key: a delta-state CRDT of one of the supported kinds.
///
/// `Object` is itself a join-semilattice: objects of one kind join as that
/// CRDT; when two replicas concurrently *create* a key with different kinds
/// (each accepted locally, since neither saw the other), the kind ordered
/// later in [`ObjectKind`] wins everywhere and the other state is dropped.
/// That rule is deterministic, so replicas still converge; a wrong-kind
/// operation on a key that already exists is refused instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    /// See [`ObjectKind::Counter`].
    Counter(PnCounter),
    /// See [`ObjectKind::Set`].
    Set(OrSet<Bytes>),
    /// See [`ObjectKind::Register`].
    Register(LwwRegister<Bytes>),
    /// See [`ObjectKind::MultiRegister`].
    MultiRegister(MvRegister<Bytes>),
    /// See [`ObjectKind::Map`].
    Map(MapObject),
    /// See [`ObjectKind::BoundedCounter`].
    BoundedCounter(BoundedCounter),
}

/// What a client asks of a key. Every variant but [`Operation::Read`] is a
/// write; a write on an absent key creates it with the kind it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Returns the key's value; changes nothing.
    Read,
    /// Adds to a PN-counter.
    Increment(u64),
    /// Subtracts from a PN-counter.
    Decrement(u64),
    /// Adds an element to a set (add wins over a concurrent remove).
    SetAdd(Bytes),
    /// Removes an element, as far as this replica has observed it.
    SetRemove(Bytes),
    /// Sets an LWW register, stamped by the receiving node's HLC.
    RegisterSet(Bytes),
    /// Writes a multi-value register, superseding every value seen here.
    MultiRegisterWrite(Bytes),
    /// Writes the register field `field` of a map.
    MapRegisterWrite {
        /// The field name.
        field: Bytes,
        /// The value written.
        value: Bytes,
    },
    /// Adds to the counter field `field` of a map.
    MapCounterIncrement {
        /// The field name.
        field: Bytes,
        /// How much to add.
        amount: u64,
    },
    /// Subtracts from the counter field `field` of a map.
    MapCounterDecrement {
        /// The field name.
        field: Bytes,
        /// How much to subtract.
        amount: u64,
    },
    /// Adds an element to the set field `field` of a map.
    MapSetAdd {
        /// The field name.
        field: Bytes,
        /// The element added.
        element: Bytes,
    },
    /// Removes an element from the set field `field` of a map.
    MapSetRemove {
        /// The field name.
        field: Bytes,
        /// The element removed.
        element: Bytes,
    },
    /// Removes the field name from every namespace of a map (observed-remove).
    MapRemoveField(Bytes),
    /// Adds to a bounded counter, creating as many rights at this node.
    BoundedIncrement(u64),
    /// Subtracts from a bounded counter, spending this node's rights.
    BoundedDecrement(u64),
    /// Moves `amount` of this node's rights to node `to`.
    BoundedTransfer {
        /// The node receiving the rights.
        to: NodeId,
        /// How many rights move.
        amount: u64,
    },
}

/// What a read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// The key holds no object.
    Absent,
    /// A PN-counter's value.
    Counter(i128),
    /// A set's elements.
    Set(BTreeSet<Bytes>),
    /// An LWW register's value (`None` is impossible once created, but the
    /// CRDT's bottom reads so).
    Register(Option<Bytes>),
    /// A multi-value register's concurrent values.
    MultiRegister(BTreeSet<Bytes>),
    /// A map's fields.
    Map(MapValue),
    /// A bounded counter.
    BoundedCounter {
        /// The counter's value, never below zero.
        value: i128,
        /// The rights the answering node holds: what it may decrement now.
        local_rights: u64,
        /// Every node's rights as the answering replica sees them (nodes
        /// without rights left out); tells a client where to ask for a
        /// transfer when `local_rights` is short.
        rights: BTreeMap<NodeId, u64>,
    },
}

/// Why an operation produced no delta. Nothing changed in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The key holds an object of another kind. Nothing changed.
    #[error("the key holds a {found:?}, the operation needs a {expected:?}")]
    WrongType {
        /// The kind the key holds.
        found: ObjectKind,
        /// The kind the operation needs.
        expected: ObjectKind,
    },
    /// A bounded-counter decrement or transfer asks for more rights than this
    /// node holds. Nothing changed; transfer rights to this node (a
    /// [`Operation::BoundedTransfer`] at a node that holds them) and retry.
    #[error(
        "this node holds {available} rights, {requested} requested: transfer rights here first"
    )]
    InsufficientRights {
        /// Rights this node holds.
        available: u64,
        /// Rights the operation needs.
        requested: u64,
    },
    /// A bounded-counter transfer names this node as the receiver. Nothing changed.
    #[error("a transfer of rights to the transferring node itself")]
    TransferToSelf,
    /// A counter would leave its range. Nothing changed.
    #[error("the counter would overflow")]
    Overflow,
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Counter(_) => ObjectKind::Counter,
            Object::Set(_) => ObjectKind::Set,
            Object::Register(_) => ObjectKind::Register,
            Object::MultiRegister(_) => ObjectKind::MultiRegister,
            Object::Map(_) => ObjectKind::Map,
            Object::BoundedCounter(_) => ObjectKind::BoundedCounter,
        }
    }

    /// The bottom object of `kind`.
    pub fn empty(kind: ObjectKind) -> Object {
        match kind {
            ObjectKind::Counter => Object::Counter(PnCounter::default()),
            ObjectKind::Set => Object::Set(OrSet::default()),
            ObjectKind::Register => Object::Register(LwwRegister::default()),
            ObjectKind::MultiRegister => Object::MultiRegister(MvRegister::default()),
            ObjectKind::Map => Object::Map(MapObject::default()),
            ObjectKind::BoundedCounter => Object::BoundedCounter(BoundedCounter::default()),
        }
    }

    /// What a read at `node` returns (`node` decides the bounded counter's
    /// local rights).
    pub fn value(&self, node: NodeId) -> Value {
        match self {
            Object::Counter(c) => Value::Counter(c.value()),
            Object::Set(s) => Value::Set(s.value()),
            Object::Register(r) => Value::Register(r.value()),
            Object::MultiRegister(r) => Value::MultiRegister(r.value()),
            Object::Map(m) => Value::Map(m.value()),
            Object::BoundedCounter(b) => Value::BoundedCounter {
                value: b.value(),
                local_rights: b.rights(node),
                rights: b.rights_by_node(),
            },
        }
    }

    /// Joins `other` into `self`. Same kinds join as their CRDT; different
    /// kinds resolve to the later [`ObjectKind`] (see the type's docs), which
    /// keeps the join commutative, associative and idempotent.
    pub fn join(&mut self, other: &Object) {
        match (&mut *self, other) {
            (Object::Counter(a), Object::Counter(b)) => a.join(b),
            (Object::Set(a), Object::Set(b)) => a.join(b),
            (Object::Register(a), Object::Register(b)) => a.join(b),
            (Object::MultiRegister(a), Object::MultiRegister(b)) => a.join(b),
            (Object::Map(a), Object::Map(b)) => a.join(b),
            (Object::BoundedCounter(a), Object::BoundedCounter(b)) => a.join(b),
            (ours, theirs) => {
                if theirs.kind() > ours.kind() {
                    *ours = theirs.clone();
                }
            }
        }
    }

    /// Checks the invariants serde cannot, after decoding untrusted bytes.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Object::Counter(c) => c.validate(),
            Object::Set(s) => s.validate(),
            Object::Register(r) => r.validate(),
            Object::MultiRegister(r) => r.validate(),
            Object::Map(m) => m.validate(),
            Object::BoundedCounter(b) => b.validate(),
        }
    }

    /// The register's current `(stamp, writer)`, for the HLC to observe
    /// before a new LWW write; `None` for other kinds or an empty register.
    pub(crate) fn lww_stamp(&self) -> Option<HlcTimestamp> {
        match self {
            Object::Register(r) => r.stamp().map(|(timestamp, _)| timestamp),
            _ => None,
        }
    }
}

impl Operation {
    /// The kind of object the operation needs; `None` for a read.
    pub fn kind(&self) -> Option<ObjectKind> {
        use Operation::*;
        Some(match self {
            Read => return None,
            Increment(_) | Decrement(_) => ObjectKind::Counter,
            SetAdd(_) | SetRemove(_) => ObjectKind::Set,
            RegisterSet(_) => ObjectKind::Register,
            MultiRegisterWrite(_) => ObjectKind::MultiRegister,
            MapRegisterWrite { .. }
            | MapCounterIncrement { .. }
            | MapCounterDecrement { .. }
            | MapSetAdd { .. }
            | MapSetRemove { .. }
            | MapRemoveField(_) => ObjectKind::Map,
            BoundedIncrement(_) | BoundedDecrement(_) | BoundedTransfer { .. } => {
                ObjectKind::BoundedCounter
            }
        })
    }

    /// The longest byte string the operation carries (element, value or
    /// field), checked against the replica's bound before anything runs.
    pub fn payload_bytes(&self) -> usize {
        use Operation::*;
        match self {
            SetAdd(b)
            | SetRemove(b)
            | RegisterSet(b)
            | MultiRegisterWrite(b)
            | MapRemoveField(b) => b.len(),
            MapRegisterWrite { field, value: b }
            | MapSetAdd { field, element: b }
            | MapSetRemove { field, element: b } => field.len().max(b.len()),
            MapCounterIncrement { field, .. } | MapCounterDecrement { field, .. } => field.len(),
            _ => 0,
        }
    }
}

/// The delta of running write `op` at `node` on `current` (the bottom of
/// the needed kind if the key is absent). `timestamp` stamps LWW writes.
///
/// Returns [`ObjectError::WrongType`] for a kind mismatch; in every error
/// case no delta exists and nothing changed.
pub(crate) fn mutate(
    current: Option<&Object>,
    op: &Operation,
    node: NodeId,
    timestamp: HlcTimestamp,
) -> Result<Object, ObjectError> {
    let Some(expected) = op.kind() else {
        unreachable!("reads are answered before mutate is called")
    };
    let empty;
    let current = match current {
        Some(object) if object.kind() != expected => {
            return Err(ObjectError::WrongType {
                found: object.kind(),
                expected,
            });
        }
        Some(object) => object,
        None => {
            empty = Object::empty(expected);
            &empty
        }
    };
    Ok(match (current, op) {
        (Object::Counter(c), Operation::Increment(n)) => {
            Object::Counter(c.increment(node, *n).map_err(|_| ObjectError::Overflow)?)
        }
        (Object::Counter(c), Operation::Decrement(n)) => {
            Object::Counter(c.decrement(node, *n).map_err(|_| ObjectError::Overflow)?)
        }
        (Object::Set(s), Operation::SetAdd(e)) => Object::Set(s.add(node, e.clone())),
        (Object::Set(s), Operation::SetRemove(e)) => Object::Set(s.remove(e)),
        (Object::Register(r), Operation::RegisterSet(v)) => {
            Object::Register(r.write(node, timestamp, v.clone()))
        }
        (Object::MultiRegister(r), Operation::MultiRegisterWrite(v)) => {
            Object::MultiRegister(r.write(node, v.clone()))
        }
        (Object::Map(m), op) => Object::Map(mutate_map(m, op, node)?),
        (Object::BoundedCounter(b), op) => Object::BoundedCounter(mutate_bounded(b, op, node)?),
        // `current` has the kind `op` needs, so every pair is covered above.
        _ => unreachable!("kind checked above"),
    })
}

/// The delta of a map operation: the nested mutator runs on the field's
/// view, which carries the map's context so its dots are fresh map-wide.
fn mutate_map(map: &MapObject, op: &Operation, node: NodeId) -> Result<MapObject, ObjectError> {
    let mut delta = MapObject::default();
    match op {
        Operation::MapRegisterWrite { field, value } => {
            delta.registers = map
                .registers
                .update(field.clone(), |r| r.write(node, value.clone()));
        }
        Operation::MapCounterIncrement { field, amount } => {
            delta.counters = map
                .counters
                .try_update(field.clone(), |c| c.increment(node, *amount))
                .map_err(|_| ObjectError::Overflow)?;
        }
        Operation::MapCounterDecrement { field, amount } => {
            delta.counters = map
                .counters
                .try_update(field.clone(), |c| c.decrement(node, *amount))
                .map_err(|_| ObjectError::Overflow)?;
        }
        Operation::MapSetAdd { field, element } => {
            delta.sets = map
                .sets
                .update(field.clone(), |s| s.add(node, element.clone()));
        }
        Operation::MapSetRemove { field, element } => {
            delta.sets = map.sets.update(field.clone(), |s| s.remove(element));
        }
        Operation::MapRemoveField(field) => {
            delta.registers = map.registers.remove(field);
            delta.counters = map.counters.remove(field);
            delta.sets = map.sets.remove(field);
        }
        _ => unreachable!("only map operations reach mutate_map"),
    }
    Ok(delta)
}

/// The delta of a bounded-counter operation, with the escrow errors mapped.
fn mutate_bounded(
    counter: &BoundedCounter,
    op: &Operation,
    node: NodeId,
) -> Result<BoundedCounter, ObjectError> {
    let result = match op {
        Operation::BoundedIncrement(n) => counter.increment(node, *n),
        Operation::BoundedDecrement(n) => counter.decrement(node, *n),
        Operation::BoundedTransfer { to, amount } => counter.transfer(node, *to, *amount),
        _ => unreachable!("only bounded-counter operations reach mutate_bounded"),
    };
    result.map_err(|e| match e {
        BoundedCounterError::InsufficientRights {
            available,
            requested,
        } => ObjectError::InsufficientRights {
            available,
            requested,
        },
        BoundedCounterError::TransferToSelf { .. } => ObjectError::TransferToSelf,
        BoundedCounterError::Overflow { .. } => ObjectError::Overflow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(kind_op: Operation, node: u64) -> Object {
        mutate(None, &kind_op, NodeId(node), HlcTimestamp::new(1, 0)).expect("fresh key")
    }

    #[test]
    fn objects_of_different_kinds_join_as_a_lattice() {
        // Concurrent creation with two kinds must still converge: join stays
        // commutative, associative and idempotent across kinds.
        let objects = [
            write(Operation::Increment(2), 1),
            write(Operation::SetAdd(b"x".to_vec()), 2),
            write(Operation::BoundedIncrement(3), 3),
            write(Operation::Decrement(1), 2),
        ];
        let joined = |a: &Object, b: &Object| {
            let mut out = a.clone();
            out.join(b);
            out
        };
        for a in &objects {
            assert_eq!(&joined(a, a), a);
            for b in &objects {
                assert_eq!(joined(a, b), joined(b, a));
                for c in &objects {
                    assert_eq!(joined(&joined(a, b), c), joined(a, &joined(b, c)));
                }
            }
        }
    }

    #[test]
    fn a_wrong_kind_operation_is_refused_with_both_kinds() {
        let counter = write(Operation::Increment(1), 1);
        let refused = mutate(
            Some(&counter),
            &Operation::MapRemoveField(vec![]),
            NodeId(1),
            HlcTimestamp::new(1, 0),
        );
        assert_eq!(
            refused,
            Err(ObjectError::WrongType {
                found: ObjectKind::Counter,
                expected: ObjectKind::Map
            })
        );
    }
}
