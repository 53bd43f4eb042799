//! What the watch checker concludes, and how it explains a violation.
use std::fmt;

use crate::check::OpRef;
use crate::history::{Operation, Revision};

use super::{WatchId, WatchLog};

/// The watch checker's conclusion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchVerdict {
    /// Every watch stream is consistent with the history and with each other.
    Valid,
    /// One is not; here is why.
    Invalid(WatchViolation),
}

impl WatchVerdict {
    /// True only for [`WatchVerdict::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, WatchVerdict::Valid)
    }
    /// The violation, if invalid.
    pub fn violation(&self) -> Option<&WatchViolation> {
        match self {
            WatchVerdict::Invalid(v) => Some(v),
            WatchVerdict::Valid => None,
        }
    }
}

impl fmt::Display for WatchVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchVerdict::Valid => write!(f, "valid"),
            WatchVerdict::Invalid(v) => write!(f, "invalid: {v}"),
        }
    }
}

/// The kind of watch anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchViolationKind {
    /// The log or the history cannot be read as one (records before `open`, a watch opened
    /// twice, records after `closed`, a history whose ops do not pair, two acknowledged writes
    /// with one revision).
    Malformed,
    /// The first response is not `created`, or `created` came twice.
    MissingCreated,
    /// A watch's revisions went backwards.
    Unordered,
    /// A watch delivered the same `(revision, key)` twice.
    Duplicate,
    /// One revision's events split across responses that are not fragments of one, or
    /// fragments on a watch that did not ask for them.
    Split,
    /// An event outside the watched key range or below the watch's start revision.
    OutOfRange,
    /// An event the watch's filters exclude.
    Filter,
    /// An events response whose header revision is below one of its events'.
    Header,
    /// A known change to a covered key, inside the watch's delivered window, never delivered.
    Gap,
    /// An event at or below an earlier progress notification, or a known change at or below a
    /// progress notification that was not delivered before it.
    Progress,
    /// A `prev_kv` that is not the key's previous version (or is missing, or unasked for).
    PrevKv,
    /// A wrong create flag or version: a create of an existing key, a continued generation
    /// across a delete, versions that do not count the puts, a delete of an absent key.
    Version,
    /// A cancel for compaction the watch's next revision did not need, or anything after a
    /// cancel.
    Canceled,
    /// An event no operation of the history can have made: a value nobody wrote or only a
    /// failed op wrote, a delete no op could have done.
    UnknownWrite,
    /// An event at a revision other than its write's (the acknowledged write with that value
    /// has another revision, or the acknowledged write of that revision did something else).
    WrongRevision,
    /// Two watches show different changes at the same revision and key.
    Disagree,
    /// A watch delivered a revision before the write that made it was invoked.
    Future,
}

/// A watch-log record named in a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef {
    /// Index in [`WatchLog::records`] (0-based; the line number if the file has no blank lines
    /// is one more).
    pub index: usize,
    /// The record's watch.
    pub watch: WatchId,
    /// The record as its JSON line.
    pub text: String,
}

/// Why the watch log is not valid: the kind, the watches, revision and key involved, the
/// records and operations to look at, and one sentence of explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchViolation {
    /// What kind of anomaly.
    pub kind: WatchViolationKind,
    /// The watches involved (the one at fault first).
    pub watches: Vec<WatchId>,
    /// The revision involved, if one.
    pub revision: Option<Revision>,
    /// The key involved, if one.
    pub key: Option<String>,
    /// The records involved.
    pub records: Vec<RecordRef>,
    /// The history operations involved.
    pub ops: Vec<OpRef>,
    /// Why.
    pub explanation: String,
}

impl WatchViolation {
    /// A violation with only a kind and an explanation; add the rest with the `with_*` methods.
    pub fn new(kind: WatchViolationKind, explanation: String) -> Self {
        WatchViolation {
            kind,
            watches: Vec::new(),
            revision: None,
            key: None,
            records: Vec::new(),
            ops: Vec::new(),
            explanation,
        }
    }
    /// Names the revision and key.
    pub fn at(mut self, revision: Revision, key: &str) -> Self {
        self.revision = Some(revision);
        self.key = Some(key.to_string());
        self
    }
    /// Names the revision only.
    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }
    /// Names a record of `log` (and its watch).
    pub fn record(mut self, log: &WatchLog, index: usize) -> Self {
        let Some(r) = log.records.get(index) else {
            return self;
        };
        if !self.watches.contains(&r.watch) {
            self.watches.push(r.watch);
        }
        if !self.records.iter().any(|x| x.index == index) {
            self.records.push(RecordRef {
                index,
                watch: r.watch,
                text: r.to_json(),
            });
        }
        self
    }
    /// Names a watch.
    pub fn watch(mut self, watch: WatchId) -> Self {
        if !self.watches.contains(&watch) {
            self.watches.push(watch);
        }
        self
    }
    /// Names a history operation.
    pub fn op(mut self, op: &Operation) -> Self {
        if !self.ops.iter().any(|o| o.id == op.id) {
            self.ops.push(OpRef::of(op));
        }
        self
    }
    /// Whether the record with this index is named.
    pub fn names_record(&self, index: usize) -> bool {
        self.records.iter().any(|r| r.index == index)
    }
}

impl fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}: {}", self.kind, self.explanation)?;
        for r in &self.records {
            writeln!(f, "  record {} (watch {}): {}", r.index, r.watch, r.text)?;
        }
        for op in &self.ops {
            writeln!(f, "  op {}: {}", op.id, op.text)?;
        }
        Ok(())
    }
}

/// A pass's result: a violation is boxed (it is large and rare).
pub(crate) type Check<T> = Result<T, Box<WatchViolation>>;

/// Fails a pass with `v`.
pub(crate) fn bad<T>(v: WatchViolation) -> Check<T> {
    Err(Box::new(v))
}
