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

#[test]
fn allocate_extends_with_zeros_and_positional_writes_overwrite() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    let path = dir.join("f");
    let mut f = disk.open_append(&path).unwrap();
    f.allocate(2048).unwrap();
    assert_eq!(f.len(), 0, "allocate does not move the position");
    f.append(b"abc").unwrap();
    assert_eq!(f.len(), 3);
    let got = disk.read(&path).unwrap();
    assert_eq!((got.len(), &got[..4]), (2048, &b"abc\0"[..]));
    f.sync().unwrap();
    disk.sync_dir(dir).unwrap();
    let mut g = disk.open_at(&path, 1).unwrap();
    g.append(b"XY").unwrap();
    assert_eq!(&disk.read(&path).unwrap()[..4], b"aXY\0");
    assert!(disk.open_at(&path, 4096).is_err(), "past the end");
    assert!(disk.open_at(&dir.join("missing"), 0).is_err());
}

#[test]
fn crash_tears_unsynced_writes_into_preallocated_space_at_sectors() {
    let dir = Path::new("/d");
    let pending: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8 + 1).collect();
    let mut cuts = BTreeSet::new();
    for seed in 0..100 {
        let disk = SimDisk::new();
        disk.create_dir_all(dir).unwrap();
        let mut f = disk.open_append(&dir.join("f")).unwrap();
        f.allocate(8192).unwrap();
        f.append(&[9; 100]).unwrap();
        f.sync().unwrap();
        disk.sync_dir(dir).unwrap();
        f.append(&pending).unwrap();
        disk.crash(seed);
        let got = disk.read(&dir.join("f")).unwrap();
        assert_eq!(got.len(), 8192, "the synced allocation survives");
        assert_eq!(got[..100], [9; 100]);
        let kept = got[100..].iter().position(|b| *b == 0).unwrap_or(0);
        assert_eq!(got[100..100 + kept], pending[..kept], "seed {seed}");
        assert!(got[100 + kept..].iter().all(|b| *b == 0));
        let cut = 100 + kept as u64;
        assert!(
            cut == 100 || cut == 3100 || cut.is_multiple_of(512),
            "seed {seed}: {cut}"
        );
        cuts.insert(cut);
    }
    assert!(cuts.len() > 3, "{cuts:?}");
    // An allocation never synced is lost.
    let disk = SimDisk::new();
    disk.create_dir_all(dir).unwrap();
    let mut f = disk.open_append(&dir.join("g")).unwrap();
    f.sync().unwrap();
    disk.sync_dir(dir).unwrap();
    f.allocate(4096).unwrap();
    disk.crash(3);
    assert!(disk.read(&dir.join("g")).unwrap().is_empty());
}

#[test]
fn a_full_disk_refuses_growth_but_not_overwrites_and_frees_on_remove() {
    let disk = SimDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    let mut wal = disk.open_append(&dir.join("wal")).unwrap();
    wal.allocate(1024).unwrap();
    let mut snap = write(&disk, &dir.join("snap"), &[1; 500], true);
    disk.sync_dir(dir).unwrap();
    assert_eq!(
        disk.used_bytes(),
        1524,
        "WAL and snapshot files count alike"
    );
    disk.set_capacity(Some(1600));
    // 76 bytes left: a write of 100 is short, then fails.
    let err = snap.append(&[2; 100]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    assert!(crate::disk::is_no_space(&err));
    assert_eq!(disk.read(&dir.join("snap")).unwrap().len(), 576);
    assert_eq!(snap.len(), 576);
    // Full now: allocation and creation fail, writes into allocated space do not.
    let err = wal.allocate(2048).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    assert_eq!(
        disk.read(&dir.join("wal")).unwrap().len(),
        1024,
        "nothing reserved"
    );
    assert_eq!(
        disk.open_append(&dir.join("new")).err().unwrap().kind(),
        io::ErrorKind::StorageFull
    );
    wal.append(&[3; 1024]).unwrap();
    wal.sync().unwrap();
    assert_eq!(
        wal.append(b"x").unwrap_err().kind(),
        io::ErrorKind::StorageFull
    );
    // The capacity is the disk's: it survives a power cycle.
    disk.crash(1);
    assert_eq!(disk.capacity(), Some(1600));
    // Removing a file frees its space once the removal is durable.
    disk.remove(&dir.join("snap")).unwrap();
    assert!(disk.open_append(&dir.join("new")).is_err());
    disk.sync_dir(dir).unwrap();
    let mut new = disk.open_append(&dir.join("new")).unwrap();
    new.allocate(500).unwrap();
    // `fill` makes the disk full at what it holds; `set_capacity(None)` frees it.
    assert_eq!(disk.fill(), disk.used_bytes());
    assert!(new.allocate(501).is_err());
    disk.set_capacity(None);
    new.allocate(1 << 20).unwrap();
}

#[test]
fn a_fired_fault_names_its_path() {
    let disk = SimDisk::new();
    disk.create_dir_all(Path::new("/d")).expect("mkdir");
    let mut f = disk.open_append(Path::new("/d/a")).expect("open");
    disk.fail_next_sync();
    assert_eq!(disk.fault_fired_on(), None, "armed, not fired");
    f.append(b"x").expect("append");
    assert!(f.sync().is_err());
    assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d/a")));
    disk.fail_next_write();
    assert_eq!(disk.fault_fired_on(), None, "arming clears it");
    assert!(f.append(b"yy").is_err());
    assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d/a")));
    disk.power_cut_at_next_sync();
    assert!(disk.sync_dir(Path::new("/d")).is_err());
    assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d")));
    disk.crash(1);
    disk.create_dir_all(Path::new("/d/snap")).expect("mkdir");
    disk.power_cut_at_next_sync_under(Path::new("/d/snap"));
    disk.sync_dir(Path::new("/d"))
        .expect("not under /d/snap: no power cut");
    assert!(disk.sync_dir(Path::new("/d/snap")).is_err(), "power cut");
    assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d/snap")));
    assert!(disk.sync_dir(Path::new("/d")).is_err(), "the disk is off");
}
