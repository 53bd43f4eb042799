//! Watcher groups: the watchers that watch the same key range, and the index that finds the
//! groups an event's key falls in.
//!
//! A group is shared by every watcher of its range (two clients watching the prefix `svc/`
//! cost one group) and holds the *synced* ones in a list, so a notify visits only watchers
//! that take live events. Unsynced members are counted but listed in the hub's unsynced
//! queue instead. The index keeps single-key groups by key and range groups by start key:
//!
//! ```text
//! single:  "a" → g0            an event on "b" visits: single["b"] (none),
//! ranged:  "a" → [g1 ("a".."c"), g2 ("a"..∞)]      then every range group starting at or
//!          "b" → [g3 ("b".."ba")]                   before "b": g1, g2 (contain "b"), g3 (yes)
//! ```

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

/// Watchers sharing one key range.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) key: Bytes,
    /// Empty: the single key; `[0]`: every key from `key` on; else the exclusive end.
    pub(super) end: Bytes,
    /// Synced members, each at the position its watcher records.
    pub(super) synced: Vec<u32>,
    /// All members, synced or not; 0 on a free slot.
    pub(super) members: u32,
}

impl Group {
    /// Whether `key` is in the group's range.
    pub(super) fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.key.as_ref()
        } else {
            key >= self.key.as_ref() && (self.end.as_ref() == [0] || key < self.end.as_ref())
        }
    }
}

/// Every group, by index, and the key index over the live ones.
///
/// Invariants: a slot is live exactly when it has members; every live group is in the index
/// exactly once (under its key, in `single` or `ranged` by whether it has an end) and the
/// index names only live groups; no two live groups have the same range.
#[derive(Debug, Default)]
pub(super) struct Groups {
    groups: Vec<Group>,
    free: Vec<u32>,
    /// Single-key groups by key.
    single: BTreeMap<Bytes, u32>,
    /// Range groups by start key.
    ranged: BTreeMap<Bytes, Vec<u32>>,
}

impl Groups {
    /// Slots, live or free.
    pub(super) fn slots(&self) -> usize {
        self.groups.len()
    }

    /// Group `g` (live or free).
    pub(super) fn get(&self, g: u32) -> &Group {
        &self.groups[g as usize]
    }

    /// A new member of the group of `(key, end)`, created if there is none; returns the group.
    pub(super) fn join(&mut self, key: Bytes, end: Bytes) -> u32 {
        let g = match self.find(&key, &end) {
            Some(g) => g,
            None => self.create(key, end),
        };
        let group = &mut self.groups[g as usize];
        group.members = group
            .members
            .checked_add(1)
            .unwrap_or_else(|| panic!("group {g}: member count overflows"));
        g
    }

    fn find(&self, key: &Bytes, end: &Bytes) -> Option<u32> {
        if end.is_empty() {
            self.single.get(key).copied()
        } else {
            self.ranged.get(key).and_then(|gs| {
                gs.iter()
                    .copied()
                    .find(|g| self.groups[*g as usize].end == *end)
            })
        }
    }

    fn create(&mut self, key: Bytes, end: Bytes) -> u32 {
        let group = Group {
            key: key.clone(),
            end: end.clone(),
            synced: Vec::new(),
            members: 0,
        };
        let g = match self.free.pop() {
            Some(g) => {
                let slot = &mut self.groups[g as usize];
                assert_eq!(slot.members, 0, "free list names live group {g}");
                *slot = group;
                g
            }
            None => {
                self.groups.push(group);
                u32::try_from(self.groups.len() - 1).unwrap_or_else(|_| panic!("too many groups"))
            }
        };
        if end.is_empty() {
            let previous = self.single.insert(key, g);
            assert!(previous.is_none(), "two single-key groups for one key");
        } else {
            self.ranged.entry(key).or_default().push(g);
        }
        g
    }

    /// One member of group `g` left (its watcher already out of the synced list); the last
    /// one to leave frees the group.
    pub(super) fn leave(&mut self, g: u32) {
        let group = &mut self.groups[g as usize];
        group.members = group
            .members
            .checked_sub(1)
            .unwrap_or_else(|| panic!("group {g}: a member left a group without members"));
        if group.members > 0 {
            return;
        }
        assert!(
            group.synced.is_empty(),
            "group {g}: no members, yet synced watchers {:?}",
            group.synced
        );
        let group = std::mem::take(group);
        if group.end.is_empty() {
            let removed = self.single.remove(&group.key);
            assert_eq!(
                removed,
                Some(g),
                "group {g} missing from the single-key index"
            );
        } else {
            let gs = self
                .ranged
                .get_mut(&group.key)
                .unwrap_or_else(|| panic!("group {g} missing from the range index"));
            let before = gs.len();
            gs.retain(|x| *x != g);
            assert_eq!(
                gs.len() + 1,
                before,
                "group {g} listed once in the range index"
            );
            if gs.is_empty() {
                self.ranged.remove(&group.key);
            }
        }
        self.free.push(g);
    }

    /// Appends watcher `w` to group `g`'s synced list; returns its position there.
    pub(super) fn push_synced(&mut self, g: u32, w: u32) -> u32 {
        let group = &mut self.groups[g as usize];
        assert!(group.members > 0, "watcher {w} synced into free group {g}");
        assert!(
            group.synced.len() < group.members as usize,
            "group {g}: more synced watchers than members"
        );
        group.synced.push(w);
        (group.synced.len() - 1) as u32
    }

    /// Takes watcher `w` out of position `pos` of group `g`'s synced list; returns the
    /// watcher moved into `pos` (whose recorded position the caller must update), if any.
    pub(super) fn remove_synced(&mut self, g: u32, pos: u32, w: u32) -> Option<u32> {
        let synced = &mut self.groups[g as usize].synced;
        assert_eq!(
            synced.get(pos as usize),
            Some(&w),
            "watcher {w} is not at position {pos} of group {g}'s synced list"
        );
        synced.swap_remove(pos as usize);
        synced.get(pos as usize).copied()
    }

    /// Empties group `g`'s synced list, returning it (the caller unsyncs each watcher).
    pub(super) fn take_synced(&mut self, g: u32) -> Vec<u32> {
        std::mem::take(&mut self.groups[g as usize].synced)
    }

    /// Appends to `out` every group whose range holds `key`: the single-key group first, then
    /// range groups by start key.
    pub(super) fn matching(&self, key: &[u8], out: &mut Vec<u32>) {
        if let Some(&g) = self.single.get(key) {
            out.push(g);
        }
        let starts = (Bound::Unbounded, Bound::Included(key));
        for (_, gs) in self.ranged.range::<[u8], _>(starts) {
            for &g in gs {
                if self.groups[g as usize].contains(key) {
                    out.push(g);
                }
            }
        }
    }

    /// Every live group with its index.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Group)> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.members > 0)
            .map(|(i, g)| (i as u32, g))
    }

    /// Panics unless the free list, the live groups and the key index agree (O(groups)).
    pub(super) fn check(&self) {
        let mut free = vec![false; self.groups.len()];
        for &g in &self.free {
            let group = self
                .groups
                .get(g as usize)
                .unwrap_or_else(|| panic!("free list names group {g} past the end"));
            assert_eq!(group.members, 0, "free list names live group {g}");
            assert!(!free[g as usize], "group {g} is in the free list twice");
            free[g as usize] = true;
        }
        let mut indexed = vec![false; self.groups.len()];
        for (key, &g) in &self.single {
            let group = self.indexed_group(g, &mut indexed);
            assert!(
                group.end.is_empty(),
                "group {g} in the single index has an end"
            );
            assert_eq!(&group.key, key, "group {g} indexed under another key");
        }
        for (key, gs) in &self.ranged {
            assert!(!gs.is_empty(), "empty range index entry");
            for (i, &g) in gs.iter().enumerate() {
                let group = self.indexed_group(g, &mut indexed);
                assert!(
                    !group.end.is_empty(),
                    "group {g} in the range index has no end"
                );
                assert_eq!(&group.key, key, "group {g} indexed under another key");
                let twin = gs[..i]
                    .iter()
                    .any(|&o| self.groups[o as usize].end == group.end);
                assert!(!twin, "two groups for one range at group {g}");
            }
        }
        for (g, group) in self.groups.iter().enumerate() {
            let live = group.members > 0;
            assert_eq!(live, !free[g], "group {g}: neither live nor free (or both)");
            assert_eq!(live, indexed[g], "group {g}: live exactly when indexed");
            if !live {
                assert!(
                    group.synced.is_empty(),
                    "free group {g} has synced watchers"
                );
            }
        }
    }

    fn indexed_group(&self, g: u32, indexed: &mut [bool]) -> &Group {
        let group = self
            .groups
            .get(g as usize)
            .unwrap_or_else(|| panic!("index names group {g} past the end"));
        assert!(group.members > 0, "index names free group {g}");
        assert!(!indexed[g as usize], "group {g} is indexed twice");
        indexed[g as usize] = true;
        group
    }
}
