//! The hub: every watcher, group and stream of this member, and the moves of a watcher
//! between the synced and unsynced groups.
//!
//! A watcher's place is recorded on both sides, and every move changes both:
//!
//! ```text
//! synced:    slab[w].pos = p   and   groups[slab[w].group].synced[p] = w
//! unsynced:  slab[w].pos = NONE and  w is in the hub's unsynced queue once (except while
//!            catch_up holds it), counted in streams[slab[w].stream].unsynced
//! always:    streams[slab[w].stream].watchers[slab[w].id] = w
//! ```

use std::collections::{BTreeMap, VecDeque};

use keel_proto::etcdserverpb::{WatchCreateRequest, WatchResponse};

use super::stream::Stream;
use super::watcher::{flags_of, Slab, Watcher, F_PREV_KV, NONE};
use super::watcher_group::Groups;
use super::{
    HeaderInfo, StreamId, WatchInput, WatchOutput, ERR_DUPLICATE_ID, ERR_EMPTY_RANGE,
    FRAGMENT_BYTES_DEFAULT, PROGRESS_NOTIFY_INTERVAL_MS, STREAM_WINDOW,
};
use crate::mvcc::Store;

/// Every watch of this member.
#[derive(Debug)]
pub struct WatchHub {
    pub(super) slab: Slab,
    pub(super) groups: Groups,
    pub(super) streams: BTreeMap<StreamId, Stream>,
    /// Unsynced watchers, in the order they fell behind.
    pub(super) unsynced: VecDeque<u32>,
    /// Watchers that asked for prev_kv (the node computes previous values only if some did).
    pub(super) prev_kv_watchers: usize,
    pub(super) fragment_bytes: usize,
    /// Responses a stream may have in flight (at most [`STREAM_WINDOW`]).
    pub(super) window: u32,
    pub(super) progress_interval_ms: u64,
    pub(super) last_progress_ms: u64,
    /// The simulator's `watch-skip-compaction-boundary` bug (see
    /// [`WatchHub::inject_skip_compaction_boundary`]).
    pub(super) skip_compaction_boundary: bool,
    pub(super) out: Vec<WatchOutput>,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub::new()
    }
}

impl WatchHub {
    /// An empty hub with etcd's defaults.
    pub fn new() -> WatchHub {
        WatchHub {
            slab: Slab::default(),
            groups: Groups::default(),
            streams: BTreeMap::new(),
            unsynced: VecDeque::new(),
            prev_kv_watchers: 0,
            fragment_bytes: FRAGMENT_BYTES_DEFAULT,
            window: STREAM_WINDOW,
            progress_interval_ms: PROGRESS_NOTIFY_INTERVAL_MS,
            last_progress_ms: 0,
            skip_compaction_boundary: false,
            out: Vec::new(),
        }
    }

    /// Sets the size above which a `fragment` watcher's responses are split (etcd: the
    /// server's `--max-request-bytes`).
    pub fn set_fragment_bytes(&mut self, bytes: usize) {
        self.fragment_bytes = bytes.max(1);
    }

    /// Sets how many responses a stream may have in flight, between 1 and [`STREAM_WINDOW`]
    /// (the driver's channels hold that many); applies to streams opened later.
    pub fn set_stream_window(&mut self, responses: u32) {
        self.window = responses.clamp(1, STREAM_WINDOW);
    }

    /// Sets the interval of progress notifications to watchers that asked for them.
    pub fn set_progress_interval_ms(&mut self, ms: u64) {
        self.progress_interval_ms = ms.max(1);
    }

    /// A deliberate bug for the simulator to catch (keel-sim `--bug
    /// watch-skip-compaction-boundary`, etcd issue #19179): catching up from MVCC drops the
    /// delete events at exactly the compaction revision.
    #[doc(hidden)]
    pub fn inject_skip_compaction_boundary(&mut self) {
        self.skip_compaction_boundary = true;
    }

    /// Live watchers.
    pub fn watcher_count(&self) -> usize {
        self.slab.len()
    }

    /// Watchers behind the current revision.
    pub fn unsynced_count(&self) -> usize {
        self.unsynced.len()
    }

    /// Open streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Whether some watcher wants previous key-values with its events: the node then attaches
    /// them to the events it passes to [`WatchHub::notify`].
    pub fn wants_prev_kv(&self) -> bool {
        self.prev_kv_watchers > 0
    }

    /// Whether there is catch-up work ([`WatchHub::catch_up`] would do something).
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Takes what the hub wants sent since the last call.
    pub fn take_outputs(&mut self) -> Vec<WatchOutput> {
        std::mem::take(&mut self.out)
    }

    /// Handles one input from the driver.
    pub fn input(&mut self, input: WatchInput, store: &Store, header: HeaderInfo) {
        match input {
            WatchInput::Create { stream, request } => self.create(stream, request, store, header),
            WatchInput::Cancel { stream, watch_id } => self.cancel(stream, watch_id, store, header),
            WatchInput::Progress { stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.progress_wanted = true;
                }
                self.progress_if_synced(stream, store, header);
            }
            WatchInput::Credit { stream, responses } => self.credit(stream, responses),
            WatchInput::Close { stream } => self.close(stream),
        }
    }

    /// The stream, opened with a full window of credit if new.
    fn stream(&mut self, stream: StreamId) -> &mut Stream {
        let window = self.window;
        self.streams
            .entry(stream)
            .or_insert_with(|| Stream::new(window))
    }

    /// The open stream of a live watcher.
    pub(super) fn stream_of(&mut self, watcher: &Watcher) -> &mut Stream {
        let (stream, id) = (watcher.stream, watcher.id);
        self.streams
            .get_mut(&stream)
            .unwrap_or_else(|| panic!("watch {id}: its stream {stream} is not open"))
    }

    /// Refuses a create request the caller may not make (etcd's auth check of a watch):
    /// a created-and-canceled response with `reason`, as etcd sends.
    pub fn refuse_create(
        &mut self,
        stream: StreamId,
        reason: String,
        store: &Store,
        header: HeaderInfo,
    ) {
        self.stream(stream);
        let response = WatchResponse {
            header: header.at(store.current_revision()),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        self.control(stream, response);
    }

    fn create(
        &mut self,
        stream: StreamId,
        req: WatchCreateRequest,
        store: &Store,
        header: HeaderInfo,
    ) {
        let current = store.current_revision();
        let refuse = |reason: &str| WatchResponse {
            header: header.at(current),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if is_empty_range(&req) {
            self.stream(stream);
            self.control(stream, refuse(ERR_EMPTY_RANGE));
            return;
        }
        let Some(id) = self.stream(stream).choose_id(req.watch_id) else {
            self.control(stream, refuse(ERR_DUPLICATE_ID));
            return;
        };
        let flags = flags_of(&req);
        if flags & F_PREV_KV != 0 {
            self.prev_kv_watchers += 1;
        }
        let (synced, next_rev) = start_of(req.start_revision, current);
        let group = self.groups.join(req.key, req.range_end);
        let w = self.slab.insert(Watcher {
            stream,
            id,
            next_rev,
            group,
            pos: NONE,
            slot: NONE,
            flags,
        });
        let taken = self.stream(stream).watchers.insert(id, w);
        assert!(
            taken.is_none(),
            "stream {stream}: watch id {id} given twice"
        );
        // Placed before the created response goes out: that response may overflow the
        // control queue and close the stream, which must find the watcher in its place.
        if synced {
            self.link_synced(w);
        } else {
            self.make_unsynced(w, next_rev);
        }
        let created = WatchResponse {
            header: header.at(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.control(stream, created);
    }

    fn cancel(&mut self, stream: StreamId, watch_id: i64, store: &Store, header: HeaderInfo) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        // etcd answers only when the watch existed.
        let Some(w) = s.watchers.remove(&watch_id) else {
            return;
        };
        self.remove_watcher(w);
        let response = WatchResponse {
            header: header.at(store.current_revision()),
            watch_id,
            canceled: true,
            ..Default::default()
        };
        self.control(stream, response);
    }

    /// Forgets a stream and its watchers.
    pub(super) fn close(&mut self, stream: StreamId) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        for (&id, &w) in &s.watchers {
            let watcher = self.slab.get(w);
            assert!(
                watcher.stream == stream && watcher.id == id,
                "stream {stream} maps watch {id} to watcher {w} of another watch"
            );
            self.free_watcher(w);
        }
        if s.unsynced > 0 {
            let before = self.unsynced.len();
            let slab = &self.slab;
            self.unsynced.retain(|&u| !slab.is_free(u));
            let removed = before - self.unsynced.len();
            assert!(
                removed <= s.unsynced as usize,
                "stream {stream}: {removed} queued watchers gone, {} counted unsynced",
                s.unsynced
            );
        }
    }

    /// Puts an unsynced (or new) watcher into its group's synced list; the caller keeps the
    /// stream's unsynced count.
    pub(super) fn link_synced(&mut self, w: u32) {
        let watcher = *self.slab.get(w);
        assert!(!watcher.is_synced(), "watcher {w} synced twice");
        let pos = self.groups.push_synced(watcher.group, w);
        self.slab.get_mut(w).pos = pos;
    }

    /// Takes a synced watcher out of its group's synced list; the caller keeps the stream's
    /// unsynced count.
    fn unlink_synced(&mut self, w: u32) {
        let watcher = *self.slab.get(w);
        assert!(watcher.is_synced(), "watcher {w} is not synced");
        if let Some(moved) = self.groups.remove_synced(watcher.group, watcher.pos, w) {
            let other = self.slab.get_mut(moved);
            assert_eq!(
                other.group, watcher.group,
                "watcher {moved} in a foreign group"
            );
            other.pos = watcher.pos;
        }
        self.slab.get_mut(w).pos = NONE;
    }

    /// An unsynced watcher (its queue entry already taken) reached the current revision.
    pub(super) fn resync(&mut self, w: u32) {
        let watcher = *self.slab.get(w);
        self.stream_of(&watcher).watcher_left_unsynced();
        self.link_synced(w);
    }

    /// Moves a synced watcher (or a new one) to the unsynced group at `next_rev`.
    pub(super) fn make_unsynced(&mut self, w: u32, next_rev: i64) {
        let watcher = self.slab.get_mut(w);
        watcher.next_rev = next_rev;
        let watcher = *watcher;
        if watcher.is_synced() {
            self.unlink_synced(w);
        }
        self.stream_of(&watcher).watcher_unsynced();
        self.unsynced.push_back(w);
    }

    /// Frees a watcher already removed from its stream's id map, taking it out of the
    /// unsynced queue too (one search of the queue).
    fn remove_watcher(&mut self, w: u32) {
        if !self.slab.get(w).is_synced() {
            let at = self
                .unsynced
                .iter()
                .position(|&u| u == w)
                .unwrap_or_else(|| panic!("unsynced watcher {w} missing from the queue"));
            self.unsynced.remove(at);
        }
        self.free_watcher(w);
    }

    /// Frees a watcher's slot, its group membership and its place in the synced list; an
    /// unsynced watcher's queue entry is the caller's business.
    pub(super) fn free_watcher(&mut self, w: u32) {
        let watcher = *self.slab.get(w);
        if watcher.is_synced() {
            self.unlink_synced(w);
        } else if let Some(s) = self.streams.get_mut(&watcher.stream) {
            // (A closing stream is already gone: nothing to count.)
            s.watcher_left_unsynced();
        }
        if watcher.flags & F_PREV_KV != 0 {
            self.prev_kv_watchers = self
                .prev_kv_watchers
                .checked_sub(1)
                .unwrap_or_else(|| panic!("prev_kv watcher count goes below zero"));
        }
        self.groups.leave(watcher.group);
        self.slab.remove(w);
    }
}

/// Whether a create request names an empty range (an end at or before its key).
fn is_empty_range(req: &WatchCreateRequest) -> bool {
    !req.range_end.is_empty()
        && req.range_end.as_ref() != [0]
        && req.key.as_ref() >= req.range_end.as_ref()
}

/// Whether a new watcher starting at `start` is synced at once, and its first revision.
/// etcd: a start revision of 0 or in the future is synced at once (events before the start
/// revision are then skipped); a past one catches up from there.
fn start_of(start: i64, current: i64) -> (bool, i64) {
    if start == 0 || start > current {
        (true, start.max(current + 1))
    } else {
        (false, start.max(1))
    }
}
