//! The bytes of the applied part of the in-memory raft log, entry by entry, so the byte bound
//! on that log (`NodeConfig::raft_log_bytes_max`) is checked in O(1) and enforced in time
//! proportional to the entries it frees.
//!
//! ```text
//! in-memory log:   [first ............ applied] [unapplied ...]
//! LogBytes:        sizes of [first, next)        (next = applied + 1)
//! apply 3 entries  → 3 sizes pushed at the back, bytes += their sum
//! compact to L     → sizes of entries < L popped from the front, bytes -= their sum
//! install snapshot → emptied, next = snapshot index + 1
//! ```

use std::collections::VecDeque;

use raft::eraftpb::Entry;

/// What one entry costs in memory: its struct and its payload.
pub(crate) fn entry_bytes(entry: &Entry) -> u64 {
    let payload = entry.data.len() + entry.context.len();
    (std::mem::size_of::<Entry>() + payload) as u64
}

/// The sizes of the applied entries still in the in-memory raft log.
#[derive(Debug)]
pub(super) struct LogBytes {
    /// The index of the first entry counted.
    first: u64,
    /// The sizes of entries `first..first + sizes.len()`.
    sizes: VecDeque<u64>,
    /// Their sum.
    bytes: u64,
}

impl LogBytes {
    /// Nothing counted; the next applied entry is `next`.
    pub(super) fn new(next: u64) -> LogBytes {
        LogBytes {
            first: next,
            sizes: VecDeque::new(),
            bytes: 0,
        }
    }

    /// The bytes of the applied entries in memory.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The index after the last entry counted.
    fn next(&self) -> u64 {
        self.first + self.sizes.len() as u64
    }

    /// Entries were applied: counts those not counted yet (an entry the simulator's
    /// `commit-without-quorum` bug applied early comes again at its commit).
    pub(super) fn applied(&mut self, entries: &[Entry]) {
        for entry in entries {
            if entry.index < self.next() {
                continue;
            }
            if entry.index > self.next() {
                // Only after a snapshot replaced the log can applied entries skip indexes; the
                // count restarts there.
                self.reset(entry.index);
            }
            let size = entry_bytes(entry);
            self.sizes.push_back(size);
            self.bytes += size;
        }
    }

    /// A snapshot replaced the log: nothing is counted, the next applied entry is `next`.
    pub(super) fn reset(&mut self, next: u64) {
        *self = LogBytes::new(next);
    }

    /// The in-memory log was compacted: entries before `first` are gone.
    pub(super) fn compacted(&mut self, first: u64) {
        while self.first < first {
            let Some(size) = self.sizes.pop_front() else {
                self.first = first;
                break;
            };
            self.bytes -= size;
            self.first += 1;
        }
        self.check();
    }

    /// The lowest index `l` such that the counted entries from `l` on hold at most `target`
    /// bytes. Example: sizes 100, 200, 300 from index 7: target 500 gives 8, target 0 gives 10.
    pub(super) fn first_fitting(&self, target: u64) -> u64 {
        let mut rest = self.bytes;
        let mut index = self.first;
        for &size in &self.sizes {
            if rest <= target {
                break;
            }
            rest -= size;
            index += 1;
        }
        index
    }

    /// What must always hold.
    pub(super) fn check(&self) {
        debug_assert_eq!(
            self.bytes,
            self.sizes.iter().sum::<u64>(),
            "log byte count out of step with its entries"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, payload: usize) -> Entry {
        Entry {
            index,
            data: vec![0; payload].into(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_applied_entries_and_frees_them_on_compaction() {
        let base = std::mem::size_of::<Entry>() as u64;
        let mut b = LogBytes::new(7);
        b.applied(&[entry(7, 100), entry(8, 200), entry(9, 300)]);
        assert_eq!(b.bytes(), 3 * base + 600);
        b.applied(&[entry(9, 300)]); // counted already
        assert_eq!(b.bytes(), 3 * base + 600);
        assert_eq!(b.first_fitting(3 * base + 600), 7);
        assert_eq!(b.first_fitting(base + 300), 9);
        assert_eq!(b.first_fitting(0), 10);
        b.compacted(9);
        assert_eq!(b.bytes(), base + 300);
        b.compacted(12);
        assert_eq!((b.bytes(), b.next()), (0, 12));
        b.applied(&[entry(20, 1)]);
        assert_eq!((b.bytes(), b.next()), (base + 1, 21));
    }
}
