//! The trace of a simulation run: every recorded event in order, and a stable hash of it.
//!
//! Two runs of one seed must produce byte-identical traces; the hash (FNV-1a, 64 bit, over the
//! events' text) is what `--seed N` prints and what the determinism tests compare.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// A shared, append-only event log.
#[derive(Debug, Clone)]
pub struct Trace {
    events: Arc<Mutex<Vec<String>>>,
    origin: tokio::time::Instant,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl Trace {
    /// An empty trace whose clock starts now.
    pub fn new() -> Self {
        Trace {
            events: Arc::default(),
            origin: tokio::time::Instant::now(),
        }
    }

    /// Appends one event, stamped with the simulation's virtual time since the trace began
    /// (`12.345678901s event`).
    pub fn record(&self, event: impl std::fmt::Display) {
        let at = tokio::time::Instant::now().duration_since(self.origin);
        let mut line = String::new();
        let _ = write!(line, "{}.{:09}s {event}", at.as_secs(), at.subsec_nanos());
        match self.events.lock() {
            Ok(mut events) => events.push(line),
            Err(poisoned) => poisoned.into_inner().push(line),
        }
    }

    /// The events so far.
    pub fn events(&self) -> Vec<String> {
        match self.events.lock() {
            Ok(events) => events.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// FNV-1a over every event, newline-separated.
    pub fn hash(&self) -> u64 {
        fnv1a(
            self.events()
                .iter()
                .flat_map(|e| e.bytes().chain(std::iter::once(b'\n'))),
        )
    }
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
