//! Recovery: replaying the segments' records into the log, telling a torn tail from corruption.

use std::path::Path;

use super::error::{Corruption, HeaderMismatch, RecordDamage, WalError};
use super::record::{
    all_zero, decode, explained_by_tear, frame_at, nonzero_end, valid_record_after, Record,
    SegmentHeader, RECORD_HEADER_BYTES,
};
use super::segment::{parse_segment_name, repair_torn_tail, Segment};
use super::{io_err, LogPos, RecoveredEntry, WalOptions};
use crate::disk::{Disk, IoOp};

/// The log as rebuilt by replaying records.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// `None` until the first segment header is read.
    pub(super) pos: Option<LogPos>,
    pub(super) entries: Vec<RecoveredEntry>,
    pub(super) hard_state: Option<Vec<u8>>,
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

/// Replays one segment; returns the length of its valid prefix (the end of its last record:
/// what follows is zeros, or a torn tail to repair).
pub(super) fn replay_segment(
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
        // Zeros from a record boundary to the end: preallocated space, the end of the log.
        let header_end = (o + RECORD_HEADER_BYTES).min(b.len());
        if o > 0 && all_zero(&b[o..header_end]) && all_zero(&b[header_end..]) {
            return Ok(o);
        }
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
pub(super) fn skip_crc_bug(opts: &WalOptions) -> bool {
    opts.skip_crc_bug
}

/// Production builds cannot turn the `skip-crc` bug on.
#[cfg(not(madsim))]
pub(super) fn skip_crc_bug(_opts: &WalOptions) -> bool {
    false
}

/// Lists the segments in `dir`, sorted by seq, checking that no seq is missing.
pub(super) fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<Segment>, WalError> {
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

/// The segments as recovery left them.
pub(super) struct Recovery {
    /// The segments that remain, oldest first; `sealed_bytes` is the end of each one's records.
    pub(super) segments: Vec<Segment>,
    /// The length of the last remaining segment's file (preallocated space included).
    pub(super) last_file_bytes: u64,
    pub(super) replay: Replay,
    pub(super) warnings: Vec<String>,
    /// The seq of a last segment removed because not even its header was written.
    pub(super) removed_seq: Option<u64>,
}

/// Replays every segment in `dir` and repairs the last one's torn tail.
pub(super) fn recover(
    disk: &dyn Disk,
    dir: &Path,
    opts: &WalOptions,
) -> Result<Recovery, WalError> {
    let mut segments = list_segments(disk, dir)?;
    let mut replay = Replay::default();
    let mut warnings = Vec::new();
    let mut file_bytes = Vec::with_capacity(segments.len());
    let count = segments.len();
    let mut removed_seq = None;
    for (i, seg) in segments.iter_mut().enumerate() {
        // Mapped, not copied (`Disk::read_shared`): replay copies out what it keeps, and
        // nothing writes the segment while the mapping lives (it is dropped below, before a
        // torn tail is repaired). A 64 MiB segment read into the heap cost a restart at 1M
        // keys a tenth of its time in page zeroing and copying.
        let bytes = disk
            .read_shared(&seg.path)
            .map_err(io_err(IoOp::Read, &seg.path))?;
        let is_last = i + 1 == count;
        let valid = replay_segment(&mut replay, seg, &bytes, is_last, skip_crc_bug(opts))?;
        seg.sealed_bytes = valid as u64;
        file_bytes.push(bytes.len() as u64);
        let dirty_end = nonzero_end(&bytes);
        drop(bytes);
        if valid < dirty_end || valid == 0 {
            assert!(is_last, "only the last segment can be torn");
            warnings.push(repair_torn_tail(disk, dir, seg, valid, dirty_end)?);
            removed_seq = (valid == 0).then_some(seg.seq);
        }
    }
    if removed_seq.is_some() {
        segments.pop();
        file_bytes.pop();
    }
    Ok(Recovery {
        segments,
        last_file_bytes: file_bytes.last().copied().unwrap_or(0),
        replay,
        warnings,
        removed_seq,
    })
}
