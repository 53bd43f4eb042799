//! The persist tracker: which [`super::PersistBatch`]es were handed to the driver and which it
//! reported durable.
//!
//! raft-rs numbers every Ready. Its `on_persist_ready(n)` means "every Ready up to n is
//! durable", so a Ready with nothing to persist may be acknowledged only once every earlier
//! batch is; until then its number waits here (`deferred`).
//!
//! ```text
//! Ready 5 → Persist(5)           emitted 5, durable 4
//! Ready 6 → nothing to persist   deferred 6 (batch 5 is not durable yet)
//! Persisted{5}                   durable 5 → raft hears 5, then the deferred 6
//! ```

/// Persist batch numbers: emitted, durable and the one deferred.
#[derive(Debug, Default)]
pub(super) struct PersistTracker {
    /// The number of the newest batch emitted.
    emitted: u64,
    /// The number of the newest batch reported durable.
    durable: u64,
    /// An empty Ready whose number waits for earlier batches to become durable.
    deferred: Option<u64>,
}

impl PersistTracker {
    /// Batch `number` goes to the driver.
    pub(super) fn emit(&mut self, number: u64) {
        assert!(
            number > self.emitted,
            "persist batches out of order: {number} after {}",
            self.emitted
        );
        self.emitted = number;
        self.check();
    }

    /// Ready `number` has nothing to persist: returns whether raft may hear it durable now
    /// (otherwise it waits for [`PersistTracker::durable`]).
    pub(super) fn nothing_to_persist(&mut self, number: u64) -> bool {
        if self.durable >= self.emitted {
            return true;
        }
        assert!(
            self.deferred.is_none_or(|d| d < number),
            "ready {number} deferred after {:?}",
            self.deferred
        );
        self.deferred = Some(number);
        false
    }

    /// The driver reports batches up to `number` durable. Returns the deferred number raft
    /// may now hear durable too, if any.
    pub(super) fn durable(&mut self, number: u64) -> Option<u64> {
        assert!(
            number <= self.emitted,
            "batch {number} was never emitted (newest {})",
            self.emitted
        );
        self.durable = self.durable.max(number);
        self.check();
        if self.durable >= self.emitted {
            self.deferred.take()
        } else {
            None
        }
    }

    /// What must always hold.
    pub(super) fn check(&self) {
        assert!(
            self.durable <= self.emitted,
            "batch {} durable but only {} emitted",
            self.durable,
            self.emitted
        );
    }
}
