//! The linearizability checker for etcd's KV model.
//!
//! etcd's store-wide revision makes the whole KV one object, but it also says almost everything
//! about the order of operations, so the checker searches only where information is missing:
//!
//! 1. **Order** ([`order`]): every `ok` operation gets a position from its revision: a write that
//!    changed the store sits *at* its revision `r` (key `2r`), anything else sits *after* the write
//!    of its header revision `h` (key `2h + 1`). Operations at the same key commute (reads), so a
//!    legal order exists iff no operation that completed before another was invoked has a larger
//!    key — one sort and one sweep. The same pass rejects duplicate write revisions, a client
//!    seeing the revision go backwards, reads of future revisions and successful reads below a
//!    compaction that came before them.
//! 2. **Facts** ([`facts`]): what a read shows pins history without search: `x=v@m` says the write
//!    at revision `m` put `x=v` and no acknowledged write touched `x` in `(m, h]`. Reads of values
//!    nobody (or only a failed op) wrote, and acknowledged writes a read missed, are caught here.
//! 3. **Replay** ([`search`]): the model applies revision after revision: an acknowledged write
//!    at its own revision (its response must match the model's), or — at a revision no
//!    acknowledged write took — an in-doubt (`info`) write, chosen among those invoked early
//!    enough whose effect matches what reads saw at that revision; reads are checked against the
//!    state at their revision. Only these choices branch; a dead end backtracks (with a memo of
//!    visited states), bounded in states and time. An in-doubt put of a key that a later
//!    complete read shows absent is refuted at once when no delete is left to fall between
//!    ([`absent`]). A revision nobody can have produced is a violation; a budget that runs out,
//!    during backtracking too, decides nothing (`Unknown`).
//!
//! Serializable reads may be stale: they are checked against the state at their header
//! revision, and they may not see the future, but they need not be recent.
use std::fmt;
use std::time::Duration;

use crate::history::{History, HistoryError, Operation, ProcessId, Revision};

pub mod absent;
pub mod describe;
pub mod facts;
pub mod forbid;
pub mod order;
pub mod prune;
pub mod search;

/// What a checker concluded. Callers must treat [`Verdict::Unknown`] as a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The history is linearizable.
    Valid,
    /// It is not; here is why.
    Invalid(Violation),
    /// The checker ran out of budget or could not read the history.
    Unknown {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// True only for [`Verdict::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }
    /// The violation, if invalid.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Verdict::Invalid(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => write!(f, "valid"),
            Verdict::Invalid(v) => write!(f, "invalid: {v}"),
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// The kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// A revision that cannot be (e.g. a write at or below the initial revision).
    BadRevision,
    /// Two acknowledged writes report the same revision.
    DuplicateRevision,
    /// One client saw the revision go backwards.
    RevisionBackwards,
    /// An operation is ordered before one that completed before it was invoked (stale read).
    RealTime,
    /// A read of a revision newer than its own header, or a compaction beyond the store.
    FutureRevision,
    /// A successful read below a compaction that came before it.
    ReadBelowCompaction,
    /// A read saw a value no acknowledged or in-doubt write can have written.
    PhantomValue,
    /// A read missed an acknowledged write.
    LostWrite,
    /// A response differs from the model's at its revision.
    WrongResponse,
    /// A revision no operation can have produced.
    UnexplainedRevision,
    /// A read failed with an error the history cannot explain (`compacted` with no compaction
    /// above its revision, `future_rev` for a revision already reached).
    WrongError,
}

/// An operation named in a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRef {
    /// Index in [`History::operations`].
    pub id: usize,
    /// The client.
    pub process: ProcessId,
    /// The response's header revision, for `ok` operations.
    pub revision: Option<Revision>,
    /// One line: process, request, outcome and times.
    pub text: String,
}

impl OpRef {
    /// Describes `op`.
    pub fn of(op: &Operation) -> Self {
        OpRef {
            id: op.id,
            process: op.process,
            revision: op.ok().map(|r| r.revision()),
            text: describe::operation_text(op),
        }
    }
}

/// The minimal failing part of a history: the operations involved and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What kind of anomaly.
    pub kind: ViolationKind,
    /// The operations involved.
    pub ops: Vec<OpRef>,
    /// One sentence of why.
    pub explanation: String,
}

impl Violation {
    /// A violation naming `ops`.
    pub fn new(kind: ViolationKind, ops: &[&Operation], explanation: String) -> Self {
        let mut refs: Vec<OpRef> = Vec::with_capacity(ops.len());
        for op in ops {
            if !refs.iter().any(|r| r.id == op.id) {
                refs.push(OpRef::of(op));
            }
        }
        Violation {
            kind,
            ops: refs,
            explanation,
        }
    }
    /// Whether the operation with this id is named.
    pub fn names(&self, id: usize) -> bool {
        self.ops.iter().any(|o| o.id == id)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}: {}", self.kind, self.explanation)?;
        for op in &self.ops {
            writeln!(f, "  op {}: {}", op.id, op.text)?;
        }
        Ok(())
    }
}

/// Budgets and assumptions.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The store's revision before the history. The store is assumed empty then (etcd
    /// starts empty at revision 1); a history that starts on a populated store is not supported.
    pub initial_revision: Revision,
    /// Give up (Unknown) after producing this many revisions in the replay, backtracking
    /// included.
    pub max_steps: u64,
    /// Keep at most this many visited states in the memo.
    pub max_memo_states: usize,
    /// Give up (Unknown) after this long.
    pub time_limit: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            initial_revision: 1,
            max_steps: 20_000_000,
            max_memo_states: 4_000_000,
            time_limit: Duration::from_secs(60),
        }
    }
}

/// Checks a history; a history that cannot be paired is `Unknown`.
pub fn check(history: &History, options: &CheckOptions) -> Verdict {
    match history.operations() {
        Ok(ops) => check_operations(&ops, options),
        Err(e) => Verdict::Unknown {
            reason: format!("malformed history: {e}"),
        },
    }
}

/// Reads and checks JSON lines.
pub fn check_jsonl(text: &str, options: &CheckOptions) -> Result<Verdict, HistoryError> {
    let h = History::from_jsonl(text)?;
    Ok(check(&h, options))
}

/// Checks paired operations (`ops[i].id == i`).
pub fn check_operations(ops: &[Operation], options: &CheckOptions) -> Verdict {
    check_with_stats(ops, options).0
}

/// Checks paired operations (`ops[i].id == i`) and says what the replay did (all zero if the
/// history failed before the replay).
pub fn check_with_stats(ops: &[Operation], options: &CheckOptions) -> (Verdict, search::Stats) {
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op.id, i, "operations must be numbered in order");
    }
    let prep = order::Prepared::new(ops, options.initial_revision);
    if let Err(v) = order::check_order(&prep) {
        return (Verdict::Invalid(v), search::Stats::default());
    }
    let facts = facts::Facts::new(&prep);
    if let Err(v) = facts.check_reads(&prep) {
        return (Verdict::Invalid(v), search::Stats::default());
    }
    search::Search::new(&prep, &facts, options).run_with_stats()
}
