//! The crate's one integration-test binary: the crash model check on both engines, SIGKILL
//! recovery of the disk engine, group commit, bounds and fault injection.

mod bounds;
mod crash_model;
mod faults;
mod group_commit;
mod model;
mod sigkill;
