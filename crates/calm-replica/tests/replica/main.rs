//! Integration tests of the `local`-level replica core: a seeded in-test
//! cluster of replicas over memory engines and a lossy, duplicating,
//! reordering network.

mod harness;
mod local;
