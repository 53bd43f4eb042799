//! Property: under random batches, syncs, crashes, power cuts, failed syncs and writes, and
//! segment releases, and a disk that fills up and is freed again, the recovered log is always
//! the synced log plus a prefix of the batch that was in flight (never less, never anything
//! else); a sync refused for lack of space keeps its batch for a later sync.
#![allow(clippy::unwrap_used)]

mod common;

use common::{open, Model, Rec};
use keel_storage::{Recovered, SimDisk, Wal};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// `n` entries starting `back` entries before the end (an overwrite if `back > 0`).
    Append {
        n: u64,
        back: u64,
    },
    HardState(u8),
    Snapshot {
        ahead: u64,
    },
    Sync,
    /// Power fails during the sync; the disk crashes with `seed`.
    PowerCut {
        seed: u64,
    },
    /// The fsync fails (its bytes are lost); then a crash.
    FailSync {
        seed: u64,
    },
    /// A short write; then a reopen, with a crash or without.
    FailWrite {
        seed: u64,
        crash: bool,
    },
    /// A crash: buffered records are lost.
    Crash {
        seed: u64,
    },
    Reopen,
    /// Release segments below `fraction`/4 of the way to the last index.
    Release {
        fraction: u64,
    },
    /// The disk fills up: room for `slack` more bytes (a crash or reopen must still work).
    Full {
        slack: u64,
    },
    /// Space is freed.
    Free,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1..6u64, prop_oneof![3 => Just(0u64), 1 => 1..5u64])
            .prop_map(|(n, back)| Op::Append { n, back }),
        3 => any::<u8>().prop_map(Op::HardState),
        1 => (1..4u64).prop_map(|ahead| Op::Snapshot { ahead }),
        6 => Just(Op::Sync),
        2 => any::<u64>().prop_map(|seed| Op::PowerCut { seed }),
        1 => any::<u64>().prop_map(|seed| Op::FailSync { seed }),
        1 => (any::<u64>(), any::<bool>()).prop_map(|(seed, crash)| Op::FailWrite { seed, crash }),
        2 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        1 => Just(Op::Reopen),
        1 => (0..5u64).prop_map(|fraction| Op::Release { fraction }),
        1 => prop_oneof![Just(0u64), 0..3000u64].prop_map(|slack| Op::Full { slack }),
        1 => Just(Op::Free),
    ]
}

struct Harness {
    disk: SimDisk,
    segment_bytes_max: u64,
    wal: Wal,
    /// Every record that is durable, in order (including releases' now-absent ones).
    synced: Vec<Rec>,
    buffered: Vec<Rec>,
    /// Entries below this index may have been released.
    floor: u64,
    term: u64,
}

impl Harness {
    fn model(&self) -> Model {
        let recs: Vec<Rec> = self.synced.iter().chain(&self.buffered).cloned().collect();
        Model::replay(&recs)
    }

    fn push(&mut self, rec: Rec) {
        rec.write(&mut self.wal).unwrap();
        self.buffered.push(rec);
    }

    /// Reopens after a failure: the durable log is `synced` plus some prefix of `inflight`.
    fn recover(&mut self, inflight: Vec<Rec>) {
        let (wal, rec) = open(&self.disk, self.segment_bytes_max).unwrap();
        let k = (0..=inflight.len())
            .find(|k| {
                let recs: Vec<Rec> = self.synced.iter().chain(&inflight[..*k]).cloned().collect();
                consistent(&Model::replay(&recs), &rec, self.floor)
            })
            .unwrap_or_else(|| {
                panic!(
                    "recovered {rec:?}\nnot synced {:?} + a prefix of {inflight:?}",
                    self.synced
                )
            });
        self.synced.extend(inflight.into_iter().take(k));
        self.buffered.clear();
        self.wal = wal;
        assert_eq!(self.wal.last_index(), self.model().last_index());
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Append { n, back } => {
                let model = self.model();
                let lowest = self.floor.max(model.snapshot.map_or(0, |s| s.index)) + 1;
                let start = (model.last_index() + 1).saturating_sub(back).max(lowest);
                if back > 0 {
                    self.term += 1;
                }
                for i in start..start + n {
                    self.push(Rec::entry(i, self.term));
                }
            }
            Op::HardState(b) => self.push(Rec::Hs(vec![b; 1 + b as usize % 20])),
            Op::Snapshot { ahead } => {
                self.term += 1;
                self.push(Rec::Snap(self.model().last_index() + ahead, self.term));
            }
            Op::Sync => self.sync(),
            Op::FailWrite { .. } | Op::FailSync { .. } | Op::PowerCut { .. }
                if self.buffered.is_empty() || self.disk.capacity().is_some() => {} // the fault
            // would linger (nothing written, or no room)
            Op::PowerCut { seed } => self.fail_and_recover(seed, |d| d.power_cut_at_next_sync()),
            Op::FailSync { seed } => self.fail_and_recover(seed, |d| d.fail_next_sync()),
            Op::FailWrite { seed, crash } => {
                let inflight = std::mem::take(&mut self.buffered);
                self.disk.fail_next_write();
                assert!(
                    self.wal.sync().is_err(),
                    "a failed write must fail the sync"
                );
                if crash {
                    self.disk.crash(seed);
                }
                self.recover(inflight);
            }
            Op::Crash { seed } => {
                self.disk.crash(seed);
                self.recover(Vec::new());
            }
            Op::Reopen => {
                self.sync();
                // A batch refused for lack of space is dropped by the reopen.
                let refused = std::mem::take(&mut self.buffered);
                self.recover(refused);
            }
            Op::Full { slack } => self.disk.set_capacity(Some(self.disk.used_bytes() + slack)),
            Op::Free => self.disk.set_capacity(None),
            Op::Release { fraction } => {
                if self.buffered.is_empty() {
                    let index = self.model().last_index() * fraction / 4;
                    self.wal.release_before(index).unwrap();
                    self.floor = self.floor.max(index);
                }
            }
        }
    }

    /// Syncs; on a full disk the batch may be refused (nothing written, not poisoned).
    fn sync(&mut self) {
        match self.wal.sync() {
            Ok(()) => self.synced.append(&mut self.buffered),
            Err(e) if e.is_no_space() => {
                assert!(!self.wal.is_poisoned(), "a refused sync does not poison");
                assert!(
                    self.disk.capacity().is_some(),
                    "no space on an unbounded disk"
                );
            }
            Err(e) => panic!("sync failed: {e}"),
        }
    }

    fn fail_and_recover(&mut self, seed: u64, arm: impl FnOnce(&SimDisk)) {
        let inflight = std::mem::take(&mut self.buffered);
        arm(&self.disk);
        assert!(self.wal.sync().is_err(), "a failed sync must fail the sync");
        self.disk.crash(seed);
        self.recover(inflight);
    }
}

/// `rec` is `model`, except that entries below `floor` may be missing from its front.
fn consistent(model: &Model, rec: &Recovered, floor: u64) -> bool {
    if model.hard_state != rec.hard_state || model.snapshot != rec.snapshot {
        return false;
    }
    let skip = model.entries.len().saturating_sub(rec.entries.len());
    let kept_all_above_floor = model.entries[..skip].iter().all(|e| e.index < floor);
    kept_all_above_floor && model.entries[skip..] == rec.entries[..]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES overrides, for longer soaks.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn recovered_log_is_synced_log_plus_a_prefix_of_the_inflight_batch(
        segment_bytes_max in prop_oneof![Just(1u64 << 16), 100..3000u64],
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, segment_bytes_max).unwrap();
        let mut h = Harness {
            disk, segment_bytes_max, wal,
            synced: Vec::new(), buffered: Vec::new(), floor: 0, term: 1,
        };
        for op in ops {
            h.step(op);
        }
        // A final crash keeps exactly what was synced.
        h.disk.crash(0);
        h.recover(Vec::new());
    }
}
