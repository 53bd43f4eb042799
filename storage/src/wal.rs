//! The write-ahead log: raft entries and hard state, crc32-checked, group-committed.
//!
//! # Usage
//!
//! ```
//! # use std::{path::Path, sync::Arc};
//! # use keel_storage::{Disk, SimDisk, Wal, WalOptions};
//! let disk: Arc<dyn Disk> = Arc::new(SimDisk::new());
//! let (mut wal, recovered) = Wal::open(disk.clone(), Path::new("/wal"), WalOptions::default())?;
//! assert!(recovered.entries.is_empty());
//! wal.append_entry(1, 1, b"put a")?;      // buffered
//! wal.append_entry(2, 1, b"put b")?;      // buffered
//! wal.append_hard_state(b"term=1,commit=2")?;
//! wal.sync()?;                            // one write, one fdatasync: now durable
//! drop(wal);
//! let (_wal, recovered) = Wal::open(disk, Path::new("/wal"), WalOptions::default())?;
//! assert_eq!(recovered.entries.len(), 2);
//! assert_eq!(recovered.hard_state.as_deref(), Some(&b"term=1,commit=2"[..]));
//! # Ok::<(), keel_storage::WalError>(())
//! ```
//!
//! # Log semantics
//!
//! Replaying the records in order rebuilds the log:
//! * `Entry { index: i, .. }` with `i <= last_index` replaces every entry `>= i` (a new leader
//!   overwrote an uncommitted suffix); `i == last_index + 1` extends the log; a gap is an error.
//!   The recovered entries are therefore contiguous.
//! * `HardState(bytes)`: the last one wins.
//! * `Snapshot { index, term }`: the log was replaced by a snapshot (a follower installed one):
//!   every entry is dropped and the next entry must be `index + 1`.
//!
//! A node that compacts its own log after taking a snapshot writes no record; it calls
//! [`Wal::release_before`], which removes whole segments whose entries all lie below an index.
//! Entries at or below the caller's snapshot may still be recovered (from a segment straddling
//! it); the caller skips them. To keep every segment self-sufficient, a new segment starts with
//! the snapshot mark (in its header) and the last hard state, both restated.
//!
//! # On-disk format
//!
//! A WAL is a directory of segment files named `{seq:016x}-{first_index:016x}.wal`: `seq`
//! counts segments from 0 without gaps; `first_index` is the index the next entry appended
//! was expected to have when the segment was created (`last_index + 1`). Other file names are
//! ignored, except `next-segment.wal.tmp`, the preallocated *reserve* (see Writing). A segment
//! file is preallocated (at least `segment_bytes_max` bytes, all zeros, blocks reserved) and
//! holds a sequence of records from its start; the zeros after the last record are the end of
//! the log (type 0 does not exist). Every integer is little-endian:
//!
//! ```text
//! record  = len:u32  crc:u32  type:u8  payload[len]     crc = crc32 (IEEE) of type ++ payload
//! type 1  SegmentHeader  payload = version:u32 (=1)  seq:u64  first_index:u64
//!                                  snapshot_index:u64  snapshot_term:u64   (0, 0 = none)
//! type 2  HardState      payload = opaque bytes (raft's HardState encoding)
//! type 3  Entry          payload = index:u64  term:u64  data (opaque encoded raft entry)
//! type 4  Snapshot       payload = index:u64  term:u64
//! ```
//!
//! A segment's first record, and only its first, is its `SegmentHeader`; its `seq` and
//! `first_index` must match the file name, and (except in the oldest segment present) its
//! `first_index` and snapshot must match the log rebuilt from the previous segments. That check
//! catches a non-last segment that lost records at its end. A record's payload is at most
//! [`RECORD_PAYLOAD_BYTES_MAX`] (64 MiB), checked when reading, so a garbage length cannot
//! allocate or scan gigabytes.
//!
//! Worked example: segment `0000000000000000-0000000000000001.wal` holding hard state
//! `08 01` and entry 1 (term 1, data `"hi"`):
//!
//! ```text
//! 24 00 00 00  c9 d9 74 b0  01  01 00 00 00  00.. (seq 0)  01 00.. (first_index 1)  00.. 00..
//! └ len 36 ┘   └── crc ──┘  hdr version 1     8 bytes       8 bytes                 no snapshot
//! 02 00 00 00  e2 b7 1b 43  02  08 01
//! └ len 2  ┘   └── crc ──┘  hs  payload
//! 12 00 00 00  4a aa 84 e0  03  01 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  68 69
//! └ len 18 ┘   └── crc ──┘  ent └──── index 1 ───────┘  └───── term 1 ────────┘   "hi"
//! ```
//!
//! # Writing
//!
//! `append_*` only encode into one reused buffer. [`Wal::sync`] issues one `append` of the whole
//! buffer to the active segment and one `fdatasync`; a client may hear "ok" for an entry only
//! after the `sync` that covered it returned `Ok`. A batch is never split: when it does not fit
//! in the active segment's preallocated room (`segment_bytes_max`, or the file's length if
//! larger, less one byte that stays zero after the last record), `sync` first starts the next segment (header and restated hard state, written
//! without a sync of their own), writes the batch there, syncs the file, then syncs the
//! directory. A failed write or sync **poisons** the `Wal`: that call returns the I/O error and
//! every later call returns [`WalError::Poisoned`]. After a failed fsync the kernel may have
//! dropped the dirty pages, so retrying could report success for data that is gone; the only
//! safe continuation is to restart and recover.
//!
//! ## Preallocation and a full disk
//!
//! As etcd does, segments are preallocated (`posix_fallocate`, see [`DiskFile::allocate`]):
//! records are written into reserved, zeroed space, so an append never needs new blocks (and
//! `fdatasync` need not flush a new file size). The next segment is preallocated ahead of need,
//! as the reserve file, once the active segment is half full (or by [`Wal::try_reserve`]);
//! starting a segment then writes the reserve's prefix and renames it. So a full disk shows up
//! when the reserve is made, while the active segment still has half its room:
//! [`Wal::is_out_of_space`] turns true, `sync` goes on succeeding, and the owner can raise
//! etcd's NOSPACE alarm and stop taking writes that can wait. If the active segment fills up
//! with no reserve and no space, `sync` fails with an error for which
//! [`WalError::is_no_space`] holds, *without* poisoning: nothing was written, the batch stays
//! buffered, and a later `sync` (after space was freed) writes it. Example, 64 MiB segments:
//! at 32 MiB into segment 7 the reserve fails (`ENOSPC`); 32 MiB of records can still be
//! written into segment 7; then `sync` returns the no-space error until `try_reserve` or a
//! `sync` finds room. [`Wal::open`] never needs new space when segments exist: it reuses a
//! reserve left by the previous run, and repairs a torn tail by zeroing it in place.
//!
//! # Recovery: torn tail or corruption
//!
//! Before returning, `open` fdatasyncs the last segment and fsyncs the directory: a process
//! that died between `write` and `fsync` leaves bytes in the page cache that read back fine but
//! are not durable, and raft must not act on a vote or entry that a power loss could still
//! take back. (Only the last segment can hold such bytes: a new segment is started only after
//! every earlier write was synced.)
//!
//! [`Wal::open`] replays every segment in `seq` order. A record is *bad* if fewer than 9 bytes
//! remain for its header, its length exceeds the maximum, it extends past the end of the file,
//! or its crc does not match. (A record with a good crc but a malformed payload, unknown type
//! or impossible index is always corruption: our own writer never produces one.) At the first
//! bad record, at offset `o` of file `F`:
//!
//! 1. If `F` is not the last segment: **corrupt**.
//! 2. If the damage cannot come from an interrupted append: **corrupt**. An interrupted append
//!    leaves a prefix of the bytes written, cut anywhere (at sector boundaries on a real disk),
//!    possibly followed by zeros where the file grew but a data sector was never written. So it
//!    explains: a header cut short; a body cut short (the length, at most the maximum, runs past
//!    the end of the file); or a crc mismatch where the record holds unwritten-looking bytes:
//!    the all-zero suffix of the file starts inside the record's header (type 0 does not
//!    exist, so nothing of the record was written); or it starts inside the record
//!    and runs past the record's end or through a 512-byte-aligned offset inside it; or an
//!    aligned 512-byte sector inside the record is all zeros.
//!    A length above the maximum or a plain crc mismatch (a flipped bit) is not explained.
//! 3. If a valid record (length in bounds, crc good, payload well formed) starts at any offset
//!    after `o` in `F`: **corrupt**. This is what exposes a garbage length in the middle of a
//!    file: a torn append has nothing valid after the tear, but a damaged record has the rest
//!    of the log after it. The scan skips candidates with an unknown type or a length that
//!    does not fit before computing a crc.
//! 4. Otherwise it is a **torn write**: the bytes from `o` to the file's last non-zero byte
//!    are overwritten with zeros (durably; the file keeps its preallocated length), a
//!    `tracing::warn!` names the file and offset, and the warning is returned in
//!    [`Recovered::warnings`]. A last segment torn inside its header, or preallocated and
//!    never written (all zeros), is removed instead.
//!
//! Zeros from a record boundary to the end of the file are not a bad record: they are the end
//! of the log, in any segment (a sealed segment whose last records were lost is caught by the
//! next segment's header, as above). A reserve file left by the previous run is kept if it is
//! whole (all zeros, long enough), removed otherwise (a crash cut its preallocation short, or it
//! holds the first records of a segment whose rename never became durable, which no `sync`
//! acknowledged).
//!
//! Corruption makes `open` fail with [`WalError::Corrupt`] naming the file, the offset of the
//! bad record and the reason (a [`Corruption`], one variant per rule above and per malformed
//! record); data is never dropped silently.
//!
//! Example: the last segment holds records `H A B C D` and power failed while `D` was being
//! written, so the file ends 40 bytes into `D`'s 300-byte body. `D` runs past the end of the
//! file (rule 2 explains it) and nothing valid follows (rule 3): torn, truncate to `D`'s
//! offset, recover `A B C`. If instead a bit flip turned `B`'s length into 100 000, `B` also
//! runs past the end, but `C` is a valid record after it: corrupt at `B`'s offset. If a bit
//! flipped in `B`'s payload, its crc fails with no zeros in sight: corrupt at `B`'s offset.
//!
//! # Limitations and follow-ups
//!
//! * A bit flip that enlarges the length field of the very last record of the last segment
//!   (staying within the maximum) looks exactly like a torn write, and is truncated.
//! * A torn record whose opaque payload embeds a well-formed record (a client could store one
//!   as a value) makes rule 3 report corruption: safe, but `open` then needs an operator. A
//!   format version 2 could seed each crc with the segment seq and the record's offset, so
//!   that bytes are valid only where the writer put them.
//! * After a failed fsync the page cache may still hold bytes that never reached the disk. If
//!   the process restarts without a power loss, `open` reads them back and its own fsync may
//!   succeed without writing them. Reading with `O_DIRECT` at recovery would close this.
//! * A bit flip in the last record of the last segment whose data ends in zero bytes looks like
//!   an append that stopped short (a record cut anywhere, then preallocated zeros), and is
//!   zeroed like a torn write.
//! * The reserve is made on the caller's thread, in the `sync` that passes half a segment (one
//!   `posix_fallocate`, one fdatasync, one directory sync, once per segment); etcd's file
//!   pipeline makes it on a goroutine of its own.
//! * A segment written before preallocation existed is not preallocated after the fact: its
//!   appends can still meet a full disk (and poison).
//! * Log compaction: [`Wal::release_before`] removes whole segments below an index, one
//!   directory sync per file. The caller must call it only for indices covered by a durable
//!   snapshot, and skip recovered entries at or below that snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{Disk, DiskFile, IoOp};

mod error;
mod record;
mod replay;
mod rotate;
mod segment;

pub use error::{Corruption, HeaderMismatch, LogOrderError, Malformed, RecordDamage, WalError};
use record::{encode_record, RECORD_HEADER_BYTES, TYPE_ENTRY, TYPE_HARD_STATE, TYPE_SNAPSHOT};
use replay::recover;
use rotate::create_first_segment;
use segment::{adopt_reserve, reopen_last_segment, Reserve, Segment, RESERVE_NAME};

/// The largest record payload accepted on write and on read.
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 64 << 20;
/// The largest batch [`Wal::sync`] writes at once; appends beyond it are refused.
pub const BATCH_BYTES_MAX: u64 = 256 << 20;
/// The default segment size at which a new segment is started.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;

/// A buffer grown beyond this by a large batch is released after the sync.
const BUF_RETAIN_BYTES_MAX: usize = 4 << 20;

/// Tunables of a [`Wal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Once the active segment is this long, the next sync starts a new segment.
    pub segment_bytes_max: u64,
    /// The simulator's `skip-crc` bug (simulation builds only): recovery accepts a record
    /// whose crc fails.
    #[cfg(madsim)]
    pub skip_crc_bug: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            #[cfg(madsim)]
            skip_crc_bug: false,
        }
    }
}

/// The snapshot a follower's log was replaced by (see [`Wal::append_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotMark {
    /// The index of the last entry the snapshot covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
}

/// One raft entry as recovered from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredEntry {
    /// The entry's raft index.
    pub index: u64,
    /// The entry's raft term.
    pub term: u64,
    /// The opaque encoded entry, as appended.
    pub data: Vec<u8>,
}

/// What [`Wal::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last hard state written, if any.
    pub hard_state: Option<Vec<u8>>,
    /// The last snapshot mark written, if any; `entries` start after it.
    pub snapshot: Option<SnapshotMark>,
    /// The log, contiguous by index.
    pub entries: Vec<RecoveredEntry>,
    /// Repairs made (torn tails truncated), one human-readable line each.
    pub warnings: Vec<String>,
}

fn io_err(op: IoOp, path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Position of the log: entries `first_index..=last_index` (empty if `last < first`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogPos {
    first_index: u64,
    last_index: u64,
    snapshot: Option<SnapshotMark>,
}

impl LogPos {
    const FRESH: LogPos = LogPos {
        first_index: 1,
        last_index: 0,
        snapshot: None,
    };

    /// Applies an entry append at `index`; `Err` says why it is impossible.
    fn append(&mut self, index: u64) -> Result<(), LogOrderError> {
        if index == 0 {
            return Err(LogOrderError::EntryIndexZero);
        }
        if let Some(s) = self.snapshot.filter(|s| index <= s.index) {
            return Err(LogOrderError::EntryInSnapshot {
                index,
                snapshot_index: s.index,
            });
        }
        if index > self.last_index.saturating_add(1) {
            return Err(LogOrderError::Gap {
                index,
                last_index: self.last_index,
            });
        }
        self.first_index = self.first_index.min(index);
        self.last_index = index;
        Ok(())
    }

    /// Applies a snapshot mark: the log is replaced, the next entry is `s.index + 1`.
    fn snapshot(&mut self, s: SnapshotMark) -> Result<(), LogOrderError> {
        if s.index == 0 {
            return Err(LogOrderError::SnapshotIndexZero);
        }
        if let Some(cur) = self.snapshot.filter(|cur| s.index < cur.index) {
            return Err(LogOrderError::SnapshotGoesBack {
                index: s.index,
                current_index: cur.index,
            });
        }
        *self = LogPos {
            first_index: s.index.saturating_add(1),
            last_index: s.index,
            snapshot: Some(s),
        };
        Ok(())
    }
}

/// The write-ahead log. See the [module documentation](self) for semantics and format.
pub struct Wal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    opts: WalOptions,
    /// Every segment on disk, oldest first; the last one is `active`.
    segments: Vec<Segment>,
    /// The active segment, positioned after its last record.
    active: Box<dyn DiskFile>,
    /// The active segment file's length, preallocated space included.
    active_file_bytes: u64,
    /// The next segment, preallocated (see [`Wal::try_reserve`]).
    reserve: Option<Reserve>,
    /// The last attempt to preallocate a segment failed: the disk is full.
    out_of_space: bool,
    /// Records appended since the last sync, encoded.
    buf: Vec<u8>,
    /// The log including buffered records.
    pos: LogPos,
    /// The log as of the last successful sync.
    synced_pos: LogPos,
    /// The last hard state durably written.
    hard_state_synced: Option<Vec<u8>>,
    /// The newest hard state in `buf`, if `buf` holds one.
    hard_state_buffered: Option<Vec<u8>>,
    poisoned: bool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("pos", &self.pos)
            .field("buffered_bytes", &self.buf.len())
            .field("space_reserved", &self.reserve.is_some())
            .field("out_of_space", &self.out_of_space)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// Segments taken out of a [`Wal`] by [`Wal::detach_before`], whose files are still on disk.
#[must_use = "the segments' files stay on disk until removed"]
pub struct Released {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// Oldest first.
    paths: Vec<PathBuf>,
}

impl Released {
    /// How many segments these are.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Deletes the segments' files, oldest first, each followed by a directory sync: a crash
    /// part-way leaves the newer ones, so the segments on disk stay contiguous in `seq`. A file
    /// already gone counts as removed. Returns how many there were.
    pub fn remove(self) -> Result<usize, WalError> {
        for path in &self.paths {
            match self.disk.remove(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(IoOp::Remove, path)(e)),
            }
            self.disk
                .sync_dir(&self.dir)
                .map_err(io_err(IoOp::SyncDir, &self.dir))?;
            tracing::info!(segment = %path.display(), "wal: released segment");
        }
        Ok(self.paths.len())
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, repairing a torn tail, and returns what it
    /// holds. Fails with [`WalError::Corrupt`] on damage a torn write cannot explain.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered), WalError> {
        assert!(
            opts.segment_bytes_max > 0,
            "segment_bytes_max must be positive"
        );
        disk.create_dir_all(dir)
            .map_err(io_err(IoOp::CreateDir, dir))?;
        let has_reserve = disk
            .list_dir(dir)
            .map_err(io_err(IoOp::ListDir, dir))?
            .iter()
            .any(|n| n == RESERVE_NAME);
        let found = recover(disk.as_ref(), dir, &opts)?;
        let mut reserve = if has_reserve {
            adopt_reserve(disk.as_ref(), dir, opts.segment_bytes_max)?
        } else {
            None
        };
        let pos = found.replay.pos.unwrap_or(LogPos::FRESH);
        let hard_state = found.replay.hard_state;
        let mut segments = found.segments;
        let (active, active_file_bytes) = match segments.last() {
            Some(last) => {
                let valid = last.sealed_bytes;
                let active = reopen_last_segment(disk.as_ref(), dir, last, valid)?;
                (active, found.last_file_bytes)
            }
            None => {
                let seq = found.removed_seq.unwrap_or(0);
                let seg = Segment::new(dir, seq, pos.last_index.saturating_add(1));
                let hs = hard_state.as_deref();
                let r = reserve.take();
                let (active, bytes) =
                    create_first_segment(disk.as_ref(), dir, &opts, &seg, r, pos, hs)?;
                segments.push(seg);
                (active, bytes)
            }
        };
        let recovered = Recovered {
            hard_state: hard_state.clone(),
            snapshot: pos.snapshot,
            entries: found.replay.entries,
            warnings: found.warnings,
        };
        let wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            opts,
            segments,
            active,
            active_file_bytes,
            reserve,
            out_of_space: false,
            buf: Vec::new(),
            pos,
            synced_pos: pos,
            hard_state_synced: hard_state,
            hard_state_buffered: None,
            poisoned: false,
        };
        Ok((wal, recovered))
    }

    /// Buffers a hard state (opaque bytes); durable after the next [`Wal::sync`].
    pub fn append_hard_state(&mut self, hs: &[u8]) -> Result<(), WalError> {
        self.check_append(hs.len())?;
        encode_record(&mut self.buf, TYPE_HARD_STATE, &[hs]);
        let slot = self.hard_state_buffered.get_or_insert_with(Vec::new);
        slot.clear();
        slot.extend_from_slice(hs);
        Ok(())
    }

    /// Buffers entry `index` (opaque `data`); durable after the next [`Wal::sync`]. An index at
    /// or below [`Wal::last_index`] replaces that entry and every later one.
    ///
    /// # Panics
    /// If `index` would leave a gap (`index > last_index + 1`) or is at or below the snapshot
    /// mark: the caller has a bug.
    pub fn append_entry(&mut self, index: u64, term: u64, data: &[u8]) -> Result<(), WalError> {
        self.check_append(16 + data.len())?;
        if let Err(reason) = self.pos.append(index) {
            panic!("Wal::append_entry: {reason}");
        }
        encode_record(
            &mut self.buf,
            TYPE_ENTRY,
            &[&index.to_le_bytes(), &term.to_le_bytes(), data],
        );
        Ok(())
    }

    /// Buffers a snapshot mark: the log was replaced by a snapshot ending at `(index, term)`;
    /// all entries are dropped and the next entry appended must be `index + 1`.
    ///
    /// # Panics
    /// If `index` is 0 or below the current snapshot mark.
    pub fn append_snapshot(&mut self, index: u64, term: u64) -> Result<(), WalError> {
        self.check_append(16)?;
        if let Err(reason) = self.pos.snapshot(SnapshotMark { index, term }) {
            panic!("Wal::append_snapshot: {reason}");
        }
        encode_record(
            &mut self.buf,
            TYPE_SNAPSHOT,
            &[&index.to_le_bytes(), &term.to_le_bytes()],
        );
        Ok(())
    }

    /// Removes whole segments whose entries all lie below `index` (the caller holds a snapshot
    /// covering them). The active segment is never removed. Returns how many were removed.
    /// A failed removal poisons this `Wal`.
    pub fn release_before(&mut self, index: u64) -> Result<usize, WalError> {
        let released = self.detach_before(index)?;
        released.remove().inspect_err(|_| self.poisoned = true)
    }

    /// Takes the segments whose entries all lie below `index` out of this `Wal` (the caller
    /// holds a snapshot covering them) without touching the disk: [`Released::remove`] deletes
    /// their files, on any thread, so a writer's thread need not wait for the file system to
    /// free a segment's blocks. The active segment is never detached. Until their files are
    /// removed, a crash or [`Wal::open`] finds them again, as before the release (they are the
    /// oldest, contiguous in `seq`).
    pub fn detach_before(&mut self, index: u64) -> Result<Released, WalError> {
        self.check_poisoned()?;
        // Every live entry of segment k is below segment k+1's first_index.
        let mut count = 0;
        while count + 1 < self.segments.len() && self.segments[count + 1].first_index <= index {
            count += 1;
        }
        let paths = self.segments.drain(..count).map(|s| s.path).collect();
        Ok(Released {
            disk: Arc::clone(&self.disk),
            dir: self.dir.clone(),
            paths,
        })
    }

    /// The index of the first entry (including buffered ones), or `last_index + 1` if empty.
    pub fn first_index(&self) -> u64 {
        self.pos.first_index
    }

    /// The index of the last entry (including buffered ones); the snapshot index or 0 if empty.
    pub fn last_index(&self) -> u64 {
        self.pos.last_index
    }

    /// The last snapshot mark (including a buffered one).
    pub fn snapshot(&self) -> Option<SnapshotMark> {
        self.pos.snapshot
    }

    /// The number of bytes appended and not yet synced.
    pub fn buffered_bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Whether an earlier failure poisoned this `Wal`.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Opens this WAL's directory again, as [`Wal::open`] does: the way on after a *write*
    /// that failed for lack of space poisoned this `Wal`. Records a failed write left
    /// half-written are cut back as a torn tail; records it wrote whole are synced and kept
    /// (the caller appends its batch again: an entry appended again replaces itself and what
    /// follows). Records buffered here are dropped.
    ///
    /// Never after a failed *sync*: the kernel may then have dropped dirty pages that still
    /// read back fine, so what this reads could be gone from the disk.
    pub fn reopen(&self) -> Result<(Wal, Recovered), WalError> {
        Wal::open(Arc::clone(&self.disk), &self.dir, self.opts)
    }

    /// Bytes of WAL on disk: every segment file, the active one as written so far.
    pub fn disk_bytes(&self) -> u64 {
        let sealed = self.segments.len().saturating_sub(1);
        let sealed_bytes: u64 = self.segments[..sealed].iter().map(|s| s.sealed_bytes).sum();
        sealed_bytes + self.active.len()
    }

    /// The number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether the next segment is preallocated (see [`Wal::try_reserve`]). A `Wal` reserves
    /// it once the active segment is half full; until then this is `false` without anything
    /// being wrong: see [`Wal::is_out_of_space`] for that.
    pub fn space_reserved(&self) -> bool {
        self.reserve.is_some()
    }

    /// Whether the last attempt to preallocate a segment failed because the disk is full
    /// (until an attempt succeeds). The active segment still has room: the owner should stop
    /// taking writes that can wait (etcd's NOSPACE alarm) and retry [`Wal::try_reserve`] once
    /// space was freed.
    pub fn is_out_of_space(&self) -> bool {
        self.out_of_space
    }

    fn active_path(&self) -> &Path {
        self.segments
            .last()
            .map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn check_append(&self, payload_bytes: usize) -> Result<(), WalError> {
        self.check_poisoned()?;
        let bytes = payload_bytes as u64;
        if bytes > RECORD_PAYLOAD_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                bytes,
                max: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        let batch = self.buf.len() as u64 + RECORD_HEADER_BYTES as u64 + bytes;
        if batch > BATCH_BYTES_MAX {
            return Err(WalError::BatchTooLarge {
                bytes: batch,
                max: BATCH_BYTES_MAX,
            });
        }
        Ok(())
    }
}
