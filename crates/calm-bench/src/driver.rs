//! The drivers: [`drive`] runs a [`Workload`] under a [`Plan`], in a
//! closed loop (each client sends its next request when the last one is
//! answered) or an open loop (requests leave on a fixed schedule), and
//! returns the [`Measurement`].
//!
//! Both loops run the warmup and the measurement as one continuous run,
//! so connections and caches are warm when recording starts; an operation
//! is measured when it was due (open loop) or sent (closed loop) after the
//! warmup.
//!
//! The open loop corrects for coordinated omission as wrk2 does: request
//! `k` of client `i` is due at `start + (k * clients + i) / rate`, and its
//! latency runs from that *intended* time. When the server stalls, the
//! requests that should have left meanwhile are sent late, and each one's
//! latency includes the time it waited; a closed loop, which simply sends
//! fewer requests during a stall, reports one slow request instead.
//! tokio's timer has millisecond granularity, so a request may leave up to
//! a millisecond after it was due, and that delay counts in its latency
//! (wrk2's timers are in milliseconds too); the service time, from the
//! actual send, is reported beside it.
//!
//! Time is `tokio::time::Instant`, so the drivers run under tokio's paused
//! clock in tests, exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_client::code_name;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::error::BenchError;
use crate::keys::KeyDistribution;
use crate::progress::{self, LiveSample, Phase};
use crate::report::ErrorCount;
use crate::workload::{Done, OpError, Workload};

/// The most bench clients (concurrent requests) one run starts.
pub const CLIENTS_MAX: usize = 10_000;
/// The highest open-loop rate, operations per second.
pub const RATE_MAX: f64 = 10_000_000.0;
/// The longest duration or warmup.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// The slowest latency a histogram tells apart; slower ones count as this.
pub const LATENCY_MAX: Duration = Duration::from_secs(60 * 60);
/// How many recorders the clients share. Each holds three histograms of
/// about 200 KB, so one per client would cost gigabytes at the client
/// bound; a recorder's lock is held for a few dozen nanoseconds per
/// operation, so sharing costs nothing measurable.
const RECORDERS_MAX: usize = 16;
/// How often the progress bar refreshes.
const PROGRESS_PERIOD: Duration = Duration::from_millis(250);

/// What a run does: how many clients, which loop, for how long, on which
/// keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Bench clients, each with at most one request in flight.
    pub clients: usize,
    /// Closed or open loop.
    pub load: Load,
    /// How long to run before recording starts.
    pub warmup: Duration,
    /// When the measurement ends.
    pub stop: Stop,
    /// How keys are picked.
    pub keys: KeyDistribution,
    /// Seeds the clients' key choices (client `i` uses a generator derived
    /// from `seed` and `i`), so a run's key sequence is repeatable.
    pub seed: u64,
}

/// Closed or open loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Each client sends its next request as soon as the last is answered.
    Closed,
    /// Requests are due on a fixed schedule of `rate_per_s` in total,
    /// spread evenly over the clients; latency runs from the due time.
    Open {
        /// The target rate, operations per second, all clients together.
        rate_per_s: f64,
    },
}

/// When the measurement ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long (operations in flight at the end are still counted).
    After(Duration),
    /// After exactly this many measured operations, failed ones included.
    Ops(u64),
}

impl Plan {
    /// Checks every bound of the plan.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |message: String| Err(BenchError::InvalidPlan(message));
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return invalid(format!(
                "--clients must be from 1 to {CLIENTS_MAX}, not {}",
                self.clients
            ));
        }
        if let Load::Open { rate_per_s } = self.load
            && !(rate_per_s > 0.0 && rate_per_s <= RATE_MAX)
        {
            return invalid(format!(
                "--rate must be above 0 and at most {RATE_MAX}/s, not {rate_per_s}"
            ));
        }
        if self.warmup > DURATION_MAX {
            return invalid("--warmup must be at most 24h".to_owned());
        }
        match self.stop {
            Stop::After(duration) if duration.is_zero() || duration > DURATION_MAX => {
                invalid("--duration must be more than zero and at most 24h".to_owned())
            }
            Stop::Ops(0) => invalid("--ops must be at least 1".to_owned()),
            _ => Ok(()),
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Measurement {
    /// From the end of the warmup to the last answer of a measured
    /// operation.
    pub elapsed: Duration,
    /// Measured operations that succeeded.
    pub ops: u64,
    /// Latency of the successful measured operations, nanoseconds; in the
    /// open loop from the intended send time.
    pub latency: Histogram<u64>,
    /// Latency from the actual send time, nanoseconds (equal to `latency`
    /// in the closed loop).
    pub service_time: Histogram<u64>,
    /// Failed measured operations by gRPC code name.
    pub errors: BTreeMap<&'static str, ErrorCount>,
    /// The counts the workload labelled its successful measured operations
    /// with (see [`Done::outcome`]; one operation may add several), by
    /// label.
    pub outcomes: BTreeMap<&'static str, u64>,
}

/// Runs `workload` under `plan` and returns what was measured; `progress`
/// shows the live rate and p99 (pass [`ProgressBar::hidden`] for none).
/// Must run inside a tokio runtime; spawns one task per client.
pub async fn drive<W: Workload>(
    workload: Arc<W>,
    plan: &Plan,
    progress: &ProgressBar,
) -> Result<Measurement, BenchError> {
    plan.validate()?;
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let shared = Arc::new(Shared {
        workload,
        plan: plan.clone(),
        start,
        measure_from,
        end: match plan.stop {
            Stop::After(duration) => Some(measure_from + duration),
            Stop::Ops(_) => None,
        },
        claimed: AtomicU64::new(0),
        recorders: (0..plan.clients.min(RECORDERS_MAX))
            .map(|_| Mutex::new(Recorder::new()))
            .collect(),
    });
    let workers: Vec<_> = (0..plan.clients)
        .map(|client| {
            let shared = shared.clone();
            tokio::spawn(async move {
                match shared.plan.load {
                    Load::Closed => closed_loop(&shared, client).await,
                    Load::Open { rate_per_s } => open_loop(&shared, client, rate_per_s).await,
                }
            })
        })
        .collect();
    let ticker = tokio::spawn(show_progress(shared.clone(), progress.clone()));
    for worker in workers {
        // A worker panics only if a workload does; that is a bug to show,
        // not a failed operation to count.
        if let Err(error) = worker.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    ticker.abort();
    progress.finish_and_clear();
    Ok(shared.measurement())
}

/// What the clients of one run share.
struct Shared<W> {
    workload: Arc<W>,
    plan: Plan,
    start: Instant,
    measure_from: Instant,
    /// The end of the measurement, for a timed run.
    end: Option<Instant>,
    /// Measured operations claimed so far, for a run of `--ops`.
    claimed: AtomicU64,
    // Std mutexes, not tokio ones: nothing awaits while one is held.
    recorders: Vec<Mutex<Recorder>>,
}

impl<W> Shared<W> {
    fn is_over(&self, at: Instant) -> bool {
        self.end.is_some_and(|end| at >= end)
    }

    /// Takes one operation from the `--ops` budget; false when it is spent.
    fn claim(&self) -> bool {
        match self.plan.stop {
            Stop::After(_) => true,
            // Relaxed: the counter only hands out distinct numbers.
            Stop::Ops(ops) => self.claimed.fetch_add(1, Ordering::Relaxed) < ops,
        }
    }

    fn recorder(&self, client: usize) -> std::sync::MutexGuard<'_, Recorder> {
        lock(&self.recorders[client % self.recorders.len()])
    }

    fn rng(&self, client: usize) -> StdRng {
        // Distinct, repeatable streams per client: the golden-ratio
        // increment spreads consecutive client numbers over the seed space.
        let stream = (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        StdRng::seed_from_u64(self.plan.seed ^ stream)
    }

    fn measurement(&self) -> Measurement {
        let mut total = Recorder::new();
        for recorder in &self.recorders {
            total.merge(&lock(recorder));
        }
        Measurement {
            elapsed: total
                .last_done
                .map(|done| done.saturating_duration_since(self.measure_from))
                .unwrap_or_default(),
            ops: total.ops,
            latency: total.latency,
            service_time: total.service_time,
            errors: total.errors,
            outcomes: total.outcomes,
        }
    }
}

fn lock(recorder: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    // A recorder's methods do not panic halfway through an update, so a
    // poisoned lock still guards consistent figures.
    recorder
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One closed-loop client: send, wait for the answer, repeat.
async fn closed_loop<W: Workload>(shared: &Shared<W>, client: usize) {
    let mut rng = shared.rng(client);
    loop {
        let sent = Instant::now();
        if shared.is_over(sent) {
            return;
        }
        let measured = sent >= shared.measure_from;
        if measured && !shared.claim() {
            return;
        }
        let key = shared.plan.keys.sample(&mut rng);
        let outcome = shared.workload.operate(client, key).await;
        let times = Times {
            intended: sent,
            sent,
            done: Instant::now(),
        };
        shared.recorder(client).record(measured, times, outcome);
    }
}

/// One open-loop client: request `k` is due at `start + (k * clients +
/// client) / rate`; it leaves then, or at once if the client is behind.
async fn open_loop<W: Workload>(shared: &Shared<W>, client: usize, rate_per_s: f64) {
    let mut rng = shared.rng(client);
    let clients = shared.plan.clients as f64;
    for k in 0u64.. {
        let slot = k as f64 * clients + client as f64;
        let Ok(offset) = Duration::try_from_secs_f64(slot / rate_per_s) else {
            return;
        };
        let intended = shared.start + offset;
        // A client that is behind at the end does not send what was due
        // before it: the run is over (wrk2 does the same).
        if shared.is_over(intended) || shared.is_over(Instant::now()) {
            return;
        }
        let measured = intended >= shared.measure_from;
        if measured && !shared.claim() {
            return;
        }
        let key = shared.plan.keys.sample(&mut rng);
        tokio::time::sleep_until(intended).await;
        let sent = Instant::now();
        let outcome = shared.workload.operate(client, key).await;
        let times = Times {
            intended,
            sent,
            done: Instant::now(),
        };
        shared.recorder(client).record(measured, times, outcome);
    }
}

/// When one operation was due, sent and answered.
#[derive(Clone, Copy)]
struct Times {
    intended: Instant,
    sent: Instant,
    done: Instant,
}

/// The figures of some clients.
struct Recorder {
    latency: Histogram<u64>,
    service_time: Histogram<u64>,
    errors: BTreeMap<&'static str, ErrorCount>,
    outcomes: BTreeMap<&'static str, u64>,
    ops: u64,
    last_done: Option<Instant>,
    /// Since the last progress refresh, warmup included.
    live: Histogram<u64>,
    live_ops: u64,
    live_errors: u64,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            latency: histogram(),
            service_time: histogram(),
            errors: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            ops: 0,
            last_done: None,
            live: histogram(),
            live_ops: 0,
            live_errors: 0,
        }
    }

    fn record(&mut self, measured: bool, times: Times, outcome: Result<Done, OpError>) {
        match outcome {
            Ok(done) => {
                let (latency, service_time) = match done.latency {
                    Some(own) => (nanos(own), nanos(own)),
                    None => (
                        nanos(times.done - times.intended),
                        nanos(times.done - times.sent),
                    ),
                };
                self.live.saturating_record(latency);
                self.live_ops += 1;
                if measured {
                    self.latency.saturating_record(latency);
                    self.service_time.saturating_record(service_time);
                    self.ops += 1;
                    if let Some((label, times)) = done.outcome {
                        *self.outcomes.entry(label).or_default() += times;
                    }
                }
            }
            Err(error) => {
                self.live_errors += 1;
                if measured {
                    self.errors
                        .entry(code_name(error.code))
                        .or_insert_with(|| ErrorCount {
                            count: 0,
                            first_message: error.message,
                        })
                        .count += 1;
                }
            }
        }
        if measured {
            self.last_done = self.last_done.max(Some(times.done));
        }
    }

    fn merge(&mut self, other: &Recorder) {
        // Every recorder's histograms share one set of bounds, and adding
        // histograms of equal bounds cannot fail.
        self.latency
            .add(&other.latency)
            .expect("histograms of equal bounds add");
        self.service_time
            .add(&other.service_time)
            .expect("histograms of equal bounds add");
        for (code, count) in &other.errors {
            self.errors
                .entry(code)
                .and_modify(|mine| mine.count += count.count)
                .or_insert_with(|| count.clone());
        }
        for (label, count) in &other.outcomes {
            *self.outcomes.entry(label).or_default() += count;
        }
        self.ops += other.ops;
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// An empty latency histogram of nanoseconds; all share these bounds.
fn histogram() -> Histogram<u64> {
    let max = u64::try_from(LATENCY_MAX.as_nanos()).expect("an hour of nanoseconds fits");
    // 1 µs resolution at the low end, 3 significant digits above.
    Histogram::new_with_bounds(1_000, max, 3).expect("constant bounds are valid")
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Refreshes `bar` every [`PROGRESS_PERIOD`] from the live figures until
/// aborted.
async fn show_progress<W>(shared: Arc<Shared<W>>, bar: ProgressBar) {
    let mut ticks = tokio::time::interval(PROGRESS_PERIOD);
    let mut last = Instant::now();
    let mut live = histogram();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let mut sample = LiveSample {
            phase: if now < shared.measure_from {
                Phase::Warmup
            } else {
                Phase::Measuring
            },
            ops: 0,
            errors: 0,
            period: now - last,
            p99: Duration::ZERO,
            position: 0,
        };
        live.reset();
        for recorder in &shared.recorders {
            let mut recorder = lock(recorder);
            live.add(&recorder.live)
                .expect("histograms of equal bounds add");
            recorder.live.reset();
            sample.ops += std::mem::take(&mut recorder.live_ops);
            sample.errors += std::mem::take(&mut recorder.live_errors);
        }
        sample.p99 = Duration::from_nanos(live.value_at_quantile(0.99));
        sample.position = match shared.plan.stop {
            Stop::After(_) => u64::try_from((now - shared.start).as_millis()).unwrap_or(u64::MAX),
            Stop::Ops(ops) => shared.claimed.load(Ordering::Relaxed).min(ops),
        };
        progress::show(&bar, &sample);
        last = now;
    }
}

#[cfg(test)]
mod tests;
