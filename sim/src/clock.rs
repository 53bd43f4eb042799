//! A node clock the simulator can skew: a fixed offset, a drift rate and wall-clock jumps.
//!
//! madsim has one global virtual clock. keel reads time only through
//! [`keel_server::Clock`], so each simulated node gets its own view of it:
//!
//! ```text
//! monotonic(t) = (t - origin) * (1_000_000 + drift_ppm) / 1_000_000
//! wall(t)      = global wall(t) + offset + jumps so far
//! sleep(d)     = a global sleep of d * 1_000_000 / (1_000_000 + drift_ppm)
//! ```
//! A node with `drift_ppm = 1000` runs 0.1% fast: its heartbeats and lease timers fire early.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keel_server::clock::{Clock, Sleep};

/// Drift is bounded to ±10% so a clock never stops or runs backwards.
pub const DRIFT_PPM_MAX: i64 = 100_000;

/// One node's skewed view of the simulation's time.
#[derive(Debug, Clone)]
pub struct SimClock {
    origin: tokio::time::Instant,
    drift_ppm: i64,
    wall_offset_ms: Arc<AtomicI64>,
}

impl SimClock {
    /// A clock with the given drift (parts per million, clamped to ±[`DRIFT_PPM_MAX`]) and
    /// wall-clock offset.
    pub fn new(drift_ppm: i64, wall_offset_ms: i64) -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            drift_ppm: drift_ppm.clamp(-DRIFT_PPM_MAX, DRIFT_PPM_MAX),
            wall_offset_ms: Arc::new(AtomicI64::new(wall_offset_ms)),
        }
    }

    /// Jumps the wall clock by `delta_ms` (forwards or backwards); monotonic time is unaffected.
    pub fn jump_wall(&self, delta_ms: i64) {
        self.wall_offset_ms.fetch_add(delta_ms, Ordering::Relaxed);
    }

    fn scale(&self, d: Duration, num: i64, den: i64) -> Duration {
        let nanos = d.as_nanos() as i128 * i128::from(num) / i128::from(den);
        Duration::from_nanos(nanos.max(0) as u64)
    }
}

impl Clock for SimClock {
    fn monotonic(&self) -> Duration {
        let elapsed = tokio::time::Instant::now().duration_since(self.origin);
        self.scale(elapsed, 1_000_000 + self.drift_ppm, 1_000_000)
    }

    fn wall(&self) -> SystemTime {
        let offset = self.wall_offset_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_millis(offset as u64)
        } else {
            now - Duration::from_millis(offset.unsigned_abs())
        }
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let global = self.scale(d, 1_000_000, 1_000_000 + self.drift_ppm);
        Box::pin(tokio::time::sleep(global))
    }
}
