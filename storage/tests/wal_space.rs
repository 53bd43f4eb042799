//! Preallocated WAL segments and a full disk: the reserve made ahead of need, `sync` on a full
//! disk, restarting on one, and recovering preallocated files.
#![allow(clippy::unwrap_used)]

mod common;

use common::{dir, disk_with, files_of, open, Model, Rec};
use keel_storage::{Corruption, Disk, SimDisk, Wal, WalError};

/// Segment size of these tests.
const SEG: u64 = 4096;
const RESERVE: &str = "next-segment.wal.tmp";

fn segments(disk: &SimDisk) -> Vec<String> {
    let mut names = disk.list_dir(dir()).unwrap();
    names.retain(|n| n.ends_with(".wal"));
    names
}

fn has_reserve(disk: &SimDisk) -> bool {
    disk.list_dir(dir()).unwrap().iter().any(|n| n == RESERVE)
}

/// Appends entries `from..` of 100-byte payloads, one per sync, until `stop` holds; returns the
/// records written.
fn fill_until(wal: &mut Wal, from: u64, stop: impl Fn(&Wal) -> bool) -> Vec<Rec> {
    let mut recs = Vec::new();
    let mut i = from;
    while !stop(wal) {
        let r = Rec::Entry(i, 1, vec![i as u8 | 1; 100]);
        r.write(wal).unwrap();
        wal.sync().unwrap();
        recs.push(r);
        i += 1;
        assert!(i < from + 10_000, "the stop condition never held");
    }
    recs
}

#[test]
fn segments_are_preallocated_and_writes_do_not_grow_them() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    let first = dir().join(&segments(&disk)[0]);
    assert_eq!(disk.read(&first).unwrap().len() as u64, SEG);
    let used = disk.used_bytes();
    let recs = fill_until(&mut wal, 1, |w| w.disk_bytes() > SEG / 4);
    assert_eq!(disk.read(&first).unwrap().len() as u64, SEG);
    assert_eq!(
        disk.used_bytes(),
        used,
        "writes into preallocated space take none"
    );
    assert!(!wal.space_reserved(), "not yet half full");
    drop(wal);
    let (_, rec) = open(&disk, SEG).unwrap();
    assert!(Model::replay(&recs).matches(&rec));
    assert!(
        rec.warnings.is_empty(),
        "zeros after the records are the end of the log"
    );
}

#[test]
fn the_next_segment_is_reserved_at_half_full_and_used_at_rotation() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    let mut all = fill_until(&mut wal, 1, |w| w.space_reserved());
    assert!(wal.disk_bytes() >= SEG / 2);
    assert!(has_reserve(&disk));
    assert_eq!(disk.read(&dir().join(RESERVE)).unwrap().len() as u64, SEG);
    assert_eq!(wal.segment_count(), 1);
    // Fill the disk: the rotation needs no new space, the reserve has it.
    disk.fill();
    let next = all.len() as u64 + 1;
    all.extend(fill_until(&mut wal, next, |w| w.segment_count() == 2));
    assert!(!has_reserve(&disk), "the reserve became the segment");
    assert!(!wal.space_reserved());
    assert_eq!(segments(&disk).len(), 2);
    disk.set_capacity(None);
    drop(wal);
    disk.crash(5);
    let (_, rec) = open(&disk, SEG).unwrap();
    assert!(Model::replay(&all).matches(&rec), "{rec:?}");
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
}

/// The scenario of etcd's NOSPACE alarm: the reserve fails while the active segment still has
/// half its room; the owner learns it, writes on, and recovers once space is freed.
#[test]
fn a_full_disk_shows_when_reserving_not_when_appending() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    let mut all = fill_until(&mut wal, 1, |w| w.disk_bytes() > SEG / 4);
    disk.fill();
    let next = all.len() as u64 + 1;
    all.extend(fill_until(&mut wal, next, |w| w.is_out_of_space()));
    assert!(!wal.space_reserved() && !wal.is_poisoned());
    assert!(!has_reserve(&disk), "a failed reservation holds no space");
    let err = wal.try_reserve().unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert!(!wal.is_poisoned());
    // The active segment still takes writes (the alarm's own, say) until it is full.
    let mut i = all.len() as u64 + 1;
    let refused = loop {
        let r = Rec::Entry(i, 1, vec![7; 100]);
        r.write(&mut wal).unwrap();
        match wal.sync() {
            Ok(()) => all.push(r),
            Err(e) => break (e, r),
        }
        i += 1;
    };
    assert!(refused.0.is_no_space(), "{}", refused.0);
    assert!(
        !wal.is_poisoned(),
        "nothing was written: the batch stays buffered"
    );
    assert_eq!(wal.buffered_bytes(), refused.1.encoded_len());
    assert_eq!(wal.segment_count(), 1);
    // Freeing space: the retried sync starts the next segment with the buffered batch.
    disk.set_capacity(None);
    wal.sync().unwrap();
    all.push(refused.1);
    assert_eq!(wal.segment_count(), 2);
    assert!(!wal.is_out_of_space());
    drop(wal);
    disk.crash(9);
    let (_, rec) = open(&disk, SEG).unwrap();
    assert!(Model::replay(&all).matches(&rec));
}

#[test]
fn try_reserve_after_space_is_freed_clears_the_condition() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    disk.fill();
    let err = wal.try_reserve().unwrap_err();
    assert!(err.is_no_space() && wal.is_out_of_space());
    assert!(matches!(err, WalError::Io { .. }));
    disk.set_capacity(None);
    wal.try_reserve().unwrap();
    assert!(wal.space_reserved() && !wal.is_out_of_space());
    assert!(has_reserve(&disk));
}

#[test]
fn restarting_on_a_full_disk_needs_no_new_space() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    let mut all = fill_until(&mut wal, 1, |w| w.segment_count() == 3);
    drop(wal);
    disk.fill();
    let (mut wal, rec) = open(&disk, SEG).unwrap();
    assert!(Model::replay(&all).matches(&rec));
    assert!(!wal.is_out_of_space(), "open does not try to reserve");
    // Writes go on into the active segment's preallocated room.
    let used = disk.used_bytes();
    for i in all.len() as u64 + 1..=all.len() as u64 + 3 {
        let r = Rec::Entry(i, 2, vec![9; 50]);
        r.write(&mut wal).unwrap();
        wal.sync().unwrap();
        all.push(r);
    }
    assert_eq!(disk.used_bytes(), used);
    drop(wal);
    // Even with a torn tail to repair: zeroing it in place needs no space.
    let files = files_of(&disk);
    let (name, mut last) = files
        .iter()
        .find(|(n, _)| *n == segments(&disk)[2])
        .cloned()
        .unwrap();
    let end = last.iter().rposition(|b| *b != 0).unwrap() + 1;
    last[end - 40..end].fill(0);
    let torn = disk_with(&[files[0].clone(), files[1].clone(), (name, last)]);
    torn.fill();
    let (_, rec) = open(&torn, SEG).unwrap();
    assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
    assert!(rec.warnings[0].contains("zeroed"), "{}", rec.warnings[0]);
    assert_eq!(
        rec.entries.len(),
        all.len() - 1,
        "the torn last entry is dropped"
    );
}

#[test]
fn a_reserve_survives_a_restart_and_a_half_made_one_is_removed() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    let all = fill_until(&mut wal, 1, |w| w.space_reserved());
    drop(wal);
    disk.crash(1);
    disk.fill();
    let (wal, rec) = open(&disk, SEG).unwrap();
    assert!(Model::replay(&all).matches(&rec));
    assert!(
        wal.space_reserved(),
        "the durable reserve is taken over, not remade"
    );
    drop(wal);
    disk.set_capacity(None);
    // A reserve holding records (a crash after it was renamed, before the rename was durable).
    let mut files = files_of(&disk);
    let reserve = files.iter_mut().find(|(n, _)| n == RESERVE).unwrap();
    reserve.1[..5].copy_from_slice(b"stale");
    let d = disk_with(&files);
    let (wal, rec) = open(&d, SEG).unwrap();
    assert!(Model::replay(&all).matches(&rec));
    assert!(
        !wal.space_reserved() && !has_reserve(&d),
        "a reserve that is not all zeros goes"
    );
}

#[test]
fn a_segment_preallocated_but_never_written_is_removed() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    let all = fill_until(&mut wal, 1, |w| w.segment_count() == 2);
    drop(wal);
    let mut files = files_of(&disk);
    files.retain(|(n, _)| n.ends_with(".wal"));
    let last = files.last_mut().unwrap();
    last.1.fill(0);
    let name = last.0.clone();
    let d = disk_with(&files);
    let (mut wal, rec) = open(&d, SEG).unwrap();
    let written: Vec<Rec> = all[..all.len() - 1].to_vec();
    assert!(Model::replay(&written).matches(&rec), "{rec:?}");
    assert!(rec.warnings[0].contains(&name) && rec.warnings[0].contains("never written"));
    assert_eq!(segments(&d).len(), 1);
    // The log goes on (the old last segment is full: a new one is started).
    let r = Rec::Entry(all.len() as u64, 2, vec![3; 10]);
    r.write(&mut wal).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = open(&d, SEG).unwrap();
    let mut model = Model::replay(&written);
    model.apply(&r);
    assert!(model.matches(&rec));
}

#[test]
fn damage_before_or_inside_the_zero_tail_is_still_caught() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, SEG).unwrap();
    fill_until(&mut wal, 1, |w| w.disk_bytes() > 1000);
    let end = wal.disk_bytes();
    drop(wal);
    let path = dir().join(&segments(&disk)[0]);
    // A flipped bit in a record before the last: corruption, though zeros follow the records.
    disk.flip_bit(&path, 300, 2).unwrap();
    assert!(matches!(open(&disk, SEG), Err(WalError::Corrupt { .. })));
    disk.flip_bit(&path, 300, 2).unwrap();
    // A stray byte deep in the zeros: not a torn append either.
    disk.flip_bit(&path, end + 1000, 0).unwrap();
    match open(&disk, SEG) {
        Err(WalError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, end);
            assert!(
                matches!(reason, Corruption::DamageNotATear(_)),
                "{reason:?}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_power_cut_while_starting_a_segment_from_the_reserve_loses_no_synced_record() {
    for seed in 0..100 {
        let disk = SimDisk::new();
        let (mut wal, _) = open(&disk, SEG).unwrap();
        let synced = fill_until(&mut wal, 1, |w| w.space_reserved());
        let mut i = synced.len() as u64 + 1;
        let mut all = synced.clone();
        let cut_at = loop {
            let r = Rec::Entry(i, 1, vec![5; 100]);
            r.write(&mut wal).unwrap();
            if wal.disk_bytes() + r.encoded_len() > SEG {
                disk.power_cut_at_next_sync();
                assert!(wal.sync().is_err());
                break r;
            }
            wal.sync().unwrap();
            all.push(r);
            i += 1;
        };
        disk.crash(seed);
        drop(wal);
        let (_, rec) = open(&disk, SEG).unwrap();
        let with: Vec<Rec> = all.iter().chain([&cut_at]).cloned().collect();
        assert!(
            Model::replay(&all).matches(&rec) || Model::replay(&with).matches(&rec),
            "seed {seed}: {rec:?}"
        );
    }
}

#[test]
fn a_snapshot_save_on_a_full_disk_says_no_space() {
    use keel_storage::SnapDir;
    let disk = SimDisk::new();
    let snaps = SnapDir::open(
        std::sync::Arc::new(disk.clone()),
        std::path::Path::new("/snap"),
        2,
    )
    .unwrap();
    snaps.save(5, 1, b"meta", &[1; 1000]).unwrap();
    disk.set_capacity(Some(disk.used_bytes() + 100));
    let err = snaps.save(9, 1, b"meta", &[2; 1000]).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    disk.set_capacity(None);
    snaps.save(9, 1, b"meta", &[2; 1000]).unwrap();
}
