//! The state snapshot: a member's applied state (the state machine's image) as one byte
//! string, the `data` of a raft snapshot. Not to be confused with a snapshot job
//! ([`crate::node::SnapshotJob`]: its parts, not yet encoded), the MVCC section
//! ([`crate::mvcc::section`]: one part) or the snapshot files (keel-storage's `SnapDir`, where
//! the driver keeps state snapshots).
//!
//! It is a list of tagged sections, so later state (the member table, say) adds a section
//! without changing the others:
//!
//! ```text
//! "KEELSTAT" | format u32 = 1 | section_count u32 |
//! per section: tag [u8; 4] | len u64 | bytes
//! crc32 (IEEE) of everything before it, u32            (integers big-endian)
//! ```
//!
//! Sections today: `mvcc` (the store, [`crate::mvcc::Store::encode_section`], itself
//! crc-checked), `leas` (the leases, [`crate::lease::Leases::encode_section`]), `memb`
//! (the member table, [`crate::membership::Membership::encode`]) and, optionally, `alrm` (the
//! alarm table, [`crate::alarm::Alarms::encode_section`]), `auth` (the auth store,
//! [`crate::auth::AuthStore::encode_section`]) and `v2st` (the v2 keys API's store,
//! [`crate::v2::V2Store::encode_section`]). A decoder
//! refuses a snapshot that lacks a section it needs, and ignores none silently: an unknown tag
//! is an error, since it means state this build would drop.
//!
//! The container's crc covers the sections' bytes, so a writer streaming it ([`put_head`],
//! [`put_section_head`], the section bytes, then the crc: [`crate::sink::CrcWriter::finish`])
//! must know each section's length before its bytes ([`encoded_len`] gives the total).
//!
//! A section added after snapshots were first written is *optional*: a snapshot written before
//! it (a build that did not know it) loads, and the state it holds starts empty. `alrm` is one:
//! a build without alarms could not have had any.
//!
//! ```
//! use keel_engine::state_snapshot::{decode_sections, encode_sections};
//! let bytes = encode_sections(&[(*b"mvcc", b"store".as_slice()), (*b"leas", b"".as_slice())]);
//! let sections = decode_sections(&bytes).unwrap();
//! assert_eq!(sections.get(b"mvcc"), Some(&b"store".as_slice()));
//! let mut corrupt = bytes.clone();
//! corrupt[30] ^= 1;
//! assert!(decode_sections(&corrupt).is_err());
//! ```

use std::collections::BTreeMap;

use crate::sink::Sink;

const MAGIC: &[u8; 8] = b"KEELSTAT";
const FORMAT: u32 = 1;

/// The store section.
pub const SECTION_MVCC: [u8; 4] = *b"mvcc";
/// The leases section.
pub const SECTION_LEASES: [u8; 4] = *b"leas";
/// The member table section.
pub const SECTION_MEMBERS: [u8; 4] = *b"memb";
/// The alarm table section (optional: snapshots written before alarms existed lack it).
pub const SECTION_ALARMS: [u8; 4] = *b"alrm";
/// The auth store section (optional: snapshots written before auth existed lack it).
pub const SECTION_AUTH: [u8; 4] = *b"auth";
/// The v2 keys API's store (optional: snapshots written before it existed lack it).
pub const SECTION_V2: [u8; 4] = *b"v2st";
/// The sections every snapshot must have.
pub const REQUIRED_SECTIONS: [[u8; 4]; 3] = [SECTION_MVCC, SECTION_LEASES, SECTION_MEMBERS];
/// The sections a snapshot may lack, because older builds wrote none: their state starts
/// empty.
pub const OPTIONAL_SECTIONS: [[u8; 4]; 3] = [SECTION_ALARMS, SECTION_AUTH, SECTION_V2];

/// Why a state snapshot could not be decoded or restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateSnapshotError {
    /// The container is damaged, truncated or of an unknown format.
    #[error("state snapshot: {0}")]
    Container(&'static str),
    /// A section this build needs is missing, or one it does not know is present.
    #[error("state snapshot: section {0:?} {1}")]
    Section(String, &'static str),
    /// The store section does not decode.
    #[error(transparent)]
    Mvcc(#[from] crate::mvcc::SectionError),
    /// The lease section does not decode.
    #[error(transparent)]
    Leases(#[from] crate::lease::leases::LeaseSectionError),
    /// The member table section does not decode.
    #[error(transparent)]
    Members(#[from] crate::membership::MembershipDecodeError),
    /// The alarm section does not decode.
    #[error(transparent)]
    Alarms(#[from] crate::alarm::AlarmSectionError),
    /// The auth section does not decode.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSectionError),
    /// The v2 store section does not decode.
    #[error(transparent)]
    V2(#[from] crate::v2::section::V2SectionError),
}

/// Encodes tagged sections into one crc-protected byte string.
pub fn encode_sections(sections: &[([u8; 4], &[u8])]) -> Vec<u8> {
    let total: usize = sections.iter().map(|(_, b)| b.len() + 12).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + total + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    let count = u32::try_from(sections.len()).unwrap_or_else(|_| panic!("too many sections"));
    out.extend_from_slice(&count.to_be_bytes());
    for (tag, bytes) in sections {
        out.extend_from_slice(tag);
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The length of [`encode_sections`]' output for sections of these lengths.
pub fn encoded_len(section_lens: &[u64]) -> u64 {
    let sections: u64 = section_lens.iter().map(|len| 12 + len).sum();
    MAGIC.len() as u64 + 8 + sections + 4
}

/// Puts the container's head, before its first section (streaming [`encode_sections`]).
pub fn put_head<S: Sink>(out: &mut S, section_count: usize) -> Result<(), S::Error> {
    out.put(MAGIC)?;
    out.put(&FORMAT.to_be_bytes())?;
    let count = u32::try_from(section_count).unwrap_or_else(|_| panic!("too many sections"));
    out.put(&count.to_be_bytes())
}

/// Puts a section's tag and length; its `len` bytes must follow.
pub fn put_section_head<S: Sink>(out: &mut S, tag: [u8; 4], len: u64) -> Result<(), S::Error> {
    out.put(&tag)?;
    out.put(&len.to_be_bytes())
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], StateSnapshotError> {
    if r.len() < n {
        return Err(StateSnapshotError::Container("truncated"));
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

fn take_array<const N: usize>(r: &mut &[u8]) -> Result<[u8; N], StateSnapshotError> {
    take(r, N)?
        .try_into()
        .map_err(|_| StateSnapshotError::Container("truncated"))
}

/// Decodes the sections of a byte string made by [`encode_sections`], checking its crc and
/// that no tag repeats.
pub fn decode_sections(bytes: &[u8]) -> Result<BTreeMap<[u8; 4], &[u8]>, StateSnapshotError> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or(StateSnapshotError::Container("truncated"))?;
    let (body, crc) = bytes.split_at(body_len);
    let mut r = body;
    if take(&mut r, MAGIC.len())? != MAGIC {
        return Err(StateSnapshotError::Container("not a keel state snapshot"));
    }
    let stored = u32::from_be_bytes(
        crc.try_into()
            .map_err(|_| StateSnapshotError::Container("truncated"))?,
    );
    if crc32fast::hash(body) != stored {
        return Err(StateSnapshotError::Container("crc32 mismatch"));
    }
    if u32::from_be_bytes(take_array(&mut r)?) != FORMAT {
        return Err(StateSnapshotError::Container("unknown format"));
    }
    let count = u32::from_be_bytes(take_array(&mut r)?);
    let mut sections = BTreeMap::new();
    for _ in 0..count {
        let tag: [u8; 4] = take_array(&mut r)?;
        let len = u64::from_be_bytes(take_array(&mut r)?);
        let len = usize::try_from(len).map_err(|_| StateSnapshotError::Container("too long"))?;
        let bytes = take(&mut r, len)?;
        if sections.insert(tag, bytes).is_some() {
            return Err(section_error(tag, "appears twice"));
        }
    }
    if !r.is_empty() {
        return Err(StateSnapshotError::Container("trailing bytes"));
    }
    Ok(sections)
}

/// A section error naming the tag.
pub fn section_error(tag: [u8; 4], what: &'static str) -> StateSnapshotError {
    StateSnapshotError::Section(String::from_utf8_lossy(&tag).into_owned(), what)
}

/// Decodes sections and checks that every required one is present and none is unknown.
pub fn decode_known(bytes: &[u8]) -> Result<BTreeMap<[u8; 4], &[u8]>, StateSnapshotError> {
    let sections = decode_sections(bytes)?;
    for tag in sections.keys() {
        if !REQUIRED_SECTIONS.contains(tag) && !OPTIONAL_SECTIONS.contains(tag) {
            return Err(section_error(*tag, "is unknown to this build"));
        }
    }
    for tag in REQUIRED_SECTIONS {
        if !sections.contains_key(&tag) {
            return Err(section_error(tag, "is missing"));
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let bytes = encode_sections(&[
            (SECTION_MVCC, b"abc"),
            (SECTION_LEASES, b""),
            (SECTION_MEMBERS, b""),
        ]);
        let sections = decode_known(&bytes).expect("decodes");
        assert_eq!(sections[&SECTION_MVCC], b"abc");
        for len in 0..bytes.len() {
            assert!(
                decode_sections(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 4;
            assert!(decode_sections(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn missing_unknown_and_repeated_sections_are_refused() {
        let only_mvcc = encode_sections(&[(SECTION_MVCC, b"")]);
        assert!(matches!(
            decode_known(&only_mvcc),
            Err(StateSnapshotError::Section(tag, "is missing")) if tag == "leas"
        ));
        let unknown =
            encode_sections(&[(SECTION_MVCC, b""), (SECTION_LEASES, b""), (*b"zzzz", b"")]);
        assert!(decode_known(&unknown).is_err());
        let twice = encode_sections(&[(SECTION_MVCC, b""), (SECTION_MVCC, b"")]);
        assert!(decode_sections(&twice).is_err());
    }

    #[test]
    fn optional_sections_may_be_absent_or_present() {
        // A snapshot written before the alarm table existed still loads.
        let before_alarms = encode_sections(&[
            (SECTION_MVCC, b""),
            (SECTION_LEASES, b""),
            (SECTION_MEMBERS, b""),
        ]);
        let sections = decode_known(&before_alarms).expect("an older snapshot loads");
        assert!(!sections.contains_key(&SECTION_ALARMS));
        let with_alarms = encode_sections(&[
            (SECTION_MVCC, b""),
            (SECTION_LEASES, b""),
            (SECTION_MEMBERS, b""),
            (SECTION_ALARMS, b"a"),
        ]);
        let sections = decode_known(&with_alarms).expect("a current snapshot loads");
        assert_eq!(sections[&SECTION_ALARMS], b"a");
        // Optional does not mean sufficient: the required ones are still required.
        let only_alarms = encode_sections(&[(SECTION_ALARMS, b"")]);
        assert!(decode_known(&only_alarms).is_err());
    }
}
