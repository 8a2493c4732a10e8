//! The crash model check on both engines, and on planted engines that forget to sync.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

use crate::model::{
    DiskSubject, ForgetfulMemorySubject, MemorySubject, ModelOp, SkipsDurableCommit, Step, Subject,
    check_steps, steps,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Storage contract: a crash keeps exactly the state of the last completed sync; snapshots
    /// never see later writes; scans match an ordered-map model in both directions.
    #[test]
    fn memory_engine_matches_the_model_across_crashes(steps in steps()) {
        check_steps::<MemorySubject>(&steps)?;
    }
}

proptest! {
    // Fewer cases: each opens a database file and fsyncs at every sync step.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same contract on redb, crashed by opening a copy of the file as it stood.
    #[test]
    fn disk_engine_matches_the_model_across_crashes(steps in steps()) {
        check_steps::<DiskSubject>(&steps)?;
    }
}

/// A write that is never synced, then a crash: the smallest run that tells a correct engine
/// from one that forgets to sync.
fn unsynced_write_then_crash() -> Vec<Step> {
    vec![
        Step::Write(vec![ModelOp::Put(0, b"k".to_vec(), b"v1".to_vec())]),
        Step::Sync,
        Step::Write(vec![ModelOp::Put(0, b"k".to_vec(), b"v2".to_vec())]),
        Step::Crash,
    ]
}

/// Runs the random check against `S` from a fixed seed and says whether it found a failure.
fn random_check_catches<S: Subject>(cases: u32) -> bool {
    let config = Config {
        cases,
        // Shrinking is not under test here, and each disk shrink step opens files.
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    match runner.run(&steps(), |steps| check_steps::<S>(&steps)) {
        Ok(()) => false,
        Err(TestError::Fail(..)) => true,
        Err(error) => panic!("the runner itself failed: {error}"),
    }
}

#[test]
fn correct_engines_pass_the_minimal_unsynced_write_run() {
    let steps = unsynced_write_then_crash();
    assert!(check_steps::<MemorySubject>(&steps).is_ok());
    assert!(check_steps::<DiskSubject>(&steps).is_ok());
}

/// Planted violation: a memory engine whose crash keeps unsynced writes must fail the check.
#[test]
fn crash_check_catches_a_memory_engine_that_keeps_unsynced_writes() {
    assert!(check_steps::<ForgetfulMemorySubject>(&unsynced_write_then_crash()).is_err());
    assert!(random_check_catches::<ForgetfulMemorySubject>(1000));
}

/// Planted violation: a disk engine whose sync skips the durable commit must fail the check.
#[test]
fn crash_check_catches_a_disk_engine_that_skips_the_durable_commit() {
    assert!(check_steps::<DiskSubject<SkipsDurableCommit>>(&unsynced_write_then_crash()).is_err());
    assert!(random_check_catches::<DiskSubject<SkipsDurableCommit>>(64));
}
