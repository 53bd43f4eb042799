//! Watches: etcd's Watch service as a pure data structure the node drives.
//!
//! A *stream* is one client's bidirectional Watch stream; it carries many *watchers*. The hub
//! keeps every watcher in one of two groups, as etcd's watchable store does:
//!
//! * **synced** watchers have seen every change up to the store's current revision. After each
//!   batch of applied entries the node hands the batch's events to [`WatchHub::notify`], which
//!   finds the matching watchers through an index of their key ranges and sends each one
//!   response holding all its events of the batch (so the events of one revision are never
//!   split).
//! * **unsynced** watchers are behind: they asked for a start revision in the past, or their
//!   stream could not take more responses (a *victim*). [`WatchHub::catch_up`] reads their
//!   events from MVCC in bounded batches and moves them to the synced group once they reach
//!   the current revision. A watcher whose next revision has been compacted away is cancelled
//!   with `compact_revision` set, like etcd does: it is never silently skipped forward.
//!
//! # Flow control: a slow consumer blocks nobody
//! Each stream has a *credit* of responses it may have in flight ([`STREAM_WINDOW`]); the
//! server returns credit as the client reads ([`WatchInput::Credit`]). A response that finds no
//! credit is not queued: its watcher becomes unsynced at the first revision it missed and
//! catches up from MVCC once credit returns. Memory per slow stream is therefore bounded by the
//! window, writers never wait, and other streams are not affected. Control responses
//! (created, canceled, progress) wait in a short per-stream queue instead, because they cannot
//! be recomputed; a stream that lets that queue overflow is closed with a reason.
//!
//! # Memory
//! Watchers of the same key range share one [`Group`] holding the range; a watcher itself is a
//! 40-byte slab entry plus its entry in its stream's id map and (when synced) four bytes in its
//! group's member list.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use keel_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use keel_proto::mvccpb::{event::EventType, Event};
use prost::Message as _;

use crate::mvcc::Store;

/// A Watch stream, as the driver names it.
pub type StreamId = u64;

/// Responses a stream may have in flight before its watchers start falling behind.
pub const STREAM_WINDOW: u32 = 4096;
/// Control responses (created, canceled, progress) a stream may owe before it is closed.
pub const CONTROL_QUEUE_MAX: usize = 4096;
/// Unsynced watchers caught up per call of [`WatchHub::catch_up`], at most (etcd: 512 per
/// sync round).
pub const CATCH_UP_WATCHERS_MAX: usize = 512;
/// Revisions one catch-up response covers, at most (etcd: 1000).
pub const CATCH_UP_REVISIONS_MAX: i64 = 1000;
/// etcd's default progress-notify interval: 10 minutes.
pub const PROGRESS_NOTIFY_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// etcd's default `--max-request-bytes`: responses of a `fragment` watcher larger than this are
/// split.
pub const FRAGMENT_BYTES_DEFAULT: usize = 1536 * 1024;

/// etcd's texts for a create request it refuses.
pub const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// See [`ERR_EMPTY_RANGE`].
pub const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// The reason given when a stream's client stops reading control responses.
pub const ERR_STREAM_NOT_READING: &str =
    "keel: watch stream closed: the client stopped reading responses";

const NONE: u32 = u32::MAX;

const F_PREV_KV: u8 = 1;
const F_NO_PUT: u8 = 2;
const F_NO_DELETE: u8 = 4;
const F_PROGRESS: u8 = 8;
const F_FRAGMENT: u8 = 16;
/// Set when the watcher was sent events since the last progress notification.
const F_SENT: u8 = 32;
/// Set on a free slab slot.
const F_FREE: u8 = 128;

/// What the driver tells the hub about a stream.
#[derive(Debug, Clone)]
pub enum WatchInput {
    /// A create request arrived on `stream` (the stream is opened by its first request).
    Create {
        /// The stream.
        stream: StreamId,
        /// The request.
        request: WatchCreateRequest,
    },
    /// A cancel request arrived on `stream`.
    Cancel {
        /// The stream.
        stream: StreamId,
        /// The watch to cancel.
        watch_id: i64,
    },
    /// A progress request arrived on `stream`.
    Progress {
        /// The stream.
        stream: StreamId,
    },
    /// The client read `responses` more responses of `stream`.
    Credit {
        /// The stream.
        stream: StreamId,
        /// How many.
        responses: u32,
    },
    /// The stream ended: forget its watchers.
    Close {
        /// The stream.
        stream: StreamId,
    },
}

/// What the hub asks of the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchOutput {
    /// Send this response on the stream.
    Send(StreamId, WatchResponse),
    /// End the stream with this reason (the client did not read its responses).
    Close(StreamId, &'static str),
}

/// What every response header carries besides the revision.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderInfo {
    /// The cluster's id.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// The current raft term.
    pub raft_term: u64,
}

impl HeaderInfo {
    fn at(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        })
    }
}

/// Watchers sharing one key range.
#[derive(Debug)]
struct Group {
    key: Bytes,
    /// Empty: the single key; `[0]`: every key from `key` on; else the exclusive end.
    end: Bytes,
    /// Synced members.
    synced: Vec<u32>,
    /// All members, synced or not.
    members: u32,
}

impl Group {
    fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.key.as_ref()
        } else {
            key >= self.key.as_ref() && (self.end.as_ref() == [0] || key < self.end.as_ref())
        }
    }
}

#[derive(Debug, Clone)]
struct Watcher {
    stream: StreamId,
    id: i64,
    /// The first revision this watcher has not been sent (meaningful while unsynced, and for a
    /// synced watcher created with a future start revision).
    next_rev: i64,
    group: u32,
    /// Position in the group's synced list, or `NONE` while unsynced.
    pos: u32,
    /// Scratch: this watcher's slot in the notify batch being built.
    slot: u32,
    flags: u8,
}

#[derive(Debug, Default)]
struct Stream {
    credit: u32,
    /// watch id → watcher slab index.
    watchers: BTreeMap<i64, u32>,
    next_id: i64,
    unsynced: u32,
    /// A progress request waits until every watcher of the stream is synced.
    progress_wanted: bool,
    control: VecDeque<WatchResponse>,
}

/// Every watch of this member.
#[derive(Debug)]
pub struct WatchHub {
    watchers: Vec<Watcher>,
    free: Vec<u32>,
    groups: Vec<Group>,
    free_groups: Vec<u32>,
    /// Single-key groups by key.
    single: BTreeMap<Bytes, u32>,
    /// Range groups by start key.
    ranged: BTreeMap<Bytes, Vec<u32>>,
    streams: BTreeMap<StreamId, Stream>,
    /// Unsynced watchers, in the order they fell behind.
    unsynced: VecDeque<u32>,
    /// Watchers that asked for prev_kv (the node computes previous values only if some did).
    prev_kv_watchers: usize,
    fragment_bytes: usize,
    /// Responses a stream may have in flight (at most [`STREAM_WINDOW`]).
    window: u32,
    progress_interval_ms: u64,
    last_progress_ms: u64,
    /// The simulator's `watch-skip-compaction-boundary` bug (see [`WatchHub::inject_skip_compaction_boundary`]).
    skip_compaction_boundary: bool,
    out: Vec<WatchOutput>,
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
            watchers: Vec::new(),
            free: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            single: BTreeMap::new(),
            ranged: BTreeMap::new(),
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
        self.watchers.len() - self.free.len()
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
            WatchInput::Cancel { stream, watch_id } => {
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
            WatchInput::Progress { stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.progress_wanted = true;
                }
                self.progress_if_synced(stream, store, header);
            }
            WatchInput::Credit { stream, responses } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return;
                };
                s.credit = s.credit.saturating_add(responses).min(self.window);
                self.flush_control(stream);
            }
            WatchInput::Close { stream } => self.close(stream),
        }
    }

    fn stream(&mut self, stream: StreamId) -> &mut Stream {
        let window = self.window;
        self.streams.entry(stream).or_insert_with(|| Stream {
            credit: window,
            ..Default::default()
        })
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
        if !req.range_end.is_empty()
            && req.range_end.as_ref() != [0]
            && req.key.as_ref() >= req.range_end.as_ref()
        {
            self.stream(stream);
            self.control(stream, refuse(ERR_EMPTY_RANGE));
            return;
        }
        let s = self.stream(stream);
        let id = if req.watch_id != 0 {
            if s.watchers.contains_key(&req.watch_id) {
                self.control(stream, refuse(ERR_DUPLICATE_ID));
                return;
            }
            req.watch_id
        } else {
            while s.watchers.contains_key(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        };
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
            self.prev_kv_watchers += 1;
        }
        if req.progress_notify {
            flags |= F_PROGRESS;
        }
        if req.fragment {
            flags |= F_FRAGMENT;
        }
        // etcd: a start revision of 0 or in the future is synced at once; events before the
        // start revision are then skipped.
        let start = req.start_revision;
        let synced = start == 0 || start > current;
        let next_rev = if synced {
            start.max(current + 1)
        } else {
            start.max(1)
        };
        let group = self.group_for(req.key, req.range_end);
        let w = Watcher {
            stream,
            id,
            next_rev,
            group,
            pos: NONE,
            slot: NONE,
            flags,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.watchers[i as usize] = w;
                i
            }
            None => {
                self.watchers.push(w);
                (self.watchers.len() - 1) as u32
            }
        };
        self.groups[group as usize].members += 1;
        self.stream(stream).watchers.insert(id, index);
        self.control(
            stream,
            WatchResponse {
                header: header.at(current),
                watch_id: id,
                created: true,
                ..Default::default()
            },
        );
        if synced {
            self.make_synced(index);
        } else {
            self.make_unsynced(index, next_rev);
        }
    }

    fn group_for(&mut self, key: Bytes, end: Bytes) -> u32 {
        let existing = if end.is_empty() {
            self.single.get(&key).copied()
        } else {
            self.ranged.get(&key).and_then(|gs| {
                gs.iter()
                    .copied()
                    .find(|g| self.groups[*g as usize].end == end)
            })
        };
        if let Some(g) = existing {
            return g;
        }
        let group = Group {
            key: key.clone(),
            end: end.clone(),
            synced: Vec::new(),
            members: 0,
        };
        let g = match self.free_groups.pop() {
            Some(g) => {
                self.groups[g as usize] = group;
                g
            }
            None => {
                self.groups.push(group);
                (self.groups.len() - 1) as u32
            }
        };
        if end.is_empty() {
            self.single.insert(key, g);
        } else {
            self.ranged.entry(key).or_default().push(g);
        }
        g
    }

    fn make_synced(&mut self, w: u32) {
        let watcher = &mut self.watchers[w as usize];
        debug_assert_eq!(watcher.pos, NONE);
        let group = &mut self.groups[watcher.group as usize];
        watcher.pos = group.synced.len() as u32;
        group.synced.push(w);
    }

    /// Moves a synced watcher (or a new one) to the unsynced group at `next_rev`.
    fn make_unsynced(&mut self, w: u32, next_rev: i64) {
        let watcher = &mut self.watchers[w as usize];
        watcher.next_rev = next_rev;
        if watcher.pos != NONE {
            let pos = watcher.pos as usize;
            let group = &mut self.groups[watcher.group as usize];
            group.synced.swap_remove(pos);
            if let Some(&moved) = group.synced.get(pos) {
                self.watchers[moved as usize].pos = pos as u32;
            }
            self.watchers[w as usize].pos = NONE;
        }
        let stream = self.watchers[w as usize].stream;
        if let Some(s) = self.streams.get_mut(&stream) {
            s.unsynced += 1;
        }
        self.unsynced.push_back(w);
    }

    /// Frees a watcher already removed from its stream's id map, taking it out of the
    /// unsynced queue too (one search of the queue).
    fn remove_watcher(&mut self, w: u32) {
        if self.watchers[w as usize].pos == NONE {
            if let Some(at) = self.unsynced.iter().position(|&u| u == w) {
                self.unsynced.remove(at);
            }
        }
        self.free_watcher(w);
    }

    /// Frees a watcher's slot, its group membership and its place in the synced list; an
    /// unsynced watcher's queue entry is the caller's business.
    fn free_watcher(&mut self, w: u32) {
        let watcher = self.watchers[w as usize].clone();
        if watcher.pos != NONE {
            let group = &mut self.groups[watcher.group as usize];
            group.synced.swap_remove(watcher.pos as usize);
            if let Some(&moved) = group.synced.get(watcher.pos as usize) {
                self.watchers[moved as usize].pos = watcher.pos;
            }
        } else if let Some(s) = self.streams.get_mut(&watcher.stream) {
            s.unsynced = s.unsynced.saturating_sub(1);
        }
        if watcher.flags & F_PREV_KV != 0 {
            self.prev_kv_watchers -= 1;
        }
        self.release_group_member(watcher.group);
        let slot = &mut self.watchers[w as usize];
        slot.flags = F_FREE;
        slot.pos = NONE;
        slot.slot = NONE;
        self.free.push(w);
    }

    fn close(&mut self, stream: StreamId) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        for (_, w) in s.watchers {
            self.free_watcher(w);
        }
        if s.unsynced > 0 {
            let watchers = &self.watchers;
            self.unsynced
                .retain(|&u| watchers[u as usize].flags & F_FREE == 0);
        }
    }

    fn release_group_member(&mut self, g: u32) {
        let group = &mut self.groups[g as usize];
        group.members -= 1;
        if group.members > 0 {
            return;
        }
        let (key, end) = (group.key.clone(), group.end.clone());
        if end.is_empty() {
            self.single.remove(&key);
        } else if let Some(gs) = self.ranged.get_mut(&key) {
            gs.retain(|x| *x != g);
            if gs.is_empty() {
                self.ranged.remove(&key);
            }
        }
        self.groups[g as usize] = Group {
            key: Bytes::new(),
            end: Bytes::new(),
            synced: Vec::new(),
            members: 0,
        };
        self.free_groups.push(g);
    }

    /// Queues a control response, in order after earlier ones.
    fn control(&mut self, stream: StreamId, response: WatchResponse) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.control.is_empty() && s.credit > 0 {
            s.credit -= 1;
            self.out.push(WatchOutput::Send(stream, response));
            return;
        }
        if s.control.len() >= CONTROL_QUEUE_MAX {
            self.out
                .push(WatchOutput::Close(stream, ERR_STREAM_NOT_READING));
            self.close(stream);
            return;
        }
        s.control.push_back(response);
    }

    fn flush_control(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        while s.credit > 0 {
            let Some(r) = s.control.pop_front() else {
                break;
            };
            s.credit -= 1;
            self.out.push(WatchOutput::Send(stream, r));
        }
    }

    /// Sends a data response if the stream can take it now (no control response waiting and
    /// credit left); false if not, and the caller must let the watcher fall behind.
    fn try_send(&mut self, stream: StreamId, responses: Vec<WatchResponse>) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        if !s.control.is_empty() || (s.credit as usize) < responses.len() {
            return false;
        }
        s.credit -= responses.len() as u32;
        self.out
            .extend(responses.into_iter().map(|r| WatchOutput::Send(stream, r)));
        true
    }

    fn progress_if_synced(&mut self, stream: StreamId, store: &Store, header: HeaderInfo) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if !s.progress_wanted || s.unsynced > 0 {
            return;
        }
        s.progress_wanted = false;
        // etcd: not tied to one watch, so the id is -1.
        let response = WatchResponse {
            header: header.at(store.current_revision()),
            watch_id: -1,
            ..Default::default()
        };
        self.control(stream, response);
    }

    /// Delivers the events of a batch of applied entries (revision order, the store already
    /// at the batch's last revision) to the synced watchers.
    pub fn notify(&mut self, events: &[Event], store: &Store, header: HeaderInfo) {
        if self.watcher_count() == 0 || events.is_empty() {
            return;
        }
        let revision = store.current_revision();
        let mut batch: Vec<(u32, Vec<Event>)> = Vec::new();
        let mut matched: Vec<u32> = Vec::new();
        for event in events {
            let Some(kv) = &event.kv else { continue };
            matched.clear();
            if let Some(&g) = self.single.get(kv.key.as_ref()) {
                matched.push(g);
            }
            for (_, gs) in self.ranged.range::<[u8], _>((
                std::ops::Bound::Unbounded,
                std::ops::Bound::Included(kv.key.as_ref()),
            )) {
                for &g in gs {
                    if self.groups[g as usize].contains(&kv.key) {
                        matched.push(g);
                    }
                }
            }
            for &g in &matched {
                for &w in &self.groups[g as usize].synced {
                    let watcher = &mut self.watchers[w as usize];
                    if kv.mod_revision < watcher.next_rev || filtered(watcher.flags, event) {
                        continue;
                    }
                    if watcher.slot == NONE {
                        watcher.slot = batch.len() as u32;
                        batch.push((w, Vec::new()));
                    }
                    batch[watcher.slot as usize]
                        .1
                        .push(for_watcher(watcher.flags, event));
                }
            }
        }
        for (w, events) in batch {
            let watcher = &mut self.watchers[w as usize];
            watcher.slot = NONE;
            watcher.flags |= F_SENT;
            let (stream, id, flags) = (watcher.stream, watcher.id, watcher.flags);
            let first = events
                .first()
                .and_then(|e| e.kv.as_ref())
                .map_or(revision, |kv| kv.mod_revision);
            let responses = self.responses(id, flags, events, revision, header);
            if !self.try_send(stream, responses) {
                self.make_unsynced(w, first);
            }
        }
    }

    /// One response, or fragments of it if the watcher allows and it is too large.
    fn responses(
        &self,
        watch_id: i64,
        flags: u8,
        events: Vec<Event>,
        revision: i64,
        header: HeaderInfo,
    ) -> Vec<WatchResponse> {
        let whole = WatchResponse {
            header: header.at(revision),
            watch_id,
            events,
            ..Default::default()
        };
        if flags & F_FRAGMENT == 0
            || whole.events.len() < 2
            || whole.encoded_len() < self.fragment_bytes
        {
            return vec![whole];
        }
        let mut out = Vec::new();
        let mut current = WatchResponse {
            header: whole.header,
            watch_id,
            fragment: true,
            ..Default::default()
        };
        let mut size = current.encoded_len();
        for event in whole.events {
            let len = event.encoded_len() + 8;
            if !current.events.is_empty() && size + len > self.fragment_bytes {
                let next = WatchResponse {
                    header: current.header,
                    watch_id,
                    fragment: true,
                    ..Default::default()
                };
                size = next.encoded_len();
                out.push(std::mem::replace(&mut current, next));
            }
            size += len;
            current.events.push(event);
        }
        current.fragment = false;
        out.push(current);
        out
    }

    /// Catches up to [`CATCH_UP_WATCHERS_MAX`] unsynced watchers whose streams have credit,
    /// from MVCC, by at most [`CATCH_UP_REVISIONS_MAX`] revisions each; those that reach the
    /// current revision become synced. Watchers whose next revision was compacted away are
    /// cancelled with `compact_revision` set.
    pub fn catch_up(&mut self, store: &Store, header: HeaderInfo) {
        let current = store.current_revision();
        let compacted = store.compact_revision();
        let mut budget = CATCH_UP_WATCHERS_MAX.min(self.unsynced.len());
        let mut waiting = Vec::new();
        while budget > 0 {
            let Some(w) = self.unsynced.pop_front() else {
                break;
            };
            budget -= 1;
            let watcher = self.watchers[w as usize].clone();
            debug_assert_eq!(watcher.flags & F_FREE, 0);
            let Some(s) = self.streams.get(&watcher.stream) else {
                continue;
            };
            if s.credit == 0 || !s.control.is_empty() {
                waiting.push(w);
                continue;
            }
            if watcher.next_rev > current {
                // A start revision still in the future (kept through `desync_all`): it waits
                // among the synced, as at creation.
                if let Some(s) = self.streams.get_mut(&watcher.stream) {
                    s.unsynced = s.unsynced.saturating_sub(1);
                }
                self.make_synced(w);
                continue;
            }
            if watcher.next_rev < compacted {
                self.cancel_compacted(w, compacted, header);
                continue;
            }
            let to = current.min(watcher.next_rev + CATCH_UP_REVISIONS_MAX - 1);
            let events = match store.events(watcher.next_rev, to, usize::MAX) {
                Ok(events) => events,
                Err(_) => {
                    self.cancel_compacted(w, compacted, header);
                    continue;
                }
            };
            let group = &self.groups[watcher.group as usize];
            let mut mine = Vec::new();
            for event in events {
                let Some(kv) = &event.kv else { continue };
                if !group.contains(&kv.key) || filtered(watcher.flags, &event) {
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
            if !mine.is_empty() {
                let responses = self.responses(watcher.id, watcher.flags, mine, to, header);
                if !self.try_send(watcher.stream, responses) {
                    waiting.push(w);
                    continue;
                }
                self.watchers[w as usize].flags |= F_SENT;
            }
            self.watchers[w as usize].next_rev = to + 1;
            if to >= current {
                if let Some(s) = self.streams.get_mut(&watcher.stream) {
                    s.unsynced = s.unsynced.saturating_sub(1);
                }
                self.make_synced(w);
                self.progress_if_synced(watcher.stream, store, header);
            } else {
                self.unsynced.push_back(w);
            }
        }
        // Watchers of streams without credit keep their place at the front.
        for w in waiting.into_iter().rev() {
            self.unsynced.push_front(w);
        }
    }

    fn cancel_compacted(&mut self, w: u32, compacted: i64, header: HeaderInfo) {
        let watcher = self.watchers[w as usize].clone();
        // Out of the queue already: free it without searching the queue.
        if let Some(s) = self.streams.get_mut(&watcher.stream) {
            s.watchers.remove(&watcher.id);
        }
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

    /// Sends progress notifications to synced watchers that asked for them and were sent no
    /// events since the last round; called on every tick with the node's clock.
    pub fn tick(&mut self, now_ms: u64, store: &Store, header: HeaderInfo) {
        if now_ms < self.last_progress_ms + self.progress_interval_ms {
            return;
        }
        self.last_progress_ms = now_ms;
        let revision = store.current_revision();
        let mut due = Vec::new();
        for (i, w) in self.watchers.iter_mut().enumerate() {
            if w.flags & F_FREE != 0 || w.flags & F_PROGRESS == 0 {
                continue;
            }
            if w.flags & F_SENT == 0 && w.pos != NONE {
                due.push(i as u32);
            }
            w.flags &= !F_SENT;
        }
        for w in due {
            let watcher = &self.watchers[w as usize];
            let response = WatchResponse {
                header: header.at(revision),
                watch_id: watcher.id,
                ..Default::default()
            };
            let stream = watcher.stream;
            // A progress notification is best effort: a stream without credit skips it.
            let _ = self.try_send(stream, vec![response]);
        }
    }

    /// Every synced watcher falls behind to `next_rev` (after the store was replaced by a
    /// snapshot, `next_rev` is one past the old store's revision): they catch up from the new
    /// store. A watcher whose start revision is later than `next_rev` keeps its start.
    pub fn desync_all(&mut self, next_rev: i64) {
        for g in 0..self.groups.len() {
            let synced = std::mem::take(&mut self.groups[g].synced);
            for w in synced {
                self.watchers[w as usize].pos = NONE;
                let rev = self.watchers[w as usize].next_rev.max(next_rev);
                self.make_unsynced(w, rev);
            }
        }
    }
}

/// Whether a watcher's filters drop this event.
fn filtered(flags: u8, event: &Event) -> bool {
    if event.r#type == EventType::Delete as i32 {
        flags & F_NO_DELETE != 0
    } else {
        flags & F_NO_PUT != 0
    }
}

/// The event as this watcher sees it: without prev_kv unless it asked.
fn for_watcher(flags: u8, event: &Event) -> Event {
    if flags & F_PREV_KV == 0 && event.prev_kv.is_some() {
        Event {
            r#type: event.r#type,
            kv: event.kv.clone(),
            prev_kv: None,
        }
    } else {
        event.clone()
    }
}

/// The key's value just before the event, as etcd attaches it (none for a creation, or when
/// that revision has been compacted away).
pub fn prev_kv(store: &Store, event: &Event) -> Option<keel_proto::mvccpb::KeyValue> {
    let kv = event.kv.as_ref()?;
    if event.r#type == EventType::Put as i32 && kv.version == 1 {
        return None;
    }
    if kv.mod_revision <= 1 || kv.mod_revision - 1 < store.compact_revision() {
        return None;
    }
    store.kv_at(&kv.key, kv.mod_revision - 1)
}
