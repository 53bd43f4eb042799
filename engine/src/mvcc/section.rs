//! The MVCC section: the whole store encoded to bytes and back, one section of a state
//! snapshot ([`crate::state_snapshot`], the data of a raft snapshot).
//!
//! The encoding is keel's own, versioned and crc32-protected. It dumps the key index as it
//! is (every generation with its stored entries and change count), the change log watchers
//! catch up from, and the two revision counters, so a decoded store answers every read,
//! hash and catch-up exactly as the original:
//!
//! ```
//! use bytes::Bytes;
//! use keel_engine::mvcc::{KeyRange, Store};
//! let mut store = Store::default();
//! store.write().put(b"a", Bytes::from_static(b"1"), 0);
//! store.write().put(b"a", Bytes::from_static(b"2"), 0);
//! store.write().delete_range(KeyRange::Single(b"a"));
//! store.compact(3).unwrap();
//! let bytes = store.encode_section();
//! let restored = Store::decode_section(&bytes).unwrap();
//! assert_eq!(restored.hash_kv(0), store.hash_kv(0));
//! assert_eq!(restored.events(3, 4, 10), store.events(3, 4, 10));
//! let mut corrupt = bytes.clone();
//! corrupt[20] ^= 1;
//! assert!(Store::decode_section(&corrupt).is_err());
//! ```
//!
//! Layout of format 2, the one written (`uv`: an unsigned LEB128 varint; `sv`: a signed one,
//! zigzag-mapped; `u32`: big-endian):
//!
//! ```text
//! "KEELMVCC" | format u32 = 2 | current_revision sv | compact_revision sv
//! key_count uv | per key: shared uv | suffix_len uv | suffix | generation_count uv |
//!     per generation: created (main sv, sub sv) | changes sv | entry_count uv |
//!     per entry: (main sv, sub sv) | lease sv | value_len uv | value
//! log_count uv | per log entry: main - previous entry's main uv | sub uv | tombstone u8 |
//!     key_len uv | key
//! crc32 (IEEE) of everything before it, u32
//! ```
//!
//! A key is stored as the length of the prefix it shares with the key before it and the rest
//! (keys are sorted, and real key spaces share long prefixes such as `/registry/pods/`). At
//! 1M keys of 8 bytes with 256-byte values the section is ~20 % smaller than format 1's
//! fixed-width integers, and so is every snapshot file, transfer and fallback copy.
//!
//! Format 1, which fixed-width big-endian integers (`i64` for every revision part, lease and
//! change count, `u32` lengths and per-key counts, `u64` key and log counts, whole keys), is
//! still read: snapshot files and backups written before format 2 load unchanged.

use bytes::{Buf, Bytes};
use imbl::Vector;

use super::key_index::{Entry, Generation, KeyIndex};
use super::revision::Revision;
use super::store::{LogEntry, Store};
use super::tree_index::{Key, KeyRange, TreeIndex};
use crate::sink::{Counter, CrcWriter, Sink};

const MAGIC: &[u8; 8] = b"KEELMVCC";
/// The format written.
const FORMAT: u32 = 2;
/// The fixed-width format read for files written before format 2.
const FORMAT_FIXED: u32 = 1;

/// Why an MVCC section could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SectionError {
    /// The bytes end before the section does.
    #[error("mvcc section: truncated")]
    Truncated,
    /// Not a keel MVCC section, or a format this build does not know.
    #[error("mvcc section: unknown magic or format")]
    UnknownFormat,
    /// The checksum does not match: the bytes were damaged.
    #[error("mvcc section: checksum mismatch")]
    Checksum,
    /// The contents break an invariant of the store.
    #[error("mvcc section: inconsistent contents")]
    Inconsistent,
}

/// Appends `value` as an unsigned LEB128 varint.
fn put_uv<S: Sink>(out: &mut S, mut value: u64) -> Result<(), S::Error> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            buf[n] = low;
            n += 1;
            break;
        }
        buf[n] = low | 0x80;
        n += 1;
    }
    out.put(&buf[..n])
}

/// Appends `value` zigzag-mapped (small magnitudes of either sign stay short) as a varint.
fn put_sv<S: Sink>(out: &mut S, value: i64) -> Result<(), S::Error> {
    put_uv(out, ((value << 1) ^ (value >> 63)) as u64)
}

fn put_len<S: Sink>(out: &mut S, len: usize) -> Result<(), S::Error> {
    put_uv(out, len as u64)
}

fn put_bytes<S: Sink>(out: &mut S, bytes: &[u8]) -> Result<(), S::Error> {
    put_len(out, bytes.len())?;
    out.put(bytes)
}

fn put_revision<S: Sink>(out: &mut S, revision: Revision) -> Result<(), S::Error> {
    put_sv(out, revision.main)?;
    put_sv(out, revision.sub)
}

impl Store {
    /// Encodes the store (see the module doc for the layout).
    pub fn encode_section(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let Ok(()) = self.write_section_body(&mut out);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// The length of [`Store::encode_section`]'s bytes, from a walk that stores nothing.
    pub fn section_len(&self) -> u64 {
        let mut counter = Counter::default();
        let Ok(()) = self.write_section_body(&mut counter);
        counter.0 + 4
    }

    /// Streams the section to `out`: the body as one nested part, then its crc32.
    pub fn write_section(&self, out: &mut CrcWriter<'_>) -> std::io::Result<()> {
        out.begin_inner()?;
        self.write_section_body(out)?;
        let crc = out.end_inner()?;
        out.put(&crc.to_be_bytes())
    }

    /// Puts everything of the section before its crc32, in order.
    fn write_section_body<S: Sink>(&self, out: &mut S) -> Result<(), S::Error> {
        out.put(MAGIC)?;
        out.put(&FORMAT.to_be_bytes())?;
        put_sv(out, self.current_revision)?;
        put_sv(out, self.compact_revision)?;
        put_len(out, self.index.len())?;
        let mut previous: &[u8] = &[];
        for (key, key_index) in self.index.iter() {
            let shared = shared_prefix(previous, key);
            put_len(out, shared)?;
            put_bytes(out, &key[shared..])?;
            previous = key;
            put_len(out, key_index.generations().len())?;
            for generation in key_index.generations() {
                put_revision(out, generation.created)?;
                put_sv(out, generation.changes)?;
                put_len(out, generation.entries.len())?;
                for entry in &generation.entries {
                    put_revision(out, entry.revision)?;
                    put_sv(out, entry.lease)?;
                    put_bytes(out, &entry.value)?;
                }
            }
        }
        put_len(out, self.log.len())?;
        let mut previous_main = 0;
        for entry in &self.log {
            let revision = entry.revision();
            // The log is in revision order: the difference is never negative.
            put_uv(out, revision.main.abs_diff(previous_main))?;
            put_uv(out, revision.sub.unsigned_abs())?;
            previous_main = revision.main;
            out.put(&[u8::from(entry.tombstone)])?;
            put_bytes(out, &entry.key)?;
        }
        Ok(())
    }

    /// Decodes a store encoded by [`Store::encode_section`]. Values are copied out of
    /// `bytes` (one allocation per key and per value), so the state snapshot's buffer is not pinned.
    pub fn decode_section(bytes: &[u8]) -> Result<Store, SectionError> {
        let body_len = bytes.len().checked_sub(4).ok_or(SectionError::Truncated)?;
        let (body, crc) = bytes.split_at(body_len);
        let mut reader = Reader {
            rest: body,
            fixed: false,
        };
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(SectionError::UnknownFormat);
        }
        reader.fixed = match reader.take(4)?.get_u32() {
            FORMAT => false,
            FORMAT_FIXED => true,
            _ => return Err(SectionError::UnknownFormat),
        };
        let crc_bytes: [u8; 4] = crc.try_into().map_err(|_| SectionError::Truncated)?;
        if crc32fast::hash(body) != u32::from_be_bytes(crc_bytes) {
            return Err(SectionError::Checksum);
        }
        let current_revision = reader.i64()?;
        let compact_revision = reader.i64()?;
        if current_revision < 1 || compact_revision > current_revision || compact_revision < -1 {
            return Err(SectionError::Inconsistent);
        }
        let mut store = Store {
            current_revision,
            compact_revision,
            ..Store::default()
        };
        store.index = reader.index(
            current_revision,
            &mut store.stored_revisions,
            &mut store.stored_bytes,
        )?;
        store.log = reader.log(&store.index, current_revision, compact_revision)?;
        if !reader.rest.is_empty() {
            return Err(SectionError::Inconsistent);
        }
        Ok(store)
    }
}

/// The length of the prefix `a` and `b` share.
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A cursor over the section body, in format 2 or (`fixed`) format 1.
struct Reader<'a> {
    rest: &'a [u8],
    fixed: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SectionError> {
        if self.rest.len() < n {
            return Err(SectionError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    /// An unsigned varint; more than 64 bits of value is damage.
    fn uv(&mut self) -> Result<u64, SectionError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(SectionError::Inconsistent);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SectionError::Inconsistent)
    }
    fn i64(&mut self) -> Result<i64, SectionError> {
        if self.fixed {
            return Ok(self.take(8)?.get_i64());
        }
        let zigzag = self.uv()?;
        Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }
    fn revision(&mut self) -> Result<Revision, SectionError> {
        Ok(Revision::new(self.i64()?, self.i64()?))
    }
    fn len(&mut self) -> Result<usize, SectionError> {
        let len = if self.fixed {
            u64::from(self.take(4)?.get_u32())
        } else {
            self.uv()?
        };
        usize::try_from(len).map_err(|_| SectionError::Truncated)
    }
    fn bytes(&mut self) -> Result<Bytes, SectionError> {
        let len = self.len()?;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
    /// The next key of the index, given the one before it (format 2 stores what they share
    /// once).
    fn key(&mut self, previous: &[u8]) -> Result<Bytes, SectionError> {
        if self.fixed {
            return self.bytes();
        }
        let shared = self.len()?;
        if shared > previous.len() {
            return Err(SectionError::Inconsistent);
        }
        let suffix_len = self.len()?;
        let suffix = self.take(suffix_len)?;
        let mut key = Vec::with_capacity(shared + suffix.len());
        key.extend_from_slice(&previous[..shared]);
        key.extend_from_slice(suffix);
        Ok(Bytes::from(key))
    }
    /// The next revision of the log, given the one before it (format 2 stores the difference
    /// of their main parts).
    fn log_revision(&mut self, previous: Revision) -> Result<Revision, SectionError> {
        if self.fixed {
            return self.revision();
        }
        let delta = i64::try_from(self.uv()?).map_err(|_| SectionError::Inconsistent)?;
        let sub = i64::try_from(self.uv()?).map_err(|_| SectionError::Inconsistent)?;
        let main = previous
            .main
            .checked_add(delta)
            .ok_or(SectionError::Inconsistent)?;
        Ok(Revision::new(main, sub))
    }
    /// A count of items each at least `item_bytes_min` long (in format 1: `wide` counts are
    /// u64, the others u32): rejects counts the remaining bytes cannot hold, so a damaged count
    /// cannot make us allocate without bound.
    fn count(&mut self, wide: bool, item_bytes_min: usize) -> Result<usize, SectionError> {
        let count = match (self.fixed, wide) {
            (true, true) => self.take(8)?.get_u64(),
            (true, false) => u64::from(self.take(4)?.get_u32()),
            (false, _) => self.uv()?,
        };
        let count = usize::try_from(count).map_err(|_| SectionError::Truncated)?;
        let item_bytes_min = if self.fixed { item_bytes_min } else { 1 };
        if count.saturating_mul(item_bytes_min) > self.rest.len() {
            return Err(SectionError::Truncated);
        }
        Ok(count)
    }

    fn index(
        &mut self,
        current: i64,
        stored: &mut u64,
        stored_bytes: &mut u64,
    ) -> Result<TreeIndex, SectionError> {
        let mut index = TreeIndex::default();
        let mut previous: Option<Bytes> = None;
        for _ in 0..self.count(true, 8)? {
            let key = self.key(previous.as_deref().unwrap_or_default())?;
            if key.is_empty() || previous.as_ref().is_some_and(|p| *p >= key) {
                return Err(SectionError::Inconsistent); // keys are unique and sorted
            }
            let mut generations = Vec::new();
            for _ in 0..self.count(false, 28)? {
                let created = self.revision()?;
                let changes = self.i64()?;
                let mut entries = Vec::new();
                for _ in 0..self.count(false, 28)? {
                    let revision = self.revision()?;
                    let lease = self.i64()?;
                    let value = self.bytes()?;
                    if revision.main > current {
                        return Err(SectionError::Inconsistent);
                    }
                    entries.push(Entry {
                        revision,
                        value,
                        lease,
                    });
                }
                *stored += entries.len() as u64;
                *stored_bytes += entries
                    .iter()
                    .map(|e| super::store::revision_bytes(key.len(), e.value.len()))
                    .sum::<u64>();
                generations.push(Generation {
                    changes,
                    created,
                    entries: entries.into(),
                });
            }
            let key_index =
                KeyIndex::from_generations(generations).ok_or(SectionError::Inconsistent)?;
            if key_index.is_empty() {
                return Err(SectionError::Inconsistent);
            }
            index.insert(Key::from(&key[..]), key_index);
            previous = Some(key);
        }
        Ok(index)
    }

    fn log(
        &mut self,
        index: &TreeIndex,
        current: i64,
        compacted: i64,
    ) -> Result<Vector<LogEntry>, SectionError> {
        let count = self.count(true, 21)?;
        let mut log = Vector::new();
        let mut previous = Revision::default();
        for _ in 0..count {
            let revision = self.log_revision(previous)?;
            let tombstone = match self.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return Err(SectionError::Inconsistent),
            };
            let key = self.bytes()?;
            if revision <= previous || revision.main > current {
                return Err(SectionError::Inconsistent);
            }
            previous = revision;
            // A logged put is stored (unless compaction freed it at the compaction revision).
            let found = index.range(KeyRange::Single(&key)).next();
            let put_stored = found.is_some_and(|(_, ki)| ki.find(revision).is_some());
            let freed_at_compaction = revision.main == compacted;
            if revision.main < compacted || (!tombstone && !put_stored && !freed_at_compaction) {
                return Err(SectionError::Inconsistent);
            }
            // Share the index's copy of the key when it has one.
            let key = found.map_or_else(|| Key::from(&key[..]), |(stored, _)| stored.clone());
            let entry = LogEntry::try_new(revision, key, tombstone);
            log.push_back(entry.ok_or(SectionError::Inconsistent)?);
        }
        Ok(log)
    }
}

#[cfg(test)]
mod tests;
