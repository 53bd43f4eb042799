//! Time, read in one place and passed to the engine as inputs (DESIGN.md rule 5).
//!
//! The driver reads monotonic time and sleeps only through [`Clock`]. Production uses
//! [`SystemClock`] (tokio's timer, which madsim virtualizes); the simulator supplies clocks with
//! per-node offset, drift and wall-clock jumps.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A boxed sleep future.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A node's view of time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin fixed for the clock's life.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time (may jump).
    fn wall(&self) -> SystemTime;
    /// Sleeps for `d` as this node perceives it.
    fn sleep(&self, d: Duration) -> Sleep;
}

/// The machine's clocks, through tokio's timer (virtual time under madsim).
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        tokio::time::Instant::now().duration_since(self.origin)
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}
