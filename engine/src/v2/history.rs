//! The event history a wait is served from: the last 1000 changes (etcd's `EventHistory`).

use std::collections::VecDeque;

use keel_proto::keelpb::{V2Error, V2Event};

use super::error::{error, EVENT_INDEX_CLEARED};
use super::tree::clean;

/// Changes kept for waits, as etcd keeps.
pub const HISTORY_CAPACITY: usize = 1000;

/// The newest changes, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct History {
    events: VecDeque<V2Event>,
}

/// The index an event is at (its node's modified index).
pub(crate) fn event_index(e: &V2Event) -> u64 {
    e.node.as_ref().map_or(0, |n| n.modified_index)
}

impl History {
    /// Keeps `e`, dropping the oldest beyond the capacity.
    pub fn add(&mut self, e: V2Event) {
        if self.events.len() == HISTORY_CAPACITY {
            self.events.pop_front();
        }
        if let Some(last) = self.events.back() {
            assert!(
                event_index(&e) > event_index(last),
                "v2 history must grow: {} after {}",
                event_index(&e),
                event_index(last)
            );
        }
        self.events.push_back(e);
    }

    /// The events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &V2Event> {
        self.events.iter()
    }

    /// The first change at or after `since` that a wait on `key` sees (etcd's `scan`):
    /// `Ok(None)` when there is none yet, 401 when `since` is older than the history.
    pub fn scan(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
    ) -> Result<Option<&V2Event>, V2Error> {
        let start = self.events.front().map_or(0, event_index);
        if since < start {
            let cause = format!("the requested history has been cleared [{start}/{since}]");
            return Err(error(EVENT_INDEX_CLEARED, cause, 0));
        }
        let first = self.events.partition_point(|e| event_index(e) < since);
        let prefix = recursive.then(|| {
            let mut p = clean(key);
            if !p.ends_with('/') {
                p.push('/');
            }
            p
        });
        Ok(self
            .events
            .range(first..)
            .find(|e| !e.refresh && sees(e, key, prefix.as_deref())))
    }
}

/// Whether a wait on `key` (recursive: `prefix` is `key/`) sees `e`.
fn sees(e: &V2Event, key: &str, prefix: Option<&str>) -> bool {
    let Some(node) = &e.node else {
        return false;
    };
    if node.key == key || prefix.is_some_and(|p| node.key.starts_with(p)) {
        return true;
    }
    // A deleted or expired directory takes every key under it along (etcd's prefix test,
    // without a separator, kept as it is).
    (e.action == "delete" || e.action == "expire")
        && e.prev_node
            .as_ref()
            .is_some_and(|p| p.dir && key.starts_with(&p.key))
}
