//! The key → [`KeyIndex`] map, ordered by key bytes (etcd's `treeIndex`).
//!
//! Ranges follow etcd's wire rules, resolved once by [`KeyRange::from_wire`]:
//!
//! ```
//! use keel_engine::mvcc::KeyRange;
//! assert_eq!(KeyRange::from_wire(b"a", b""), KeyRange::Single(b"a"));          // one key
//! assert_eq!(KeyRange::from_wire(b"a", b"c"), KeyRange::Interval(b"a", Some(b"c"))); // [a, c)
//! assert_eq!(KeyRange::from_wire(b"a", b"\0"), KeyRange::Interval(b"a", None)); // keys ≥ a
//! assert!(KeyRange::from_wire(b"a", b"c").contains(b"b"));
//! assert!(!KeyRange::from_wire(b"c", b"a").contains(b"b")); // end ≤ start: empty
//! ```

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;

use bytes::Bytes;

use super::key_index::KeyIndex;

/// A set of keys, as a request names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly this key.
    Single(&'a [u8]),
    /// Keys in `[start, end)`; `None` as end means no upper bound.
    Interval(&'a [u8], Option<&'a [u8]>),
}

impl<'a> KeyRange<'a> {
    /// Resolves etcd's `(key, range_end)`: empty `range_end` is the single key `key`,
    /// `range_end == "\0"` means every key ≥ `key`, anything else is `[key, range_end)`.
    pub fn from_wire(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Interval(key, None),
            end => KeyRange::Interval(key, Some(end)),
        }
    }

    /// True if `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeyRange::Single(k) => k == key,
            KeyRange::Interval(start, None) => start <= key,
            KeyRange::Interval(start, Some(end)) => start <= key && key < end,
        }
    }

    /// The bounds for a `BTreeMap` range; an inverted interval becomes an empty one rather than
    /// a panic.
    fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeyRange::Single(k) => (Bound::Included(k), Bound::Included(k)),
            KeyRange::Interval(start, None) => (Bound::Included(start), Bound::Unbounded),
            KeyRange::Interval(start, Some(end)) if end <= start => {
                (Bound::Included(start), Bound::Excluded(start))
            }
            KeyRange::Interval(start, Some(end)) => (Bound::Included(start), Bound::Excluded(end)),
        }
    }
}

/// Ordered map from key to its history.
#[derive(Clone, Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Bytes, KeyIndex>,
}

impl TreeIndex {
    /// Number of keys with any stored history.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key has stored history.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The history of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.keys.get(key)
    }

    /// The history of `key`, if any, for changing.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        self.keys.get_mut(key)
    }

    /// The history of `key`, created empty if absent, with the stored key (a refcounted clone,
    /// for events). A new key is stored as a fresh copy, so it never pins a larger buffer (say,
    /// a whole decoded raft entry) in memory.
    pub fn entry(&mut self, key: &[u8]) -> (Bytes, &mut KeyIndex) {
        // Two tree walks; one walk needs either an owned key up front (which would pin the
        // caller's buffer) or a conditional return of a borrow, which today's borrow checker
        // rejects.
        let stored = match self.keys.get_key_value(key) {
            Some((stored, _)) => stored.clone(),
            None => {
                let stored = Bytes::copy_from_slice(key);
                self.keys.insert(stored.clone(), KeyIndex::default());
                stored
            }
        };
        match self.keys.get_mut(key) {
            Some(index) => (stored, index),
            None => unreachable!("key inserted above"),
        }
    }

    /// Inserts `key`'s history as is (snapshot restore); `key` should not share a larger
    /// buffer.
    pub(super) fn insert(&mut self, key: Bytes, key_index: KeyIndex) {
        self.keys.insert(key, key_index);
    }

    /// Keeps only the keys for which `keep` returns true, visiting all in key order.
    pub(super) fn retain(&mut self, keep: impl FnMut(&Bytes, &mut KeyIndex) -> bool) {
        self.keys.retain(keep);
    }

    /// Keys in `range` with their histories, in key order. A single key is one lookup.
    pub fn range<'s>(&'s self, range: KeyRange<'_>) -> Range<'s> {
        match range {
            KeyRange::Single(key) => Range::One(self.keys.get_key_value(key)),
            _ => Range::Many(self.keys.range::<[u8], _>(range.bounds())),
        }
    }

    /// Keys in `range` with their histories, for changing.
    pub fn range_mut<'s>(
        &'s mut self,
        range: KeyRange<'_>,
    ) -> impl Iterator<Item = (&'s Bytes, &'s mut KeyIndex)> + 's {
        self.keys.range_mut::<[u8], _>(range.bounds())
    }

    /// All keys with their histories, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &KeyIndex)> {
        self.keys.iter()
    }

    /// Removes `key`'s history.
    pub fn remove(&mut self, key: &[u8]) -> Option<KeyIndex> {
        self.keys.remove(key)
    }
}

/// Iterator over the keys of a [`KeyRange`], from [`TreeIndex::range`].
#[derive(Clone, Debug)]
pub enum Range<'s> {
    /// A single-key range: at most one item.
    One(Option<(&'s Bytes, &'s KeyIndex)>),
    /// An interval.
    Many(btree_map::Range<'s, Bytes, KeyIndex>),
}

impl<'s> Iterator for Range<'s> {
    type Item = (&'s Bytes, &'s KeyIndex);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Range::One(item) => item.take(),
            Range::Many(range) => range.next(),
        }
    }
}
