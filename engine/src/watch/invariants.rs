//! [`WatchHub::check_invariants`]: the whole hub walked and cross-checked.

use std::collections::BTreeMap;

use super::hub::WatchHub;
use super::watcher::{F_PREV_KV, NONE};
use super::{StreamId, STREAM_WINDOW};

impl WatchHub {
    /// Walks the whole hub and panics, with a message naming what is wrong, on any
    /// inconsistency: the slab and its free list; the groups, their free list and the key
    /// index; both sides of every watcher ↔ group synced-list and watcher ↔ stream id-map
    /// relation; member, per-stream unsynced and prev_kv counts; the unsynced queue (live,
    /// unsynced watchers, each once); credit and control-queue bounds.
    ///
    /// Meant for tests and the simulator (after every step): it costs O(watchers + groups +
    /// streams) time and memory. Holds between calls of the hub's methods.
    pub fn check_invariants(&self) {
        assert!(
            (1..=STREAM_WINDOW).contains(&self.window),
            "stream window {} out of bounds",
            self.window
        );
        assert!(self.fragment_bytes >= 1, "fragment size 0");
        assert!(self.progress_interval_ms >= 1, "progress interval 0");
        self.slab.check();
        self.groups.check();
        let unsynced = self.check_watchers();
        self.check_groups();
        self.check_streams(&unsynced);
        self.check_unsynced_queue(unsynced.values().sum());
    }

    /// Each live watcher against its stream and group; returns the unsynced watchers per
    /// stream.
    fn check_watchers(&self) -> BTreeMap<StreamId, u32> {
        let mut unsynced: BTreeMap<StreamId, u32> = BTreeMap::new();
        let mut prev_kv = 0;
        for (w, watcher) in self.slab.iter() {
            let (stream, id) = (watcher.stream, watcher.id);
            let s = self
                .streams
                .get(&stream)
                .unwrap_or_else(|| panic!("watcher {w}: its stream {stream} is not open"));
            assert_eq!(
                s.watchers.get(&id),
                Some(&w),
                "watcher {w}: stream {stream} does not map watch {id} to it"
            );
            let group = self.groups.get(watcher.group);
            assert!(
                group.members > 0,
                "watcher {w} in free group {}",
                watcher.group
            );
            assert_eq!(watcher.slot, NONE, "watcher {w} left in a notify batch");
            if watcher.is_synced() {
                assert_eq!(
                    group.synced.get(watcher.pos as usize),
                    Some(&w),
                    "watcher {w}: not at its position {} of group {}'s synced list",
                    watcher.pos,
                    watcher.group
                );
            } else {
                *unsynced.entry(stream).or_default() += 1;
            }
            if watcher.flags & F_PREV_KV != 0 {
                prev_kv += 1;
            }
        }
        assert_eq!(prev_kv, self.prev_kv_watchers, "prev_kv watcher count");
        unsynced
    }

    /// Each live group's member count and synced list against the watchers.
    fn check_groups(&self) {
        let mut members = vec![0u32; self.groups.slots()];
        for (_, watcher) in self.slab.iter() {
            members[watcher.group as usize] += 1;
        }
        for (g, group) in self.groups.iter() {
            assert_eq!(
                group.members, members[g as usize],
                "group {g}: member count"
            );
            for (pos, &w) in group.synced.iter().enumerate() {
                assert!(!self.slab.is_free(w), "group {g} lists free watcher {w}");
                let watcher = self.slab.get(w);
                assert_eq!(
                    watcher.group, g,
                    "group {g} lists watcher {w} of another group"
                );
                assert_eq!(
                    watcher.pos as usize, pos,
                    "group {g}: watcher {w}'s position"
                );
            }
        }
    }

    /// Each stream's counters, and its id map against the watchers.
    fn check_streams(&self, unsynced: &BTreeMap<StreamId, u32>) {
        for (&stream, s) in &self.streams {
            s.check(stream);
            for (&id, &w) in &s.watchers {
                assert!(
                    !self.slab.is_free(w),
                    "stream {stream}: watch {id} is a free slot"
                );
                let watcher = self.slab.get(w);
                assert!(
                    watcher.stream == stream && watcher.id == id,
                    "stream {stream}: watch {id} maps to watcher {w} of another watch"
                );
            }
            let counted = unsynced.get(&stream).copied().unwrap_or(0);
            assert_eq!(
                s.unsynced, counted,
                "stream {stream}: unsynced watcher count"
            );
        }
    }

    /// The unsynced queue holds exactly the unsynced watchers, each once.
    fn check_unsynced_queue(&self, unsynced: u32) {
        let mut queued = vec![false; self.slab.slots()];
        for &w in &self.unsynced {
            let seen = queued
                .get_mut(w as usize)
                .unwrap_or_else(|| panic!("unsynced queue names slot {w} past the slab's end"));
            assert!(!*seen, "watcher {w} queued twice");
            *seen = true;
            assert!(!self.slab.is_free(w), "unsynced queue holds free slot {w}");
            assert!(
                !self.slab.get(w).is_synced(),
                "unsynced queue holds synced watcher {w}"
            );
        }
        assert_eq!(
            self.unsynced.len(),
            unsynced as usize,
            "unsynced queue length against unsynced watchers"
        );
    }
}
