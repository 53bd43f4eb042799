//! Flow control: spending and returning credit, control responses, progress notifications.
//!
//! See the `stream` module for the rule (a stream has queued control responses or credit,
//! never both) and the module doc of `watch` for why a data response that finds no credit is
//! not queued but lets its watcher fall behind.

use keel_proto::etcdserverpb::WatchResponse;

use super::hub::WatchHub;
use super::watcher::{F_PROGRESS, F_SENT};
use super::{HeaderInfo, StreamId, WatchOutput, CONTROL_QUEUE_MAX, ERR_STREAM_NOT_READING};
use crate::mvcc::Store;

impl WatchHub {
    /// The client of `stream` read `responses` more: queued control responses go first.
    pub(super) fn credit(&mut self, stream: StreamId, responses: u32) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.add_credit(responses, self.window);
        while s.credit > 0 {
            let Some(r) = s.control.pop_front() else {
                break;
            };
            s.spend(1);
            self.out.push(WatchOutput::Send(stream, r));
        }
        assert!(
            s.control.is_empty() || s.credit == 0,
            "stream {stream}: credit left with control responses waiting"
        );
    }

    /// Queues a control response, in order after earlier ones; closes the stream if its
    /// client lets the queue overflow.
    pub(super) fn control(&mut self, stream: StreamId, response: WatchResponse) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.control.is_empty() && s.credit > 0 {
            s.spend(1);
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

    /// Sends a data response if the stream can take it now (no control response waiting and
    /// credit left); false if not, and the caller must let the watcher fall behind.
    pub(super) fn try_send(&mut self, stream: StreamId, responses: Vec<WatchResponse>) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        if !s.can_send(responses.len()) {
            return false;
        }
        s.spend(responses.len());
        self.out
            .extend(responses.into_iter().map(|r| WatchOutput::Send(stream, r)));
        true
    }

    /// Answers the stream's progress request, if it made one and all its watchers are synced.
    pub(super) fn progress_if_synced(
        &mut self,
        stream: StreamId,
        store: &Store,
        header: HeaderInfo,
    ) {
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

    /// Sends progress notifications to synced watchers that asked for them and were sent no
    /// events since the last round; called on every tick with the node's clock.
    pub fn tick(&mut self, now_ms: u64, store: &Store, header: HeaderInfo) {
        if now_ms < self.last_progress_ms + self.progress_interval_ms {
            return;
        }
        self.last_progress_ms = now_ms;
        let revision = store.current_revision();
        let mut due = Vec::new();
        for (w, watcher) in self.slab.iter_mut() {
            if watcher.flags & F_PROGRESS == 0 {
                continue;
            }
            if watcher.flags & F_SENT == 0 && watcher.is_synced() {
                due.push(w);
            }
            watcher.flags &= !F_SENT;
        }
        for w in due {
            let watcher = self.slab.get(w);
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
}
