//! Integration tests of the CRDT replica core at every level: a seeded in-test
//! cluster of replicas over memory engines and a lossy, duplicating,
//! reordering network.

mod harness;
mod local;
mod quorum;
