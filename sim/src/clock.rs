//! A node clock the simulator can skew: a drift rate, a wall-clock offset and wall jumps, all
//! adjustable while the node runs.
//!
//! madsim has one global virtual clock. keel reads time only through
//! [`keel_server::Clock`], so each simulated node gets its own view of it. Time runs in
//! segments; a change of drift starts a new one, so monotonic time never jumps or goes back:
//!
//! ```text
//! monotonic(t) = base + (t - segment_start) * (1_000_000 + drift_ppm) / 1_000_000
//! wall(t)      = global wall(t) + offset + jumps so far
//! sleep(d)     = a global sleep of d * 1_000_000 / (1_000_000 + drift_ppm)
//! ```
//! A node with `drift_ppm = 1000` runs 0.1% fast: its heartbeats and lease timers fire early.
//! Example: drift 0 for 10 s (monotonic 10 s), then `set_drift_ppm(100_000)` and 10 s more:
//! monotonic reads 10 + 11 = 21 s.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use keel_server::clock::{Clock, Sleep};

/// Drift is bounded to ±10% so a clock never stops or runs backwards.
pub const DRIFT_PPM_MAX: i64 = 100_000;

#[derive(Debug)]
struct State {
    segment_start: tokio::time::Instant,
    base: Duration,
    drift_ppm: i64,
    wall_offset_ms: i64,
}

impl State {
    fn monotonic(&self) -> Duration {
        let elapsed = tokio::time::Instant::now().duration_since(self.segment_start);
        self.base + scale(elapsed, 1_000_000 + self.drift_ppm, 1_000_000)
    }
}

fn scale(d: Duration, num: i64, den: i64) -> Duration {
    let nanos = d.as_nanos() as i128 * i128::from(num) / i128::from(den);
    Duration::from_nanos(nanos.clamp(0, i128::from(u64::MAX)) as u64)
}

/// One node's skewed view of the simulation's time. Clones share the same skew, so the
/// harness keeps one and hands clones to each boot of the node.
#[derive(Debug, Clone)]
pub struct SimClock {
    state: Arc<Mutex<State>>,
}

impl SimClock {
    /// A clock with the given drift (parts per million, clamped to ±[`DRIFT_PPM_MAX`]) and
    /// wall-clock offset.
    pub fn new(drift_ppm: i64, wall_offset_ms: i64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                segment_start: tokio::time::Instant::now(),
                base: Duration::ZERO,
                drift_ppm: drift_ppm.clamp(-DRIFT_PPM_MAX, DRIFT_PPM_MAX),
                wall_offset_ms,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Jumps the wall clock by `delta_ms` (forwards or backwards); monotonic time is unaffected.
    pub fn jump_wall(&self, delta_ms: i64) {
        let mut st = self.lock();
        st.wall_offset_ms = st.wall_offset_ms.saturating_add(delta_ms);
    }

    /// Changes the drift rate from now on (clamped to ±[`DRIFT_PPM_MAX`]); monotonic time
    /// continues from where it is.
    pub fn set_drift_ppm(&self, drift_ppm: i64) {
        let mut st = self.lock();
        st.base = st.monotonic();
        st.segment_start = tokio::time::Instant::now();
        st.drift_ppm = drift_ppm.clamp(-DRIFT_PPM_MAX, DRIFT_PPM_MAX);
    }

    /// Drift 0 and wall offset 0 from now on (the liveness phase heals clocks).
    pub fn reset(&self) {
        self.set_drift_ppm(0);
        self.lock().wall_offset_ms = 0;
    }

    /// The current drift rate.
    pub fn drift_ppm(&self) -> i64 {
        self.lock().drift_ppm
    }
}

impl Clock for SimClock {
    fn monotonic(&self) -> Duration {
        self.lock().monotonic()
    }

    fn wall(&self) -> SystemTime {
        let offset = self.lock().wall_offset_ms;
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_millis(offset as u64)
        } else {
            now - Duration::from_millis(offset.unsigned_abs())
        }
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let drift = self.lock().drift_ppm;
        let global = scale(d, 1_000_000, 1_000_000 + drift);
        Box::pin(tokio::time::sleep(global))
    }
}
