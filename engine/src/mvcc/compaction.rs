//! Physical compaction: freeing every revision that no read at or after a revision needs.
//!
//! `compact(n)` keeps, for each key, every revision after `n` plus the latest revision ≤ `n`
//! unless that is a tombstone; a key left with nothing is removed (etcd's rule). Only keys
//! changed since the previous compaction are visited (the store's change log names them), so a
//! compaction costs O(changes since the last one × log keys), or one O(keys) pass over the tree
//! when there were more changes than keys.
//!
//! ```
//! use bytes::Bytes;
//! use keel_engine::error::Error;
//! use keel_engine::mvcc::{KeyRange, RangeOptions, Store};
//! let mut store = Store::default();
//! let v = |s: &'static str| Bytes::from_static(s.as_bytes());
//! store.write().put(b"foo", v("1"), 0); // rev 2
//! store.write().put(b"foo", v("2"), 0); // rev 3
//! store.write().put(b"bar", v("x"), 0); // rev 4
//! store.write().delete_range(KeyRange::Single(b"bar")); // rev 5
//! assert_eq!(store.stored_revision_count(), 4);
//! let stats = store.compact(5).unwrap();
//! // foo keeps 3 (its latest ≤ 5); bar's put and tombstone are freed, bar is gone.
//! assert_eq!((stats.revisions_freed, stats.keys_removed), (3, 1));
//! assert_eq!(store.stored_revision_count(), 1);
//! assert_eq!(store.key_count(), 1);
//! let at = |revision| RangeOptions { revision, ..Default::default() };
//! assert_eq!(store.range(KeyRange::Single(b"foo"), &at(4)), Err(Error::Compacted));
//! assert_eq!(store.range(KeyRange::Single(b"foo"), &at(5)).unwrap().kvs[0].value, v("2"));
//! assert_eq!(store.compact(5), Err(Error::Compacted));
//! assert_eq!(store.compact(6), Err(Error::FutureRev));
//! ```

use super::revision::Revision;
use super::store::Store;
use super::tree_index::{Key, KeyRange};
use crate::error::Error;

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Keys whose history was examined.
    pub keys_visited: u64,
    /// Stored revisions freed.
    pub revisions_freed: u64,
    /// Revisions ≤ the compaction revision kept (one per live key that was visited).
    pub revisions_kept: u64,
    /// Keys removed because nothing of them was left.
    pub keys_removed: u64,
}

impl Store {
    /// Compacts at `revision`: afterwards reads before `revision` fail with `Compacted`, reads
    /// at or after it answer as before. Errors (etcd's): `Compacted` if `revision` ≤ the
    /// compaction revision, `FutureRev` if it is after the current revision.
    pub fn compact(&mut self, revision: i64) -> Result<CompactStats, Error> {
        if revision <= self.compact_revision {
            return Err(Error::Compacted);
        }
        if revision > self.current_revision {
            return Err(Error::FutureRev);
        }
        // Changes after the previous compaction, up to this one (the log also holds those at
        // the previous compaction revision, already compacted).
        let previous = self.compact_revision;
        let changed_start = self.log_partition_point(|e| e.revision().main <= previous);
        let changed_end = self.log_partition_point(|e| e.revision().main <= revision);
        let mut stats = CompactStats::default();
        let mut kept = Vec::new();
        if changed_end - changed_start >= self.index.len() {
            // Most keys changed: one ordered pass over the tree beats sorting the changes.
            self.compact_every_key(revision, &mut kept, &mut stats);
        } else {
            let mut keys: Vec<Key> = self
                .log
                .focus()
                .narrow(changed_start..changed_end)
                .into_iter()
                .map(|e| e.key.clone())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for key in &keys {
                self.compact_key(key, revision, &mut kept, &mut stats);
            }
        }
        stats.revisions_kept = kept.len() as u64;
        assert!(
            kept.iter().all(|r| r.main <= revision),
            "kept revisions are ≤ {revision}"
        );
        assert!(
            stats.revisions_freed <= self.stored_revisions,
            "freed more than stored"
        );
        self.stored_revisions -= stats.revisions_freed;
        // The log keeps changes from the compaction revision on (watchers may start there).
        let dropped = self.log_partition_point(|e| e.revision().main < revision);
        self.log = self.log.split_off(dropped);
        assert!(
            previous < revision && revision <= self.current_revision,
            "compaction moved from {previous} to {revision} with the store at {}",
            self.current_revision
        );
        self.compact_revision = revision;
        Ok(stats)
    }

    /// Compacts every key at `revision`, in key order, a batch of keys at a time: a key
    /// whose history is a single live revision loses nothing to any compaction (that
    /// revision is the latest at or before `revision`, if it is, and no tombstone), so it is
    /// only read; the others are changed one tree walk each.
    fn compact_every_key(
        &mut self,
        revision: i64,
        kept: &mut Vec<Revision>,
        stats: &mut CompactStats,
    ) {
        const BATCH: usize = 1024;
        // The least key not yet visited: the empty string, then the last key visited followed
        // by a zero byte (the least byte string after it).
        let mut start: Vec<u8> = Vec::new();
        let mut changing: Vec<Key> = Vec::with_capacity(BATCH);
        loop {
            let mut last = None;
            for (key, key_index) in self
                .index
                .range(KeyRange::Interval(&start, None))
                .take(BATCH)
            {
                last = Some(key);
                if key_index.entry_count() == 1 && key_index.is_alive() {
                    stats.keys_visited += 1;
                    let only = key_index.modified();
                    if only.main <= revision {
                        kept.push(only);
                    }
                } else {
                    changing.push(key.clone());
                }
            }
            let Some(last) = last else { break };
            start.clear();
            start.extend_from_slice(last);
            start.push(0);
            for key in changing.drain(..) {
                self.compact_key(&key, revision, kept, stats);
            }
        }
    }

    /// Compacts one key's history at `revision`, removing the key if nothing is left.
    fn compact_key(
        &mut self,
        key: &[u8],
        revision: i64,
        kept: &mut Vec<Revision>,
        stats: &mut CompactStats,
    ) {
        let Some(key_index) = self.index.get_mut(key) else {
            return;
        };
        stats.keys_visited += 1;
        let (freed, freed_value_bytes) = key_index.compact_counting(revision, kept);
        stats.revisions_freed += freed as u64;
        let freed_bytes =
            freed as u64 * super::store::revision_bytes(key.len(), 0) + freed_value_bytes;
        assert!(
            freed_bytes <= self.stored_bytes,
            "compaction freed {freed_bytes} quota bytes of {}",
            self.stored_bytes
        );
        self.stored_bytes -= freed_bytes;
        if key_index.is_empty() {
            stats.keys_removed += 1;
            self.index.remove(key);
        }
    }
}
