//! Physical clocks: the one place wall-clock time enters calm, behind a trait
//! so the node and the simulator drive the same clock code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Drivers read it and pass the value to the sans-IO clocks
/// ([`Hlc::now`](crate::Hlc::now), [`Hlc::update`](crate::Hlc::update)):
/// the node uses [`SystemClock`], the simulator and tests a [`ManualClock`].
pub trait PhysicalClock {
    /// The current wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's real-time clock.
///
/// It may step backwards (NTP corrections); the HLC tolerates that.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            // u128 milliseconds exceed u64 only 584 million years from now;
            // saturate rather than panic on a clock set absurdly far ahead.
            Ok(since) => u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            // A clock set before 1970 is misconfigured; 0 keeps the HLC
            // monotone (it continues from its last reading) instead of failing.
            Err(_) => 0,
        }
    }
}

/// A clock that moves only when told to: the simulator's virtual time.
///
/// Interior mutability lets a test or the simulator share one clock (behind
/// an `Arc`) with the components that read it. An atomic rather than a
/// `Cell` keeps it `Sync` so a simulated node may live on another thread;
/// `Relaxed` ordering suffices because the clock publishes no other memory.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub const fn new(start_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Sets the time, backwards too: the simulator uses that to model clock
    /// steps and skew.
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Moves the time forward by `delta_ms`, saturating at `u64::MAX`.
    pub fn advance_ms(&self, delta_ms: u64) {
        // fetch_update retries only under a concurrent write; the closure
        // always returns Some, so the result carries no error to handle.
        let _ = self
            .now_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_add(delta_ms))
            });
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }
}

impl<C: PhysicalClock + ?Sized> PhysicalClock for &C {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

impl<C: PhysicalClock + ?Sized> PhysicalClock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hlc, HlcTimestamp};

    /// The driver code path both clocks share: read the clock, stamp an event.
    fn stamp(hlc: &mut Hlc, clock: &impl PhysicalClock) -> HlcTimestamp {
        hlc.now(clock.now_ms())
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_may_step_back() {
        let clock = Arc::new(ManualClock::new(1_000));
        let shared = Arc::clone(&clock);
        assert_eq!(shared.now_ms(), 1_000);
        clock.advance_ms(250);
        assert_eq!(shared.now_ms(), 1_250);
        clock.set_ms(900);
        assert_eq!(shared.now_ms(), 900);
        clock.advance_ms(u64::MAX);
        assert_eq!(shared.now_ms(), u64::MAX);
    }

    #[test]
    fn the_hlc_driver_path_is_the_same_for_the_system_and_the_manual_clock() {
        let mut hlc = Hlc::new(500);
        let manual = ManualClock::new(2_000);
        assert_eq!(stamp(&mut hlc, &manual), HlcTimestamp::new(2_000, 0));
        // The system clock reads real time: past 2020-01-01 on any sane host,
        // and the HLC reading follows it.
        let system = SystemClock;
        let before = system.now_ms();
        assert!(before > 1_577_836_800_000, "system clock reads {before} ms");
        let reading = stamp(&mut hlc, &system);
        assert!(reading.physical_ms >= before);
    }
}
