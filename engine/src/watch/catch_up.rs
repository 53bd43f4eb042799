//! Catch-up: unsynced watchers read their events from MVCC in bounded batches until they
//! reach the current revision, then join their group's synced list.
//!
//! # Worked example
//! The store is at revision 2 500 and was compacted at 100. A watcher on "a" starts at
//! revision 1 ([`CATCH_UP_REVISIONS_MAX`] = 1 000):
//!
//! ```text
//! call 1: next_rev 1 < compacted 100      → canceled, compact_revision 100
//! ```
//! One that starts at 300 instead:
//! ```text
//! call 1: events of "a" in [300, 1299]    → one response (if any), next_rev 1300, requeued
//! call 2: events of "a" in [1300, 2299]   → next_rev 2300, requeued
//! call 3: events of "a" in [2300, 2500]   → next_rev 2501: synced, takes live events
//! ```
//! A watcher whose stream has no credit (or owes control responses) keeps its place at the
//! front of the queue and is tried again on the next call.

use keel_proto::etcdserverpb::WatchResponse;
use keel_proto::mvccpb::{event::EventType, Event};

use super::hub::WatchHub;
use super::watcher::{Watcher, F_PREV_KV, F_SENT, NONE};
use super::{prev_kv, HeaderInfo, CATCH_UP_REVISIONS_MAX, CATCH_UP_WATCHERS_MAX};
use crate::mvcc::Store;

impl WatchHub {
    /// Catches up to [`CATCH_UP_WATCHERS_MAX`] unsynced watchers whose streams have credit,
    /// from MVCC, by at most [`CATCH_UP_REVISIONS_MAX`] revisions each; those that reach the
    /// current revision become synced. Watchers whose next revision was compacted away are
    /// cancelled with `compact_revision` set.
    pub fn catch_up(&mut self, store: &Store, header: HeaderInfo) {
        let mut budget = CATCH_UP_WATCHERS_MAX.min(self.unsynced.len());
        let mut waiting = Vec::new();
        while budget > 0 {
            let Some(w) = self.unsynced.pop_front() else {
                break;
            };
            budget -= 1;
            if !self.catch_up_one(w, store, header) {
                waiting.push(w);
            }
        }
        // Watchers of streams without credit keep their place at the front.
        for w in waiting.into_iter().rev() {
            // Only a control response that closed a stream could free a watcher here, and
            // catch-up sends control responses only to streams that had credit for them.
            assert!(!self.slab.is_free(w), "waiting watcher {w} was freed");
            self.unsynced.push_front(w);
        }
    }

    /// Catches up one unsynced watcher, taken off the queue; false if its stream cannot take
    /// responses now (the caller puts it back).
    fn catch_up_one(&mut self, w: u32, store: &Store, header: HeaderInfo) -> bool {
        let watcher = *self.slab.get(w);
        assert!(!watcher.is_synced(), "queued watcher {w} is synced");
        let s = self.stream_of(&watcher);
        if s.credit == 0 || !s.control.is_empty() {
            return false;
        }
        let current = store.current_revision();
        let compacted = store.compact_revision();
        if watcher.next_rev > current {
            // A start revision still in the future (kept through `desync_all`): it waits
            // among the synced, as at creation.
            self.resync(w);
            return true;
        }
        if watcher.next_rev < compacted {
            self.cancel_compacted(w, compacted, header);
            return true;
        }
        let to = current.min(watcher.next_rev + CATCH_UP_REVISIONS_MAX - 1);
        let Ok(events) = store.events(watcher.next_rev, to, usize::MAX) else {
            self.cancel_compacted(w, compacted, header);
            return true;
        };
        let mine = self.events_for(&watcher, events, store);
        if !mine.is_empty() {
            let responses = self.responses(watcher.id, watcher.flags, mine, to, header);
            if !self.try_send(watcher.stream, responses) {
                return false;
            }
            self.slab.get_mut(w).flags |= F_SENT;
        }
        assert!(
            to >= watcher.next_rev,
            "watcher {w}: catch-up goes backwards"
        );
        self.slab.get_mut(w).next_rev = to + 1;
        if to >= current {
            self.resync(w);
            self.progress_if_synced(watcher.stream, store, header);
        } else {
            self.unsynced.push_back(w);
        }
        true
    }

    /// The events of `events` (read from MVCC) that are for this watcher, as it wants them.
    fn events_for(&self, watcher: &Watcher, events: Vec<Event>, store: &Store) -> Vec<Event> {
        let compacted = store.compact_revision();
        let group = self.groups.get(watcher.group);
        let mut mine = Vec::new();
        for event in events {
            let Some(kv) = &event.kv else { continue };
            if !group.contains(&kv.key) || watcher.filters_out(&event) {
                continue;
            }
            if self.skip_compaction_boundary
                && kv.mod_revision == compacted
                && event.r#type == EventType::Delete as i32
            {
                continue;
            }
            let mut event = event;
            if watcher.flags & F_PREV_KV != 0 {
                event.prev_kv = prev_kv(store, &event);
            }
            mine.push(event);
        }
        mine
    }

    /// Cancels an unsynced watcher (taken off the queue) whose next revision was compacted.
    fn cancel_compacted(&mut self, w: u32, compacted: i64, header: HeaderInfo) {
        let watcher = *self.slab.get(w);
        // Out of the queue already: free it without searching the queue.
        let removed = self.stream_of(&watcher).watchers.remove(&watcher.id);
        assert_eq!(
            removed,
            Some(w),
            "watch {} maps to another watcher",
            watcher.id
        );
        self.free_watcher(w);
        // etcd's compacted response: canceled, with the compact revision, a zero header
        // revision and no reason text (clients derive "required revision has been compacted"
        // from `compact_revision`).
        let response = WatchResponse {
            header: header.at(0),
            watch_id: watcher.id,
            canceled: true,
            compact_revision: compacted,
            ..Default::default()
        };
        self.control(watcher.stream, response);
    }

    /// Every synced watcher falls behind to `next_rev` (after the store was replaced by a
    /// snapshot, `next_rev` is one past the old store's revision): they catch up from the new
    /// store. A watcher whose start revision is later than `next_rev` keeps its start.
    pub fn desync_all(&mut self, next_rev: i64) {
        for g in 0..self.groups.slots() as u32 {
            let synced = self.groups.take_synced(g);
            for (pos, w) in synced.into_iter().enumerate() {
                let watcher = self.slab.get_mut(w);
                assert_eq!(watcher.pos as usize, pos, "watcher {w} out of its place");
                watcher.pos = NONE;
                let rev = watcher.next_rev.max(next_rev);
                self.make_unsynced(w, rev);
            }
        }
    }
}
