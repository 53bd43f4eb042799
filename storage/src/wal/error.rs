//! The [`Wal`](super::Wal)'s errors: an I/O failure names the operation and the path, a
//! corruption names the file, the offset and what is wrong, as a value a caller can match.

use std::path::PathBuf;

use super::{SnapshotMark, RECORD_PAYLOAD_BYTES_MAX};
use crate::disk::IoOp;

/// Errors of the [`Wal`](super::Wal).
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The disk failed; if this came from a mutating call, the `Wal` is now poisoned. (The
    /// text leaves `op` out: it is part of simulator traces, which must replay unchanged.)
    #[error("wal i/o error on {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record is damaged in a way a torn write cannot explain; nothing was repaired.
    #[error("wal corrupt: {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// The byte offset of the bad record in `file`.
        offset: u64,
        /// What is wrong.
        reason: Corruption,
    },
    /// An earlier write or sync failed; the `Wal` must be reopened (after a restart).
    #[error("wal poisoned by an earlier failed write or sync; restart and recover")]
    Poisoned,
    /// A record's payload is larger than [`RECORD_PAYLOAD_BYTES_MAX`].
    #[error("wal record payload of {bytes} bytes exceeds the maximum of {max}")]
    RecordTooLarge {
        /// The payload size.
        bytes: u64,
        /// The maximum.
        max: u64,
    },
    /// The buffered batch would exceed [`BATCH_BYTES_MAX`](super::BATCH_BYTES_MAX); sync first.
    #[error("wal batch of {bytes} bytes would exceed the maximum of {max}; sync first")]
    BatchTooLarge {
        /// The batch size the append would have produced.
        bytes: u64,
        /// The maximum.
        max: u64,
    },
}

impl WalError {
    /// Whether this is the disk (or a quota) being full: an I/O error of kind
    /// [`StorageFull`](std::io::ErrorKind::StorageFull) or
    /// [`QuotaExceeded`](std::io::ErrorKind::QuotaExceeded) (`ENOSPC`, `EDQUOT`). Such an error
    /// from [`Wal::sync`](super::Wal::sync) or [`Wal::try_reserve`](super::Wal::try_reserve)
    /// did not poison the `Wal`: nothing was written.
    pub fn is_no_space(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if crate::disk::is_no_space(source))
    }
}

/// What is wrong with a WAL that [`Wal::open`](super::Wal::open) refuses (see
/// [`WalError::Corrupt`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// A record in a segment other than the last cannot be read: only the last segment can
    /// hold a torn write.
    #[error("{0} in a non-last segment")]
    DamageInSealedSegment(RecordDamage),
    /// A record cannot be read, and a torn append does not explain how (rule 2).
    #[error("{0}")]
    DamageNotATear(RecordDamage),
    /// A record cannot be read, yet a valid record follows it (rule 3): not a torn tail.
    #[error("{damage}, yet a valid record follows at offset {next_valid}")]
    DamageBeforeValidRecord {
        /// What is wrong with the record.
        damage: RecordDamage,
        /// The offset of the valid record after it.
        next_valid: u64,
    },
    /// A record passed its crc but its payload is malformed.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The records do not form a log.
    #[error(transparent)]
    Order(#[from] LogOrderError),
    /// A segment header does not fit its file name or the segments before it.
    #[error(transparent)]
    Header(#[from] HeaderMismatch),
    /// A segment seq is missing between two present ones.
    #[error("segment seq {missing_seq} missing before it")]
    MissingSegment {
        /// The first seq missing.
        missing_seq: u64,
    },
}

/// Why a record's framing could not be read (the record header, its length, its crc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordDamage {
    /// Fewer bytes than a record header remain.
    #[error("record header cut short")]
    HeaderCut,
    /// The length field exceeds [`RECORD_PAYLOAD_BYTES_MAX`].
    #[error("record length {len} exceeds maximum {RECORD_PAYLOAD_BYTES_MAX}")]
    TooLong {
        /// The length field.
        len: u64,
    },
    /// The record runs past the end of the file.
    #[error("record of length {len} runs past end of file")]
    BodyCut {
        /// The length field.
        len: u64,
    },
    /// The crc does not match the type and payload.
    #[error("crc mismatch in record of length {len}")]
    Crc {
        /// The length field.
        len: u64,
    },
}

/// A record whose crc matched but whose payload our writer would never produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A segment header payload of the wrong size.
    #[error("segment header of {bytes} bytes, want 36")]
    SegmentHeaderSize {
        /// The payload size.
        bytes: u64,
    },
    /// A segment header of a format version this code does not read.
    #[error("unsupported wal format version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// An entry or snapshot record whose payload is too short (or, for a snapshot, too long).
    #[error("record type {kind} with {bytes} bytes")]
    PayloadSize {
        /// The record type.
        kind: u8,
        /// The payload size.
        bytes: u64,
    },
    /// A record type that does not exist.
    #[error("unknown record type {kind}")]
    UnknownType {
        /// The record type.
        kind: u8,
    },
}

/// A record that cannot follow the log so far: on replay this is corruption; on append
/// (see [`Wal::append_entry`](super::Wal::append_entry)) a bug of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogOrderError {
    /// An entry at index 0 (raft indices start at 1).
    #[error("entry index 0")]
    EntryIndexZero,
    /// An entry the snapshot already covers.
    #[error("entry {index} at or below snapshot index {snapshot_index}")]
    EntryInSnapshot {
        /// The entry's index.
        index: u64,
        /// The snapshot's index.
        snapshot_index: u64,
    },
    /// An entry beyond `last_index + 1`.
    #[error("entry {index} leaves a gap after {last_index}")]
    Gap {
        /// The entry's index.
        index: u64,
        /// The last index of the log.
        last_index: u64,
    },
    /// A snapshot mark at index 0.
    #[error("snapshot index 0")]
    SnapshotIndexZero,
    /// A snapshot mark older than the current one.
    #[error("snapshot {index} older than snapshot {current_index}")]
    SnapshotGoesBack {
        /// The new mark's index.
        index: u64,
        /// The current mark's index.
        current_index: u64,
    },
}

/// A segment header that does not fit where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderMismatch {
    /// The segment's first record is not its header.
    #[error("segment does not start with a segment header")]
    Missing,
    /// A header after the first record.
    #[error("segment header in the middle of a segment")]
    MidSegment,
    /// The header's seq and first index differ from the file name's.
    #[error(
        "header says seq {header_seq} first_index {header_first_index}, file name says seq \
         {name_seq} first_index {name_first_index}"
    )]
    FileName {
        /// The header's seq.
        header_seq: u64,
        /// The header's first index.
        header_first_index: u64,
        /// The file name's seq.
        name_seq: u64,
        /// The file name's first index.
        name_first_index: u64,
    },
    /// A header with first index 0.
    #[error("segment first_index 0")]
    FirstIndexZero,
    /// The header's first index or snapshot does not continue the log of the segments
    /// before it: records are missing at the end of the previous segment.
    #[error(
        "segment header (first_index {first_index}, snapshot {snapshot:?}) does not follow the \
         log (last_index {last_index}, snapshot {log_snapshot:?}): records are missing"
    )]
    DoesNotFollow {
        /// The header's first index.
        first_index: u64,
        /// The header's snapshot mark.
        snapshot: Option<SnapshotMark>,
        /// The last index of the log rebuilt so far.
        last_index: u64,
        /// The snapshot mark of the log rebuilt so far.
        log_snapshot: Option<SnapshotMark>,
    },
}
