//! Delta-state CRDTs (Almeida, Shoker, Baquero): counters, sets, registers,
//! maps and the escrow bounded counter.
//!
//! (Crate tutorial: written with the CRDT implementations.)

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod delta;
#[cfg(any(test, feature = "laws"))]
pub mod laws;

pub use delta::{DeltaBuffer, DeltaCrdt};
