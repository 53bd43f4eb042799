//! The raft log storage raft-rs reads from: its in-memory log (`MemStorage`) plus the newest
//! durable state-machine snapshot.
//!
//! raft-rs's `MemStorage` answers `snapshot()` with metadata only (it has no state machine);
//! a leader sending that to a lagging follower would send an empty store. [`RaftStorage`]
//! answers with the newest snapshot the driver reported durable, data included (shared bytes:
//! on a real disk, a mapping of the snapshot file). The in-memory log is compacted only up to
//! that snapshot in a multi-member cluster, so every entry a follower can need is either in the
//! log or covered by the snapshot.
//!
//! When raft asks for a snapshot newer than the one held (a follower needs entries that were
//! compacted without one, e.g. a member added to a one-member cluster, or past the log's byte
//! bound), or for a member the held snapshot's configuration does not name (added after it:
//! raft-rs would refuse it there), the request is remembered and the node makes a fresh
//! snapshot; raft asks again on its next attempt.

use std::sync::atomic::{AtomicU64, Ordering};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// How many entries [`RaftStorage::entries`] clones in its first window (each next one
/// twice as many).
const FIRST_WINDOW: u64 = 64;

/// raft-rs's storage: the in-memory log and the newest durable snapshot.
pub struct RaftStorage {
    log: MemStorage,
    /// The newest durable snapshot (empty: none yet).
    snapshot: Snapshot,
    /// The highest index raft asked a snapshot for and did not get (0: none).
    wanted: AtomicU64,
}

impl RaftStorage {
    /// A storage whose log is `log` and that holds no snapshot.
    pub fn new(log: MemStorage) -> RaftStorage {
        RaftStorage {
            log,
            snapshot: Snapshot::default(),
            wanted: AtomicU64::new(0),
        }
    }

    /// The in-memory log.
    pub fn log(&self) -> &MemStorage {
        &self.log
    }

    /// The newest durable snapshot (empty if none).
    pub fn snapshot_held(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Records `snapshot` as the newest durable one (ignored if older than the one held).
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        if index < self.snapshot.get_metadata().index {
            return;
        }
        if index >= self.wanted.load(Ordering::Relaxed) {
            self.wanted.store(0, Ordering::Relaxed);
        }
        self.snapshot = snapshot;
    }

    /// Holds `snapshot` instead of the held one if both are the same snapshot (index, term,
    /// configuration and data length; the data is not compared), e.g. the same state read back
    /// mapped from its file in place of a copy in memory. Returns whether it was replaced.
    pub fn replace_held(&mut self, snapshot: Snapshot) -> bool {
        let same = snapshot.get_metadata() == self.snapshot.get_metadata()
            && snapshot.data.len() == self.snapshot.data.len()
            && self.snapshot.get_metadata().index != 0;
        if same {
            self.snapshot = snapshot;
        }
        same
    }

    /// The index raft asked a snapshot for that the held one does not reach (0: none), and
    /// forgets the request.
    pub fn take_wanted(&self) -> u64 {
        self.wanted.swap(0, Ordering::Relaxed)
    }

    /// Replaces the log by an installed snapshot (a follower behind the leader's log) and
    /// holds it as the newest snapshot.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> raft::Result<()> {
        self.log.wl().apply_snapshot(snapshot.clone())?;
        self.set_snapshot(snapshot);
        Ok(())
    }

    /// Appends entries to the in-memory log.
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        self.log.wl().append(entries)
    }

    /// Sets the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.log.wl().set_hardstate(hs);
    }

    /// Records the configuration an applied conf change produced.
    pub fn set_conf_state(&mut self, cs: raft::eraftpb::ConfState) {
        self.log.wl().set_conf_state(cs);
    }

    /// Drops in-memory entries before `index`.
    pub fn compact(&mut self, index: u64) -> raft::Result<()> {
        self.log.wl().compact(index)
    }
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.log.initial_state()
    }

    /// The entries `low..high`, cut as raft-rs's `MemStorage` cuts them (the first one always,
    /// then as many as fit in `max_size` bytes), but cloned in growing windows: `MemStorage`
    /// clones all of `low..high` before cutting, and raft asks for everything up to the last
    /// index once per message, so catching up a follower that is `n` entries behind in
    /// messages of `max_size` cost O(n²) clones on the driver loop. At 1M keys a member
    /// rejoining ~45k entries behind cost the leader's loop ~20 ms of cloning in one turn,
    /// a stall every client saw (benches/README.md, "Session 12"). Here a message's worth
    /// costs at most about two messages' worth of clones.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max = match max_size.into() {
            None | Some(raft::NO_LIMIT) => return self.log.entries(low, high, None, context),
            Some(max) => max,
        };
        let mut taken: Vec<Entry> = Vec::new();
        let mut size = 0u64;
        let (mut at, mut window, mut context) = (low, FIRST_WINDOW, Some(context));
        while at < high {
            let end = high.min(at.saturating_add(window));
            // The caller's context goes with the first call (the one that may be answered
            // "temporarily unavailable"); the rest continue it.
            let context = context
                .take()
                .unwrap_or_else(|| GetEntriesContext::empty(false));
            for entry in self.log.entries(at, end, None, context)? {
                let bytes = u64::from(entry.compute_size());
                if !taken.is_empty() && size.saturating_add(bytes) > max {
                    return Ok(taken);
                }
                size = size.saturating_add(bytes);
                taken.push(entry);
            }
            at = end;
            window = window.saturating_mul(2);
        }
        Ok(taken)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index && idx != 0 {
            return Ok(meta.term);
        }
        self.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let held = self.snapshot.get_metadata().index;
        // The follower continues from the entry after the snapshot: it must still be here.
        let mut needed = request_index.max(self.log.first_index()?.saturating_sub(1));
        if held != 0 && !names(&self.snapshot, to) {
            // A member added after the held snapshot would refuse it (raft-rs restores only a
            // snapshot whose configuration holds it), and be sent it again and again: it
            // needs one taken after its addition.
            needed = needed.max(held + 1);
        }
        if held == 0 || held < needed {
            self.wanted.fetch_max(needed.max(1), Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// Whether `id` is in the configuration of `snapshot` (as a voter or learner, incoming or
/// outgoing).
fn names(snapshot: &Snapshot, id: u64) -> bool {
    let cs = snapshot.get_metadata().get_conf_state();
    [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .iter()
    .any(|ids| ids.contains(&id))
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::SnapshotMetadata;

    use super::*;

    fn snapshot(index: u64, term: u64, data: &'static [u8]) -> Snapshot {
        Snapshot {
            data: data.into(),
            metadata: Some(SnapshotMetadata {
                index,
                term,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_same_snapshot_replaces_the_one_held() {
        let mut storage = RaftStorage::new(MemStorage::new());
        assert!(
            !storage.replace_held(snapshot(0, 0, b"")),
            "nothing held: nothing to replace"
        );
        storage.set_snapshot(snapshot(10, 2, b"received"));
        assert!(!storage.replace_held(snapshot(9, 2, b"received")), "older");
        assert!(
            !storage.replace_held(snapshot(10, 3, b"received")),
            "other term"
        );
        assert!(
            !storage.replace_held(snapshot(10, 2, b"short")),
            "other length"
        );
        assert!(storage.replace_held(snapshot(10, 2, b"readback")));
        assert_eq!(&storage.snapshot_held().data[..], b"readback");
    }

    /// `entries` answers exactly what raft-rs's `MemStorage` answers, for every range and
    /// size limit, across window boundaries: entries of varied sizes, compacted at 5.
    #[test]
    fn entries_are_cut_as_mem_storage_cuts_them() {
        let mut storage = RaftStorage::new(MemStorage::new());
        let log: Vec<Entry> = (1..=600u64)
            .map(|index| Entry {
                index,
                term: 1 + index / 100,
                data: vec![b'x'; ((index * 37) % 251) as usize].into(),
                ..Default::default()
            })
            .collect();
        storage.append(&log).expect("append");
        storage.compact(5).expect("compact");
        let plain = |low, high, max: Option<u64>| {
            storage
                .log()
                .entries(low, high, max, GetEntriesContext::empty(false))
                .expect("MemStorage's entries")
        };
        let ours = |low, high, max: Option<u64>| {
            storage
                .entries(low, high, max, GetEntriesContext::empty(false))
                .expect("our entries")
        };
        let limits = [
            None,
            Some(raft::NO_LIMIT),
            Some(0),
            Some(1),
            Some(100),
            Some(1000),
            Some(8_000),
            Some(20_000),
            Some(1 << 20),
        ];
        let mut longest = 0;
        for (low, high) in [(5, 6), (5, 601), (6, 70), (60, 200), (64, 600), (300, 601)] {
            for max in limits {
                let want = plain(low, high, max);
                assert_eq!(ours(low, high, max), want, "{low}..{high} max {max:?}");
                longest = longest.max(want.len());
            }
        }
        assert!(
            longest > 2 * FIRST_WINDOW as usize,
            "no cut crossed two windows"
        );
        assert!(matches!(
            storage.entries(4, 10, Some(100), GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }
}
