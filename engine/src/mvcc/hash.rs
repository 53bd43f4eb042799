//! A deterministic digest of the kept history, to compare replicas (etcd's `HashKV`).
//!
//! The crc32 (IEEE, via `crc32fast`; etcd uses Castagnoli over its bolt encoding, so the
//! numbers differ from etcd's) covers, key by key in key order and oldest first, every stored
//! revision ≤ the hashed revision: its main and sub revision, whether it is a tombstone, the key,
//! the value and the lease. Two stores with the same history hash equal:
//!
//! ```
//! use bytes::Bytes;
//! use keel_engine::error::Error;
//! use keel_engine::mvcc::Store;
//! let build = || {
//!     let mut store = Store::default();
//!     store.write().put(b"a", Bytes::from_static(b"1"), 0); // rev 2
//!     store.write().put(b"a", Bytes::from_static(b"2"), 0); // rev 3
//!     store
//! };
//! let (one, two) = (build(), build());
//! assert_eq!(one.hash_kv(0).unwrap(), two.hash_kv(0).unwrap());
//! assert_eq!(one.hash_kv(0).unwrap().hashed_revision, 3);
//! assert_ne!(one.hash_kv(2).unwrap().hash, one.hash_kv(3).unwrap().hash);
//! assert_eq!(one.hash_kv(4), Err(Error::FutureRev));
//! ```

use super::store::Store;
use crate::error::Error;

/// The answer to a hash request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    /// The digest.
    pub hash: u32,
    /// The store's compaction revision (-1 if never compacted).
    pub compact_revision: i64,
    /// The store's current revision (what etcd puts in the response header).
    pub revision: i64,
    /// The revision the hash covers up to.
    pub hashed_revision: i64,
}

impl Store {
    /// Hashes the history kept at or before `revision` (≤ 0: the current revision). Errors
    /// (etcd's): `Compacted` if 0 < `revision` ≤ the compaction revision, `FutureRev` if it is
    /// after the current revision.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, Error> {
        if revision > 0 && revision <= self.compact_revision {
            return Err(Error::Compacted);
        }
        if revision > self.current_revision {
            return Err(Error::FutureRev);
        }
        let at = if revision <= 0 {
            self.current_revision
        } else {
            revision
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(b"key");
        for (key, key_index) in self.index.iter() {
            let last = key_index.generations().len() - 1;
            for (g, generation) in key_index.generations().iter().enumerate() {
                let tombstone_index = if g == last {
                    None
                } else {
                    generation.entries.len().checked_sub(1)
                };
                for (i, entry) in generation.entries.iter().enumerate() {
                    if entry.revision.main > at {
                        break;
                    }
                    hasher.update(&entry.revision.to_bytes());
                    hasher.update(&[u8::from(Some(i) == tombstone_index)]);
                    hasher.update(&(key.len() as u64).to_be_bytes());
                    hasher.update(key);
                    hasher.update(&(entry.value.len() as u64).to_be_bytes());
                    hasher.update(&entry.value);
                    hasher.update(&entry.lease.to_be_bytes());
                }
            }
        }
        Ok(HashKv {
            hash: hasher.finalize(),
            compact_revision: self.compact_revision,
            revision: self.current_revision,
            hashed_revision: at,
        })
    }
}
