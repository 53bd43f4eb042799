//! One watcher, and the slab that holds every watcher of the hub.
//!
//! A watcher is a small `Copy` record: its stream and watch id, the next revision it has not
//! been sent, its group (the key range it watches), its position in that group's synced list
//! (or [`NONE`] while unsynced) and its flags. Slots of cancelled watchers are reused.

use keel_proto::etcdserverpb::WatchCreateRequest;
use keel_proto::mvccpb::{event::EventType, Event};

use super::StreamId;

/// "No index": an unsynced watcher's position, an unused batch slot.
pub(super) const NONE: u32 = u32::MAX;

/// The watcher wants each event's previous key-value.
pub(super) const F_PREV_KV: u8 = 1;
/// The watcher filters out puts.
pub(super) const F_NO_PUT: u8 = 2;
/// The watcher filters out deletes.
pub(super) const F_NO_DELETE: u8 = 4;
/// The watcher wants periodic progress notifications.
pub(super) const F_PROGRESS: u8 = 8;
/// The watcher accepts large responses split into fragments.
pub(super) const F_FRAGMENT: u8 = 16;
/// Set when the watcher was sent events since the last progress notification.
pub(super) const F_SENT: u8 = 32;
/// Set on a free slab slot.
pub(super) const F_FREE: u8 = 128;

/// One watch of one stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Watcher {
    pub(super) stream: StreamId,
    pub(super) id: i64,
    /// The first revision this watcher has not been sent (meaningful while unsynced, and for a
    /// synced watcher created with a future start revision).
    pub(super) next_rev: i64,
    pub(super) group: u32,
    /// Position in the group's synced list, or `NONE` while unsynced.
    pub(super) pos: u32,
    /// Scratch: this watcher's slot in the notify batch being built (`NONE` between calls).
    pub(super) slot: u32,
    pub(super) flags: u8,
}

impl Watcher {
    /// Whether this is a free slab slot rather than a watcher.
    pub(super) fn is_free(&self) -> bool {
        self.flags & F_FREE != 0
    }

    /// Whether the watcher is in its group's synced list.
    pub(super) fn is_synced(&self) -> bool {
        self.pos != NONE
    }

    /// Whether this watcher's filters drop `event`.
    pub(super) fn filters_out(&self, event: &Event) -> bool {
        if event.r#type == EventType::Delete as i32 {
            self.flags & F_NO_DELETE != 0
        } else {
            self.flags & F_NO_PUT != 0
        }
    }

    /// The event as this watcher sees it: without prev_kv unless it asked.
    pub(super) fn shape(&self, event: &Event) -> Event {
        if self.flags & F_PREV_KV == 0 && event.prev_kv.is_some() {
            Event {
                r#type: event.r#type,
                kv: event.kv.clone(),
                prev_kv: None,
            }
        } else {
            event.clone()
        }
    }
}

/// The flags a create request asks for (filters of unknown kinds are ignored, as etcd does).
pub(super) fn flags_of(req: &WatchCreateRequest) -> u8 {
    let mut flags = 0;
    for f in &req.filters {
        match *f {
            0 => flags |= F_NO_PUT,
            1 => flags |= F_NO_DELETE,
            _ => {}
        }
    }
    if req.prev_kv {
        flags |= F_PREV_KV;
    }
    if req.progress_notify {
        flags |= F_PROGRESS;
    }
    if req.fragment {
        flags |= F_FRAGMENT;
    }
    flags
}

/// Every watcher, by index; freed slots are reused (last freed, first reused).
///
/// Invariant: a slot is free exactly when it carries [`F_FREE`], and then its index is in the
/// free list once.
#[derive(Debug, Default)]
pub(super) struct Slab {
    slots: Vec<Watcher>,
    free: Vec<u32>,
}

impl Slab {
    /// Live watchers.
    pub(super) fn len(&self) -> usize {
        assert!(
            self.free.len() <= self.slots.len(),
            "more free slots than slots"
        );
        self.slots.len() - self.free.len()
    }

    /// Slots, live or free.
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Stores a new watcher (unsynced, outside any batch); returns its index.
    pub(super) fn insert(&mut self, watcher: Watcher) -> u32 {
        assert!(!watcher.is_free(), "inserting a free slot as a watcher");
        assert_eq!(watcher.pos, NONE, "a new watcher is in no synced list yet");
        assert_eq!(watcher.slot, NONE, "a new watcher is in no notify batch");
        match self.free.pop() {
            Some(w) => {
                let slot = &mut self.slots[w as usize];
                assert!(slot.is_free(), "free list names live watcher {w}");
                *slot = watcher;
                w
            }
            None => {
                let w = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|w| *w != NONE)
                    .unwrap_or_else(|| panic!("watcher slab full"));
                self.slots.push(watcher);
                w
            }
        }
    }

    /// Frees watcher `w` (already out of every list) and returns what it was.
    pub(super) fn remove(&mut self, w: u32) -> Watcher {
        let slot = &mut self.slots[w as usize];
        let watcher = *slot;
        assert!(!watcher.is_free(), "watcher {w} freed twice");
        assert_eq!(
            watcher.slot, NONE,
            "watcher {w} freed inside a notify batch"
        );
        slot.flags = F_FREE;
        slot.pos = NONE;
        slot.slot = NONE;
        self.free.push(w);
        watcher
    }

    /// The live watcher `w`.
    pub(super) fn get(&self, w: u32) -> &Watcher {
        let watcher = &self.slots[w as usize];
        assert!(!watcher.is_free(), "watcher {w} is a free slot");
        watcher
    }

    /// The live watcher `w`, for changing.
    pub(super) fn get_mut(&mut self, w: u32) -> &mut Watcher {
        let watcher = &mut self.slots[w as usize];
        assert!(!watcher.is_free(), "watcher {w} is a free slot");
        watcher
    }

    /// Whether slot `w` is free.
    pub(super) fn is_free(&self, w: u32) -> bool {
        self.slots[w as usize].is_free()
    }

    /// Every live watcher with its index.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Watcher)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_free())
            .map(|(i, w)| (i as u32, w))
    }

    /// Every live watcher with its index, for changing.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Watcher)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter(|(_, w)| !w.is_free())
            .map(|(i, w)| (i as u32, w))
    }

    /// Panics unless free slots and the free list agree (O(slots)).
    pub(super) fn check(&self) {
        let mut listed = vec![false; self.slots.len()];
        for &w in &self.free {
            let slot = self
                .slots
                .get(w as usize)
                .unwrap_or_else(|| panic!("free list names slot {w} past the slab's end"));
            assert!(slot.is_free(), "free list names live watcher {w}");
            assert!(!listed[w as usize], "slot {w} is in the free list twice");
            listed[w as usize] = true;
        }
        for (w, slot) in self.slots.iter().enumerate() {
            assert_eq!(
                slot.is_free(),
                listed[w],
                "slot {w}: free flag and free list disagree"
            );
            if slot.is_free() {
                assert_eq!(slot.pos, NONE, "free slot {w} has a synced position");
            }
        }
    }
}
