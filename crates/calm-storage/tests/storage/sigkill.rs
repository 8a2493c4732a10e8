//! The disk engine under SIGKILL: a child process writes numbered batches with periodic syncs
//! until killed at a random point; the reopened database must hold exactly the state of a sync
//! no older than the last one the child reported.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use calm_storage::{DiskEngine, KeyRange, Keyspace, Limits, Order, ReadView, Storage, WriteBatch};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const KS: Keyspace = Keyspace::new("sigkill");
const COUNTER_KEY: &[u8] = b"counter";
/// The child stops here if never killed; far beyond any kill point.
const BATCHES_MAX: u64 = 1_000_000;
const DIR_VAR: &str = "CALM_STORAGE_SIGKILL_DIR";
const SEED_VAR: &str = "CALM_STORAGE_SIGKILL_SEED";
const CHILD_TEST: &str = "sigkill::sigkill_child_writes_numbered_batches_until_killed";

/// The child's deterministic schedule: batch contents and which batches are followed by a
/// sync. Parent and child draw it from the same seed.
struct Plan {
    rng: StdRng,
    next: u64,
}

impl Plan {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            next: 1,
        }
    }

    /// Batch `n`: the counter, a new numbered key of random length, and now and then a delete
    /// of an older key, so a torn batch would show. Returns the batch and whether a sync
    /// follows it.
    fn next_batch(&mut self) -> (u64, WriteBatch, bool) {
        let n = self.next;
        self.next += 1;
        let mut batch = WriteBatch::new();
        batch.put(KS, COUNTER_KEY, n.to_be_bytes());
        let value_bytes = self.rng.random_range(1..2000);
        batch.put(
            KS,
            format!("batch/{n:08}"),
            vec![(n % 251) as u8; value_bytes],
        );
        if n > 4 && self.rng.random_bool(0.3) {
            batch.delete(KS, format!("batch/{:08}", n - 4));
        }
        (n, batch, self.rng.random_bool(0.25))
    }
}

/// Not a test of its own: the child role of the SIGKILL test, which runs it in a subprocess.
#[test]
#[ignore = "child role of disk_engine_recovers_exactly_a_synced_state_after_sigkill"]
fn sigkill_child_writes_numbered_batches_until_killed() {
    let (Ok(dir), Ok(seed)) = (std::env::var(DIR_VAR), std::env::var(SEED_VAR)) else {
        return;
    };
    let seed: u64 = seed.parse().expect("the parent passes a numeric seed");
    let engine = DiskEngine::open(Path::new(&dir).join("db.redb"), Limits::default())
        .expect("the child opens its database");
    let mut plan = Plan::new(seed);
    let mut stdout = std::io::stdout().lock();
    loop {
        let (n, batch, sync) = plan.next_batch();
        engine.write(&batch).expect("the write succeeds");
        if sync {
            engine.sync().expect("the sync succeeds");
            // Reported only once durable, as a driver acknowledges.
            std::io::Write::write_all(&mut stdout, format!("synced {n}\n").as_bytes())
                .and_then(|()| std::io::Write::flush(&mut stdout))
                .expect("the parent reads stdout");
        }
        if n == BATCHES_MAX {
            return;
        }
    }
}

/// The state after batch `n` and the numbers of the batches followed by a sync, up to `n`.
fn expected(seed: u64, n: u64) -> (BTreeMap<Vec<u8>, Vec<u8>>, Vec<u64>) {
    let (mut state, mut synced) = (BTreeMap::new(), Vec::new());
    let mut plan = Plan::new(seed);
    for _ in 0..n {
        let (number, batch, sync) = plan.next_batch();
        for op in batch.ops() {
            match op {
                calm_storage::Op::Put { key, value, .. } => {
                    state.insert(key.clone(), value.clone());
                }
                calm_storage::Op::Delete { key, .. } => {
                    state.remove(key);
                }
                calm_storage::Op::DeleteRange { .. } => unreachable!("the plan has none"),
            }
        }
        if sync {
            synced.push(number);
        }
    }
    (state, synced)
}

/// Spawns the child, kills it after `syncs_before_kill` reported syncs plus `jitter`, and
/// returns the last sync it reported.
fn run_child_and_kill(dir: &Path, seed: u64, syncs_before_kill: usize, jitter: Duration) -> u64 {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut child = Command::new(exe)
        .args([
            CHILD_TEST,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(SEED_VAR, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test binary re-executes");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let synced = |line: &str| {
        line.strip_prefix("synced ")
            .and_then(|n| n.parse::<u64>().ok())
    };
    let mut last_reported = 0;
    let mut seen = 0;
    while seen < syncs_before_kill {
        let line = lines
            .next()
            .expect("the child reports before it ends")
            .expect("utf-8");
        if let Some(n) = synced(&line) {
            (last_reported, seen) = (n, seen + 1);
        }
    }
    std::thread::sleep(jitter);
    child.kill().expect("SIGKILL is delivered");
    child.wait().expect("the child is reaped");
    // Lines written before the kill are still in the pipe.
    for line in lines {
        if let Some(n) = synced(&line.expect("utf-8")) {
            last_reported = n;
        }
    }
    last_reported
}

/// Checks the recovered database against the plan: its counter names the last reported sync
/// or the one after it (in flight at the kill), and its whole contents are the state after
/// that batch.
fn check_recovered(dir: &Path, seed: u64, last_reported: u64) {
    let engine = DiskEngine::open(dir.join("db.redb"), Limits::default())
        .expect("the database reopens after SIGKILL");
    let counter = engine.get(KS, COUNTER_KEY).expect("reads succeed");
    let recovered_n = counter.map_or(0, |bytes| {
        u64::from_be_bytes(bytes.try_into().expect("the counter is 8 bytes"))
    });
    // A sync follows a batch with probability 1/4, so 1,000 batches on there is another.
    let (_, synced) = expected(seed, last_reported + 1000);
    let in_flight = synced.iter().copied().find(|&n| n > last_reported);
    assert!(
        recovered_n == last_reported || Some(recovered_n) == in_flight,
        "seed {seed}: recovered batch {recovered_n}, last reported sync {last_reported}, \
         sync in flight {in_flight:?}"
    );
    let (expected_state, _) = expected(seed, recovered_n);
    let all = engine.scan(KS, &KeyRange::all(), Order::Ascending, 100_000);
    let recovered: BTreeMap<_, _> = all.expect("reads succeed").into_iter().collect();
    assert!(
        recovered == expected_state,
        "seed {seed}: torn or unsynced state after batch {recovered_n}"
    );
}

/// Durability under SIGKILL (Storage contract, rule 2): every reported sync survives, nothing
/// beyond the sync in flight does, and no batch is torn. Five kills at seeded points.
#[test]
fn disk_engine_recovers_exactly_a_synced_state_after_sigkill() {
    for seed in 1..=5u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let syncs_before_kill = rng.random_range(1..40);
        let jitter = Duration::from_micros(rng.random_range(0..3000));
        let dir = tempfile::tempdir().expect("the temp dir is writable");
        let last_reported = run_child_and_kill(dir.path(), seed, syncs_before_kill, jitter);
        assert!(last_reported > 0, "seed {seed}: the child reported a sync");
        check_recovered(dir.path(), seed, last_reported);
    }
}
