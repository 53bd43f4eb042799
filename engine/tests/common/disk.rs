//! What a perfect disk holds for one member: the newest snapshot, the log after it and the
//! hard state, written exactly as `Output::Persist` and `Output::SaveSnapshot` ask.

use keel_engine::node::{PersistBatch, Recovered};
use raft::eraftpb::{Entry, HardState, Snapshot};

/// One member's durable raft state.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    /// The newest snapshot saved or installed.
    pub snapshot: Option<Snapshot>,
    /// The log after the snapshot, contiguous and in index order.
    pub entries: Vec<Entry>,
    /// The newest hard state.
    pub hard_state: Option<HardState>,
    /// (index, bytes) of every snapshot the member saved itself, in order.
    pub saved: Vec<(u64, usize)>,
}

impl Disk {
    /// Writes a persist batch: a leader's snapshot replaces the log (the WAL's snapshot mark),
    /// then entries are appended with raft's overwrite rule (an entry at an index already
    /// written replaces it and all after), then the hard state.
    pub fn write(&mut self, batch: &PersistBatch) {
        if let Some(s) = &batch.snapshot {
            self.snapshot = Some(s.clone());
            self.entries.clear();
        }
        for e in &batch.entries {
            self.entries.retain(|x| x.index < e.index);
            if let Some(last) = self.entries.last() {
                assert_eq!(last.index + 1, e.index, "the log stays contiguous");
            }
            self.entries.push(e.clone());
        }
        if let Some(hs) = &batch.hard_state {
            self.hard_state = Some(hs.clone());
        }
    }

    /// The member's own snapshot is durable; the log before it may go (as the WAL releases
    /// segments), which proves a restart does not need it.
    pub fn save(&mut self, s: &Snapshot) {
        let index = s.get_metadata().index;
        self.saved.push((index, s.data.len()));
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(s.clone());
    }

    /// What a restart reads back.
    pub fn recovered(&self) -> Recovered {
        Recovered {
            snapshot: self.snapshot.clone(),
            hard_state: self.hard_state.clone(),
            entries: self.entries.clone(),
        }
    }
}
