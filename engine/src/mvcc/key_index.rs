//! The history of one key: generations of revisions, each holding the value written at it.
//!
//! A *generation* is one life of a key: from the put that creates it to the tombstone that
//! deletes it. The last generation is the key's current life; it is empty when the key is
//! deleted. Unlike etcd, which keeps values in a separate revision-keyed bucket, each revision
//! here carries its value, so a read is one tree lookup.
//!
//! # Worked example (etcd's `keyIndex` comment, carried over)
//!
//! `put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0)` on key `foo` gives
//!
//! ```text
//! generations:            compact(2):          compact(4):       compact(5) / compact(6):
//!    {empty}                 {empty}              {empty}           {empty}  -> key removed
//!    {4.0, 5.0(t)}           {4.0, 5.0(t)}        {4.0, 5.0(t)}
//!    {1.0, 2.0, 3.0(t)}      {2.0, 3.0(t)}
//! ```
//!
//! `compact(n)` drops every revision ≤ n except the largest one of the generation alive at `n`
//! (needed to answer a read at `n`), drops generations whose tombstone is ≤ n, and a key whose
//! only generation is empty is removed by the caller. A shorter history that stays alive,
//! `put(1.0); put(2.0); tombstone(3.0); put(4.0)`, checked:
//!
//! ```
//! use bytes::Bytes;
//! use keel_engine::mvcc::{KeyIndex, Revision};
//! let build = || {
//!     let mut ki = KeyIndex::default();
//!     ki.put(Revision::new(1, 0), Bytes::from_static(b"v1"), 0);
//!     ki.put(Revision::new(2, 0), Bytes::from_static(b"v2"), 0);
//!     ki.tombstone(Revision::new(3, 0));
//!     ki.put(Revision::new(4, 0), Bytes::from_static(b"v4"), 0);
//!     ki
//! };
//! let mains = |ki: &KeyIndex| ki.revisions().map(|r| r.main).collect::<Vec<_>>();
//! assert_eq!(mains(&build()), [1, 2, 3, 4]);
//! // Reads: revision 3 sees the tombstone (absent), 4 sees the new life at version 1.
//! assert_eq!(build().get(2).map(|f| (f.entry.revision.main, f.version)), Some((2, 2)));
//! assert!(build().get(3).is_none());
//! assert_eq!(build().get(4).map(|f| (f.created.main, f.version)), Some((4, 1)));
//! for (n, kept) in [(1, vec![1, 2, 3, 4]), (2, vec![2, 3, 4]), (3, vec![4]), (4, vec![4]),
//!                   (9, vec![4])] {
//!     let mut ki = build();
//!     ki.compact(n, &mut Vec::new());
//!     assert_eq!(mains(&ki), kept, "compact({n})");
//! }
//! ```

use bytes::Bytes;

use super::entries::Entries;
use super::revision::Revision;

/// One stored version of a key: the revision it was written at and what was written.
/// A tombstone is the last entry of a non-last generation; its value is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// When this version was written.
    pub revision: Revision,
    /// The value written (empty for a tombstone).
    pub value: Bytes,
    /// The lease attached (0 for none or for a tombstone).
    pub lease: i64,
}

/// One life of a key, from creation to tombstone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Changes made in this generation, tombstone included (etcd's `ver`); never decreases,
    /// even when compaction drops entries, so versions stay right.
    pub changes: i64,
    /// The revision that created this generation.
    pub created: Revision,
    /// The entries still stored, oldest first (one is held inline).
    pub entries: Entries,
}

impl Generation {
    /// Version of the entry at `index`: the number of puts in this life up to and including it.
    fn version_at(&self, index: usize) -> i64 {
        assert!(index < self.entries.len(), "entry index out of bounds");
        // `entries.len() - index - 1` entries follow it; cast is safe: bounded by memory.
        self.changes - (self.entries.len() - index - 1) as i64
    }
}

/// What a read at some revision finds for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found<'a> {
    /// The entry visible at the read revision (never a tombstone).
    pub entry: &'a Entry,
    /// The revision that created the generation (etcd's `create_revision`).
    pub created: Revision,
    /// The key's version at that entry (1 for the creating put).
    pub version: i64,
}

/// The history of one key (etcd's `keyIndex`). See the module doc for a worked example.
///
/// Memory: the common key, alive in its first generation with one stored entry, costs this
/// struct alone (the generation and its entry inline, in the block the tree's `Arc` points
/// at) plus its value's block; a second entry moves the entries to a vector of two, doubled
/// from there. Only a key deleted at least once since its last compaction keeps
/// its generations in a vector. The last change (`modified`) is not stored: it is the last
/// stored entry. A value is kept in a block of its own, never as a slice of a larger buffer
/// (see [`KeyIndex::put`]).
#[derive(Clone, Default)]
pub struct KeyIndex {
    lives: Lives,
}

/// A key's generations: inline while there is one, else a vector of at least two.
#[derive(Clone, Debug)]
enum Lives {
    One(Generation),
    Many(Vec<Generation>),
}

impl Default for Lives {
    fn default() -> Self {
        Lives::One(Generation::default())
    }
}

impl Lives {
    /// Generations as [`KeyIndex::from_generations`] checked them: at least one.
    fn from_vec(mut generations: Vec<Generation>) -> Lives {
        match generations.pop() {
            Some(only) if generations.is_empty() => Lives::One(only),
            Some(last) => {
                generations.push(last);
                generations.shrink_to_fit();
                Lives::Many(generations)
            }
            None => Lives::Many(generations),
        }
    }

    fn as_slice(&self) -> &[Generation] {
        match self {
            Lives::One(generation) => std::slice::from_ref(generation),
            Lives::Many(generations) => generations,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Generation] {
        match self {
            Lives::One(generation) => std::slice::from_mut(generation),
            Lives::Many(generations) => generations,
        }
    }

    /// Opens a new, empty generation.
    fn push_empty(&mut self) {
        match self {
            Lives::One(generation) => {
                let first = std::mem::take(generation);
                *self = Lives::Many(vec![first, Generation::default()]);
            }
            Lives::Many(generations) => push_doubling(generations, Generation::default()),
        }
    }

    /// Drops the `count` oldest generations (never all of them).
    fn drop_oldest(&mut self, count: usize) {
        assert!(
            count < self.as_slice().len(),
            "the current generation is never dropped"
        );
        if let Lives::Many(generations) = self {
            generations.drain(..count);
            if generations.len() == 1 {
                *self = Lives::from_vec(std::mem::take(generations));
            } else {
                shrink_if_half_empty(generations);
            }
        }
    }
}

impl PartialEq for KeyIndex {
    fn eq(&self, other: &Self) -> bool {
        self.generations() == other.generations()
    }
}

impl Eq for KeyIndex {}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex")
            .field("generations", &self.generations())
            .finish()
    }
}

impl KeyIndex {
    /// Rebuilds a key index from its generations (as [`KeyIndex::generations`] gave them),
    /// or `None` if they break an invariant: revisions strictly increase, every generation
    /// but the last is non-empty, a generation's changes are at least its stored entries.
    pub fn from_generations(generations: Vec<Generation>) -> Option<KeyIndex> {
        let last = generations.len().checked_sub(1)?;
        let mut modified: Option<Revision> = None;
        for (index, generation) in generations.iter().enumerate() {
            if index != last && generation.entries.is_empty() {
                return None;
            }
            if generation.changes < generation.entries.len() as i64 {
                return None;
            }
            for entry in &generation.entries {
                if modified.is_some_and(|m| entry.revision <= m) {
                    return None;
                }
                modified = Some(entry.revision);
            }
        }
        Some(KeyIndex {
            lives: Lives::from_vec(generations),
        })
    }

    /// Panics, with a message naming what is wrong, unless the history is well formed:
    /// there is a current generation; every other generation holds entries and ends in a
    /// tombstone (empty value, no lease); revisions strictly increase; each generation counts
    /// at least the changes it stores and was created no later than its first stored entry.
    /// O(entries).
    pub fn check_invariants(&self) {
        let last = self
            .generations()
            .len()
            .checked_sub(1)
            .unwrap_or_else(|| panic!("key index without a current generation"));
        let mut previous: Option<Revision> = None;
        for (index, generation) in self.generations().iter().enumerate() {
            assert!(
                generation.changes >= generation.entries.len() as i64,
                "generation {index}: {} changes, {} entries stored",
                generation.changes,
                generation.entries.len()
            );
            if index != last {
                let tombstone = generation.entries.last().unwrap_or_else(|| {
                    panic!("generation {index} is empty but not the current one")
                });
                assert!(
                    tombstone.value.is_empty() && tombstone.lease == 0,
                    "generation {index} does not end in a tombstone"
                );
            }
            if let Some(first) = generation.entries.first() {
                assert!(
                    generation.created <= first.revision,
                    "generation {index} created at {} after its entry {}",
                    generation.created,
                    first.revision
                );
            }
            for entry in &generation.entries {
                assert!(
                    previous.is_none_or(|p| p < entry.revision),
                    "revision {} stored after {:?}",
                    entry.revision,
                    previous
                );
                previous = Some(entry.revision);
            }
        }
    }

    /// The revision of the last change (put or tombstone): the last stored entry's (the
    /// default revision when nothing is stored).
    pub fn modified(&self) -> Revision {
        self.generations()
            .iter()
            .rev()
            .find_map(|g| g.entries.last())
            .map_or(Revision::default(), |e| e.revision)
    }

    /// The generations, oldest first; the last one is the current life (empty if deleted).
    pub fn generations(&self) -> &[Generation] {
        self.lives.as_slice()
    }

    /// All stored revisions, oldest first.
    pub fn revisions(&self) -> impl Iterator<Item = Revision> + '_ {
        self.generations()
            .iter()
            .flat_map(|g| g.entries.iter().map(|e| e.revision))
    }

    /// Entry slots allocated (≥ [`KeyIndex::entry_count`]), for memory accounting.
    pub fn entry_capacity(&self) -> usize {
        self.generations()
            .iter()
            .map(|g| g.entries.capacity())
            .sum()
    }

    /// Number of stored entries (tombstones included).
    pub fn entry_count(&self) -> usize {
        self.generations().iter().map(|g| g.entries.len()).sum()
    }

    /// True when nothing is stored: the key may be removed from the tree.
    pub fn is_empty(&self) -> bool {
        let generations = self.generations();
        generations.len() == 1 && generations[0].entries.is_empty()
    }

    /// True when the key exists at the latest revision.
    pub fn is_alive(&self) -> bool {
        self.generations()
            .last()
            .is_some_and(|g| !g.entries.is_empty())
    }

    /// Records a put at `revision`. Panics if `revision` does not move forward.
    ///
    /// The value is copied into a block of its own: the caller's `Bytes` is often a slice of a
    /// larger buffer (the decoded raft entry, which also holds the key and the request's
    /// framing, and for a txn every other op), and keeping the slice would keep all of it.
    pub fn put(&mut self, revision: Revision, value: Bytes, lease: i64) {
        let modified = self.modified();
        assert!(
            revision > modified,
            "put at {revision} not after {modified}"
        );
        let generation = self.current_mut();
        if generation.entries.is_empty() {
            generation.created = revision;
        }
        generation.entries.push(Entry {
            revision,
            value: Bytes::copy_from_slice(&value),
            lease,
        });
        generation.changes += 1;
    }

    /// Records a delete at `revision` and opens a new, empty generation.
    /// Returns false (and changes nothing) if the key is not alive.
    pub fn tombstone(&mut self, revision: Revision) -> bool {
        let modified = self.modified();
        assert!(
            revision > modified,
            "tombstone at {revision} not after {modified}"
        );
        if !self.is_alive() {
            return false;
        }
        let generation = self.current_mut();
        generation.entries.push(Entry {
            revision,
            value: Bytes::new(),
            lease: 0,
        });
        generation.changes += 1;
        self.lives.push_empty();
        true
    }

    fn current_mut(&mut self) -> &mut Generation {
        let generations = self.lives.as_mut_slice();
        let last = generations.len() - 1;
        &mut generations[last]
    }

    /// The latest live entry, if the key exists now: O(1).
    pub fn current(&self) -> Option<Found<'_>> {
        let generation = self.generations().last()?;
        let index = generation.entries.len().checked_sub(1)?;
        Some(Found {
            entry: &generation.entries[index],
            created: generation.created,
            version: generation.changes,
        })
    }

    /// What a read at main revision `at` sees, or `None` if the key did not exist then (or the
    /// revision needed was compacted away).
    pub fn get(&self, at: i64) -> Option<Found<'_>> {
        let generation = self.find_generation(at)?;
        // Entries are sorted by revision: count those at or before `at`.
        let visible = generation
            .entries
            .partition_point(|e| e.revision.main <= at);
        let index = visible.checked_sub(1)?;
        Some(Found {
            entry: &generation.entries[index],
            created: generation.created,
            version: generation.version_at(index),
        })
    }

    /// The entry written exactly at `revision` (a put, never a tombstone), if still stored.
    pub fn find(&self, revision: Revision) -> Option<Found<'_>> {
        let last = self.generations().len() - 1;
        for (g, generation) in self.generations().iter().enumerate() {
            let Ok(index) = generation
                .entries
                .binary_search_by(|e| e.revision.cmp(&revision))
            else {
                continue;
            };
            if g != last && index + 1 == generation.entries.len() {
                return None; // the tombstone
            }
            let version = generation.version_at(index);
            let entry = &generation.entries[index];
            return Some(Found {
                entry,
                created: generation.created,
                version,
            });
        }
        None
    }

    /// The generation alive at `at` (etcd's `findGeneration`).
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations().len() - 1;
        for (index, generation) in self.generations().iter().enumerate().rev() {
            let (Some(first), Some(final_entry)) =
                (generation.entries.first(), generation.entries.last())
            else {
                continue;
            };
            if index != last && final_entry.revision.main <= at {
                return None; // tombstoned at or before `at`
            }
            if first.revision.main <= at {
                return Some(generation);
            }
        }
        None
    }

    /// Revisions with main ≥ `since`, keeping only the last sub per main (etcd's `since`).
    pub fn since(&self, since: i64) -> Vec<Revision> {
        let mut out: Vec<Revision> = Vec::new();
        for revision in self.revisions().filter(|r| r.main >= since) {
            match out.last_mut() {
                Some(last) if last.main == revision.main => *last = revision,
                _ => out.push(revision),
            }
        }
        out
    }

    /// Drops every entry not needed to answer reads at main revisions ≥ `at` (see the module
    /// doc). Pushes the revision kept at or below `at`, if any, onto `kept`. Returns the number
    /// of entries freed.
    pub fn compact(&mut self, at: i64, kept: &mut Vec<Revision>) -> usize {
        self.compact_counting(at, kept).0
    }

    /// [`KeyIndex::compact`], also returning the value bytes of the entries it freed.
    pub fn compact_counting(&mut self, at: i64, kept: &mut Vec<Revision>) -> (usize, u64) {
        let generations = self.lives.as_mut_slice();
        let last = generations.len() - 1;
        // Skip generations tombstoned at or before `at`: nothing in them is readable.
        let mut index = 0;
        while index < last {
            let tombstone = generations[index].entries.last();
            assert!(
                tombstone.is_some(),
                "a non-last generation always ends in a tombstone"
            );
            if tombstone.is_some_and(|t| t.revision.main > at) {
                break;
            }
            index += 1;
        }
        let value_bytes = |entries: &[Entry]| -> u64 {
            entries.iter().map(|e| e.value.len() as u64).sum::<u64>()
        };
        let mut freed: usize = generations[..index].iter().map(|g| g.entries.len()).sum();
        let mut freed_bytes: u64 = generations[..index]
            .iter()
            .map(|g| value_bytes(&g.entries))
            .sum();
        let generation = &mut generations[index];
        let visible = generation
            .entries
            .partition_point(|e| e.revision.main <= at);
        if visible > 1 {
            freed_bytes += value_bytes(&generation.entries[..visible - 1]);
            generation.entries.drain_front(visible - 1);
            freed += visible - 1;
        }
        if visible > 0 && generation.entries.len() == 1 && index != last {
            // Only the tombstone is left: the generation is dead at `at`.
            freed += 1;
            freed_bytes += value_bytes(&generation.entries);
            index += 1;
        } else if visible > 0 {
            kept.push(generation.entries[0].revision);
        }
        self.lives.drop_oldest(index);
        // Give the memory back, not just the slots: a hot key compacted from a million
        // versions to one must not keep a million-entry buffer, and the common key, put a few
        // times and compacted to one entry, goes back to a one-entry block.
        for generation in self.lives.as_mut_slice() {
            generation.entries.shrink_if_half_empty();
        }
        (freed, freed_bytes)
    }
}

/// Pushes `item`, growing a full `items` to exactly twice its length (to one if empty) rather
/// than to `Vec`'s minimum of four slots: most keys hold one generation of one entry, and
/// doubling keeps pushes amortized O(1).
fn push_doubling<T>(items: &mut Vec<T>, item: T) {
    if items.len() == items.capacity() {
        items.reserve_exact(items.len().max(1));
    }
    items.push(item);
}

/// Shrinks `items` to its length when at most half its capacity is used. Compaction, the only
/// caller, already spends time proportional to what it frees, which pays for the reallocation.
fn shrink_if_half_empty<T>(items: &mut Vec<T>) {
    if items.len() <= items.capacity() / 2 {
        items.shrink_to_fit();
    }
}
