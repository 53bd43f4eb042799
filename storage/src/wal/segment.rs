//! Segment files: their names, the preallocated reserve that becomes the next segment, and the
//! repairs recovery makes to the last one.
//!
//! The reserve is a file named [`RESERVE_NAME`], preallocated (`posix_fallocate`) to a whole
//! segment of zeros and made durable before it is needed, as etcd's file pipeline does. Starting
//! a segment then writes its prefix into the reserve and renames it; no space is asked of the
//! disk at that moment, so a full disk shows up when the reserve is made, ahead of need, while
//! the active segment still has room.

use std::path::{Path, PathBuf};

use super::error::WalError;
use super::io_err;
use super::record::all_zero;
use crate::disk::{Disk, DiskFile, IoOp};

/// The name of the preallocated file that becomes the next segment.
pub(super) const RESERVE_NAME: &str = "next-segment.wal.tmp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) seq: u64,
    pub(super) first_index: u64,
    pub(super) path: PathBuf,
    /// The length of its records once sealed (the active segment's is `Wal::active.len()`).
    pub(super) sealed_bytes: u64,
}

impl Segment {
    pub(super) fn new(dir: &Path, seq: u64, first_index: u64) -> Segment {
        let path = dir.join(segment_name(seq, first_index));
        Segment {
            seq,
            first_index,
            path,
            sealed_bytes: 0,
        }
    }
}

pub(super) fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parses a segment file name; `None` if `name` is not one we would have written.
pub(super) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    let seq = u64::from_str_radix(seq, 16).ok()?;
    let first = u64::from_str_radix(first, 16).ok()?;
    (segment_name(seq, first) == name).then_some((seq, first))
}

/// A file preallocated to `allocated` bytes of zeros and durable under [`RESERVE_NAME`]: the
/// next segment, waiting. Its handle writes at offset 0.
pub(super) struct Reserve {
    pub(super) file: Box<dyn DiskFile>,
    pub(super) allocated: u64,
}

/// Makes the reserve: creates the file, preallocates `len` bytes, fdatasyncs it and syncs the
/// directory. If the disk is full, the file is removed again (best effort), so that a failed
/// attempt holds no space.
pub(super) fn make_reserve(disk: &dyn Disk, dir: &Path, len: u64) -> Result<Reserve, WalError> {
    let path = dir.join(RESERVE_NAME);
    let made = (|| -> Result<Reserve, WalError> {
        let mut file = disk.open_append(&path).map_err(io_err(IoOp::Open, &path))?;
        if !file.is_empty() {
            drop(file);
            disk.truncate(&path, 0)
                .map_err(io_err(IoOp::Truncate, &path))?;
            file = disk.open_append(&path).map_err(io_err(IoOp::Open, &path))?;
        }
        file.allocate(len).map_err(io_err(IoOp::Allocate, &path))?;
        file.sync().map_err(io_err(IoOp::Sync, &path))?;
        disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
        Ok(Reserve {
            file,
            allocated: len,
        })
    })();
    match &made {
        Ok(_) => {
            tracing::info!(file = %path.display(), bytes = len, "wal: next segment preallocated")
        }
        Err(e) if e.is_no_space() => {
            // Nothing durable depends on the half-made file; failing to remove it only leaves
            // it to the next attempt (which empties it) or the next open (which removes it).
            let _ = disk.remove(&path).and_then(|()| disk.sync_dir(dir));
        }
        Err(_) => {}
    }
    made
}

/// Takes over a reserve an earlier run left, if it is whole (at least `len` bytes, all zeros);
/// removes it otherwise (a crash cut its preallocation short, or it was being renamed into the
/// next segment and holds that segment's first records, which were never acknowledged).
pub(super) fn adopt_reserve(
    disk: &dyn Disk,
    dir: &Path,
    len: u64,
) -> Result<Option<Reserve>, WalError> {
    let path = dir.join(RESERVE_NAME);
    // Mapped (see `replay::recover`), and dropped before the file is opened for writing.
    let bytes = disk.read_shared(&path).map_err(io_err(IoOp::Read, &path))?;
    let (whole, allocated) = (bytes.len() as u64 >= len && all_zero(&bytes), bytes.len());
    drop(bytes);
    if whole {
        let file = disk.open_at(&path, 0).map_err(io_err(IoOp::Open, &path))?;
        return Ok(Some(Reserve {
            file,
            allocated: allocated as u64,
        }));
    }
    tracing::info!(file = %path.display(), bytes = allocated, "wal: removing an unfinished reserve");
    disk.remove(&path).map_err(io_err(IoOp::Remove, &path))?;
    disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
    Ok(None)
}

/// Turns the reserve into segment `seg`: writes `prefix` at its start and renames it. Nothing
/// is synced here: the caller syncs the file, then the directory.
pub(super) fn install_reserve(
    disk: &dyn Disk,
    dir: &Path,
    reserve: &mut Reserve,
    seg: &Segment,
    prefix: &[u8],
) -> Result<(), WalError> {
    debug_assert_eq!(reserve.file.len(), 0, "a reserve is written from its start");
    reserve
        .file
        .append(prefix)
        .map_err(io_err(IoOp::Append, &seg.path))?;
    disk.rename(&dir.join(RESERVE_NAME), &seg.path)
        .map_err(io_err(IoOp::Rename, &seg.path))?;
    tracing::info!(segment = %seg.path.display(), "wal: new segment");
    Ok(())
}

/// Opens the last segment for writing after its last record (at `valid`), after making what
/// recovery read from it durable.
pub(super) fn reopen_last_segment(
    disk: &dyn Disk,
    dir: &Path,
    last: &Segment,
    valid: u64,
) -> Result<Box<dyn DiskFile>, WalError> {
    let mut active = disk
        .open_at(&last.path, valid)
        .map_err(io_err(IoOp::Open, &last.path))?;
    // What we recovered may sit in the page cache only (the process died between write and
    // fsync): make it durable before anyone acts on it.
    active.sync().map_err(io_err(IoOp::Sync, &last.path))?;
    disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
    Ok(active)
}

/// Repairs a torn tail: zeros `valid..dirty_end` in place (keeping the preallocated length, and
/// needing no new space), or removes the segment if not even its header is whole.
pub(super) fn repair_torn_tail(
    disk: &dyn Disk,
    dir: &Path,
    seg: &Segment,
    valid: usize,
    dirty_end: usize,
) -> Result<String, WalError> {
    let file = seg.path.display();
    let warning = if valid == 0 {
        disk.remove(&seg.path)
            .map_err(io_err(IoOp::Remove, &seg.path))?;
        disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
        if dirty_end == 0 {
            format!("wal: segment {file} preallocated but never written: removed it")
        } else {
            format!("wal: torn segment header in {file} ({dirty_end} bytes): removed the segment")
        }
    } else {
        let mut f = disk
            .open_at(&seg.path, valid as u64)
            .map_err(io_err(IoOp::Open, &seg.path))?;
        f.append(&vec![0; dirty_end - valid])
            .map_err(io_err(IoOp::Append, &seg.path))?;
        f.sync().map_err(io_err(IoOp::Sync, &seg.path))?;
        format!(
            "wal: torn write in {file} at offset {valid}: zeroed {} bytes",
            dirty_end - valid
        )
    };
    tracing::warn!(file = %file, offset = valid, dropped_bytes = dirty_end - valid, "{warning}");
    Ok(warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(
            segment_name(1, 0x2a),
            "0000000000000001-000000000000002a.wal"
        );
        assert_eq!(
            parse_segment_name("0000000000000001-000000000000002a.wal"),
            Some((1, 42))
        );
        assert_eq!(
            parse_segment_name("0000000000000001-000000000000002A.wal"),
            None
        );
        assert_eq!(parse_segment_name("1-2.wal"), None);
        assert_eq!(
            parse_segment_name("0000000000000001-000000000000002a.tmp"),
            None
        );
        assert_eq!(parse_segment_name(RESERVE_NAME), None);
    }
}
