//! WAL scenarios on the simulated disk: round trips, overwrites, crashes, tears, corruption.
#![allow(clippy::unwrap_used)]

mod common;

use common::{dir, disk_with, files_of, open, payload, Model, Rec};
use keel_storage::wal::RECORD_PAYLOAD_BYTES_MAX;
use keel_storage::wal::{HeaderMismatch, RecordDamage};
use keel_storage::{Corruption, Disk, IoOp, SimDisk, SnapshotMark, Wal, WalError};

/// Large enough that these tests never rotate (and small enough to preallocate in memory).
const BIG: u64 = 1 << 16;
const HEADER_RECORD_BYTES: u64 = 45;

/// Appends `recs` and syncs.
fn commit(wal: &mut Wal, recs: &[Rec]) {
    for r in recs {
        r.write(wal).unwrap();
    }
    wal.sync().unwrap();
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Rec> {
    range.map(|i| Rec::entry(i, term)).collect()
}

/// The segment files (not the preallocated reserve).
fn segment_names(disk: &SimDisk) -> Vec<String> {
    let mut names = disk.list_dir(dir()).unwrap();
    names.retain(|n| n.ends_with(".wal"));
    names
}

/// Where a file's records end: its bytes after that are zeros (preallocated, never written).
fn records_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
}

#[test]
fn round_trip_across_segment_rotation() {
    let disk = SimDisk::new();
    let (mut wal, rec) = open(&disk, 1024).unwrap();
    assert_eq!(rec, Default::default());
    let mut all = Vec::new();
    for batch in 0..60u64 {
        let mut recs = entries(batch * 3 + 1..=batch * 3 + 3, 1 + batch / 10);
        recs.push(Rec::Hs(format!("hs {batch}").into_bytes()));
        commit(&mut wal, &recs);
        all.extend(recs);
    }
    assert!(wal.segment_count() > 5, "{} segments", wal.segment_count());
    assert_eq!(wal.last_index(), 180);
    drop(wal);
    let (mut wal, rec) = open(&disk, 1024).unwrap();
    assert!(Model::replay(&all).matches(&rec), "recovered {rec:?}");
    assert!(rec.warnings.is_empty());
    assert_eq!(rec.entries.len(), 180);
    // Keep going after a reopen: appends continue in the last segment, then rotate.
    let more = entries(181..=200, 7);
    commit(&mut wal, &more);
    all.extend(more);
    drop(wal);
    let (_, rec) = open(&disk, 1024).unwrap();
    assert!(Model::replay(&all).matches(&rec));
    let names = segment_names(&disk);
    for (seq, name) in names.iter().enumerate() {
        assert!(
            name.starts_with(&format!("{seq:016x}-")),
            "{name} out of sequence"
        );
    }
}

#[test]
fn overwrite_replaces_the_suffix() {
    for segment_bytes_max in [BIG, 200] {
        let disk = SimDisk::new();
        let (mut wal, _) = open(&disk, segment_bytes_max).unwrap();
        let mut all = entries(1..=10, 1);
        commit(&mut wal, &all);
        // A new leader overwrites 6.. with a shorter log (across syncs and segments).
        let over = vec![Rec::entry(6, 2), Rec::entry(7, 2)];
        commit(&mut wal, &over);
        all.extend(over);
        assert_eq!(wal.last_index(), 7);
        // Overwrite within one batch.
        let batch = vec![
            Rec::entry(8, 2),
            Rec::entry(9, 2),
            Rec::entry(8, 3),
            Rec::entry(9, 3),
        ];
        commit(&mut wal, &batch);
        all.extend(batch);
        drop(wal);
        let (_, rec) = open(&disk, segment_bytes_max).unwrap();
        let got: Vec<(u64, u64)> = rec.entries.iter().map(|e| (e.index, e.term)).collect();
        let want = [
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 2),
            (7, 2),
            (8, 3),
            (9, 3),
        ];
        assert_eq!(got, want);
        assert!(Model::replay(&all).matches(&rec));
        assert_eq!(rec.entries[7].data, payload(8, 3));
    }
}

#[test]
#[should_panic(expected = "gap")]
fn append_with_a_gap_is_a_caller_bug() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    wal.append_entry(1, 1, b"a").unwrap();
    wal.append_entry(3, 1, b"c").unwrap();
}

#[test]
fn snapshot_mark_replaces_the_log_and_survives_rotation() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 300).unwrap();
    let mut all = entries(1..=5, 1);
    all.push(Rec::Hs(b"hs-a".to_vec()));
    all.push(Rec::Snap(20, 4));
    all.extend(entries(21..=30, 4));
    for chunk in all.chunks(2) {
        commit(&mut wal, chunk);
    }
    assert_eq!(wal.snapshot(), Some(SnapshotMark { index: 20, term: 4 }));
    assert_eq!((wal.first_index(), wal.last_index()), (21, 30));
    drop(wal);
    let (_, rec) = open(&disk, 300).unwrap();
    assert_eq!(rec.snapshot, Some(SnapshotMark { index: 20, term: 4 }));
    assert_eq!(rec.entries.first().map(|e| e.index), Some(21));
    assert!(Model::replay(&all).matches(&rec));
}

#[test]
fn crash_keeps_every_synced_record_and_drops_buffered_ones() {
    for seed in 0..50 {
        let disk = SimDisk::new();
        let (mut wal, _) = open(&disk, 2048).unwrap();
        let mut synced = Vec::new();
        for b in 0..10u64 {
            let recs = entries(b * 4 + 1..=b * 4 + 4, 1);
            commit(&mut wal, &recs);
            synced.extend(recs);
        }
        for r in entries(41..=45, 1) {
            r.write(&mut wal).unwrap(); // buffered, never synced
        }
        disk.crash(seed);
        drop(wal);
        let (_, rec) = open(&disk, 2048).unwrap();
        assert!(Model::replay(&synced).matches(&rec), "seed {seed}");
        assert!(rec.warnings.is_empty());
    }
}

/// The largest `k` such that the first `k` records of `batch` fit in `bytes`.
fn records_within(batch: &[Rec], bytes: u64) -> usize {
    let mut end = 0;
    batch
        .iter()
        .take_while(|r| {
            end += r.encoded_len();
            end <= bytes
        })
        .count()
}

#[test]
fn power_cut_during_sync_keeps_a_prefix_of_the_last_batch() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..300 {
        let disk = SimDisk::new();
        let (mut wal, _) = open(&disk, BIG).unwrap();
        let synced: Vec<Rec> = entries(1..=6, 1)
            .into_iter()
            .chain([Rec::Hs(b"s".to_vec())])
            .collect();
        commit(&mut wal, &synced);
        let mut batch = entries(7..=16, 2);
        batch.push(Rec::Hs(b"hs after 16".to_vec()));
        for r in &batch {
            r.write(&mut wal).unwrap();
        }
        disk.power_cut_at_next_sync();
        assert!(matches!(wal.sync(), Err(WalError::Io { .. })));
        assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
        disk.crash(seed);
        drop(wal);
        let (_, rec) = open(&disk, BIG).unwrap();
        let k = (0..=batch.len())
            .find(|k| {
                let recs: Vec<Rec> = synced.iter().chain(&batch[..*k]).cloned().collect();
                Model::replay(&recs).matches(&rec)
            })
            .unwrap_or_else(|| panic!("seed {seed}: not a prefix: {rec:?}"));
        seen.insert(k);
    }
    assert!(
        seen.contains(&0) && seen.contains(&11) && seen.len() > 4,
        "{seen:?}"
    );
}

#[test]
fn torn_tail_at_every_cut_point_recovers_a_prefix() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    let mut synced = Vec::new();
    for b in 0..3u64 {
        let mut recs = entries(b * 5 + 1..=b * 5 + 5, 1);
        recs.push(Rec::Hs(vec![b as u8; 10]));
        commit(&mut wal, &recs);
        synced.extend(recs);
    }
    let before = records_end(&files_of(&disk)[0].1) as u64;
    let mut batch = entries(16..=20, 2);
    batch.insert(2, Rec::Hs(b"middle".to_vec()));
    batch.push(Rec::entry(18, 3)); // an overwrite inside the batch
    commit(&mut wal, &batch);
    drop(wal);
    let (name, full) = files_of(&disk).remove(0);
    let end = records_end(&full) as u64;
    assert!(full.len() as u64 >= BIG, "the segment is preallocated");
    for cut in before..=end {
        // 0: the file ends at the cut (a segment that was not preallocated); 1: a sector of
        // zeros follows (a disk writes whole sectors: zeros start at a boundary); 2: the
        // preallocated zeros follow (a power loss, or an append that stopped short).
        for zero_fill in [0, 1, 2].into_iter().filter(|z| *z != 1 || cut % 512 == 0) {
            let mut bytes = full[..cut as usize].to_vec();
            if zero_fill == 1 {
                let to = (cut / 512 + 1) * 512;
                bytes.resize(to.min(end) as usize, 0);
            } else if zero_fill == 2 {
                bytes.resize(full.len(), 0);
            }
            let torn = disk_with(&[(name.clone(), bytes)]);
            let (mut wal, rec) =
                open(&torn, BIG).unwrap_or_else(|e| panic!("cut {cut} zero_fill {zero_fill}: {e}"));
            let k = records_within(&batch, cut - before);
            let recs: Vec<Rec> = synced.iter().chain(&batch[..k]).cloned().collect();
            let model = Model::replay(&recs);
            assert!(
                model.matches(&rec),
                "cut {cut} zero_fill {zero_fill}: {rec:?}"
            );
            let at_boundary = batch[..k].iter().map(Rec::encoded_len).sum::<u64>() == cut - before;
            // Zeros after the last whole record are the end of the log, not damage.
            let repaired = !at_boundary;
            assert_eq!(
                !rec.warnings.is_empty(),
                repaired,
                "cut {cut} zero_fill {zero_fill}"
            );
            if repaired {
                let w = &rec.warnings[0];
                assert!(
                    w.contains(&name)
                        && w.contains(&format!("offset {}", before + at_k(&batch, k))),
                    "{w}"
                );
            }
            // The repaired log takes new appends.
            let next = Rec::entry(model.last_index() + 1, 9);
            commit(&mut wal, std::slice::from_ref(&next));
            drop(wal);
            let (_, rec) = open(&torn, BIG).unwrap();
            let mut model = model;
            model.apply(&next);
            assert!(
                model.matches(&rec) && rec.warnings.is_empty(),
                "cut {cut}: after append"
            );
        }
    }
}

fn at_k(batch: &[Rec], k: usize) -> u64 {
    batch[..k].iter().map(Rec::encoded_len).sum()
}

/// A WAL with one segment: 10 synced entries in 10 batches. Returns the disk, segment path
/// and the offset of each entry record.
fn ten_entries() -> (SimDisk, std::path::PathBuf, Vec<u64>) {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    let mut offsets = Vec::new();
    let mut at = HEADER_RECORD_BYTES;
    for r in entries(1..=10, 1) {
        offsets.push(at);
        at += r.encoded_len();
        commit(&mut wal, &[r]);
    }
    let path = dir().join(&segment_names(&disk)[0]);
    assert_eq!(wal.disk_bytes(), at);
    assert_eq!(records_end(&disk.read(&path).unwrap()) as u64, at);
    (disk, path, offsets)
}

fn expect_corrupt(disk: &SimDisk, file: &std::path::Path, offset: u64) -> Corruption {
    match open(disk, BIG) {
        Err(WalError::Corrupt {
            file: f,
            offset: o,
            reason,
        }) => {
            assert_eq!((f.as_path(), o), (file, offset), "{reason}");
            reason
        }
        other => panic!("expected Corrupt at {offset}, got {other:?}"),
    }
}

#[test]
fn flipped_bit_in_an_early_record_is_corruption() {
    // Every bit of entry 3's record: length, crc, type and payload.
    let (_, _, offsets) = ten_entries();
    let len = Rec::entry(3, 1).encoded_len();
    for byte in 0..len {
        for bit in [0u8, 3, 7] {
            let (disk, path, _) = ten_entries();
            disk.flip_bit(&path, offsets[2] + byte, bit).unwrap();
            let damaged = disk.read(&path).unwrap();
            let reason = expect_corrupt(&disk, &path, offsets[2]);
            assert!(!reason.to_string().is_empty());
            // Nothing was repaired: the file is untouched.
            assert_eq!(disk.read(&path).unwrap(), damaged);
        }
    }
}

#[test]
fn garbage_length_in_the_middle_is_corruption_not_a_torn_tail() {
    let (disk, path, offsets) = ten_entries();
    // Length 100_000: within the maximum, runs past the end of the file like a torn record.
    disk.flip_bit(&path, offsets[4] + 2, 0).unwrap();
    disk.flip_bit(&path, offsets[4] + 1, 7).unwrap();
    let reason = expect_corrupt(&disk, &path, offsets[4]);
    assert!(
        matches!(
            reason,
            Corruption::DamageBeforeValidRecord {
                damage: RecordDamage::BodyCut { .. },
                next_valid,
            } if next_valid > offsets[4]
        ),
        "{reason:?}"
    );
    assert!(
        reason.to_string().contains("valid record follows"),
        "{reason}"
    );
    // Length beyond the maximum.
    let (disk, path, offsets) = ten_entries();
    disk.flip_bit(&path, offsets[9] + 3, 6).unwrap();
    let reason = expect_corrupt(&disk, &path, offsets[9]);
    assert!(
        matches!(
            reason,
            Corruption::DamageNotATear(RecordDamage::TooLong { .. })
        ),
        "{reason:?}"
    );
    assert!(reason.to_string().contains("exceeds maximum"), "{reason}");
    // A flipped payload bit in the very last record is corruption too (no zeros: not a tear).
    let (disk, path, offsets) = ten_entries();
    disk.flip_bit(&path, offsets[9] + 30, 1).unwrap();
    expect_corrupt(&disk, &path, offsets[9]);
}

#[test]
fn random_sector_corruption_of_synced_records_is_caught() {
    for seed in 0..100 {
        let disk = SimDisk::new();
        let (mut wal, _) = open(&disk, 1500).unwrap();
        for b in 0..20u64 {
            commit(&mut wal, &entries(b * 3 + 1..=b * 3 + 3, 1));
        }
        drop(wal);
        let names = segment_names(&disk);
        assert!(names.len() >= 3);
        // Any segment but the last: every damaged record there is corruption.
        let victim = dir().join(&names[(seed as usize) % (names.len() - 1)]);
        disk.corrupt_sector(&victim, seed).unwrap();
        match open(&disk, 1500) {
            Err(WalError::Corrupt { file, .. }) => assert_eq!(file, victim, "seed {seed}"),
            other => panic!("seed {seed}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn missing_records_or_segments_are_corruption() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 400).unwrap();
    for b in 0..12u64 {
        commit(&mut wal, &entries(b * 2 + 1..=b * 2 + 2, 1));
    }
    drop(wal);
    let files = files_of(&disk);
    assert!(files.len() >= 4);
    // A non-last segment that lost its last record (cut at a record boundary).
    let mut cut = files.clone();
    let seg1 = &cut[1].1;
    let mut o = 0usize;
    let mut starts = Vec::new();
    while o < seg1.len() && seg1[o + 8] != 0 {
        starts.push(o);
        o += 9 + u32::from_le_bytes([seg1[o], seg1[o + 1], seg1[o + 2], seg1[o + 3]]) as usize;
    }
    let keep = *starts.last().unwrap();
    cut[1].1.truncate(keep);
    let d = disk_with(&cut);
    match open(&d, 400) {
        Err(WalError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!((file, offset), (dir().join(&cut[2].0), 0), "{reason}");
            assert!(
                matches!(
                    reason,
                    Corruption::Header(HeaderMismatch::DoesNotFollow { .. })
                ),
                "{reason:?}"
            );
            assert!(reason.to_string().contains("missing"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A missing segment in the middle.
    let mut gap = files.clone();
    gap.remove(1);
    match open(&disk_with(&gap), 400) {
        Err(WalError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, dir().join(&files[2].0), "{reason}");
            assert_eq!(reason, Corruption::MissingSegment { missing_seq: 1 });
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A torn record in a non-last segment.
    let mut torn = files.clone();
    let n = records_end(&torn[0].1);
    torn[0].1.truncate(n - 3);
    assert!(matches!(
        open(&disk_with(&torn), 400),
        Err(WalError::Corrupt {
            reason: Corruption::DamageInSealedSegment(_),
            ..
        })
    ));
}

#[test]
fn failed_sync_poisons_and_recovery_keeps_what_was_synced() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    let synced = entries(1..=5, 1);
    commit(&mut wal, &synced);
    for r in entries(6..=8, 1) {
        r.write(&mut wal).unwrap();
    }
    disk.fail_next_sync();
    assert!(matches!(
        wal.sync(),
        Err(WalError::Io { op: IoOp::Sync, .. })
    ));
    assert!(wal.is_poisoned());
    // Never retry an fsync: every later call fails.
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    assert!(matches!(
        wal.append_entry(9, 1, b"x"),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(
        wal.append_hard_state(b"x"),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(wal.release_before(5), Err(WalError::Poisoned)));
    drop(wal);
    disk.crash(7);
    let (_, rec) = open(&disk, BIG).unwrap();
    assert!(Model::replay(&synced).matches(&rec), "{rec:?}");
}

#[test]
fn failed_write_poisons_and_the_short_write_is_repaired() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    let synced = entries(1..=5, 1);
    commit(&mut wal, &synced);
    for r in entries(6..=8, 1) {
        r.write(&mut wal).unwrap();
    }
    disk.fail_next_write();
    assert!(matches!(
        wal.sync(),
        Err(WalError::Io {
            op: IoOp::Append,
            ..
        })
    ));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    drop(wal);
    // Reopen without a crash: half a batch sits at the tail.
    let (_, rec) = open(&disk, BIG).unwrap();
    assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
    let k = rec.entries.len() - 5;
    let recs: Vec<Rec> = synced
        .iter()
        .cloned()
        .chain(entries(6..=8, 1).into_iter().take(k))
        .collect();
    assert!(Model::replay(&recs).matches(&rec));
}

#[test]
fn failed_rotation_poisons() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 100).unwrap();
    commit(&mut wal, &entries(1..=3, 1));
    wal.append_entry(4, 1, b"d").unwrap();
    // This sync starts a new segment; power fails during its fsync.
    disk.power_cut_at_next_sync();
    assert!(wal.sync().is_err());
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    disk.crash(1);
    drop(wal);
    let (_, rec) = open(&disk, 100).unwrap();
    assert_eq!(rec.entries.len(), 3);
}

/// A WAL of small (500-byte) segments holding 30 committed batches of two entries and a hard
/// state each; the records written, in order.
fn thirty_batches(disk: &SimDisk) -> (Wal, Vec<Rec>) {
    let (mut wal, _) = open(disk, 500).unwrap();
    let mut all = Vec::new();
    for b in 0..30u64 {
        let mut recs = entries(b * 2 + 1..=b * 2 + 2, 1);
        recs.push(Rec::Hs(format!("hs{b}").into_bytes()));
        commit(&mut wal, &recs);
        all.extend(recs);
    }
    (wal, all)
}

/// The `.wal` segment files in the WAL directory.
fn segment_files(disk: &SimDisk) -> Vec<String> {
    disk.list_dir(dir())
        .expect("the WAL directory lists")
        .into_iter()
        .filter(|n| n.ends_with(".wal") && !n.starts_with("next"))
        .collect()
}

#[test]
fn detached_segments_stay_on_disk_until_removed_and_a_crash_between_keeps_the_log_whole() {
    let disk = SimDisk::new();
    let (mut wal, all) = thirty_batches(&disk);
    let files_before = segment_files(&disk);
    let segments_before = wal.segment_count();
    let released = wal.detach_before(31).unwrap();
    let detached = released.len();
    assert!(detached > 0, "segments below 31 are detached");
    assert_eq!(wal.segment_count(), segments_before - detached);
    assert_eq!(segment_files(&disk), files_before, "no file removed yet");
    // A crash before the removal: the detached segments are found again, the log is whole.
    disk.crash(7);
    drop(released);
    drop(wal);
    let (mut wal, rec) = open(&disk, 500).unwrap();
    let model = Model::replay(&all);
    assert_eq!(
        rec.entries[..],
        model.entries[..],
        "nothing lost, nothing extra"
    );
    assert_eq!(rec.hard_state, model.hard_state);
    // Detached and removed (on another thread): the files go, oldest first, durably.
    let released = wal.detach_before(31).unwrap();
    let detached = released.len();
    let remover = std::thread::spawn(move || released.remove());
    assert_eq!(
        remover.join().expect("the remover ran").unwrap(),
        detached,
        "each detached segment is removed"
    );
    assert_eq!(segment_files(&disk).len(), files_before.len() - detached);
    disk.crash(8);
    drop(wal);
    let (mut wal, rec) = open(&disk, 500).unwrap();
    let first = rec.entries[0].index;
    assert!(first <= 31, "entry 31 must survive, log starts at {first}");
    assert_eq!(rec.entries[..], model.entries[(first - 1) as usize..]);
    // A file already gone counts as removed.
    commit(&mut wal, &entries(61..=80, 1));
    let released = wal.detach_before(75).unwrap();
    assert!(!released.is_empty(), "older segments are detached");
    for name in segment_files(&disk).iter().take(1) {
        disk.remove(&dir().join(name))
            .expect("the oldest segment file is removable");
    }
    let count = released.len();
    assert_eq!(released.remove().unwrap(), count);
}

#[test]
fn release_before_removes_whole_segments_below_the_index() {
    let disk = SimDisk::new();
    let (mut wal, all) = thirty_batches(&disk);
    let before = wal.segment_count();
    assert_eq!(wal.release_before(0).unwrap(), 0);
    let removed = wal.release_before(31).unwrap();
    assert!(removed > 0 && removed < before, "{removed} of {before}");
    assert_eq!(wal.segment_count(), before - removed);
    // Removals are durable.
    disk.crash(3);
    drop(wal);
    let (mut wal, rec) = open(&disk, 500).unwrap();
    let model = Model::replay(&all);
    assert_eq!(
        rec.hard_state, model.hard_state,
        "the hard state is restated per segment"
    );
    let first = rec.entries[0].index;
    assert!(first <= 31, "entry 31 must survive, log starts at {first}");
    assert_eq!(rec.entries[..], model.entries[(first - 1) as usize..]);
    // Releasing everything keeps the active segment.
    wal.release_before(u64::MAX).unwrap();
    assert_eq!(wal.segment_count(), 1);
    commit(&mut wal, &[Rec::entry(61, 2)]);
    drop(wal);
    let (_, rec) = open(&disk, 500).unwrap();
    assert_eq!(rec.entries.last().map(|e| (e.index, e.term)), Some((61, 2)));
    assert_eq!(rec.hard_state, model.hard_state);
}

#[test]
fn torn_new_segment_header_is_removed() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    commit(&mut wal, &entries(1..=3, 1));
    drop(wal);
    let mut files = files_of(&disk);
    let next = format!("{:016x}-{:016x}.wal", 1, 4);
    files.push((next.clone(), vec![0x24, 0, 0]));
    let d = disk_with(&files);
    let (mut wal, rec) = open(&d, BIG).unwrap();
    assert_eq!(rec.entries.len(), 3);
    assert!(rec.warnings[0].contains(&next));
    assert_eq!(segment_names(&d).len(), 1);
    commit(&mut wal, &entries(4..=4, 1));
    drop(wal);
    assert_eq!(open(&d, BIG).unwrap().1.entries.len(), 4);
}

#[test]
fn oversized_records_are_refused() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    let big = vec![0u8; RECORD_PAYLOAD_BYTES_MAX as usize + 1];
    assert!(matches!(
        wal.append_hard_state(&big),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert!(matches!(
        wal.append_entry(1, 1, &big[16..]),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert!(!wal.is_poisoned());
    commit(&mut wal, &entries(1..=1, 1));
}

#[test]
fn unrelated_files_are_ignored() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    commit(&mut wal, &entries(1..=2, 1));
    drop(wal);
    let mut f = disk.open_append(&dir().join("notes.txt")).unwrap();
    f.append(b"hello").unwrap();
    assert_eq!(open(&disk, BIG).unwrap().1.entries.len(), 2);
}

/// Found by the property test: a process crash between write and fsync leaves whole records in
/// the page cache; `open` must make them durable before handing them out, or a later power loss
/// takes back a hard state raft already acted on.
#[test]
fn records_recovered_from_the_page_cache_are_made_durable() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    let batch = [Rec::Hs(vec![1; 3]), Rec::Hs(vec![2; 3])]; // 12 bytes each
    for r in &batch {
        r.write(&mut wal).unwrap();
    }
    disk.fail_next_write(); // writes exactly the first record, unsynced
    assert!(wal.sync().is_err());
    drop(wal);
    let (wal, rec) = open(&disk, BIG).unwrap();
    assert_eq!(rec.hard_state, Some(vec![1; 3]));
    assert!(
        rec.warnings.is_empty(),
        "a clean record boundary: nothing to repair"
    );
    drop(wal);
    disk.crash(42);
    let (_, rec) = open(&disk, BIG).unwrap();
    assert_eq!(
        rec.hard_state,
        Some(vec![1; 3]),
        "what open returned must survive a crash"
    );
}

#[test]
fn disk_bytes_counts_every_segment_across_rotation_and_reopen() {
    let disk = SimDisk::new();
    let dir = std::path::Path::new("/wal-bytes");
    let opts = keel_storage::WalOptions {
        segment_bytes_max: 256,
        #[cfg(madsim)]
        skip_crc_bug: false,
    };
    let (mut wal, _) = Wal::open(std::sync::Arc::new(disk.clone()), dir, opts).expect("open");
    let empty = wal.disk_bytes();
    assert!(empty > 0, "a fresh WAL holds its segment header");
    for i in 1..=20u64 {
        wal.append_entry(i, 1, &[7u8; 40]).expect("append");
        wal.sync().expect("sync");
    }
    assert!(wal.segment_count() > 2, "the test should rotate");
    let written = wal.disk_bytes();
    assert!(
        written > empty + 20 * 40,
        "every entry's bytes count: {written}"
    );
    drop(wal);
    let (reopened, _) = Wal::open(std::sync::Arc::new(disk), dir, opts).expect("reopen");
    assert_eq!(reopened.disk_bytes(), written, "reopen sees the same files");
}

#[test]
fn reopen_after_a_failed_write_cuts_the_torn_tail_and_takes_the_batch_again() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, BIG).unwrap();
    commit(&mut wal, &entries(1..=3, 1));
    let batch = entries(4..=9, 1);
    for r in &batch {
        r.write(&mut wal).unwrap();
    }
    disk.fail_next_write(); // half the batch reaches the file, then the write fails
    assert!(matches!(
        wal.sync(),
        Err(WalError::Io {
            op: IoOp::Append,
            ..
        })
    ));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    let (mut wal, recovered) = wal.reopen().unwrap();
    let last = recovered.entries.last().map_or(0, |e| e.index);
    assert!(
        (3..9).contains(&last),
        "a prefix of the batch at most: {last}"
    );
    commit(&mut wal, &batch);
    commit(&mut wal, &entries(10..=10, 2));
    drop(wal);
    let (_, recovered) = open(&disk, BIG).unwrap();
    let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (1..=10).collect::<Vec<_>>());
    assert_eq!(recovered.entries.last().map(|e| e.term), Some(2));
}
