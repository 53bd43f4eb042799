//! Writing a batch, starting segments, and keeping the next segment preallocated.
//!
//! Space is asked of the disk only when a segment file is preallocated: the first segment of a
//! new WAL, the reserve made once the active segment is half full ([`Wal::try_reserve`]), or a
//! segment made at rotation when no reserve exists. Writing records into a preallocated segment
//! needs none. So when the disk fills up, the reserve fails first, with half a segment left for
//! the writes that raise and record the alarm.

use std::path::Path;

use super::record::encode_segment_prefix;
use super::segment::{install_reserve, make_reserve, Reserve, Segment};
use super::{io_err, LogPos, Wal, WalError, WalOptions, BUF_RETAIN_BYTES_MAX};
use crate::disk::{Disk, DiskFile, IoOp};

/// Zero bytes a preallocated segment keeps after its last record. An append cut short (a
/// short write, a process killed mid-write) leaves a record prefix followed by the file's
/// zeros; recovery tells that from a damaged record by the zeros running past the record's end
/// (rule 2 of the module docs), which needs the file to extend past every record.
const ZERO_TAIL_BYTES_MIN: u64 = 1;

/// The next segment, ready to be installed: its file, its name and its first records.
struct Rotation {
    reserve: Reserve,
    seg: Segment,
    prefix: Vec<u8>,
}

impl Wal {
    /// Makes everything buffered durable: one write and one fdatasync (plus a directory sync
    /// when a new segment is started). A no-op if nothing is buffered.
    ///
    /// Any failure poisons, except one: when the batch needs a new segment, no preallocated one
    /// is waiting, and the disk has no room for one, `sync` fails with an error whose
    /// [`WalError::is_no_space`] holds, having written nothing; the batch stays buffered and
    /// the `Wal` usable (retry after freeing space).
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        // A batch must end before the file does (see `ZERO_TAIL_BYTES_MIN`).
        let room = self.opts.segment_bytes_max.max(self.active_file_bytes);
        let next = if self.active.len() + self.buf.len() as u64 + ZERO_TAIL_BYTES_MIN > room {
            match self.prepare_rotation() {
                Ok(r) => Some(r),
                Err(e) => return Err(self.failed(e)),
            }
        } else {
            None
        };
        if let Err(e) = self.write_batch(next) {
            self.poisoned = true;
            tracing::error!(dir = %self.dir.display(), error = %e, "wal write failed; poisoned");
            return Err(e);
        }
        self.synced_pos = self.pos;
        if let Some(hs) = self.hard_state_buffered.take() {
            self.hard_state_synced = Some(hs);
        }
        self.buf.clear();
        if self.buf.capacity() > BUF_RETAIN_BYTES_MAX {
            self.buf = Vec::new();
        }
        self.reserve_ahead()
    }

    /// Preallocates the next segment now, unless it already is. A `Wal` does this by itself
    /// once the active segment is half full; call it to retry after [`Wal::is_out_of_space`].
    ///
    /// Fails with an error whose [`WalError::is_no_space`] holds if the disk is still full (the
    /// `Wal` stays usable); any other failure poisons.
    pub fn try_reserve(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if self.reserve.is_none() {
            let len = self.opts.segment_bytes_max;
            match make_reserve(self.disk.as_ref(), &self.dir, len) {
                Ok(r) => self.reserve = Some(r),
                Err(e) => return Err(self.failed(e)),
            }
        }
        self.out_of_space = false;
        Ok(())
    }

    /// Reserves the next segment once the active one is half full, unless an earlier attempt
    /// found the disk full (then the owner retries, see [`Wal::try_reserve`]).
    fn reserve_ahead(&mut self) -> Result<(), WalError> {
        let room = self.opts.segment_bytes_max.max(self.active_file_bytes);
        if self.reserve.is_some() || self.out_of_space || self.active.len() < room / 2 {
            return Ok(());
        }
        match self.try_reserve() {
            Err(e) if !e.is_no_space() => Err(e),
            _ => Ok(()),
        }
    }

    /// Records a failure to get a segment: a full disk sets [`Wal::is_out_of_space`], anything
    /// else poisons. Returns the error.
    fn failed(&mut self, e: WalError) -> WalError {
        if e.is_no_space() {
            if !self.out_of_space {
                tracing::warn!(dir = %self.dir.display(), error = %e, "wal: no space for the next segment");
            }
            self.out_of_space = true;
        } else {
            self.poisoned = true;
            tracing::error!(dir = %self.dir.display(), error = %e, "wal: preallocation failed; poisoned");
        }
        e
    }

    /// The next segment for the buffered batch: the reserve (grown if the batch needs more
    /// room), or a new preallocated file. Writes nothing the log depends on.
    fn prepare_rotation(&mut self) -> Result<Rotation, WalError> {
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        let seg = Segment::new(&self.dir, seq, self.synced_pos.last_index.saturating_add(1));
        let mut prefix = Vec::new();
        let hs = self.hard_state_synced.as_deref();
        encode_segment_prefix(&mut prefix, &seg, self.synced_pos, hs);
        let need = (prefix.len() + self.buf.len()) as u64 + ZERO_TAIL_BYTES_MIN;
        let mut reserve = match self.reserve.take() {
            Some(r) => r,
            None => {
                let len = need.max(self.opts.segment_bytes_max);
                let made = make_reserve(self.disk.as_ref(), &self.dir, len)?;
                self.out_of_space = false;
                made
            }
        };
        if reserve.allocated < need {
            let path = seg.path.clone();
            if let Err(e) = reserve.file.allocate(need) {
                self.reserve = Some(reserve);
                return Err(io_err(IoOp::Allocate, &path)(e));
            }
            reserve.allocated = need;
        }
        Ok(Rotation {
            reserve,
            seg,
            prefix,
        })
    }

    fn write_batch(&mut self, next: Option<Rotation>) -> Result<(), WalError> {
        let rotated = next.is_some();
        if let Some(r) = next {
            self.rotate(r)?;
        }
        if let Err(e) = self.active.append(&self.buf) {
            return Err(io_err(IoOp::Append, self.active_path())(e));
        }
        if let Err(e) = self.active.sync() {
            return Err(io_err(IoOp::Sync, self.active_path())(e));
        }
        if rotated {
            self.disk
                .sync_dir(&self.dir)
                .map_err(io_err(IoOp::SyncDir, &self.dir))?;
        }
        Ok(())
    }

    /// Starts the next segment; its prefix is written but not synced (the batch sync is).
    fn rotate(&mut self, r: Rotation) -> Result<(), WalError> {
        let Rotation {
            mut reserve,
            seg,
            prefix,
        } = r;
        install_reserve(self.disk.as_ref(), &self.dir, &mut reserve, &seg, &prefix)?;
        if let Some(sealed) = self.segments.last_mut() {
            sealed.sealed_bytes = self.active.len();
        }
        self.segments.push(seg);
        self.active = reserve.file;
        self.active_file_bytes = reserve.allocated;
        Ok(())
    }
}

/// Creates the first segment of a WAL (from `reserve` if an earlier run left one): preallocated,
/// its prefix written and synced, the directory synced. Returns the file and its length.
pub(super) fn create_first_segment(
    disk: &dyn Disk,
    dir: &Path,
    opts: &WalOptions,
    seg: &Segment,
    reserve: Option<Reserve>,
    pos: LogPos,
    hs: Option<&[u8]>,
) -> Result<(Box<dyn DiskFile>, u64), WalError> {
    let mut prefix = Vec::new();
    encode_segment_prefix(&mut prefix, seg, pos, hs);
    let need = prefix.len() as u64 + ZERO_TAIL_BYTES_MIN;
    let mut reserve = match reserve {
        Some(r) => r,
        None => make_reserve(disk, dir, opts.segment_bytes_max.max(need))?,
    };
    if reserve.allocated < need {
        reserve
            .file
            .allocate(need)
            .map_err(io_err(IoOp::Allocate, &seg.path))?;
        reserve.allocated = need;
    }
    install_reserve(disk, dir, &mut reserve, seg, &prefix)?;
    reserve.file.sync().map_err(io_err(IoOp::Sync, &seg.path))?;
    disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
    Ok((reserve.file, reserve.allocated))
}
