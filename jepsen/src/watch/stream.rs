//! One watch's stream, checked on its own: the protocol (open, created first, nothing after a
//! cancel or close), order, uniqueness, atomic revisions, key range, start, filters, header
//! revisions, progress notifications, cancels for compaction, and each event's own create flag
//! and `prev_kv` shape.
//!
//! The stream's *milestones* are where it promised completeness: after an events response
//! every covered change up to its last event's revision was delivered (one less for a
//! fragment, which may end inside a revision), after a progress notification every covered
//! change up to its revision. The highest is the stream's *horizon*. An events response's
//! header revision promises nothing: etcd's catch-up sends at most 1000 revisions per response
//! (`watchBatchMaxRevs`) under the store's current revision as header.
//!
//! Fragments join into one *message*: an events record with `fragment: true` is continued by
//! the next events record of the same watch, up to one with `fragment: false`. A revision's
//! events must all lie in one message:
//!
//! ```text
//! events rev 5 fragment=true  [a@5]      message 0
//! events rev 5 fragment=false [b@5]      message 0   (same message: fine)
//! events rev 6 fragment=false [a@6]      message 1
//! events rev 6 fragment=false [b@6]      message 2   -> Split: revision 6 in two messages
//! ```
use std::collections::{BTreeMap, HashSet};

use crate::history::{KeyValue, Revision};

use super::verdict::{bad, Check, WatchViolation, WatchViolationKind as Kind};
use super::{EventType, WatchEvent, WatchId, WatchLog, WatchRecordKind, WatchRequest};

/// One event a watch delivered: where it is in the log and which message it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Index of its record in the log.
    pub record: usize,
    /// Index in that record's events.
    pub index: usize,
    /// The message (fragments joined) it arrived in, counted per watch from 0.
    pub message: u64,
}

/// A point after which the watch has delivered every covered change up to `revision`: an
/// events response (its last event's revision) or a progress notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Milestone {
    /// The record.
    pub record: usize,
    /// The revision.
    pub revision: Revision,
    /// A progress notification (not events).
    pub progress: bool,
}

/// A watch's stream after the per-stream checks.
#[derive(Clone, Debug)]
pub struct Stream<'a> {
    /// The recorder's id.
    pub id: WatchId,
    /// The `open` record.
    pub open: usize,
    /// The request.
    pub req: &'a WatchRequest,
    /// The `created` record, if any.
    pub created: Option<usize>,
    /// The first revision it may deliver: `start_revision`, or the created header + 1
    /// (`Revision::MAX` for a watch from now that was never created).
    pub start: Revision,
    /// The events delivered, in order.
    pub deliveries: Vec<Delivery>,
    /// `(revision, key)` of every event delivered.
    pub delivered: HashSet<(Revision, String)>,
    /// Events responses and progress notifications, in order.
    pub milestones: Vec<Milestone>,
    /// The highest milestone revision (0: none): every covered change in `[start, horizon]`
    /// must have been delivered.
    pub horizon: Revision,
    /// The `canceled` record, if any.
    pub canceled: Option<usize>,
}

impl Stream<'_> {
    /// The event of a delivery.
    pub fn event<'l>(&self, log: &'l WatchLog, d: &Delivery) -> Option<&'l WatchEvent> {
        match &log.records.get(d.record)?.kind {
            WatchRecordKind::Events { events, .. } => events.get(d.index),
            _ => None,
        }
    }
}

/// Checks every watch's stream on its own; the streams in order of watch id.
pub fn streams(log: &WatchLog) -> Check<Vec<Stream<'_>>> {
    let mut by_watch: BTreeMap<WatchId, Vec<usize>> = BTreeMap::new();
    for (i, r) in log.records.iter().enumerate() {
        by_watch.entry(r.watch).or_default().push(i);
    }
    let mut out = Vec::with_capacity(by_watch.len());
    for (id, records) in by_watch {
        out.push(check_stream(log, id, &records)?);
    }
    Ok(out)
}

/// The state of the walk over one watch's records.
struct Walk<'a> {
    log: &'a WatchLog,
    s: Stream<'a>,
    message: u64,
    open_fragment: bool,
    last: Option<(Revision, usize, u64)>, // (revision, record, message) of the last event
    progress: Option<(Revision, usize)>,  // the highest progress notification
    closed: Option<usize>,
}

fn violation(kind: Kind, text: String) -> WatchViolation {
    WatchViolation::new(kind, text)
}

fn check_stream<'a>(log: &'a WatchLog, id: WatchId, records: &[usize]) -> Check<Stream<'a>> {
    let Some((&first, rest)) = records.split_first() else {
        return bad(violation(
            Kind::Malformed,
            format!("watch {id} has no records"),
        ));
    };
    let WatchRecordKind::Open(req) = &log.records[first].kind else {
        let name = log.records[first].kind.name();
        let text = format!("watch {id}: its first record is {name}, not open");
        return bad(violation(Kind::Malformed, text).record(log, first));
    };
    let s = Stream {
        id,
        open: first,
        req,
        created: None,
        start: if req.start_revision > 0 {
            req.start_revision
        } else {
            Revision::MAX
        },
        deliveries: Vec::new(),
        delivered: HashSet::new(),
        milestones: Vec::new(),
        horizon: 0,
        canceled: None,
    };
    let mut w = Walk {
        log,
        s,
        message: 0,
        open_fragment: false,
        last: None,
        progress: None,
        closed: None,
    };
    for &i in rest {
        w.step(i)?;
    }
    Ok(w.s)
}

impl<'a> Walk<'a> {
    fn fail(&self, kind: Kind, text: String, records: &[usize]) -> WatchViolation {
        let mut v = violation(kind, text).watch(self.s.id);
        for &r in records {
            v = v.record(self.log, r);
        }
        v
    }

    fn step(&mut self, i: usize) -> Check<()> {
        let id = self.s.id;
        let kind = &self.log.records[i].kind;
        if let Some(c) = self.closed {
            let text = format!("watch {id}: a {} record after it was closed", kind.name());
            return bad(self.fail(Kind::Malformed, text, &[c, i]));
        }
        if !matches!(kind, WatchRecordKind::Events { .. }) && self.open_fragment {
            self.open_fragment = false;
            self.message += 1;
        }
        match kind {
            WatchRecordKind::Open(_) => {
                let text = format!("watch {id} opened twice");
                bad(self.fail(Kind::Malformed, text, &[self.s.open, i]))
            }
            WatchRecordKind::Closed { .. } => {
                self.closed = Some(i);
                Ok(())
            }
            WatchRecordKind::Created { revision } => self.created(i, *revision),
            other => {
                let Some(_) = self.s.created else {
                    let text = format!(
                        "watch {id}: its first response is {}, not created (etcd always \
                         sends created first)",
                        other.name()
                    );
                    return bad(self.fail(Kind::MissingCreated, text, &[self.s.open, i]));
                };
                if let Some(c) = self.s.canceled {
                    let text = format!("watch {id}: a {} response after its cancel", other.name());
                    return bad(self.fail(Kind::Canceled, text, &[c, i]));
                }
                self.response(i, other)
            }
        }
    }

    fn created(&mut self, i: usize, revision: Revision) -> Check<()> {
        if let Some(c) = self.s.created {
            let text = format!("watch {}: created twice", self.s.id);
            return bad(self.fail(Kind::MissingCreated, text, &[c, i]));
        }
        if let Some(c) = self.s.canceled {
            let text = format!("watch {}: created after its cancel", self.s.id);
            return bad(self.fail(Kind::MissingCreated, text, &[c, i]));
        }
        self.s.created = Some(i);
        if self.s.req.start_revision <= 0 {
            self.s.start = revision.saturating_add(1);
        }
        Ok(())
    }

    fn response(&mut self, i: usize, kind: &WatchRecordKind) -> Check<()> {
        match kind {
            WatchRecordKind::Events {
                revision,
                fragment,
                events,
            } => self.events(i, *revision, *fragment, events),
            WatchRecordKind::Progress { revision } => {
                self.milestone(i, *revision, true);
                if self.progress.is_none_or(|(p, _)| *revision > p) {
                    self.progress = Some((*revision, i));
                }
                Ok(())
            }
            WatchRecordKind::Canceled {
                compact_revision, ..
            } => {
                self.s.canceled = Some(i);
                self.cancel(i, *compact_revision)
            }
            WatchRecordKind::Open(_)
            | WatchRecordKind::Created { .. }
            | WatchRecordKind::Closed { .. } => Ok(()),
        }
    }

    fn milestone(&mut self, record: usize, revision: Revision, progress: bool) {
        self.s.milestones.push(Milestone {
            record,
            revision,
            progress,
        });
        self.s.horizon = self.s.horizon.max(revision);
    }

    /// etcd cancels a watch for compaction at `c` only if it asked for a revision below `c`
    /// (compaction keeps revision `c` itself). Only the start is checked: etcd's own
    /// compaction check reads the watcher's `minRev`, which a restore from a snapshot can
    /// leave behind the events already delivered.
    fn cancel(&mut self, i: usize, c: Revision) -> Check<()> {
        if c <= 0 || self.s.start < c {
            return Ok(());
        }
        let text = format!(
            "watch {} was canceled for compaction at revision {c}, but it started at {}, which \
             a compaction at {c} keeps",
            self.s.id, self.s.start,
        );
        bad(self.fail(Kind::Canceled, text, &[self.s.open, i]))
    }

    fn events(
        &mut self,
        i: usize,
        header: Revision,
        fragment: bool,
        events: &[WatchEvent],
    ) -> Check<()> {
        if fragment && !self.s.req.fragment {
            let text = format!(
                "watch {} did not ask for fragments, but record {i} is a fragment",
                self.s.id
            );
            return bad(self.fail(Kind::Split, text, &[self.s.open, i]));
        }
        for (j, e) in events.iter().enumerate() {
            self.event(i, j, header, e)?;
        }
        // A fragment may end inside a revision: only the revisions before its last are whole.
        if let Some(last) = events.last() {
            let whole = if fragment {
                last.revision() - 1
            } else {
                last.revision()
            };
            self.milestone(i, whole, false);
        }
        self.open_fragment = fragment;
        if !fragment {
            self.message += 1;
        }
        Ok(())
    }

    fn event(&mut self, i: usize, j: usize, header: Revision, e: &WatchEvent) -> Check<()> {
        let (id, r, key) = (self.s.id, e.revision(), e.kv.key.as_str());
        let at = |v: WatchViolation| v.at(r, key);
        let what = e.text();
        if r > header {
            let text = format!(
                "watch {id}: record {i} has header revision {header} below its event {what}"
            );
            return bad(at(self.fail(Kind::Header, text, &[i])));
        }
        self.placement(i, e)?;
        self.sequence(i, e)?;
        if let Err((kind, why)) = check_kv(e) {
            let text = format!("watch {id}: {what} in record {i}: {why}");
            return bad(at(self.fail(kind, text, &[i])));
        }
        self.check_prev_shape(i, e)?;
        self.s.deliveries.push(Delivery {
            record: i,
            index: j,
            message: self.message,
        });
        self.s.delivered.insert((r, key.to_string()));
        self.last = Some((r, i, self.message));
        Ok(())
    }

    /// Range, start and filters.
    fn placement(&self, i: usize, e: &WatchEvent) -> Check<()> {
        let (id, r, key, req) = (self.s.id, e.revision(), e.kv.key.as_str(), self.s.req);
        let what = e.text();
        let problem = if !req.covers(key) {
            Some((
                Kind::OutOfRange,
                format!("{key} is outside the watched range"),
            ))
        } else if r < self.s.start {
            let why = format!("revision {r} is below the watch's start {}", self.s.start);
            Some((Kind::OutOfRange, why))
        } else if !req.passes(e.kind) {
            let why = format!("the watch filters out {} events", e.kind.name());
            Some((Kind::Filter, why))
        } else {
            None
        };
        let Some((kind, why)) = problem else {
            return Ok(());
        };
        let text = format!("watch {id}: {what} in record {i}: {why}");
        bad(self.fail(kind, text, &[self.s.open, i]).at(r, key))
    }

    /// Progress, order, uniqueness and atomicity.
    fn sequence(&self, i: usize, e: &WatchEvent) -> Check<()> {
        let (id, r, key) = (self.s.id, e.revision(), e.kv.key.as_str());
        let what = e.text();
        if let Some((p, pi)) = self.progress.filter(|(p, _)| r <= *p) {
            let text = format!(
                "watch {id}: {what} in record {i} arrived after a progress notification at \
                 revision {p} (record {pi}), which promised every event up to {p} was delivered"
            );
            return bad(self.fail(Kind::Progress, text, &[pi, i]).at(r, key));
        }
        let Some((last, li, lm)) = self.last else {
            return Ok(());
        };
        if r < last {
            let text = format!(
                "watch {id}: {what} in record {i} came after an event at revision {last} \
                 (record {li}): revisions went backwards"
            );
            return bad(self.fail(Kind::Unordered, text, &[li, i]).at(r, key));
        }
        if self.s.delivered.contains(&(r, key.to_string())) {
            let first = self.find(r, key).unwrap_or(li);
            let text = format!("watch {id}: {what} delivered twice (records {first} and {i})");
            return bad(self.fail(Kind::Duplicate, text, &[first, i]).at(r, key));
        }
        if r == last && lm != self.message {
            let text = format!(
                "watch {id}: revision {r} is split across records {li} and {i}, which are not \
                 fragments of one response"
            );
            return bad(self.fail(Kind::Split, text, &[li, i]).at(r, key));
        }
        Ok(())
    }

    fn find(&self, r: Revision, key: &str) -> Option<usize> {
        let d = self.s.deliveries.iter().find(|d| {
            self.s
                .event(self.log, d)
                .is_some_and(|e| e.revision() == r && e.kv.key == key)
        })?;
        Some(d.record)
    }

    /// `prev_kv` only when asked for; a create has none; otherwise the same key, an earlier
    /// revision, and for a put the same generation with version one less.
    fn check_prev_shape(&self, i: usize, e: &WatchEvent) -> Check<()> {
        let why = prev_shape(self.s.req.prev_kv, e);
        let Some(why) = why else { return Ok(()) };
        let text = format!("watch {}: {} in record {i}: {why}", self.s.id, e.text());
        bad(self
            .fail(Kind::PrevKv, text, &[self.s.open, i])
            .at(e.revision(), &e.kv.key))
    }
}

fn prev_shape(asked: bool, e: &WatchEvent) -> Option<String> {
    let Some(p) = &e.prev_kv else { return None };
    if !asked {
        return Some(format!("prev_kv {p} was not asked for"));
    }
    let kv = &e.kv;
    let create = e.kind == EventType::Put && kv.version == 1;
    if create {
        return Some(format!(
            "a create has no previous version, but prev_kv is {p}"
        ));
    }
    if p.key != kv.key || p.mod_revision >= kv.mod_revision {
        return Some(format!(
            "prev_kv {p} is not an earlier version of {}",
            kv.key
        ));
    }
    if let Err((_, why)) = kv_shape(p) {
        return Some(format!("prev_kv {p}: {why}"));
    }
    let same_generation = p.create_revision == kv.create_revision;
    if e.kind == EventType::Put && (!same_generation || p.version.saturating_add(1) != kv.version) {
        return Some(format!(
            "prev_kv {p} is not the previous version of a put with create {} and version {}",
            kv.create_revision, kv.version
        ));
    }
    None
}

/// A put's own kv: version at least 1, create revision at most the mod revision, and version 1
/// exactly when it is a create (`create_revision == mod_revision`).
fn check_kv(e: &WatchEvent) -> Result<(), (Kind, String)> {
    if e.kind == EventType::Delete {
        return Ok(());
    }
    kv_shape(&e.kv)
}

fn kv_shape(kv: &KeyValue) -> Result<(), (Kind, String)> {
    if kv.version < 1 || kv.create_revision < 1 || kv.create_revision > kv.mod_revision {
        return Err((
            Kind::Version,
            format!(
                "impossible create revision {} / version {}",
                kv.create_revision, kv.version
            ),
        ));
    }
    if (kv.version == 1) != (kv.create_revision == kv.mod_revision) {
        return Err((
            Kind::Version,
            format!(
                "wrong create flag: version {} with create revision {} and mod revision {}",
                kv.version, kv.create_revision, kv.mod_revision
            ),
        ));
    }
    let span = kv.mod_revision - kv.create_revision + 1;
    if kv.version > span {
        return Err((
            Kind::Version,
            format!(
                "version {} is more puts than the {span} revisions since its create",
                kv.version
            ),
        ));
    }
    Ok(())
}
