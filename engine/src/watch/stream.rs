//! One client's Watch stream: its watch ids, its credit, and the control responses it owes.
//!
//! Credit is the number of responses the stream may still have in flight. Data responses
//! (events, progress notifications) are sent only when the credit covers them and no control
//! response waits; control responses (created, canceled, progress answers) are never dropped:
//! they queue, in order, while there is no credit. So a stream either has no queued control
//! response or no credit:
//!
//! ```text
//! credit 2, queue []      control → sent, credit 1
//! credit 0, queue []      control → queued            data → refused (watcher falls behind)
//! credit 0, queue [c1]    Credit(3) → c1 sent, credit 2, queue []
//! ```

use std::collections::{BTreeMap, VecDeque};

use keel_proto::etcdserverpb::WatchResponse;

use super::{StreamId, CONTROL_QUEUE_MAX, STREAM_WINDOW};

/// One Watch stream.
#[derive(Debug)]
pub(super) struct Stream {
    /// Responses the stream may still have in flight.
    pub(super) credit: u32,
    /// watch id → watcher slab index.
    pub(super) watchers: BTreeMap<i64, u32>,
    next_id: i64,
    /// How many of this stream's watchers are unsynced.
    pub(super) unsynced: u32,
    /// A progress request waits until every watcher of the stream is synced.
    pub(super) progress_wanted: bool,
    /// Control responses waiting for credit.
    pub(super) control: VecDeque<WatchResponse>,
}

impl Stream {
    /// A stream without watchers, with `credit` responses of credit.
    pub(super) fn new(credit: u32) -> Stream {
        assert!(credit <= STREAM_WINDOW, "credit {credit} over the window");
        Stream {
            credit,
            watchers: BTreeMap::new(),
            next_id: 0,
            unsynced: 0,
            progress_wanted: false,
            control: VecDeque::new(),
        }
    }

    /// The id of a new watch: the `requested` one (`None` if taken), or for 0 the lowest
    /// free id from the last one chosen (etcd's rule).
    pub(super) fn choose_id(&mut self, requested: i64) -> Option<i64> {
        if requested != 0 {
            return (!self.watchers.contains_key(&requested)).then_some(requested);
        }
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        self.next_id += 1;
        Some(self.next_id - 1)
    }

    /// The client read `responses` more; credit grows up to `window`.
    pub(super) fn add_credit(&mut self, responses: u32, window: u32) {
        // The client's count may be anything: saturate, then bound by the window.
        self.credit = self.credit.saturating_add(responses).min(window);
    }

    /// Whether `responses` data responses can go out now.
    pub(super) fn can_send(&self, responses: usize) -> bool {
        self.control.is_empty() && (self.credit as usize) >= responses
    }

    /// Spends credit on `responses` responses going out.
    pub(super) fn spend(&mut self, responses: usize) {
        let spent = u32::try_from(responses).ok();
        self.credit = spent
            .and_then(|n| self.credit.checked_sub(n))
            .unwrap_or_else(|| panic!("sending {responses} responses on {} credit", self.credit));
    }

    /// One of this stream's watchers fell behind.
    pub(super) fn watcher_unsynced(&mut self) {
        self.unsynced = self
            .unsynced
            .checked_add(1)
            .unwrap_or_else(|| panic!("unsynced watcher count overflows"));
        assert!(
            self.unsynced as usize <= self.watchers.len(),
            "more unsynced watchers ({}) than watchers ({})",
            self.unsynced,
            self.watchers.len()
        );
    }

    /// One of this stream's unsynced watchers caught up or went away.
    pub(super) fn watcher_left_unsynced(&mut self) {
        self.unsynced = self
            .unsynced
            .checked_sub(1)
            .unwrap_or_else(|| panic!("unsynced watcher count goes below zero"));
    }

    /// Panics unless the stream's own counters hold (O(1)).
    pub(super) fn check(&self, stream: StreamId) {
        assert!(
            self.credit <= STREAM_WINDOW,
            "stream {stream}: credit {} over the window",
            self.credit
        );
        assert!(
            self.control.len() <= CONTROL_QUEUE_MAX,
            "stream {stream}: control queue over its bound"
        );
        assert!(
            self.control.is_empty() || self.credit == 0,
            "stream {stream}: control responses wait although there is credit"
        );
        assert!(
            self.unsynced as usize <= self.watchers.len(),
            "stream {stream}: more unsynced watchers than watchers"
        );
    }
}
