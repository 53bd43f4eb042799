//! Watch logs: what a client saw on etcd watch streams, and a checker that verifies them
//! against the KV history of the same run.
//!
//! # Format (JSON lines)
//!
//! One record per line. `watch` is the recorder's id for one watch the client opened (not
//! etcd's `watch_id`); a client that reconnects and resumes opens a *new* watch with
//! `start_revision` = last revision seen + 1. `time` is monotonic nanoseconds on the clock of
//! the history's `time`.
//!
//! ```text
//! {"watch":7,"type":"open","time":100,"req":{"key":"k","range_end":"l","start_revision":5,"prev_kv":true,"filters":["noput"],"progress_notify":false,"fragment":false}}
//! {"watch":7,"type":"created","time":150,"revision":12}
//! {"watch":7,"type":"events","time":160,"revision":13,"fragment":false,"events":[{"type":"put","kv":{"key":"k1","value":"v","create_revision":13,"mod_revision":13,"version":1},"prev_kv":null}]}
//! {"watch":7,"type":"progress","time":170,"revision":13}
//! {"watch":7,"type":"canceled","time":180,"compact_revision":9,"reason":""}
//! {"watch":7,"type":"closed","time":190,"error":"connection reset"}
//! ```
//!
//! - `open`: the request. `range_end` follows the history (absent: the single key; `"\u0000"`:
//!   every key `>= key`); `start_revision` 0 means "from now" (the `created` header revision
//!   + 1); `filters` are `noput` and `nodelete`.
//! - `created`, `progress`: the response's header revision.
//! - `events`: `revision` is the header revision, `fragment` as etcd sets it (true on all but
//!   the last piece of a fragmented response); each event is `{type, kv, prev_kv}` with a
//!   [`KeyValue`]. An event's revision is its `kv.mod_revision`; a delete's `kv` carries the key
//!   and the delete's revision (value `""`, create and version 0, as etcd sends).
//! - `canceled`: `compact_revision` (0 if the cancel is not about compaction) and `reason`.
//! - `closed`: the stream ended on the client side (`error` optional).
//!
//! # What [`check_watches`] verifies
//!
//! Per watch ([`stream`]): `open` first, then `created` as the first response; events in
//! non-decreasing revision order, no `(revision, key)` twice; all events of one revision in one
//! response (fragments, `fragment: true` on all but the last piece, join into one); every event
//! inside the key range, at or above the effective start and allowed by the filters; each events
//! response's header revision at or above its events'; no event at or below a progress
//! notification that came before it; `prev_kv` only when asked for and locally consistent
//! (same generation, version one less); a put's create flag (version 1 exactly when
//! `create_revision == mod_revision`); after a cancel nothing but `closed`; a cancel for
//! compaction at `C` only for a watch that started below `C`.
//!
//! Against the ground truth ([`truth`], built from the KV history's acknowledged writes and
//! every watch's events): an event agrees with the acknowledged write of its revision (same key,
//! same kind, same value), or — where no acknowledged write has that revision — could come from
//! an in-doubt write invoked before it was delivered; a value only a failed op (or nobody) wrote
//! is rejected, and so is a value written by an acknowledged write at another revision. Watches
//! agree on every `(revision, key)` they both saw. Reliability: a watch that delivered an event
//! or a progress notification at revision `H` must have delivered every known change in
//! `[start, H]` to a key it covers (filters applied); the report names the missing revision and
//! key. Per key, versions form generations: a put that continues a generation created at `c`
//! has no delete in `[c, r)`, a version above every known earlier one of its generation, and,
//! where the changes in between are known completely (a watch covered them, or acknowledged
//! writes made every revision in between), exactly the previous version + 1; a create
//! (version 1) follows an absent key. A `prev_kv` is the key's version at its `mod_revision`
//! with no known change to the key between it and the event; it is null only for a create or
//! where a compaction may have removed the revision before the event.
//!
//! Nothing is concluded that the data cannot support: a change is *known* only if an
//! acknowledged write made it or a watch delivered it; in-doubt writes may or may not appear;
//! an events response's header revision and a `created` response promise nothing about
//! delivery; only the last event of a response (one less for a fragment) and progress
//! notifications do. [`WatchOptions`] states what else the run may do (an initial revision
//! other than 1, compactions and deletes outside the history).
//!
//! # Worked example
//!
//! ```text
//! history: put x=a -> rev 2; put x=b -> rev 3; delete x -> rev 4; put x=c -> info (never acked)
//! watch 1: start 2        events x=a@2 (v1) | x=b@3 (v2) | delete x@4 | progress 4
//! watch 2: start 3        events x=b@3 (v2), x=c@5 (v1) ...
//! ```
//!
//! Watch 1 is valid. Watch 2 shows revisions 3 and 5 but not 4: it was live past 4 (it
//! delivered 5), covers `x`, and the delete at 4 is known (acknowledged, and watch 1 saw it), so
//! it is a gap. `x=c@5` itself is fine: no acknowledged write has revision 5 and the in-doubt
//! `put x=c` was invoked before the event arrived.
//!
//! # Building logs in tests
//!
//! ```
//! use keel_jepsen::history::{History, KeyValue, Request, Response};
//! use keel_jepsen::watch::{check_watches, WatchEvent, WatchLog, WatchRequest};
//! let h = History::builder()
//!     .invoke(1, Request::put("x", "a"))
//!     .ok(1, Response::put(2))
//!     .build();
//! let log = WatchLog::builder()
//!     .at(10)
//!     .open(1, WatchRequest::key("x").start(2))
//!     .created(1, 2)
//!     .events(1, 2, vec![WatchEvent::put(KeyValue::new("x", "a", 2, 2, 1))])
//!     .build();
//! assert_eq!(WatchLog::from_jsonl(&log.to_jsonl()).unwrap(), log);
//! assert!(check_watches(&h, &log).is_valid());
//! ```
use serde::{Deserialize, Serialize};

use crate::history::{KeyValue, Revision};

mod check;
pub mod stream;
pub mod truth;
mod verdict;

pub use check::{check_watches, check_watches_with, WatchOptions};
pub use verdict::{RecordRef, WatchVerdict, WatchViolation, WatchViolationKind};

/// The recorder's id of one watch.
pub type WatchId = u64;

/// A watch filter: events of this kind are not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Filter {
    /// No put events.
    #[serde(rename = "noput")]
    NoPut,
    /// No delete events.
    #[serde(rename = "nodelete")]
    NoDelete,
}

/// etcd's `WatchCreateRequest`, as far as the checker needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// First key.
    pub key: String,
    /// End of the range as in the history: absent: the single key; `"\0"`: every key `>= key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// First revision to deliver; 0: the `created` header revision + 1.
    #[serde(default)]
    pub start_revision: Revision,
    /// Ask for the previous key-value pair with each event.
    #[serde(default)]
    pub prev_kv: bool,
    /// Kinds of events not to send.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Ask for periodic progress notifications.
    #[serde(default)]
    pub progress_notify: bool,
    /// Allow large responses to be split into fragments.
    #[serde(default)]
    pub fragment: bool,
}

impl WatchRequest {
    /// A watch of one key, from now.
    pub fn key(key: &str) -> Self {
        WatchRequest {
            key: key.to_string(),
            ..WatchRequest::default()
        }
    }
    /// A watch of `[key, end)` (`end` as in [`WatchRequest::range_end`]), from now.
    pub fn range(key: &str, end: &str) -> Self {
        WatchRequest {
            range_end: Some(end.to_string()),
            ..WatchRequest::key(key)
        }
    }
    /// From `revision` on.
    pub fn start(mut self, revision: Revision) -> Self {
        self.start_revision = revision;
        self
    }
    /// With `prev_kv`.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// With a filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }
    /// With `progress_notify`.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// With `fragment`.
    pub fn with_fragment(mut self) -> Self {
        self.fragment = true;
        self
    }
    /// Whether `key` is in the watched range.
    pub fn covers(&self, key: &str) -> bool {
        crate::model::in_range(key, &self.key, self.range_end.as_deref())
    }
    /// Whether events of `kind` pass the filters.
    pub fn passes(&self, kind: EventType) -> bool {
        let blocked = match kind {
            EventType::Put => Filter::NoPut,
            EventType::Delete => Filter::NoDelete,
        };
        !self.filters.contains(&blocked)
    }
}

/// A put or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A put.
    Put,
    /// A delete.
    Delete,
}

impl EventType {
    /// `put` or `delete`.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Put => "put",
            EventType::Delete => "delete",
        }
    }
}

/// etcd's `mvccpb.Event`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The pair after a put; for a delete the key and the delete's revision as `mod_revision`.
    pub kv: KeyValue,
    /// The previous pair, when asked for.
    #[serde(default)]
    pub prev_kv: Option<KeyValue>,
}

impl WatchEvent {
    /// A put event.
    pub fn put(kv: KeyValue) -> Self {
        WatchEvent {
            kind: EventType::Put,
            kv,
            prev_kv: None,
        }
    }
    /// A delete of `key` at `revision`, as etcd sends it.
    pub fn delete(key: &str, revision: Revision) -> Self {
        WatchEvent {
            kind: EventType::Delete,
            kv: KeyValue::new(key, "", 0, revision, 0),
            prev_kv: None,
        }
    }
    /// The same event with `prev_kv`.
    pub fn with_prev(mut self, prev: Option<KeyValue>) -> Self {
        self.prev_kv = prev;
        self
    }
    /// The event's revision (`kv.mod_revision`).
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
    /// `put x=1@5` or `delete x@6`.
    pub fn text(&self) -> String {
        match self.kind {
            EventType::Put => format!("put {}", self.kv),
            EventType::Delete => format!("delete {}@{}", self.kv.key, self.kv.mod_revision),
        }
    }
}

/// What a record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchRecordKind {
    /// The client sent this create request.
    Open(WatchRequest),
    /// The `created` response with its header revision.
    Created {
        /// Header revision.
        revision: Revision,
    },
    /// A response with events.
    Events {
        /// Header revision.
        revision: Revision,
        /// More pieces of the same response follow.
        fragment: bool,
        /// The events, in the order sent.
        events: Vec<WatchEvent>,
    },
    /// A progress notification (no events) with its header revision.
    Progress {
        /// Header revision.
        revision: Revision,
    },
    /// The server canceled the watch.
    Canceled {
        /// The compacted revision if canceled for compaction, else 0.
        compact_revision: Revision,
        /// etcd's `cancel_reason`.
        reason: String,
    },
    /// The client stopped reading the stream (closed it, or it broke).
    Closed {
        /// Why, if it broke.
        error: Option<String>,
    },
}

impl WatchRecordKind {
    /// The `type` field.
    pub fn name(&self) -> &'static str {
        match self {
            WatchRecordKind::Open(_) => "open",
            WatchRecordKind::Created { .. } => "created",
            WatchRecordKind::Events { .. } => "events",
            WatchRecordKind::Progress { .. } => "progress",
            WatchRecordKind::Canceled { .. } => "canceled",
            WatchRecordKind::Closed { .. } => "closed",
        }
    }
}

/// One line of a watch log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRecord", into = "RawRecord")]
pub struct WatchRecord {
    /// The recorder's watch id.
    pub watch: WatchId,
    /// Monotonic nanoseconds, on the history's clock.
    pub time: u64,
    /// What happened.
    pub kind: WatchRecordKind,
}

impl WatchRecord {
    /// This record as one JSON line (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The wire shape of a [`WatchRecord`]: fields in the documented order.
#[derive(Serialize, Deserialize)]
struct RawRecord {
    watch: WatchId,
    #[serde(rename = "type")]
    kind: String,
    time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    req: Option<WatchRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fragment: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    events: Option<Vec<WatchEvent>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compact_revision: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl TryFrom<RawRecord> for WatchRecord {
    type Error = String;
    fn try_from(raw: RawRecord) -> Result<WatchRecord, String> {
        let need_revision = |what: &str| raw.revision.ok_or(format!("{what} without revision"));
        let kind = match raw.kind.as_str() {
            "open" => WatchRecordKind::Open(raw.req.clone().ok_or("open without req")?),
            "created" => WatchRecordKind::Created {
                revision: need_revision("created")?,
            },
            "events" => WatchRecordKind::Events {
                revision: need_revision("events")?,
                fragment: raw.fragment.unwrap_or(false),
                events: raw.events.clone().ok_or("events without events")?,
            },
            "progress" => WatchRecordKind::Progress {
                revision: need_revision("progress")?,
            },
            "canceled" => WatchRecordKind::Canceled {
                compact_revision: raw.compact_revision.unwrap_or(0),
                reason: raw.reason.clone().unwrap_or_default(),
            },
            "closed" => WatchRecordKind::Closed {
                error: raw.error.clone(),
            },
            other => return Err(format!("unknown type {other:?}")),
        };
        Ok(WatchRecord {
            watch: raw.watch,
            time: raw.time,
            kind,
        })
    }
}

impl From<WatchRecord> for RawRecord {
    fn from(r: WatchRecord) -> RawRecord {
        let mut raw = RawRecord {
            watch: r.watch,
            kind: r.kind.name().to_string(),
            time: r.time,
            req: None,
            revision: None,
            fragment: None,
            events: None,
            compact_revision: None,
            reason: None,
            error: None,
        };
        match r.kind {
            WatchRecordKind::Open(req) => raw.req = Some(req),
            WatchRecordKind::Created { revision } | WatchRecordKind::Progress { revision } => {
                raw.revision = Some(revision);
            }
            WatchRecordKind::Events {
                revision,
                fragment,
                events,
            } => {
                raw.revision = Some(revision);
                raw.fragment = Some(fragment);
                raw.events = Some(events);
            }
            WatchRecordKind::Canceled {
                compact_revision,
                reason,
            } => {
                raw.compact_revision = Some(compact_revision);
                raw.reason = Some(reason);
            }
            WatchRecordKind::Closed { error } => raw.error = error,
        }
        raw
    }
}

/// Why a watch log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WatchLogError {
    /// A line is not a valid record.
    #[error("line {line}: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// A watch log: records in the order they were written (per watch, the order received).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchLog {
    /// The records.
    pub records: Vec<WatchRecord>,
}

impl WatchLog {
    /// A builder for tests.
    pub fn builder() -> WatchLogBuilder {
        WatchLogBuilder::default()
    }

    /// Reads JSON lines (blank lines ignored).
    pub fn from_jsonl(text: &str) -> Result<WatchLog, WatchLogError> {
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r = serde_json::from_str(line).map_err(|source| WatchLogError::Parse {
                line: i + 1,
                source,
            })?;
            records.push(r);
        }
        Ok(WatchLog { records })
    }

    /// Writes JSON lines, one record per line, each ending in a newline.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for r in &self.records {
            out.push_str(&r.to_json());
            out.push('\n');
        }
        out
    }
}

/// Builds a [`WatchLog`] for tests: each record is stamped with the current time, which then
/// advances by one; [`WatchLogBuilder::at`] sets it.
#[derive(Clone, Debug, Default)]
pub struct WatchLogBuilder {
    records: Vec<WatchRecord>,
    time: u64,
}

impl WatchLogBuilder {
    /// The next record happens at `time`.
    pub fn at(mut self, time: u64) -> Self {
        self.time = time;
        self
    }

    /// Appends a record of `watch`.
    pub fn record(mut self, watch: WatchId, kind: WatchRecordKind) -> Self {
        self.records.push(WatchRecord {
            watch,
            time: self.time,
            kind,
        });
        self.time += 1;
        self
    }

    /// The client opens `watch` with `req`.
    pub fn open(self, watch: WatchId, req: WatchRequest) -> Self {
        self.record(watch, WatchRecordKind::Open(req))
    }

    /// The `created` response.
    pub fn created(self, watch: WatchId, revision: Revision) -> Self {
        self.record(watch, WatchRecordKind::Created { revision })
    }

    /// A whole (unfragmented) events response.
    pub fn events(self, watch: WatchId, revision: Revision, events: Vec<WatchEvent>) -> Self {
        let fragment = false;
        self.record(
            watch,
            WatchRecordKind::Events {
                revision,
                fragment,
                events,
            },
        )
    }

    /// A fragment with more to follow (`fragment: true`); end with [`WatchLogBuilder::events`].
    pub fn fragment(self, watch: WatchId, revision: Revision, events: Vec<WatchEvent>) -> Self {
        let fragment = true;
        self.record(
            watch,
            WatchRecordKind::Events {
                revision,
                fragment,
                events,
            },
        )
    }

    /// A progress notification.
    pub fn progress(self, watch: WatchId, revision: Revision) -> Self {
        self.record(watch, WatchRecordKind::Progress { revision })
    }

    /// The server cancels the watch.
    pub fn canceled(self, watch: WatchId, compact_revision: Revision, reason: &str) -> Self {
        let reason = reason.to_string();
        self.record(
            watch,
            WatchRecordKind::Canceled {
                compact_revision,
                reason,
            },
        )
    }

    /// The client's stream ends.
    pub fn closed(self, watch: WatchId, error: Option<&str>) -> Self {
        let error = error.map(str::to_string);
        self.record(watch, WatchRecordKind::Closed { error })
    }

    /// The log.
    pub fn build(self) -> WatchLog {
        WatchLog {
            records: self.records,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOC: &str = r#"{"watch":7,"type":"open","time":100,"req":{"key":"k","range_end":"l","start_revision":5,"prev_kv":true,"filters":["noput"],"progress_notify":false,"fragment":false}}
{"watch":7,"type":"created","time":150,"revision":12}
{"watch":7,"type":"events","time":160,"revision":13,"fragment":false,"events":[{"type":"put","kv":{"key":"k1","value":"v","create_revision":13,"mod_revision":13,"version":1},"prev_kv":null}]}
{"watch":7,"type":"progress","time":170,"revision":13}
{"watch":7,"type":"canceled","time":180,"compact_revision":9,"reason":""}
{"watch":7,"type":"closed","time":190,"error":"connection reset"}
"#;

    #[test]
    fn the_documented_lines_round_trip_exactly() {
        let log = WatchLog::from_jsonl(DOC).unwrap();
        assert_eq!(log.records.len(), 6);
        assert_eq!(log.to_jsonl(), DOC);
        let WatchRecordKind::Open(req) = &log.records[0].kind else {
            panic!("not open")
        };
        assert_eq!(req.filters, vec![Filter::NoPut]);
        assert!(req.covers("k1") && !req.covers("l"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let text = "\n{\"watch\":1,\"type\":\"events\",\"time\":1,\"events\":[]}\n";
        let err = WatchLog::from_jsonl(text).unwrap_err().to_string();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(err.contains("events without revision"), "{err}");
        let err = WatchLog::from_jsonl("{\"watch\":1,\"type\":\"x\",\"time\":1}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown type"), "{err}");
    }

    #[test]
    fn builder_matches_parsed() {
        let log = WatchLog::builder()
            .at(100)
            .open(7, WatchRequest::range("k", "l").start(5).with_prev_kv())
            .created(7, 12)
            .fragment(
                7,
                13,
                vec![WatchEvent::put(KeyValue::new("k1", "v", 13, 13, 1))],
            )
            .events(7, 13, vec![WatchEvent::delete("k2", 13)])
            .closed(7, None)
            .build();
        assert_eq!(WatchLog::from_jsonl(&log.to_jsonl()).unwrap(), log);
    }
}
