//! The stored entries of one generation: the common case, a single entry, held inline.
//!
//! Most keys hold one generation of one entry (put once, or compacted down to their latest
//! version). Keeping that entry inside the key's history, rather than in a one-slot vector of
//! its own, saves a heap block per key and the vector's handle:
//!
//! ```
//! use bytes::Bytes;
//! use keel_engine::mvcc::{Entries, Entry, Revision};
//! let entry = |main| Entry { revision: Revision::new(main, 0), value: Bytes::new(), lease: 0 };
//! let mut entries = Entries::default();
//! assert!(entries.is_empty());
//! entries.push(entry(2));
//! assert_eq!(entries.capacity(), 1); // inline
//! entries.push(entry(3));
//! entries.push(entry(4));
//! assert_eq!(entries.iter().map(|e| e.revision.main).collect::<Vec<_>>(), [2, 3, 4]);
//! entries.drain_front(2);
//! entries.shrink_if_half_empty();
//! assert_eq!((entries.len(), entries.capacity()), (1, 1)); // inline again
//! assert_eq!(entries, Entries::from(vec![entry(4)]));
//! ```

use std::ops::Deref;

use super::key_index::Entry;

/// A generation's entries, oldest first; derefs to a slice. One entry is held inline; none,
/// or two and more, in a vector (never a vector of exactly one).
#[derive(Clone, Default)]
pub struct Entries(Slots);

#[derive(Clone)]
enum Slots {
    One(Entry),
    Many(Vec<Entry>),
}

impl Default for Slots {
    fn default() -> Self {
        Slots::Many(Vec::new())
    }
}

impl Entries {
    /// Slots held (≥ the length), for memory accounting: 1 when inline.
    pub fn capacity(&self) -> usize {
        match &self.0 {
            Slots::One(_) => 1,
            Slots::Many(entries) => entries.capacity(),
        }
    }

    /// Appends `entry`. The first is held inline; a second moves both to a vector of two,
    /// which then doubles when full (amortized O(1)).
    pub fn push(&mut self, entry: Entry) {
        match &mut self.0 {
            Slots::Many(entries) if entries.is_empty() => self.0 = Slots::One(entry),
            Slots::Many(entries) => {
                if entries.len() == entries.capacity() {
                    entries.reserve_exact(entries.len());
                }
                entries.push(entry);
            }
            Slots::One(_) => {
                let Slots::One(first) = std::mem::take(&mut self.0) else {
                    unreachable!("matched as one entry")
                };
                self.0 = Slots::Many(vec![first, entry]);
            }
        }
    }

    /// Drops the `count` oldest entries (at most all of them).
    pub fn drain_front(&mut self, count: usize) {
        assert!(count <= self.len(), "drained {count} of {}", self.len());
        if count == 0 {
            return;
        }
        match &mut self.0 {
            Slots::One(_) => self.0 = Slots::default(),
            Slots::Many(entries) => {
                entries.drain(..count);
                if entries.len() == 1 {
                    self.0 = Slots::One(entries.remove(0));
                }
            }
        }
    }

    /// Gives memory back when at most half the slots are used: a single entry goes back
    /// inline, a larger vector shrinks to its length. Compaction, the only caller, already
    /// spends time proportional to what it frees, which pays for the reallocation.
    pub fn shrink_if_half_empty(&mut self) {
        if let Slots::Many(entries) = &mut self.0 {
            if entries.len() == 1 {
                self.0 = Slots::One(entries.remove(0));
            } else if entries.len() <= entries.capacity() / 2 {
                entries.shrink_to_fit();
            }
        }
    }
}

impl Deref for Entries {
    type Target = [Entry];

    fn deref(&self) -> &[Entry] {
        match &self.0 {
            Slots::One(entry) => std::slice::from_ref(entry),
            Slots::Many(entries) => entries,
        }
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = &'a Entry;
    type IntoIter = std::slice::Iter<'a, Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<Vec<Entry>> for Entries {
    fn from(mut entries: Vec<Entry>) -> Self {
        if entries.len() == 1 {
            if let Some(only) = entries.pop() {
                return Entries(Slots::One(only));
            }
        }
        entries.shrink_to_fit();
        Entries(Slots::Many(entries))
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Entries {}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
