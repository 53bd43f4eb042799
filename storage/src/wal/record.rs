//! WAL records: the framing (length, crc, type), the payloads, and the rules that tell a torn
//! append from corruption (see the [`wal`](super) module docs for the format and the rules).

use super::error::{Malformed, RecordDamage};
use super::segment::Segment;
use super::{LogPos, SnapshotMark, RECORD_PAYLOAD_BYTES_MAX};

pub(super) const RECORD_HEADER_BYTES: usize = 9;
pub(super) const FORMAT_VERSION: u32 = 1;
const SECTOR_BYTES: usize = 512;

pub(super) const TYPE_SEGMENT_HEADER: u8 = 1;
pub(super) const TYPE_HARD_STATE: u8 = 2;
pub(super) const TYPE_ENTRY: u8 = 3;
pub(super) const TYPE_SNAPSHOT: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    pub(super) seq: u64,
    pub(super) first_index: u64,
    pub(super) snapshot: Option<SnapshotMark>,
}

#[derive(Debug)]
pub(super) enum Record<'a> {
    Header(SegmentHeader),
    HardState(&'a [u8]),
    Entry {
        index: u64,
        term: u64,
        data: &'a [u8],
    },
    Snapshot(SnapshotMark),
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a record whose crc matched; `Err` says why its payload is malformed.
pub(super) fn decode(kind: u8, p: &[u8]) -> Result<Record<'_>, Malformed> {
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
pub(super) fn frame_at(b: &[u8], o: usize) -> Result<(u8, &[u8], usize), RecordDamage> {
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
pub(super) fn explained_by_tear(b: &[u8], o: usize, bad: RecordDamage) -> bool {
    match bad {
        RecordDamage::HeaderCut | RecordDamage::BodyCut { .. } => true,
        RecordDamage::TooLong { .. } => false,
        RecordDamage::Crc { len } => {
            let end = o + RECORD_HEADER_BYTES + len as usize;
            let zero_from = nonzero_end(b);
            let zero_sector = (o.next_multiple_of(SECTOR_BYTES)..end)
                .step_by(SECTOR_BYTES)
                .any(|s| s + SECTOR_BYTES <= end && b[s..s + SECTOR_BYTES].iter().all(|x| *x == 0));
            // The zero suffix starts inside the record and runs past its end, or through a
            // sector boundary inside it: the file grew (or was preallocated) but those bytes
            // were never written, or an append stopped short in the middle of the record.
            let zero_tail = zero_from < end
                && (b.len() > end || zero_from.next_multiple_of(SECTOR_BYTES) < end);
            // Type 0 never exists: zeros from inside the header on mean nothing was written.
            zero_from < o + RECORD_HEADER_BYTES || zero_tail || zero_sector
        }
    }
}

/// The first offset after `from` where a valid, well-formed record starts (rule 3).
pub(super) fn valid_record_after(b: &[u8], from: usize) -> Option<usize> {
    let last = b.len().checked_sub(RECORD_HEADER_BYTES)?;
    (from..=last).find(|&p| {
        let kind = b[p + 8];
        let plausible = (TYPE_SEGMENT_HEADER..=TYPE_SNAPSHOT).contains(&kind)
            && u64::from(u32_at(b, p)) <= (b.len() - p - RECORD_HEADER_BYTES) as u64;
        plausible && matches!(frame_at(b, p), Ok((k, payload, _)) if decode(k, payload).is_ok())
    })
}

pub(super) fn encode_record(buf: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
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
pub(super) fn encode_segment_prefix(
    buf: &mut Vec<u8>,
    seg: &Segment,
    pos: LogPos,
    hs: Option<&[u8]>,
) {
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

/// Bytes [`all_zero`] and [`nonzero_end`] test at once: an OR over a fixed-size run, which the
/// compiler vectorizes (a byte-by-byte early exit does not), so scanning a 64 MiB preallocated
/// segment's zero tail takes milliseconds.
const ZERO_SCAN_BYTES: usize = 4096;

fn zero_run(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, x| acc | x) == 0
}

/// Whether every byte of `b` is zero.
pub(super) fn all_zero(b: &[u8]) -> bool {
    b.chunks(ZERO_SCAN_BYTES).all(zero_run)
}

/// The offset just past the last non-zero byte of `b` (0 when all are zero).
pub(super) fn nonzero_end(b: &[u8]) -> usize {
    for (i, run) in b.rchunks(ZERO_SCAN_BYTES).enumerate() {
        if !zero_run(run) {
            let start = b.len() - i * ZERO_SCAN_BYTES - run.len();
            return start + run.iter().rposition(|x| *x != 0).map_or(0, |p| p + 1);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_zero_scans_agree_with_a_byte_by_byte_scan() {
        let n = 3 * ZERO_SCAN_BYTES + 17;
        let slow_end = |b: &[u8]| b.iter().rposition(|x| *x != 0).map_or(0, |p| p + 1);
        assert_eq!(nonzero_end(&[]), 0, "empty");
        assert!(all_zero(&[]), "empty is all zero");
        let zeros = vec![0u8; n];
        assert_eq!(nonzero_end(&zeros), 0, "all zero");
        assert!(all_zero(&zeros), "all zero");
        for at in [
            0,
            1,
            16,
            ZERO_SCAN_BYTES - 1,
            ZERO_SCAN_BYTES,
            2 * ZERO_SCAN_BYTES + 5,
            n - 1,
        ] {
            let mut b = zeros.clone();
            b[at] = 7;
            assert_eq!(nonzero_end(&b), at + 1, "one non-zero byte at {at}");
            assert_eq!(nonzero_end(&b), slow_end(&b), "at {at}");
            assert!(!all_zero(&b), "a non-zero byte at {at}");
            b[0] = 1;
            assert_eq!(
                nonzero_end(&b),
                slow_end(&b),
                "two non-zero bytes, the last at {at}"
            );
        }
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
        // The same zeros running past the record's end: the file grew (or was preallocated),
        // data never written.
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
