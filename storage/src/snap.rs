//! Snapshot files: the state machine as of one raft index, written once, read back mapped.
//!
//! A snapshot lives in `<dir>/<term:016x>-<index:016x>.snap` (etcd's naming). It is written
//! to `<name>.tmp`, fsynced, renamed into place and the directory fsynced, so a crash leaves
//! either the whole file or none under its final name (a torn `.tmp` is removed when the
//! directory is opened). Writing streams ([`SnapDir::create`], [`SnapWriter`]): the data goes
//! to the file through a buffer of [`WRITE_BUFFER_BYTES`], the crc32 computed on the way, so a
//! save holds no whole copy of the snapshot in memory. Loading maps the file
//! ([`Disk::read_shared`]) and checks its crc32; a damaged newest snapshot is renamed to
//! `<name>.broken` (kept for inspection, never loaded again) and the one before it is tried.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! "KEELSNAP" | format u32 = 1 | index u64 | term u64 | meta_len u32 | meta | data_len u64 |
//! data | crc32 (IEEE) of everything before it, u32
//! ```
//! `meta` and `data` are opaque here: the engine puts raft's `ConfState` in `meta` and its
//! state-machine encoding in `data`. [`Loaded::data`] is a slice of the mapping, not a copy.

mod received;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::disk::{Disk, IoOp};

pub use writer::{Published, SnapWriter, Synced, WRITE_BUFFER_BYTES};

const MAGIC: &[u8; 8] = b"KEELSNAP";
const FORMAT: u32 = 1;
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";
const BROKEN_SUFFIX: &str = ".broken";
/// magic + format + index + term + meta_len.
const HEAD_BYTES: usize = 8 + 4 + 8 + 8 + 4;

/// Snapshot files kept on disk by default (`--max-snapshots`): the newest and the one before
/// it, which a damaged newest falls back to (the WAL is kept from the one before). etcd keeps
/// five; each is a whole copy of the store, so keel keeps what recovery needs.
pub const SNAPSHOTS_KEPT_DEFAULT: usize = 2;

/// Errors of the snapshot directory.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// The disk failed.
    #[error("snapshot i/o error on {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A streamed save wrote another number of data bytes than it announced.
    #[error(
        "snapshot {} announced {announced} data bytes but {written} were written",
        path.display()
    )]
    DataLength {
        /// The temporary file.
        path: PathBuf,
        /// The data length given to [`SnapDir::create`] (and written in the header).
        announced: u64,
        /// The data bytes written.
        written: u64,
    },
    /// A snapshot file is damaged or not a keel snapshot.
    #[error("snapshot {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: SnapCorruption,
    },
}

impl SnapError {
    /// Whether this is the disk (or a quota) being full (`ENOSPC`, `EDQUOT`; see
    /// [`crate::disk::is_no_space`]).
    pub fn is_no_space(&self) -> bool {
        matches!(self, SnapError::Io { source, .. } if crate::disk::is_no_space(source))
    }
}

/// What is wrong with a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapCorruption {
    /// The file does not start with the magic, or is shorter than the smallest snapshot.
    #[error("not a keel snapshot (bad magic or too short)")]
    NotASnapshot,
    /// The file ends inside a field.
    #[error("truncated")]
    Truncated,
    /// The stored crc32 does not match the bytes.
    #[error("crc32 mismatch: stored {stored:08x}, computed {computed:08x}")]
    Crc {
        /// The crc32 the file holds.
        stored: u32,
        /// The crc32 of its bytes.
        computed: u32,
    },
    /// A format version this code does not read.
    #[error("unknown snapshot format {format}")]
    UnknownFormat {
        /// The version found.
        format: u32,
    },
    /// The meta length overflows.
    #[error("bad meta length")]
    BadMetaLength,
    /// The meta runs past the end of the file.
    #[error("meta overruns the file")]
    MetaOverrun,
    /// The data length does not fit in memory.
    #[error("bad data length")]
    BadDataLength,
    /// The data does not end where the crc starts.
    #[error("data length {data_len} does not fit the file of {file_bytes} bytes")]
    DataLength {
        /// The data length field.
        data_len: u64,
        /// The file's size.
        file_bytes: u64,
    },
    /// The file holds another snapshot than its name says.
    #[error(
        "holds term {term} index {index}, but its name says term {name_term} index {name_index}"
    )]
    NameMismatch {
        /// The term the file holds.
        term: u64,
        /// The index the file holds.
        index: u64,
        /// The term in its name.
        name_term: u64,
        /// The index in its name.
        name_index: u64,
    },
}

fn io_err(op: IoOp, path: &Path) -> impl FnOnce(std::io::Error) -> SnapError + '_ {
    move |source| SnapError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A snapshot read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The raft index the snapshot covers up to.
    pub index: u64,
    /// The raft term of that index.
    pub term: u64,
    /// The opaque metadata.
    pub meta: Vec<u8>,
    /// The opaque state, shared with the file mapping.
    pub data: Bytes,
}

/// What [`SnapDir::load_newest`] found.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// The newest valid snapshot, if any.
    pub snapshot: Option<Loaded>,
    /// Damaged snapshots skipped (each renamed to `*.broken`), one line each.
    pub warnings: Vec<String>,
}

/// The directory of snapshot files.
///
/// Clones are handles on the same directory (the driver's snapshot saver and its WAL writer
/// both save into it): renaming a new file into place and pruning old ones are serialized
/// between them.
#[derive(Clone)]
pub struct SnapDir {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    keep: usize,
    /// Held while a file is published (rename, directory fsync, pruning).
    publishing: Arc<Mutex<()>>,
    /// The snapshot received from the leader that an install would put in place.
    received: Arc<Mutex<received::Received>>,
}

impl std::fmt::Debug for SnapDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapDir")
            .field("dir", &self.dir)
            .field("keep", &self.keep)
            .finish()
    }
}

/// The file name of the snapshot at (`term`, `index`).
pub fn file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}{SUFFIX}")
}

/// (term, index) of a snapshot file name, or `None` if `name` is not one.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (term, index) = stem.split_once('-')?;
    if term.len() != 16 || index.len() != 16 {
        return None;
    }
    let term = u64::from_str_radix(term, 16).ok()?;
    let index = u64::from_str_radix(index, 16).ok()?;
    Some((term, index))
}

/// The bytes of a snapshot file before its data: magic, format, index, term, meta and the
/// data length.
fn header(index: u64, term: u64, meta: &[u8], data_len: u64) -> Vec<u8> {
    let meta_len = u32::try_from(meta.len()).unwrap_or_else(|_| panic!("snapshot meta over 4 GiB"));
    let mut out = Vec::with_capacity(HEAD_BYTES + meta.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(&data_len.to_le_bytes());
    out
}

/// Encodes a snapshot file's bytes.
pub fn encode(index: u64, term: u64, meta: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = header(index, term, meta, data.len() as u64);
    out.reserve(data.len() + 4);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Decodes a snapshot file's bytes; `data` in the result is a slice of `file`.
pub fn decode(file: &Bytes) -> Result<Loaded, SnapCorruption> {
    use SnapCorruption::Truncated;
    if file.len() < HEAD_BYTES + 8 + 4 || &file[..8] != MAGIC {
        return Err(SnapCorruption::NotASnapshot);
    }
    let body_len = file.len() - 4;
    let stored = u32_at(file, body_len).ok_or(Truncated)?;
    let computed = crc32fast::hash(&file[..body_len]);
    if stored != computed {
        return Err(SnapCorruption::Crc { stored, computed });
    }
    let format = u32_at(file, 8).ok_or(Truncated)?;
    if format != FORMAT {
        return Err(SnapCorruption::UnknownFormat { format });
    }
    let index = u64_at(file, 12).ok_or(Truncated)?;
    let term = u64_at(file, 20).ok_or(Truncated)?;
    let meta_len = u32_at(file, 28).ok_or(Truncated)? as usize;
    let meta_end = HEAD_BYTES
        .checked_add(meta_len)
        .ok_or(SnapCorruption::BadMetaLength)?;
    let meta = file
        .get(HEAD_BYTES..meta_end)
        .ok_or(SnapCorruption::MetaOverrun)?;
    let data_len = u64_at(file, meta_end).ok_or(Truncated)?;
    let data_start = meta_end + 8;
    let data_end = usize::try_from(data_len)
        .ok()
        .and_then(|l| data_start.checked_add(l))
        .ok_or(SnapCorruption::BadDataLength)?;
    if data_end != body_len {
        return Err(SnapCorruption::DataLength {
            data_len,
            file_bytes: file.len() as u64,
        });
    }
    Ok(Loaded {
        index,
        term,
        meta: meta.to_vec(),
        data: file.slice(data_start..data_end),
    })
}

impl SnapDir {
    /// Opens (creating if needed) the snapshot directory `dir`, keeping the newest `keep`
    /// snapshots when new ones are saved. Leftover temporary files of an interrupted save are
    /// removed.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, keep: usize) -> Result<SnapDir, SnapError> {
        assert!(keep >= 1, "must keep at least one snapshot");
        disk.create_dir_all(dir)
            .map_err(io_err(IoOp::CreateDir, dir))?;
        let snaps = SnapDir {
            disk,
            dir: dir.to_path_buf(),
            keep,
            publishing: Arc::default(),
            received: Arc::default(),
        };
        let names = snaps
            .disk
            .list_dir(dir)
            .map_err(io_err(IoOp::ListDir, dir))?;
        let mut removed = false;
        for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
            let path = dir.join(name);
            snaps
                .disk
                .remove(&path)
                .map_err(io_err(IoOp::Remove, &path))?;
            removed = true;
        }
        if removed {
            snaps
                .disk
                .sync_dir(dir)
                .map_err(io_err(IoOp::SyncDir, dir))?;
        }
        Ok(snaps)
    }

    /// The bytes of the snapshot files in the directory (what Status counts in `dbSize`
    /// besides the WAL): one length lookup per file, of which there are `keep` or so.
    pub fn disk_bytes(&self) -> Result<u64, SnapError> {
        let mut total: u64 = 0;
        for (term, index) in self.list()? {
            let path = self.dir.join(file_name(term, index));
            total += self
                .disk
                .file_len(&path)
                .map_err(io_err(IoOp::Read, &path))?;
        }
        Ok(total)
    }

    /// (term, index) of every snapshot file, oldest (lowest index) first.
    pub fn list(&self) -> Result<Vec<(u64, u64)>, SnapError> {
        let names = self
            .disk
            .list_dir(&self.dir)
            .map_err(io_err(IoOp::ListDir, &self.dir))?;
        let mut found: Vec<(u64, u64)> = names.iter().filter_map(|n| parse_name(n)).collect();
        found.sort_by_key(|&(term, index)| (index, term));
        Ok(found)
    }

    /// Writes a snapshot durably (temp file, fsync, rename, directory fsync), then removes the
    /// oldest files beyond the number kept. Returns the new file's path.
    pub fn save(
        &self,
        index: u64,
        term: u64,
        meta: &[u8],
        data: &[u8],
    ) -> Result<PathBuf, SnapError> {
        let write = |out: &mut dyn std::io::Write| out.write_all(data);
        let published = self.save_streaming(index, term, meta, data.len() as u64, write)?;
        Ok(published.path)
    }

    /// Like [`SnapDir::save`], the data written by `write` (exactly `data_len` bytes) as it
    /// produces it, through a buffer of [`WRITE_BUFFER_BYTES`]. On failure the temporary file
    /// is removed (if the disk lets it) and no snapshot was added.
    pub fn save_streaming(
        &self,
        index: u64,
        term: u64,
        meta: &[u8],
        data_len: u64,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<Published, SnapError> {
        let saved = self
            .create(index, term, meta, data_len)
            .and_then(|mut out| {
                let tmp = out.tmp_path().to_path_buf();
                write(&mut out).map_err(io_err(IoOp::Append, &tmp))?;
                out.finish()
            })
            .and_then(|synced| self.publish(synced));
        if saved.is_err() {
            if let Err(e) = self.remove_tmp(index, term) {
                tracing::warn!(index, error = %e, "could not remove a failed snapshot's temp file");
            }
        }
        saved
    }

    /// Starts writing the snapshot at (`index`, `term`) to its temporary file: the header now
    /// (buffered), then `data_len` bytes of data through the [`SnapWriter`], then
    /// [`SnapWriter::finish`] and [`SnapDir::publish`]. A leftover temporary file of the same
    /// snapshot is emptied first.
    pub fn create(
        &self,
        index: u64,
        term: u64,
        meta: &[u8],
        data_len: u64,
    ) -> Result<SnapWriter, SnapError> {
        let name = file_name(term, index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut file = self
            .disk
            .open_append(&tmp)
            .map_err(io_err(IoOp::Open, &tmp))?;
        if !file.is_empty() {
            drop(file);
            self.disk
                .truncate(&tmp, 0)
                .map_err(io_err(IoOp::Truncate, &tmp))?;
            file = self
                .disk
                .open_append(&tmp)
                .map_err(io_err(IoOp::Open, &tmp))?;
        }
        let head = header(index, term, meta, data_len);
        Ok(SnapWriter::new(file, tmp, path, head, data_len))
    }

    /// Puts a written and synced snapshot in place: renames it to its final name, fsyncs the
    /// directory, then removes the oldest files beyond the number kept.
    pub fn publish(&self, synced: Synced) -> Result<Published, SnapError> {
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tmp, path) = synced.into_paths();
        self.disk
            .rename(&tmp, &path)
            .map_err(io_err(IoOp::Rename, &path))?;
        self.disk
            .sync_dir(&self.dir)
            .map_err(io_err(IoOp::SyncDir, &self.dir))?;
        self.prune()?;
        let kept = self.list()?;
        Ok(Published {
            path,
            fallback_index: kept.iter().rev().nth(1).map(|&(_, index)| index),
        })
    }

    /// Removes the temporary file of the snapshot at (`index`, `term`), if there is one (after
    /// a failed save; a crash's leftovers go when the directory is opened).
    pub fn remove_tmp(&self, index: u64, term: u64) -> Result<(), SnapError> {
        let tmp = self.dir.join(format!("{}.tmp", file_name(term, index)));
        match self.disk.remove(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SnapError::Io {
                op: IoOp::Remove,
                path: tmp,
                source,
            }),
        }
    }

    /// Removes the oldest snapshot files beyond the number kept.
    fn prune(&self) -> Result<(), SnapError> {
        let found = self.list()?;
        if found.len() <= self.keep {
            return Ok(());
        }
        for &(term, index) in &found[..found.len() - self.keep] {
            let path = self.dir.join(file_name(term, index));
            self.disk
                .remove(&path)
                .map_err(io_err(IoOp::Remove, &path))?;
        }
        self.disk
            .sync_dir(&self.dir)
            .map_err(io_err(IoOp::SyncDir, &self.dir))
    }

    /// Reads back the state of the snapshot file at `path` (mapped, checksum verified).
    pub fn read_data(&self, path: &Path) -> Result<Bytes, SnapError> {
        let file = self
            .disk
            .read_shared(path)
            .map_err(io_err(IoOp::Read, path))?;
        let data =
            decode(&file)
                .map(|loaded| loaded.data)
                .map_err(|reason| SnapError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                })?;
        // The crc check read every page; raft reads them again only to send the snapshot.
        self.disk.evict(&file);
        Ok(data)
    }

    /// Loads the newest snapshot whose checksum holds. A damaged one is renamed to `*.broken`
    /// and reported in the warnings, and the next older one is tried.
    pub fn load_newest(&self) -> Result<LoadOutcome, SnapError> {
        let mut outcome = LoadOutcome::default();
        for (term, index) in self.list()?.into_iter().rev() {
            let path = self.dir.join(file_name(term, index));
            let file = self
                .disk
                .read_shared(&path)
                .map_err(io_err(IoOp::Read, &path))?;
            let reason = match decode(&file) {
                Ok(loaded) if loaded.index == index && loaded.term == term => {
                    outcome.snapshot = Some(loaded);
                    return Ok(outcome);
                }
                Ok(loaded) => SnapCorruption::NameMismatch {
                    term: loaded.term,
                    index: loaded.index,
                    name_term: term,
                    name_index: index,
                },
                Err(reason) => reason,
            };
            let broken = self
                .dir
                .join(format!("{}{BROKEN_SUFFIX}", file_name(term, index)));
            self.disk
                .rename(&path, &broken)
                .map_err(io_err(IoOp::Rename, &path))?;
            self.disk
                .sync_dir(&self.dir)
                .map_err(io_err(IoOp::SyncDir, &self.dir))?;
            let warning = format!(
                "snapshot {} is corrupt ({reason}); moved it to {} and tried the previous one",
                path.display(),
                broken.display()
            );
            tracing::warn!("{warning}");
            outcome.warnings.push(warning);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimDisk;

    fn dir() -> PathBuf {
        PathBuf::from("/data/member/snap")
    }

    #[test]
    fn save_load_round_trip_and_pruning() {
        let disk = Arc::new(SimDisk::new());
        let snaps = SnapDir::open(disk.clone(), &dir(), 2).expect("open");
        assert!(snaps.load_newest().expect("load").snapshot.is_none());
        for i in 1..=4u64 {
            snaps
                .save(i * 10, 2, b"meta", format!("state {i}").as_bytes())
                .expect("save");
        }
        assert_eq!(snaps.list().expect("list"), vec![(2, 30), (2, 40)]);
        let loaded = snaps.load_newest().expect("load").snapshot.expect("one");
        assert_eq!((loaded.index, loaded.term), (40, 2));
        assert_eq!(loaded.meta, b"meta");
        assert_eq!(&loaded.data[..], b"state 4");
        // Survives a crash: everything was synced.
        disk.crash(7);
        let snaps = SnapDir::open(disk, &dir(), 2).expect("reopen");
        let loaded = snaps.load_newest().expect("load").snapshot.expect("one");
        assert_eq!(loaded.index, 40);
    }

    #[test]
    fn a_corrupt_newest_snapshot_falls_back_to_the_previous() {
        let disk = Arc::new(SimDisk::new());
        let snaps = SnapDir::open(disk.clone(), &dir(), 5).expect("open");
        snaps.save(10, 1, b"", b"older").expect("save");
        let newest = snaps.save(20, 1, b"", b"newer").expect("save");
        disk.flip_bit(&newest, 40, 3).expect("flip");
        let outcome = snaps.load_newest().expect("load");
        let loaded = outcome.snapshot.expect("falls back");
        assert_eq!((loaded.index, &loaded.data[..]), (10, &b"older"[..]));
        assert_eq!(outcome.warnings.len(), 1);
        assert!(
            outcome.warnings[0].contains("crc32 mismatch"),
            "{:?}",
            outcome.warnings
        );
        // The broken file is set aside and never loaded again.
        assert_eq!(snaps.list().expect("list"), vec![(1, 10)]);
        let names = disk.list_dir(&dir()).expect("ls");
        assert!(
            names.iter().any(|n| n.ends_with(".snap.broken")),
            "{names:?}"
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let file = Bytes::from(encode(5, 3, b"conf", b"some state bytes"));
        assert!(decode(&file).is_ok());
        assert_eq!(decode(&file.slice(..10)), Err(SnapCorruption::NotASnapshot));
        let mut flipped = file.to_vec();
        flipped[HEAD_BYTES] ^= 1;
        assert!(matches!(
            decode(&Bytes::from(flipped)),
            Err(SnapCorruption::Crc { stored, computed }) if stored != computed
        ));
        for len in 0..file.len() {
            assert!(decode(&file.slice(..len)).is_err(), "truncated to {len}");
        }
        for byte in 0..file.len() {
            let mut bad = file.to_vec();
            bad[byte] ^= 0x10;
            assert!(decode(&Bytes::from(bad)).is_err(), "flip in byte {byte}");
        }
    }

    #[test]
    fn an_interrupted_save_leaves_no_file() {
        let disk = Arc::new(SimDisk::new());
        let snaps = SnapDir::open(disk.clone(), &dir(), 5).expect("open");
        snaps.save(10, 1, b"", b"kept").expect("save");
        disk.fail_next_sync();
        assert!(snaps.save(20, 1, b"", b"lost").is_err());
        disk.crash(1);
        let snaps = SnapDir::open(disk.clone(), &dir(), 5).expect("reopen");
        assert_eq!(snaps.list().expect("list"), vec![(1, 10)]);
        let names = disk.list_dir(&dir()).expect("ls");
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_streamed_save_writes_the_same_file_as_encode() {
        let disk = Arc::new(SimDisk::new());
        let snaps = SnapDir::open(disk.clone(), &dir(), 2).expect("open");
        // Three buffers' worth and a bit, written in odd-sized pieces.
        let data: Vec<u8> = (0..3 * WRITE_BUFFER_BYTES + 1234)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let write = |out: &mut dyn std::io::Write| {
            for piece in data.chunks(100_003) {
                out.write_all(piece)?;
            }
            Ok(())
        };
        let published = snaps
            .save_streaming(9, 2, b"conf", data.len() as u64, write)
            .expect("save");
        assert_eq!(published.fallback_index, None);
        let file = disk.read(&published.path).expect("read");
        assert_eq!(file, encode(9, 2, b"conf", &data), "same format as encode");
        let second = snaps.save(12, 2, b"", b"x").expect("save");
        assert_eq!(snaps.read_data(&second).expect("read"), &b"x"[..]);
        let third = snaps
            .save_streaming(15, 2, b"", 1, |out| out.write_all(b"y"))
            .expect("save");
        assert_eq!(third.fallback_index, Some(12), "the second newest kept");
    }

    #[test]
    fn a_streamed_save_of_another_length_than_announced_fails_and_leaves_nothing() {
        let disk = Arc::new(SimDisk::new());
        let snaps = SnapDir::open(disk.clone(), &dir(), 2).expect("open");
        let short = snaps.save_streaming(5, 1, b"", 10, |out| out.write_all(b"only 9 b"));
        assert!(
            matches!(
                short,
                Err(SnapError::DataLength {
                    announced: 10,
                    written: 8,
                    ..
                })
            ),
            "{short:?}"
        );
        let long = snaps.save_streaming(5, 1, b"", 3, |out| out.write_all(b"four"));
        assert!(matches!(long, Err(SnapError::Io { .. })), "{long:?}");
        assert!(snaps.list().expect("list").is_empty());
        assert!(
            disk.list_dir(&dir()).expect("ls").is_empty(),
            "no temp file left"
        );
    }

    #[test]
    fn a_failed_save_removes_its_temp_file_and_a_retry_succeeds() {
        let disk = Arc::new(SimDisk::new());
        let snaps = SnapDir::open(disk.clone(), &dir(), 2).expect("open");
        disk.fail_next_write();
        assert!(snaps.save(20, 1, b"", b"state").is_err());
        assert!(
            disk.list_dir(&dir()).expect("ls").is_empty(),
            "temp file removed"
        );
        disk.fail_next_sync();
        assert!(snaps.save(20, 1, b"", b"state").is_err());
        assert!(
            disk.list_dir(&dir()).expect("ls").is_empty(),
            "temp file removed"
        );
        snaps
            .save(20, 1, b"", b"state")
            .expect("the retry succeeds");
        disk.crash(3);
        let snaps = SnapDir::open(disk, &dir(), 2).expect("reopen");
        let loaded = snaps.load_newest().expect("load").snapshot.expect("one");
        assert_eq!((loaded.index, &loaded.data[..]), (20, &b"state"[..]));
    }

    #[test]
    fn a_crash_while_streaming_leaves_only_the_previous_snapshot() {
        for seed in 0..16 {
            let disk = Arc::new(SimDisk::new());
            let snaps = SnapDir::open(disk.clone(), &dir(), 2).expect("open");
            snaps.save(10, 1, b"", b"kept").expect("save");
            let data = vec![7u8; 2 * WRITE_BUFFER_BYTES];
            let mut out = snaps.create(20, 1, b"", data.len() as u64).expect("create");
            std::io::Write::write_all(&mut out, &data).expect("write");
            std::io::Write::flush(&mut out).expect("flush");
            if seed % 2 == 0 {
                // Another save made the temp file's name durable (its bytes are not).
                disk.sync_dir(&dir()).expect("sync dir");
            }
            // Power fails before the fsync: the temp file is torn, or gone.
            disk.crash(seed);
            let snaps = SnapDir::open(disk.clone(), &dir(), 2).expect("reopen");
            let names = disk.list_dir(&dir()).expect("ls");
            assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
            let loaded = snaps.load_newest().expect("load").snapshot.expect("one");
            assert_eq!(loaded.index, 10, "seed {seed}");
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(3, 0x1234)), Some((3, 0x1234)));
        assert_eq!(
            parse_name("0000000000000003-0000000000001234.snap.broken"),
            None
        );
        assert_eq!(parse_name("x.snap"), None);
    }
}
