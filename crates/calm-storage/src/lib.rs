//! The Storage trait the protocol cores write through, a redb disk engine and
//! a crash-simulating memory engine.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
