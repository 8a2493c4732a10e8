//! Logical clocks: Lamport, hybrid logical clocks, version vectors and dotted
//! version vectors.
//!
//! (Crate tutorial: written with the clock implementations.)

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod dot;
mod hlc;

pub use dot::Dot;
pub use hlc::HlcTimestamp;
