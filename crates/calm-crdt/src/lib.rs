//! Delta-state CRDTs (Almeida, Shoker, Baquero): counters, sets, registers,
//! maps and the escrow bounded counter.
//!
//! Every type implements [`DeltaCrdt`]: a join-semilattice whose mutators
//! return a *delta*, a small state of the same type that carries just the
//! mutation. A replica applies its own delta, ships it, and every replica
//! that joins it ends up with the same state, whatever the delivery order,
//! however often it is duplicated. That is what lets calm's `local` level
//! acknowledge a write with zero network round trips.
//!
//! # A tour
//!
//! Two replicas of a counter increment concurrently and exchange deltas:
//!
//! ```
//! use calm_crdt::{DeltaCrdt, PnCounter};
//! use calm_types::NodeId;
//!
//! let (a, b) = (NodeId(1), NodeId(2));
//! let mut at_a = PnCounter::default();
//! let mut at_b = PnCounter::default();
//!
//! let from_a = at_a.increment(a, 5).unwrap();
//! at_a.apply_delta(&from_a);
//! let from_b = at_b.decrement(b, 2).unwrap();
//! at_b.apply_delta(&from_b);
//!
//! // Deltas travel as bytes; arriving twice changes nothing.
//! let wire = from_b.encode();
//! at_a.apply_delta(&PnCounter::decode(&wire).unwrap());
//! at_a.apply_delta(&PnCounter::decode(&wire).unwrap());
//! at_b.apply_delta(&from_a);
//! assert_eq!((at_a.value(), at_b.value()), (3, 3));
//! ```
//!
//! An OR-Set lets an add win over a concurrent remove, and a remove that saw
//! the add leaves no tombstone behind:
//!
//! ```
//! use calm_crdt::{DeltaCrdt, OrSet};
//! use calm_types::NodeId;
//!
//! let mut at_a: OrSet<String> = OrSet::default();
//! let add = at_a.add(NodeId(1), "x".to_string());
//! at_a.apply_delta(&add);
//! let mut at_b = at_a.clone();
//!
//! let remove = at_a.remove(&"x".to_string()); // a sees the add and removes it...
//! at_a.apply_delta(&remove);
//! let re_add = at_b.add(NodeId(2), "x".to_string()); // ...while b concurrently adds again
//! at_b.apply_delta(&re_add);
//!
//! at_a.apply_delta(&re_add);
//! at_b.apply_delta(&remove);
//! let x = "x".to_string();
//! assert!(at_a.contains(&x) && at_b.contains(&x)); // add wins
//! assert_eq!(at_a, at_b);
//! ```
//!
//! A bounded counter keeps "never below zero" without coordinating on the
//! common path: each replica spends only the rights it holds, and a spend
//! beyond them fails locally until rights are transferred:
//!
//! ```
//! use calm_crdt::{BoundedCounter, BoundedCounterError, DeltaCrdt};
//! use calm_types::NodeId;
//!
//! let (a, b) = (NodeId(1), NodeId(2));
//! let mut stock: BoundedCounter = BoundedCounter::default();
//! let restock = stock.increment(a, 10).unwrap(); // a holds 10 rights
//! stock.apply_delta(&restock);
//!
//! // b has no rights of its own: the decrement is refused, nothing changes.
//! let refused = stock.decrement(b, 1);
//! assert!(matches!(refused, Err(BoundedCounterError::InsufficientRights { .. })));
//!
//! // a transfers 4 rights to b; now b can spend them without asking anyone.
//! let transfer = stock.transfer(a, b, 4).unwrap();
//! stock.apply_delta(&transfer);
//! let sale = stock.decrement(b, 3).unwrap();
//! stock.apply_delta(&sale);
//! assert_eq!((stock.value(), stock.rights(a), stock.rights(b)), (7, 6, 1));
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bounded;
mod causal;
mod counter;
mod delta;
#[cfg(any(test, feature = "laws"))]
pub mod laws;
mod lww;
mod mvreg;
mod ormap;
mod orset;
mod set;

pub use delta::{DeltaBuffer, DeltaCrdt};
// Counters, G-Set, 2P-Set, LWW-Register, bounded counter:
pub use bounded::{BoundedCounter, BoundedCounterError};
pub use counter::{CounterOverflow, GCounter, PnCounter};
pub use lww::LwwRegister;
pub use set::{GSet, TwoPSet, TwoPSetError};
// Causal context, OR-Set, MV-Register, OR-Map:
pub use causal::{CausalContext, CausalCrdt, DOT_COUNTER_MAX, DotFun, DotMap, DotSet, DotStore};
pub use mvreg::MvRegister;
pub use ormap::{CausalCounter, CausalCounterError, OrMap};
pub use orset::OrSet;
