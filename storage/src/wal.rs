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
//! ignored. A segment is a sequence of records; every integer is little-endian:
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
//! after the `sync` that covered it returned `Ok`. A batch is never split: when the active
//! segment has reached `segment_bytes_max`, `sync` first creates the next segment (header and
//! restated hard state, appended without a sync of their own), writes the batch there, syncs
//! the file, then syncs the directory. A failed write or sync **poisons** the `Wal`: that call
//! returns the I/O error and every later call returns [`WalError::Poisoned`]. After a failed
//! fsync the kernel may have dropped the dirty pages, so retrying could report success for data
//! that is gone; the only safe continuation is to restart and recover.
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
//! 4. Otherwise it is a **torn write**: the file is truncated to `o` (durably), a
//!    `tracing::warn!` names the file and offset, and the warning is returned in
//!    [`Recovered::warnings`]. A last segment torn inside its header is removed instead.
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
//! * Segments are not preallocated; `fdatasync` on a growing file also flushes its size.
//!   Preallocating (as etcd does) would save that metadata write per batch.
//! * Log compaction: [`Wal::release_before`] removes whole segments below an index, one
//!   directory sync per file. The caller must call it only for indices covered by a durable
//!   snapshot, and skip recovered entries at or below that snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{Disk, DiskFile, IoOp};

mod error;
pub use error::{Corruption, HeaderMismatch, LogOrderError, Malformed, RecordDamage, WalError};

/// The largest record payload accepted on write and on read.
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 64 << 20;
/// The largest batch [`Wal::sync`] writes at once; appends beyond it are refused.
pub const BATCH_BYTES_MAX: u64 = 256 << 20;
/// The default segment size at which a new segment is started.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;

const RECORD_HEADER_BYTES: usize = 9;
const FORMAT_VERSION: u32 = 1;
const SECTOR_BYTES: usize = 512;
/// A buffer grown beyond this by a large batch is released after the sync.
const BUF_RETAIN_BYTES_MAX: usize = 4 << 20;

const TYPE_SEGMENT_HEADER: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_ENTRY: u8 = 3;
const TYPE_SNAPSHOT: u8 = 4;

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

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
    /// The file's length once sealed (the active segment's length is `Wal::active.len()`).
    sealed_bytes: u64,
}

impl Segment {
    fn new(dir: &Path, seq: u64, first_index: u64) -> Segment {
        let path = dir.join(segment_name(seq, first_index));
        Segment {
            seq,
            first_index,
            path,
            sealed_bytes: 0,
        }
    }
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parses a segment file name; `None` if `name` is not one we would have written.
fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    let seq = u64::from_str_radix(seq, 16).ok()?;
    let first = u64::from_str_radix(first, 16).ok()?;
    (segment_name(seq, first) == name).then_some((seq, first))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentHeader {
    seq: u64,
    first_index: u64,
    snapshot: Option<SnapshotMark>,
}

#[derive(Debug)]
enum Record<'a> {
    Header(SegmentHeader),
    HardState(&'a [u8]),
    Entry {
        index: u64,
        term: u64,
        data: &'a [u8],
    },
    Snapshot(SnapshotMark),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a record whose crc matched; `Err` says why its payload is malformed.
fn decode(kind: u8, p: &[u8]) -> Result<Record<'_>, Malformed> {
    match kind {
        TYPE_SEGMENT_HEADER => {
            if p.len() != 36 {
                return Err(Malformed::SegmentHeaderSize {
                    bytes: p.len() as u64,
                });
            }
            let version = u32_at(p, 0);
            if version != FORMAT_VERSION {
                return Err(Malformed::UnsupportedVersion { version });
            }
            let (index, term) = (u64_at(p, 20), u64_at(p, 28));
            let snapshot = (index != 0 || term != 0).then_some(SnapshotMark { index, term });
            Ok(Record::Header(SegmentHeader {
                seq: u64_at(p, 4),
                first_index: u64_at(p, 12),
                snapshot,
            }))
        }
        TYPE_HARD_STATE => Ok(Record::HardState(p)),
        TYPE_ENTRY if p.len() >= 16 => Ok(Record::Entry {
            index: u64_at(p, 0),
            term: u64_at(p, 8),
            data: &p[16..],
        }),
        TYPE_SNAPSHOT if p.len() == 16 => Ok(Record::Snapshot(SnapshotMark {
            index: u64_at(p, 0),
            term: u64_at(p, 8),
        })),
        TYPE_ENTRY | TYPE_SNAPSHOT => Err(Malformed::PayloadSize {
            kind,
            bytes: p.len() as u64,
        }),
        _ => Err(Malformed::UnknownType { kind }),
    }
}

/// Reads the framing of the record at `o`: `(type, payload, next offset)`.
fn frame_at(b: &[u8], o: usize) -> Result<(u8, &[u8], usize), RecordDamage> {
    if b.len() - o < RECORD_HEADER_BYTES {
        return Err(RecordDamage::HeaderCut);
    }
    let len = u64::from(u32_at(b, o));
    if len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(RecordDamage::TooLong { len });
    }
    let end = o + RECORD_HEADER_BYTES + len as usize;
    if end > b.len() {
        return Err(RecordDamage::BodyCut { len });
    }
    if crc32fast::hash(&b[o + 8..end]) != u32_at(b, o + 4) {
        return Err(RecordDamage::Crc { len });
    }
    Ok((b[o + 8], &b[o + RECORD_HEADER_BYTES..end], end))
}

/// Whether a torn append explains `bad` at `o` (rule 2 of the module docs).
fn explained_by_tear(b: &[u8], o: usize, bad: RecordDamage) -> bool {
    match bad {
        RecordDamage::HeaderCut | RecordDamage::BodyCut { .. } => true,
        RecordDamage::TooLong { .. } => false,
        RecordDamage::Crc { len } => {
            let end = o + RECORD_HEADER_BYTES + len as usize;
            let zero_from = b.iter().rposition(|x| *x != 0).map_or(0, |p| p + 1);
            let zero_sector = (o.next_multiple_of(SECTOR_BYTES)..end)
                .step_by(SECTOR_BYTES)
                .any(|s| s + SECTOR_BYTES <= end && b[s..s + SECTOR_BYTES].iter().all(|x| *x == 0));
            // The zero suffix starts inside the record and runs past its end, or through a
            // sector boundary inside it: the file grew but those bytes were never written.
            let zero_tail = zero_from < end
                && (b.len() > end || zero_from.next_multiple_of(SECTOR_BYTES) < end);
            // Type 0 never exists: zeros from inside the header on mean nothing was written.
            zero_from < o + RECORD_HEADER_BYTES || zero_tail || zero_sector
        }
    }
}

/// The first offset after `from` where a valid, well-formed record starts (rule 3).
fn valid_record_after(b: &[u8], from: usize) -> Option<usize> {
    let last = b.len().checked_sub(RECORD_HEADER_BYTES)?;
    (from..=last).find(|&p| {
        let kind = b[p + 8];
        let plausible = (TYPE_SEGMENT_HEADER..=TYPE_SNAPSHOT).contains(&kind)
            && u64::from(u32_at(b, p)) <= (b.len() - p - RECORD_HEADER_BYTES) as u64;
        plausible && matches!(frame_at(b, p), Ok((k, payload, _)) if decode(k, payload).is_ok())
    })
}

/// The log as rebuilt by replaying records.
#[derive(Debug, Default)]
struct Replay {
    /// `None` until the first segment header is read.
    pos: Option<LogPos>,
    entries: Vec<RecoveredEntry>,
    hard_state: Option<Vec<u8>>,
}

impl Replay {
    fn apply(
        &mut self,
        seg: &Segment,
        record: Record<'_>,
        at_start: bool,
    ) -> Result<(), Corruption> {
        let is_header = matches!(record, Record::Header(_));
        if at_start != is_header {
            return Err(if at_start {
                HeaderMismatch::Missing.into()
            } else {
                HeaderMismatch::MidSegment.into()
            });
        }
        if let Record::Header(h) = record {
            return Ok(self.apply_header(seg, h)?);
        }
        let Some(pos) = self.pos.as_mut() else {
            unreachable!("a segment header precedes every other record");
        };
        match record {
            Record::Header(_) => unreachable!("handled above"),
            Record::HardState(hs) => self.hard_state = Some(hs.to_vec()),
            Record::Snapshot(s) => {
                pos.snapshot(s)?;
                self.entries.clear();
            }
            Record::Entry { index, term, data } => {
                pos.append(index)?;
                let keep = self.entries.partition_point(|e| e.index < index);
                self.entries.truncate(keep);
                self.entries.push(RecoveredEntry {
                    index,
                    term,
                    data: data.to_vec(),
                });
                debug_assert_eq!(self.entries[0].index, pos.first_index, "replay out of step");
            }
        }
        Ok(())
    }

    fn apply_header(&mut self, seg: &Segment, h: SegmentHeader) -> Result<(), HeaderMismatch> {
        if (h.seq, h.first_index) != (seg.seq, seg.first_index) {
            return Err(HeaderMismatch::FileName {
                header_seq: h.seq,
                header_first_index: h.first_index,
                name_seq: seg.seq,
                name_first_index: seg.first_index,
            });
        }
        if h.first_index == 0 {
            return Err(HeaderMismatch::FirstIndexZero);
        }
        let expect = LogPos {
            first_index: h.first_index,
            last_index: h.first_index - 1,
            ..LogPos::FRESH
        };
        match self.pos {
            // The oldest segment present: its header is where the log starts.
            None => {
                self.pos = Some(LogPos {
                    snapshot: h.snapshot,
                    ..expect
                })
            }
            Some(pos)
                if pos.last_index.saturating_add(1) != h.first_index
                    || pos.snapshot != h.snapshot =>
            {
                return Err(HeaderMismatch::DoesNotFollow {
                    first_index: h.first_index,
                    snapshot: h.snapshot,
                    last_index: pos.last_index,
                    log_snapshot: pos.snapshot,
                });
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// Replays one segment; returns the length of its valid prefix (shorter only if torn).
fn replay_segment(
    replay: &mut Replay,
    seg: &Segment,
    b: &[u8],
    is_last: bool,
    skip_crc_bug: bool,
) -> Result<usize, WalError> {
    let corrupt = |offset: usize, reason: Corruption| WalError::Corrupt {
        file: seg.path.clone(),
        offset: offset as u64,
        reason,
    };
    let mut o = 0;
    while o < b.len() || o == 0 {
        let (kind, payload, next) = match frame_at(b, o) {
            Ok(frame) => frame,
            Err(RecordDamage::Crc { len }) if skip_crc_bug => {
                let end = o + RECORD_HEADER_BYTES + len as usize;
                (b[o + 8], &b[o + RECORD_HEADER_BYTES..end], end)
            }
            Err(bad) if !is_last => return Err(corrupt(o, Corruption::DamageInSealedSegment(bad))),
            Err(bad) if !explained_by_tear(b, o, bad) => {
                return Err(corrupt(o, Corruption::DamageNotATear(bad)))
            }
            Err(damage) => match valid_record_after(b, o + 1) {
                Some(p) => {
                    let next_valid = p as u64;
                    let reason = Corruption::DamageBeforeValidRecord { damage, next_valid };
                    return Err(corrupt(o, reason));
                }
                None => return Ok(o),
            },
        };
        let record = decode(kind, payload).map_err(|r| corrupt(o, r.into()))?;
        replay
            .apply(seg, record, o == 0)
            .map_err(|r| corrupt(o, r))?;
        o = next;
    }
    Ok(o)
}

/// The simulator's `skip-crc` bug: recovery accepts a record whose crc fails.
#[cfg(madsim)]
fn skip_crc_bug(opts: &WalOptions) -> bool {
    opts.skip_crc_bug
}

/// Production builds cannot turn the `skip-crc` bug on.
#[cfg(not(madsim))]
fn skip_crc_bug(_opts: &WalOptions) -> bool {
    false
}

/// Lists the segments in `dir`, sorted by seq, checking that no seq is missing.
fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<Segment>, WalError> {
    let names = disk.list_dir(dir).map_err(io_err(IoOp::ListDir, dir))?;
    let mut segments: Vec<Segment> = names
        .iter()
        .filter_map(|name| {
            let (seq, first_index) = parse_segment_name(name)?;
            Some(Segment {
                seq,
                first_index,
                path: dir.join(name),
                sealed_bytes: 0,
            })
        })
        .collect();
    segments.sort_by_key(|s| s.seq);
    for pair in segments.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(WalError::Corrupt {
                file: pair[1].path.clone(),
                offset: 0,
                reason: Corruption::MissingSegment {
                    missing_seq: pair[0].seq + 1,
                },
            });
        }
    }
    Ok(segments)
}

fn encode_record(buf: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    buf.push(kind);
    for part in parts {
        buf.extend_from_slice(part);
    }
    let payload_len = buf.len() - start - RECORD_HEADER_BYTES;
    assert!(
        payload_len as u64 <= RECORD_PAYLOAD_BYTES_MAX,
        "record size unchecked"
    );
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes the records that open a segment: header, then the restated hard state.
fn encode_segment_prefix(buf: &mut Vec<u8>, seg: &Segment, pos: LogPos, hs: Option<&[u8]>) {
    let snap = pos.snapshot.unwrap_or(SnapshotMark { index: 0, term: 0 });
    let parts: [&[u8]; 5] = [
        &FORMAT_VERSION.to_le_bytes(),
        &seg.seq.to_le_bytes(),
        &seg.first_index.to_le_bytes(),
        &snap.index.to_le_bytes(),
        &snap.term.to_le_bytes(),
    ];
    encode_record(buf, TYPE_SEGMENT_HEADER, &parts);
    if let Some(hs) = hs {
        encode_record(buf, TYPE_HARD_STATE, &[hs]);
    }
}

/// The write-ahead log. See the [module documentation](self) for semantics and format.
pub struct Wal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    opts: WalOptions,
    /// Every segment on disk, oldest first; the last one is `active`.
    segments: Vec<Segment>,
    active: Box<dyn DiskFile>,
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
            .field("poisoned", &self.poisoned)
            .finish()
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
        let mut segments = list_segments(disk.as_ref(), dir)?;
        let mut replay = Replay::default();
        let mut warnings = Vec::new();
        let count = segments.len();
        let mut torn_header_seq: Option<u64> = None;
        for (i, seg) in segments.iter_mut().enumerate() {
            let bytes = disk
                .read(&seg.path)
                .map_err(io_err(IoOp::Read, &seg.path))?;
            let valid = replay_segment(
                &mut replay,
                seg,
                &bytes,
                i + 1 == count,
                skip_crc_bug(&opts),
            )?;
            seg.sealed_bytes = valid as u64;
            if valid < bytes.len() || valid == 0 {
                assert!(i + 1 == count, "only the last segment can be torn");
                let warning = repair_torn_tail(disk.as_ref(), dir, seg, valid, bytes.len())?;
                warnings.push(warning);
                torn_header_seq = (valid == 0).then_some(seg.seq);
            }
        }
        if torn_header_seq.is_some() {
            segments.pop();
        }
        let pos = replay.pos.unwrap_or(LogPos::FRESH);
        let hard_state = replay.hard_state;
        let (segments, active) = match segments.last() {
            Some(last) => {
                let active = reopen_last_segment(disk.as_ref(), dir, last)?;
                (segments, active)
            }
            None => {
                let seq = torn_header_seq.unwrap_or(0);
                let seg = Segment::new(dir, seq, pos.last_index.saturating_add(1));
                let hs = hard_state.as_deref();
                let active = create_segment(disk.as_ref(), dir, &seg, pos, hs)?;
                (vec![seg], active)
            }
        };
        let recovered = Recovered {
            hard_state: hard_state.clone(),
            snapshot: pos.snapshot,
            entries: replay.entries,
            warnings,
        };
        let wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            opts,
            segments,
            active,
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

    /// Makes everything buffered durable: one write and one fdatasync (plus a directory sync
    /// when a new segment is started). A no-op if nothing is buffered. Any failure poisons.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_batch() {
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
        Ok(())
    }

    fn write_batch(&mut self) -> Result<(), WalError> {
        let rotated = self.active.len() >= self.opts.segment_bytes_max;
        if rotated {
            self.rotate()?;
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

    /// Starts the next segment; its prefix is appended but not synced (the batch sync is).
    fn rotate(&mut self) -> Result<(), WalError> {
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        let seg = Segment::new(&self.dir, seq, self.synced_pos.last_index.saturating_add(1));
        let mut file = self
            .disk
            .open_append(&seg.path)
            .map_err(io_err(IoOp::Open, &seg.path))?;
        if !file.is_empty() {
            return Err(unexpected_file(&seg.path));
        }
        let mut prefix = Vec::new();
        encode_segment_prefix(
            &mut prefix,
            &seg,
            self.synced_pos,
            self.hard_state_synced.as_deref(),
        );
        file.append(&prefix)
            .map_err(io_err(IoOp::Append, &seg.path))?;
        tracing::info!(segment = %seg.path.display(), "wal: new segment");
        if let Some(sealed) = self.segments.last_mut() {
            sealed.sealed_bytes = self.active.len();
        }
        self.segments.push(seg);
        self.active = file;
        Ok(())
    }

    /// Removes whole segments whose entries all lie below `index` (the caller holds a snapshot
    /// covering them). The active segment is never removed. Returns how many were removed.
    pub fn release_before(&mut self, index: u64) -> Result<usize, WalError> {
        self.check_poisoned()?;
        let mut removed = 0;
        // Every live entry of segment k is below segment k+1's first_index.
        while self.segments.len() >= 2 && self.segments[1].first_index <= index {
            let path = self.segments[0].path.clone();
            let result = self
                .disk
                .remove(&path)
                .map_err(io_err(IoOp::Remove, &path))
                .and_then(|()| {
                    // One directory sync per removal: a crash never leaves a gap in the seqs.
                    self.disk
                        .sync_dir(&self.dir)
                        .map_err(io_err(IoOp::SyncDir, &self.dir))
                });
            if let Err(e) = result {
                self.poisoned = true;
                return Err(e);
            }
            tracing::info!(segment = %path.display(), "wal: released segment");
            self.segments.remove(0);
            removed += 1;
        }
        Ok(removed)
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

fn unexpected_file(path: &Path) -> WalError {
    WalError::Io {
        op: IoOp::Open,
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "new segment file not empty",
        ),
    }
}

/// Creates a segment at open time: prefix, fdatasync, directory sync.
fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    seg: &Segment,
    pos: LogPos,
    hs: Option<&[u8]>,
) -> Result<Box<dyn DiskFile>, WalError> {
    let mut file = disk
        .open_append(&seg.path)
        .map_err(io_err(IoOp::Open, &seg.path))?;
    if !file.is_empty() {
        return Err(unexpected_file(&seg.path));
    }
    let mut prefix = Vec::new();
    encode_segment_prefix(&mut prefix, seg, pos, hs);
    file.append(&prefix)
        .map_err(io_err(IoOp::Append, &seg.path))?;
    file.sync().map_err(io_err(IoOp::Sync, &seg.path))?;
    disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
    tracing::info!(segment = %seg.path.display(), "wal: new segment");
    Ok(file)
}

/// Opens the last segment for appending, after making what recovery read from it durable.
fn reopen_last_segment(
    disk: &dyn Disk,
    dir: &Path,
    last: &Segment,
) -> Result<Box<dyn DiskFile>, WalError> {
    let mut active = disk
        .open_append(&last.path)
        .map_err(io_err(IoOp::Open, &last.path))?;
    // What we recovered may sit in the page cache only (the process died between write and
    // fsync): make it durable before anyone acts on it.
    active.sync().map_err(io_err(IoOp::Sync, &last.path))?;
    disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
    Ok(active)
}

/// Truncates a torn tail at `valid` (removing the file if even its header is torn).
fn repair_torn_tail(
    disk: &dyn Disk,
    dir: &Path,
    seg: &Segment,
    valid: usize,
    len: usize,
) -> Result<String, WalError> {
    let file = seg.path.display();
    let warning = if valid == 0 {
        disk.remove(&seg.path)
            .map_err(io_err(IoOp::Remove, &seg.path))?;
        disk.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
        format!("wal: torn segment header in {file} ({len} bytes): removed the segment")
    } else {
        disk.truncate(&seg.path, valid as u64)
            .map_err(io_err(IoOp::Truncate, &seg.path))?;
        format!(
            "wal: torn write in {file} at offset {valid}: truncated {} bytes",
            len - valid
        )
    };
    tracing::warn!(file = %file, offset = valid, dropped_bytes = len - valid, "{warning}");
    Ok(warning)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
    }

    #[test]
    fn doc_example_bytes() {
        let seg = Segment {
            seq: 0,
            first_index: 1,
            path: PathBuf::new(),
            sealed_bytes: 0,
        };
        let mut buf = Vec::new();
        encode_segment_prefix(&mut buf, &seg, LogPos::FRESH, Some(&[0x08, 0x01]));
        encode_record(
            &mut buf,
            TYPE_ENTRY,
            &[&1u64.to_le_bytes(), &1u64.to_le_bytes(), b"hi"],
        );
        let mut want = vec![0x24, 0, 0, 0, 0xc9, 0xd9, 0x74, 0xb0, 1, 1, 0, 0, 0];
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[2, 0, 0, 0, 0xe2, 0xb7, 0x1b, 0x43, 2, 8, 1]);
        want.extend_from_slice(&[0x12, 0, 0, 0, 0x4a, 0xaa, 0x84, 0xe0, 3]);
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"hi");
        assert_eq!(buf, want);
    }

    #[test]
    fn frame_errors() {
        let mut buf = Vec::new();
        encode_record(&mut buf, TYPE_HARD_STATE, &[b"abc"]);
        assert!(frame_at(&buf, 0).is_ok());
        assert_eq!(frame_at(&buf[..5], 0), Err(RecordDamage::HeaderCut));
        assert_eq!(
            frame_at(&buf[..10], 0),
            Err(RecordDamage::BodyCut { len: 3 })
        );
        let mut flipped = buf.clone();
        flipped[10] ^= 1;
        assert_eq!(frame_at(&flipped, 0), Err(RecordDamage::Crc { len: 3 }));
        let mut long = buf.clone();
        long[3] = 0xff;
        assert!(matches!(
            frame_at(&long, 0),
            Err(RecordDamage::TooLong { .. })
        ));
    }

    #[test]
    fn zero_evidence_rules() {
        let mut b = vec![1u8; 1024];
        // Crc-bad record at 100 of length 400 (ends at 509) with the file's zero suffix at 512.
        b[512..].fill(0);
        assert!(!explained_by_tear(&b, 100, RecordDamage::Crc { len: 400 }));
        assert!(explained_by_tear(&b, 100, RecordDamage::Crc { len: 500 }));
        // Zero suffix from 300 (unaligned) inside the record: a data tail of zeros, not a tear.
        // Zero suffix from 300 (unaligned), the record ends at the end of the file: its data
        // may simply end in zeros, so a crc mismatch is corruption.
        let mut c = vec![1u8; 509];
        c[300..].fill(0);
        assert!(!explained_by_tear(&c, 100, RecordDamage::Crc { len: 400 }));
        // The same zeros running past the record's end: the file grew, data never written.
        c.resize(600, 0);
        assert!(explained_by_tear(&c, 100, RecordDamage::Crc { len: 400 }));
        assert!(explained_by_tear(&c, 300, RecordDamage::Crc { len: 0 }));
        // An all-zero aligned sector inside the record, data after it.
        let mut d = vec![1u8; 2000];
        d[512..1024].fill(0);
        assert!(explained_by_tear(&d, 10, RecordDamage::Crc { len: 1500 }));
        assert!(!explained_by_tear(
            &d,
            10,
            RecordDamage::TooLong { len: 1 << 40 }
        ));
    }
}
