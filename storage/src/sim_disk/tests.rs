//! Tests of the [`SimDisk`](super::SimDisk) model: durability, crashes, faults, capacity.
#![allow(clippy::unwrap_used)]

use super::*;

fn write(disk: &SimDisk, path: &Path, bytes: &[u8], sync: bool) -> Box<dyn DiskFile> {
    let mut f = disk.open_append(path).unwrap();
    f.append(bytes).unwrap();
    if sync {
        f.sync().unwrap();
    }
    f
}

#[test]
fn unsynced_create_vanishes_synced_create_survives() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    write(&disk, &dir.join("a"), b"aaa", true);
    disk.sync_dir(dir).unwrap();
    write(&disk, &dir.join("b"), b"bbb", true);
    assert_eq!(disk.list_dir(dir).unwrap(), vec!["a", "b"]);
    disk.crash(1);
    assert_eq!(disk.list_dir(dir).unwrap(), vec!["a"]);
    assert_eq!(disk.read(&dir.join("a")).unwrap(), b"aaa");
}

#[test]
fn remove_and_rename_are_durable_only_after_sync_dir() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    write(&disk, &dir.join("a"), b"1", true);
    write(&disk, &dir.join("b"), b"2", true);
    disk.sync_dir(dir).unwrap();
    disk.remove(&dir.join("a")).unwrap();
    disk.rename(&dir.join("b"), &dir.join("c")).unwrap();
    disk.crash(2);
    assert_eq!(disk.list_dir(dir).unwrap(), vec!["a", "b"]);
    disk.remove(&dir.join("a")).unwrap();
    disk.rename(&dir.join("b"), &dir.join("c")).unwrap();
    disk.sync_dir(dir).unwrap();
    disk.crash(3);
    assert_eq!(disk.list_dir(dir).unwrap(), vec!["c"]);
    assert_eq!(disk.read(&dir.join("c")).unwrap(), b"2");
}

#[test]
fn crash_keeps_synced_prefix_and_sector_torn_tail() {
    let dir = Path::new("/d");
    let synced: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8 + 1).collect();
    let pending: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8 + 1).collect();
    let mut all = synced.clone();
    all.extend_from_slice(&pending);
    for seed in 0..200 {
        let disk = SimDisk::new();
        disk.create_dir_all(dir).unwrap();
        let mut f = write(&disk, &dir.join("f"), &synced, true);
        disk.sync_dir(dir).unwrap();
        f.append(&pending).unwrap();
        disk.crash(seed);
        let got = disk.read(&dir.join("f")).unwrap();
        let len = got.len();
        assert!(len >= synced.len() && len <= all.len());
        let nonzero = got.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        assert_eq!(
            got[..nonzero],
            all[..nonzero],
            "seed {seed}: kept bytes are a prefix"
        );
        assert!(nonzero >= synced.len());
        assert!(
            nonzero == synced.len() || nonzero == all.len() || nonzero % 512 == 0,
            "seed {seed}: cut at {nonzero} is not a sector boundary"
        );
        assert!(f.append(b"x").is_err(), "stale handle must fail");
    }
}

#[test]
fn failed_sync_loses_the_bytes_it_covered() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    let mut f = write(&disk, &dir.join("f"), b"aaaa", true);
    disk.sync_dir(dir).unwrap();
    f.append(b"bbbb").unwrap();
    disk.fail_next_sync();
    assert!(f.sync().is_err());
    f.append(b"cccc").unwrap();
    f.sync().unwrap();
    assert_eq!(disk.read(&dir.join("f")).unwrap(), b"aaaabbbbcccc");
    disk.crash(0);
    assert_eq!(disk.read(&dir.join("f")).unwrap(), b"aaaa\0\0\0\0cccc");
}

#[test]
fn power_cut_during_sync_leaves_bytes_pending() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    let mut f = write(&disk, &dir.join("f"), b"aaaa", true);
    disk.sync_dir(dir).unwrap();
    f.append(&[b'b'; 2000]).unwrap();
    disk.power_cut_at_next_sync();
    assert!(f.sync().is_err());
    assert!(
        disk.read(&dir.join("f")).is_err(),
        "the disk is off until crash"
    );
    let mut lens = BTreeSet::new();
    for seed in 0..64 {
        let d = SimDisk::new();
        d.create_dir_all(dir).unwrap();
        let mut f = write(&d, &dir.join("f"), b"aaaa", true);
        d.sync_dir(dir).unwrap();
        f.append(&[b'b'; 2000]).unwrap();
        d.power_cut_at_next_sync();
        assert!(f.sync().is_err());
        d.crash(seed);
        let got = d.read(&dir.join("f")).unwrap();
        lens.insert(got.iter().filter(|b| **b == b'b').count() + 4);
    }
    assert!(
        lens.contains(&4) && lens.contains(&2004) && lens.contains(&512),
        "{lens:?}"
    );
}

#[test]
fn failed_write_is_short() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    let mut f = disk.open_append(&dir.join("f")).unwrap();
    disk.fail_next_write();
    assert!(f.append(b"abcd").is_err());
    assert_eq!(disk.read(&dir.join("f")).unwrap(), b"ab");
    f.append(b"ef").unwrap();
    assert_eq!(f.len(), 4);
}

#[test]
fn corrupt_sector_flips_one_durable_bit() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    let bytes = vec![7u8; 2000];
    let mut f = write(&disk, &dir.join("f"), &bytes, true);
    f.append(&[9u8; 100]).unwrap();
    for seed in 0..50 {
        let before = disk.read(&dir.join("f")).unwrap();
        let offset = disk.corrupt_sector(&dir.join("f"), seed).unwrap();
        assert!(offset < 2000);
        let after = disk.read(&dir.join("f")).unwrap();
        let diffs: Vec<usize> = (0..after.len())
            .filter(|i| before[*i] != after[*i])
            .collect();
        assert_eq!(diffs, vec![offset as usize]);
        assert_eq!(
            (before[offset as usize] ^ after[offset as usize]).count_ones(),
            1
        );
    }
}

#[test]
fn missing_parent_is_not_found() {
    let disk = SimDisk::new();
    let err = disk.open_append(Path::new("/nope/f")).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(disk.list_dir(Path::new("/nope")).is_err());
}
