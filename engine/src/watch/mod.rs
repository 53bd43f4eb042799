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
//! Watchers of the same key range share one *watcher group* holding the range; a watcher
//! itself is a 40-byte slab entry plus its entry in its stream's id map and (when synced) four
//! bytes in its group's synced list.
//!
//! # Files
//! - `watcher`: one watcher (its filters and flags) and the slab holding them all.
//! - `watcher_group`: watchers sharing a key range, each group's synced list, and the index
//!   from keys to groups.
//! - `stream`: one client stream: its watch ids, credit and queued control responses.
//! - `hub`: [`WatchHub`], the owner of all of the above; create, cancel, close, and the moves
//!   of a watcher between the synced and unsynced groups.
//! - `notify`: live events to synced watchers, and fragmenting large responses.
//! - `catch_up`: unsynced watchers reading from MVCC, compaction cancels, `desync_all`.
//! - `flow`: credit, control responses, progress notifications.
//! - `invariants`: [`WatchHub::check_invariants`].

mod catch_up;
mod flow;
mod hub;
mod invariants;
mod notify;
mod stream;
mod watcher;
mod watcher_group;

#[cfg(test)]
mod tests;

use keel_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use keel_proto::mvccpb::{event::EventType, Event};

use crate::mvcc::Store;

pub use hub::WatchHub;

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
