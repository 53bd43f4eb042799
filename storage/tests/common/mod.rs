//! Shared helpers for the WAL integration tests: a reference model of the log.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use keel_storage::{Recovered, RecoveredEntry, SimDisk, SnapshotMark, Wal, WalError, WalOptions};

/// The WAL directory used by the tests.
pub const DIR: &str = "/node/wal";

pub fn dir() -> &'static Path {
    Path::new(DIR)
}

pub fn open(disk: &SimDisk, segment_bytes_max: u64) -> Result<(Wal, Recovered), WalError> {
    Wal::open(
        Arc::new(disk.clone()),
        dir(),
        WalOptions {
            segment_bytes_max,
            #[cfg(madsim)]
            skip_crc_bug: false,
        },
    )
}

/// Deterministic entry data of varying length (0..300 bytes), distinct per (index, term).
pub fn payload(index: u64, term: u64) -> Vec<u8> {
    let len = ((index * 37 + term * 11) % 300) as usize;
    (0..len)
        .map(|i| (index as usize * 7 + term as usize * 13 + i) as u8)
        .collect()
}

/// One WAL record as the caller appends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Hs(Vec<u8>),
    Entry(u64, u64, Vec<u8>),
    Snap(u64, u64),
}

impl Rec {
    pub fn entry(index: u64, term: u64) -> Rec {
        Rec::Entry(index, term, payload(index, term))
    }

    /// The size of the record's encoding.
    pub fn encoded_len(&self) -> u64 {
        9 + match self {
            Rec::Hs(b) => b.len() as u64,
            Rec::Entry(_, _, d) => 16 + d.len() as u64,
            Rec::Snap(..) => 16,
        }
    }

    pub fn write(&self, wal: &mut Wal) -> Result<(), WalError> {
        match self {
            Rec::Hs(b) => wal.append_hard_state(b),
            Rec::Entry(i, t, d) => wal.append_entry(*i, *t, d),
            Rec::Snap(i, t) => wal.append_snapshot(*i, *t),
        }
    }
}

/// The log the records describe (the WAL's documented semantics, written independently).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub hard_state: Option<Vec<u8>>,
    pub snapshot: Option<SnapshotMark>,
    pub entries: Vec<RecoveredEntry>,
}

impl Model {
    pub fn apply(&mut self, rec: &Rec) {
        match rec {
            Rec::Hs(b) => self.hard_state = Some(b.clone()),
            Rec::Snap(index, term) => {
                self.snapshot = Some(SnapshotMark {
                    index: *index,
                    term: *term,
                });
                self.entries.clear();
            }
            Rec::Entry(index, term, data) => {
                self.entries.retain(|e| e.index < *index);
                self.entries.push(RecoveredEntry {
                    index: *index,
                    term: *term,
                    data: data.clone(),
                });
            }
        }
    }

    pub fn replay(recs: &[Rec]) -> Model {
        let mut m = Model::default();
        recs.iter().for_each(|r| m.apply(r));
        m
    }

    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.map_or(0, |s| s.index), |e| e.index)
    }

    pub fn matches(&self, r: &Recovered) -> bool {
        self.hard_state == r.hard_state && self.snapshot == r.snapshot && self.entries == r.entries
    }
}

/// A fresh disk holding exactly `files` (name, bytes) in the WAL directory, all durable.
pub fn disk_with(files: &[(String, Vec<u8>)]) -> SimDisk {
    use keel_storage::Disk;
    let disk = SimDisk::new();
    disk.create_dir_all(dir()).unwrap();
    for (name, bytes) in files {
        let mut f = disk.open_append(&dir().join(name)).unwrap();
        f.append(bytes).unwrap();
        f.sync().unwrap();
    }
    disk.sync_dir(dir()).unwrap();
    disk
}

/// Every file of the WAL directory with its bytes.
pub fn files_of(disk: &SimDisk) -> Vec<(String, Vec<u8>)> {
    use keel_storage::Disk;
    let names = disk.list_dir(dir()).unwrap();
    names
        .into_iter()
        .map(|n| (n.clone(), disk.read(&dir().join(n)).unwrap()))
        .collect()
}
