//! The WAL on the real file system (OsDisk), in a unique temporary directory.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use keel_storage::{Disk, OsDisk, Wal, WalError, WalOptions};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("keel-storage-{tag}-{}-{nanos}", std::process::id());
        TempDir(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn wal_round_trip_rotation_and_torn_tail_on_the_os() {
    let tmp = TempDir::new("wal");
    let dir = tmp.0.join("member").join("wal");
    let disk: Arc<dyn Disk> = Arc::new(OsDisk::new());
    let opts = WalOptions {
        segment_bytes_max: 4096,
        #[cfg(madsim)]
        skip_crc_bug: false,
    };
    let (mut wal, rec) = Wal::open(disk.clone(), &dir, opts).unwrap();
    assert!(rec.entries.is_empty() && rec.hard_state.is_none());
    for i in 1..=100u64 {
        wal.append_entry(i, 1 + i / 50, &vec![i as u8; (i * 13 % 200) as usize])
            .unwrap();
        if i % 10 == 0 {
            wal.append_hard_state(format!("commit={i}").as_bytes())
                .unwrap();
            wal.sync().unwrap();
        }
    }
    assert!(wal.segment_count() > 2);
    drop(wal);

    let (wal, rec) = Wal::open(disk.clone(), &dir, opts).unwrap();
    assert_eq!(rec.entries.len(), 100);
    assert!(rec
        .entries
        .iter()
        .enumerate()
        .all(|(k, e)| e.index == k as u64 + 1));
    assert_eq!(rec.entries[41].data, vec![42u8; (42 * 13 % 200) as usize]);
    assert_eq!(rec.hard_state.as_deref(), Some(&b"commit=100"[..]));
    assert!(rec.warnings.is_empty());
    drop(wal);

    // Tear the last record of the last segment, as a power loss could.
    let names = disk.list_dir(&dir).unwrap();
    let last = dir.join(names.last().unwrap());
    // The file is preallocated: its records end where its zeros start.
    let bytes = std::fs::read(&last).unwrap();
    assert!(bytes.len() >= 4096, "segments are preallocated");
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    disk.truncate(&last, end - 5).unwrap();
    let (_, rec) = Wal::open(disk.clone(), &dir, opts).unwrap();
    assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
    assert!(rec.warnings[0].contains(&last.display().to_string()));
    assert_eq!(rec.hard_state.as_deref(), Some(&b"commit=90"[..]));
    assert_eq!(
        rec.entries.len(),
        100,
        "the torn record was the hard state after entry 100"
    );

    // Flip a byte in the first segment: corruption, named by file.
    let first = dir.join(&names[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[60] ^= 0x10;
    std::fs::write(&first, &bytes).unwrap();
    match Wal::open(disk, &dir, opts) {
        Err(WalError::Corrupt { file, .. }) => assert_eq!(file, first),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn os_disk_basics() {
    let tmp = TempDir::new("disk");
    let disk = OsDisk::new();
    let dir = tmp.0.join("d");
    disk.create_dir_all(&dir).unwrap();
    disk.create_dir_all(&dir).unwrap();
    let mut f = disk.open_append(&dir.join("b")).unwrap();
    f.append(b"hello ").unwrap();
    f.append(b"world").unwrap();
    f.sync().unwrap();
    assert_eq!(f.len(), 11);
    let f2 = disk.open_append(&dir.join("b")).unwrap();
    assert_eq!(f2.len(), 11);
    disk.open_append(&dir.join("a")).unwrap();
    disk.sync_dir(&dir).unwrap();
    assert_eq!(disk.list_dir(&dir).unwrap(), vec!["a", "b"]);
    disk.rename(&dir.join("b"), &dir.join("c")).unwrap();
    disk.truncate(&dir.join("c"), 5).unwrap();
    assert_eq!(disk.read(&dir.join("c")).unwrap(), b"hello");
    disk.remove(&dir.join("a")).unwrap();
    assert_eq!(disk.list_dir(&dir).unwrap(), vec!["c"]);
    assert!(disk.read(&dir.join("a")).is_err());
}

#[test]
fn os_disk_allocate_reserves_blocks_and_open_at_overwrites() {
    let tmp = TempDir::new("alloc");
    let disk = OsDisk::new();
    disk.create_dir_all(&tmp.0).unwrap();
    let path = tmp.0.join("seg");
    let mut f = disk.open_append(&path).unwrap();
    f.allocate(1 << 20).unwrap();
    assert_eq!(f.len(), 0);
    f.append(b"hello").unwrap();
    f.sync().unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 1 << 20);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= 1 << 20,
            "blocks reserved, not a sparse file"
        );
    }
    drop(f);
    let mut g = disk.open_at(&path, 1).unwrap();
    g.append(b"EL").unwrap();
    g.sync().unwrap();
    let bytes = disk.read(&path).unwrap();
    assert_eq!((&bytes[..6], bytes.len()), (&b"hELlo\0"[..], 1 << 20));
    assert!(disk.open_at(&path, 2 << 20).is_err(), "past the end");
}

#[test]
fn os_disk_write_back_in_steps_keeps_every_byte() {
    let tmp = TempDir::new("writeback");
    let disk = OsDisk::new();
    disk.create_dir_all(&tmp.0).unwrap();
    let path = tmp.0.join("big");
    let mut f = disk.open_append(&path).unwrap();
    f.write_back().unwrap(); // nothing written yet: nothing to do
    let mut expected = Vec::new();
    for step in 0..5u8 {
        let block = vec![step; 300_000 + usize::from(step)];
        f.append(&block).unwrap();
        expected.extend_from_slice(&block);
        f.write_back().unwrap();
        f.write_back().unwrap(); // twice in a row: nothing new to start
    }
    f.append(b"tail").unwrap();
    expected.extend_from_slice(b"tail");
    f.sync().unwrap();
    assert_eq!(f.len(), expected.len() as u64);
    assert!(disk.read(&path).unwrap() == expected, "the file as written");
    // Opened at an offset, the first write-back starts there.
    let mut g = disk.open_at(&path, 10).unwrap();
    g.append(b"x").unwrap();
    g.write_back().unwrap();
    g.sync().unwrap();
    assert_eq!(disk.read(&path).unwrap()[10], b'x');
}

/// A file of `len` bytes at `path` whose byte `i` is `i * 7 % 251`, so any lost or moved
/// range shows.
fn patterned(path: &std::path::Path, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn os_disk_remove_frees_big_files_in_steps_but_never_under_a_mapping_or_another_name() {
    let tmp = TempDir::new("remove");
    std::fs::create_dir_all(&tmp.0).unwrap();
    let disk = OsDisk::new();
    let len = (3 * keel_storage::REMOVE_STEP + 12345) as usize;

    // Unmapped, one name: removed (its blocks freed in steps, which nothing can observe but
    // the free space).
    let plain = tmp.0.join("plain");
    patterned(&plain, len);
    disk.remove(&plain).unwrap();
    assert!(!plain.exists());
    assert_eq!(
        disk.remove(&plain).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );

    // Mapped: the mapping keeps every byte after the removal (a shrunk file would fault).
    let mapped = tmp.0.join("mapped");
    let want = patterned(&mapped, len);
    let bytes = disk.read_shared(&mapped).unwrap();
    disk.remove(&mapped).unwrap();
    assert!(!mapped.exists());
    assert_eq!(bytes.len(), len);
    assert!(
        bytes[..] == want[..],
        "a mapped file was shrunk by its removal"
    );
    drop(bytes);

    // Another name: the file lives on whole under it.
    let first = tmp.0.join("first");
    let second = tmp.0.join("second");
    let want = patterned(&first, len);
    std::fs::hard_link(&first, &second).unwrap();
    disk.remove(&first).unwrap();
    assert!(!first.exists());
    assert!(
        std::fs::read(&second).unwrap() == want,
        "a linked file was shrunk"
    );

    // A file that cannot be opened for writing is still removed.
    let read_only = tmp.0.join("read-only");
    patterned(&read_only, len);
    let mut perms = std::fs::metadata(&read_only).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&read_only, perms).unwrap();
    disk.remove(&read_only).unwrap();
    assert!(!read_only.exists());
}
