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
//! Layout (integers big-endian):
//!
//! ```text
//! "KEELMVCC" | format u32 = 1 | current_revision i64 | compact_revision i64
//! key_count u64 | per key: key | generation_count u32 | per generation:
//!     created (main i64, sub i64) | changes i64 | entry_count u32 |
//!     per entry: (main i64, sub i64) | lease i64 | value
//! log_count u64 | per log entry: (main i64, sub i64) | tombstone u8 | key
//! crc32 (IEEE) of everything before it, u32
//! ```
//! where a key or value is a u32 length and the bytes.

use bytes::{Buf, Bytes};
use imbl::Vector;

use super::key_index::{Entry, Generation, KeyIndex};
use super::revision::Revision;
use super::store::{LogEntry, Store};
use super::tree_index::{Key, KeyRange, TreeIndex};
use crate::sink::{Counter, CrcWriter, Sink};

const MAGIC: &[u8; 8] = b"KEELMVCC";
const FORMAT: u32 = 1;

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

fn put_bytes<S: Sink>(out: &mut S, bytes: &[u8]) -> Result<(), S::Error> {
    put_len(out, bytes.len())?;
    out.put(bytes)
}

fn put_len<S: Sink>(out: &mut S, len: usize) -> Result<(), S::Error> {
    let len = u32::try_from(len).unwrap_or_else(|_| panic!("length or count over u32"));
    out.put(&len.to_be_bytes())
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
        out.put(&self.current_revision.to_be_bytes())?;
        out.put(&self.compact_revision.to_be_bytes())?;
        out.put(&(self.index.len() as u64).to_be_bytes())?;
        for (key, key_index) in self.index.iter() {
            put_bytes(out, key)?;
            put_len(out, key_index.generations().len())?;
            for generation in key_index.generations() {
                out.put(&generation.created.to_bytes())?;
                out.put(&generation.changes.to_be_bytes())?;
                put_len(out, generation.entries.len())?;
                for entry in &generation.entries {
                    out.put(&entry.revision.to_bytes())?;
                    out.put(&entry.lease.to_be_bytes())?;
                    put_bytes(out, &entry.value)?;
                }
            }
        }
        out.put(&(self.log.len() as u64).to_be_bytes())?;
        for entry in &self.log {
            out.put(&entry.revision().to_bytes())?;
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
        let mut reader = Reader(body);
        if reader.take(MAGIC.len())? != MAGIC || reader.u32()? != FORMAT {
            return Err(SectionError::UnknownFormat);
        }
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
        if !reader.0.is_empty() {
            return Err(SectionError::Inconsistent);
        }
        Ok(store)
    }
}

/// A cursor over the section body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SectionError> {
        if self.0.len() < n {
            return Err(SectionError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, SectionError> {
        Ok(self.take(4)?.get_u32())
    }
    fn u64(&mut self) -> Result<u64, SectionError> {
        Ok(self.take(8)?.get_u64())
    }
    fn i64(&mut self) -> Result<i64, SectionError> {
        Ok(self.take(8)?.get_i64())
    }
    fn revision(&mut self) -> Result<Revision, SectionError> {
        Ok(Revision::new(self.i64()?, self.i64()?))
    }
    fn bytes(&mut self) -> Result<Bytes, SectionError> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
    /// A count of items each at least `item_bytes_min` long: rejects counts the remaining
    /// bytes cannot hold, so a damaged count cannot make us allocate without bound.
    fn count(&mut self, wide: bool, item_bytes_min: usize) -> Result<usize, SectionError> {
        let count = if wide {
            self.u64()?
        } else {
            u64::from(self.u32()?)
        };
        let count = usize::try_from(count).map_err(|_| SectionError::Truncated)?;
        if count.saturating_mul(item_bytes_min) > self.0.len() {
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
            let key = self.bytes()?;
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
            let revision = self.revision()?;
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
