//! [`Store::check_invariants`]: the whole store walked and cross-checked.
//!
//! What must hold between any two calls on a store, revisions first:
//!
//! ```text
//! -1 ≤ compact_revision ≤ current_revision, 1 ≤ current_revision
//! log revisions strictly increase, all in [compact_revision, current_revision], and the last
//!     one is at current_revision once anything was written (so the next txn's revision,
//!     current + 1, was never used)
//! every logged put after the compaction revision is stored; every logged delete after it
//!     is a stored tombstone
//! every key holds history, well formed (KeyIndex::check_invariants), none after current
//! stored_revisions = the entries stored over all keys
//! stored_bytes = revision_bytes(key, value) summed over those entries
//! ```

use super::revision::Revision;
use super::store::Store;

impl Store {
    /// Panics, with a message naming what is wrong, unless the store's revisions, change log
    /// and key histories agree (see the module doc of `mvcc::invariants` for the list).
    ///
    /// Meant for tests and the simulator. It walks the whole store: O(stored revisions + log
    /// entries × log keys) time, no allocation.
    pub fn check_invariants(&self) {
        assert!(
            self.current_revision >= 1,
            "current revision {} below 1",
            self.current_revision
        );
        assert!(
            (-1..=self.current_revision).contains(&self.compact_revision),
            "compact revision {} outside [-1, current {}]",
            self.compact_revision,
            self.current_revision
        );
        self.check_log();
        let mut stored: u64 = 0;
        let mut stored_bytes: u64 = 0;
        for (key, key_index) in self.index.iter() {
            assert!(!key_index.is_empty(), "key {key:?} kept with no history");
            key_index.check_invariants();
            assert!(
                key_index.modified().main <= self.current_revision,
                "key {key:?} changed at {}, after the current revision {}",
                key_index.modified(),
                self.current_revision
            );
            stored += key_index.entry_count() as u64;
            for generation in key_index.generations() {
                for entry in &generation.entries {
                    stored_bytes += super::store::revision_bytes(key.len(), entry.value.len());
                }
            }
        }
        assert_eq!(stored, self.stored_revisions, "stored revision count");
        assert_eq!(stored_bytes, self.stored_bytes, "stored quota bytes");
    }

    fn check_log(&self) {
        let mut previous: Option<Revision> = None;
        for entry in &self.log {
            let revision = entry.revision();
            assert!(
                previous.is_none_or(|p| p < revision),
                "log revision {revision} after {previous:?}"
            );
            previous = Some(revision);
            assert!(
                (self.compact_revision..=self.current_revision).contains(&revision.main),
                "log revision {revision} outside [compact {}, current {}]",
                self.compact_revision,
                self.current_revision
            );
            if revision.main == self.compact_revision {
                continue; // compaction may have freed it
            }
            let key_index = self.index.get(&entry.key).unwrap_or_else(|| {
                panic!("logged change {revision} of {:?} is not stored", entry.key)
            });
            if entry.tombstone {
                let last = key_index.generations().len() - 1;
                let ends = key_index.generations()[..last]
                    .iter()
                    .any(|g| g.entries.last().is_some_and(|e| e.revision == revision));
                assert!(
                    ends,
                    "logged delete {revision} of {:?} is no tombstone",
                    entry.key
                );
            } else {
                let found = key_index.find(revision);
                assert!(
                    found.is_some(),
                    "logged put {revision} of {:?} is not stored",
                    entry.key
                );
            }
        }
        if self.current_revision > 1 {
            assert_eq!(
                previous.map(|r| r.main),
                Some(self.current_revision),
                "the last logged change is not at the current revision"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::mvcc::{KeyRange, Store};

    /// Puts, overwrites, deletes and a compaction: revisions 2 to 7.
    fn used() -> Store {
        let mut store = Store::new();
        let v = Bytes::from_static(b"v");
        store.write().put(b"a", v.clone(), 0);
        store.write().put(b"b", v.clone(), 0);
        let mut txn = store.write();
        txn.put(b"a", v.clone(), 0);
        txn.put(b"c", v.clone(), 0);
        txn.end();
        store
            .write()
            .delete_range(KeyRange::Interval(b"a", Some(b"c")));
        store.write().put(b"a", v.clone(), 7);
        store.compact(4).expect("compact");
        store.write().put(b"d", v, 0);
        store
    }

    #[test]
    fn invariants_hold_through_writes_compaction_and_a_snapshot() {
        let mut store = Store::new();
        store.check_invariants();
        store = used();
        store.check_invariants();
        assert_eq!(store.current_revision(), 7);
        store.compact(7).expect("compact");
        store.check_invariants();
        let restored = Store::decode_section(&store.encode_section()).expect("decode");
        restored.check_invariants();
    }

    #[test]
    #[should_panic(expected = "log revision 7.0 outside")]
    fn a_revision_that_went_back_is_caught() {
        let mut store = used();
        store.current_revision -= 1;
        store.check_invariants();
    }

    #[test]
    #[should_panic(expected = "the last logged change is not at the current revision")]
    fn a_revision_that_skipped_ahead_is_caught() {
        let mut store = used();
        store.current_revision += 1;
        store.check_invariants();
    }

    #[test]
    #[should_panic(expected = "revision 6.0 reused: the log already holds 7.0")]
    fn a_write_at_a_used_revision_panics() {
        let mut store = used();
        store.current_revision -= 2; // the next txn would write at 6, which the log holds
        store.write().put(b"x", Bytes::from_static(b"v"), 0);
    }

    #[test]
    #[should_panic(expected = "compact revision 8 outside")]
    fn a_compaction_past_the_current_revision_is_caught() {
        let mut store = used();
        store.compact_revision = 8;
        store.check_invariants();
    }

    #[test]
    #[should_panic(expected = "stored revision count")]
    fn a_wrong_stored_revision_count_is_caught() {
        let mut store = used();
        store.stored_revisions += 1;
        store.check_invariants();
    }

    #[test]
    #[should_panic(expected = "stored quota bytes")]
    fn a_wrong_quota_byte_count_is_caught() {
        let mut store = used();
        store.stored_bytes -= 1;
        store.check_invariants();
    }

    #[test]
    #[should_panic(expected = "is not stored")]
    fn a_logged_put_that_is_not_stored_is_caught() {
        let mut store = used();
        store.index.remove(b"d");
        store.stored_revisions -= 1;
        store.check_invariants();
    }
}
