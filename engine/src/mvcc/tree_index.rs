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

use std::ops::Bound;
use std::sync::Arc;

use imbl::ordmap::{OrdMap, RangedIter};

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

/// A stored key: its bytes in one reference-counted block (16 bytes where it is held, the
/// count and the bytes in one allocation), shared by the tree and the change log. A `Bytes`
/// would cost 32 bytes where it is held plus, once shared, a separate 24-byte header block and
/// its own data block.
pub type Key = Arc<[u8]>;

/// A key's history as the map holds it: shared, so that when a write copies a tree node that a
/// snapshot view also holds, its sibling histories are reference-count bumps, not deep copies.
type Shared = Arc<KeyIndex>;

/// Ordered map from key to its history.
///
/// A persistent B-tree ([`imbl::OrdMap`]): [`Clone`] is O(1) and shares every node; a change
/// afterwards copies only the nodes on its path (O(log keys)) and the history it changes, so
/// a state snapshot can hold a view of the index while writes go on. Nodes no clone shares
/// are changed in place, as a `BTreeMap`'s would be.
#[derive(Clone, Debug, Default)]
pub struct TreeIndex {
    keys: OrdMap<Key, Shared>,
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
        self.keys.get(key).map(|ki| &**ki)
    }

    /// The history of `key`, if any, for changing (copied first if a view shares it).
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        self.keys.get_mut(key).map(Arc::make_mut)
    }

    /// Calls `f` with the stored key (for a refcounted clone, for the change log) and the
    /// history of `key`, created empty if absent. One tree walk when the key exists. A new key
    /// is stored as a fresh copy, so it never pins a larger buffer (say, a whole decoded raft
    /// entry).
    pub fn update<R>(&mut self, key: &[u8], f: impl FnOnce(&Key, &mut KeyIndex) -> R) -> R {
        if let Some((stored, index)) = self.keys.get_key_value_mut(key) {
            return f(stored, Arc::make_mut(index));
        }
        let stored: Key = Key::from(key);
        let mut index = KeyIndex::default();
        let result = f(&stored, &mut index);
        self.keys.insert(stored, Arc::new(index));
        result
    }

    /// Inserts `key`'s history as is (snapshot restore).
    pub(super) fn insert(&mut self, key: Key, key_index: KeyIndex) {
        self.keys.insert(key, Arc::new(key_index));
    }

    /// Keys in `range` with their histories, in key order. A single key is one lookup.
    pub fn range<'s>(&'s self, range: KeyRange<'_>) -> Range<'s> {
        let inner = match range {
            KeyRange::Single(key) => Inner::One(self.keys.get_key_value(key)),
            _ => Inner::Many(self.keys.range::<_, [u8]>(range.bounds())),
        };
        Range(inner)
    }

    /// The keys in `range` whose history satisfies `select`, in key order (refcounted
    /// clones), for a caller that then changes them one by one with
    /// [`TreeIndex::get_mut`].
    pub fn keys_where(
        &self,
        range: KeyRange<'_>,
        mut select: impl FnMut(&KeyIndex) -> bool,
    ) -> Vec<Key> {
        self.range(range)
            .filter(|(_, ki)| select(ki))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// All keys with their histories, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &KeyIndex)> {
        self.keys.iter().map(|(key, ki)| (key, &**ki))
    }

    /// Removes `key`'s history.
    pub fn remove(&mut self, key: &[u8]) -> Option<KeyIndex> {
        self.keys.remove(key).map(Arc::unwrap_or_clone)
    }
}

/// Iterator over the keys of a [`KeyRange`], from [`TreeIndex::range`].
#[derive(Clone)]
pub struct Range<'s>(Inner<'s>);

#[derive(Clone)]
enum Inner<'s> {
    /// A single-key range: at most one item.
    One(Option<(&'s Key, &'s Shared)>),
    /// An interval.
    Many(RangedIter<'s, Key, Shared, imbl::shared_ptr::DefaultSharedPtr>),
}

impl std::fmt::Debug for Range<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::One(item) => f.debug_tuple("Range::One").field(item).finish(),
            Inner::Many(_) => f.write_str("Range::Many(..)"),
        }
    }
}

impl<'s> Iterator for Range<'s> {
    type Item = (&'s Key, &'s KeyIndex);

    fn next(&mut self) -> Option<Self::Item> {
        let (key, ki) = match &mut self.0 {
            Inner::One(item) => item.take()?,
            Inner::Many(range) => range.next()?,
        };
        Some((key, &**ki))
    }
}
