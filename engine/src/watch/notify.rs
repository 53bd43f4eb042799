//! Live events: the events of a batch of applied entries go to the synced watchers whose range
//! holds their keys, one response per watcher (fragmented if it asked and it is too large).
//!
//! ```text
//! batch: PUT a@7, PUT b@7, DEL a@8       watcher X on "a", watcher Y on ["a", "c")
//! X ← one response [PUT a@7, DEL a@8]    Y ← one response [PUT a@7, PUT b@7, DEL a@8]
//! ```
//! A watcher whose stream has no credit for its response becomes unsynced at the first
//! revision of that response (7 above) and catches up from MVCC later.

use keel_proto::etcdserverpb::WatchResponse;
use keel_proto::mvccpb::Event;
use prost::Message as _;

use super::hub::WatchHub;
use super::watcher::{F_FRAGMENT, F_SENT, NONE};
use super::HeaderInfo;
use crate::mvcc::Store;

impl WatchHub {
    /// Delivers the events of a batch of applied entries (revision order, the store already
    /// at the batch's last revision) to the synced watchers.
    pub fn notify(&mut self, events: &[Event], store: &Store, header: HeaderInfo) {
        if self.watcher_count() == 0 || events.is_empty() {
            return;
        }
        let revision = store.current_revision();
        for (w, events) in self.match_events(events) {
            let watcher = self.slab.get_mut(w);
            watcher.slot = NONE;
            watcher.flags |= F_SENT;
            let watcher = *watcher;
            let first = events
                .first()
                .and_then(|e| e.kv.as_ref())
                .map_or(revision, |kv| kv.mod_revision);
            let responses = self.responses(watcher.id, watcher.flags, events, revision, header);
            if !self.try_send(watcher.stream, responses) {
                self.make_unsynced(w, first);
            }
        }
    }

    /// Each synced watcher that some event is for, with its events, in the order watchers
    /// first matched. Leaves every matched watcher's `slot` set (the caller resets it).
    fn match_events(&mut self, events: &[Event]) -> Vec<(u32, Vec<Event>)> {
        let mut batch: Vec<(u32, Vec<Event>)> = Vec::new();
        let mut matched: Vec<u32> = Vec::new();
        for event in events {
            let Some(kv) = &event.kv else { continue };
            matched.clear();
            self.groups.matching(&kv.key, &mut matched);
            for &g in &matched {
                for &w in &self.groups.get(g).synced {
                    let watcher = self.slab.get_mut(w);
                    assert_eq!(watcher.group, g, "watcher {w} listed in a foreign group");
                    if kv.mod_revision < watcher.next_rev || watcher.filters_out(event) {
                        continue;
                    }
                    if watcher.slot == NONE {
                        watcher.slot = batch.len() as u32;
                        batch.push((w, Vec::new()));
                    }
                    let shaped = watcher.shape(event);
                    batch[watcher.slot as usize].1.push(shaped);
                }
            }
        }
        batch
    }

    /// One response, or fragments of it if the watcher allows and it is too large.
    pub(super) fn responses(
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
}
