//! Ordering by revision: duplicate revisions, per-client monotonicity, real-time order and
//! compaction, without search.
//!
//! Each `ok` operation gets a key: `2r` for a write that changed the store at revision `r`,
//! `2h + 1` for anything else with header revision `h` (it sits after write `h`, before write
//! `h + 1`). Example: `put x=1 -> rev 2` has key 4, `get x -> rev 2` key 5, `put x=2 -> rev 3`
//! key 6. If `put x=2` completed before the get was invoked, the get's key 5 < 6 is a stale read.
use std::collections::HashMap;

use super::describe::who;
use super::{Violation, ViolationKind};
use crate::history::{Operation, Outcome, Request, Response, ResponseOp, Revision};
use crate::model::{may_mutate, mutates};

/// The history, indexed for the checks.
pub struct Prepared<'a> {
    /// The operations.
    pub ops: &'a [Operation],
    /// The revision before the history.
    pub initial: Revision,
    /// Order key of each `ok` operation (see the module doc).
    pub key: Vec<Option<i64>>,
    /// `ok` operations that changed the store, by revision (the first one, if duplicated).
    pub writer: HashMap<Revision, usize>,
    /// `ok` operations that did not change the store, by the revision whose state they show.
    pub reads_at: HashMap<Revision, Vec<usize>>,
    /// Operations with unknown outcome that could change the store.
    pub in_doubt: Vec<usize>,
    /// The highest revision any `ok` operation reports.
    pub max_revision: Revision,
    /// For in-doubt writes, the earliest revision each can make: after everything that
    /// completed before it was invoked (other entries are unused).
    pub min_revision: Vec<Revision>,
    /// Revisions up to `max_revision` that no acknowledged write reports, ascending.
    pub gaps: Vec<Revision>,
    /// The gaps no read saw as a key's mod revision (only these can hold a pure delete).
    pub free_gaps: Vec<Revision>,
    /// (completion time, largest key so far, its op) over `ok` ops, by completion time.
    reached: Vec<(u64, i64, usize)>,
}

/// The revision whose state a non-mutating `ok` op shows: its explicit read revision or header.
pub fn data_revision(op: &Operation, header: Revision) -> Revision {
    match &op.request {
        Request::Range(r) => r.revision.filter(|r| *r > 0).unwrap_or(header),
        _ => header,
    }
}

impl<'a> Prepared<'a> {
    /// Indexes `ops`.
    pub fn new(ops: &'a [Operation], initial: Revision) -> Self {
        let mut p = Prepared {
            ops,
            initial,
            key: vec![None; ops.len()],
            writer: HashMap::new(),
            reads_at: HashMap::new(),
            in_doubt: Vec::new(),
            max_revision: initial,
            min_revision: vec![initial + 1; ops.len()],
            gaps: Vec::new(),
            free_gaps: Vec::new(),
            reached: Vec::new(),
        };
        for op in ops {
            match &op.outcome {
                Outcome::Ok(resp) => {
                    let r = resp.revision();
                    p.max_revision = p.max_revision.max(r);
                    if mutates(resp) {
                        p.key[op.id] = Some(r.saturating_mul(2));
                        p.writer.entry(r).or_insert(op.id);
                    } else {
                        p.key[op.id] = Some(r.saturating_mul(2).saturating_add(1));
                        if !matches!(op.request, Request::Compact(_)) {
                            let d = data_revision(op, r);
                            p.reads_at.entry(d).or_default().push(op.id);
                        }
                    }
                }
                Outcome::Info(_) if may_mutate(&op.request) => p.in_doubt.push(op.id),
                Outcome::Info(_) | Outcome::Fail(_) => {}
            }
        }
        p.gaps = (initial + 1..=p.max_revision)
            .filter(|r| !p.writer.contains_key(r))
            .collect();
        let mut pinned: std::collections::HashSet<Revision> = std::collections::HashSet::new();
        for op in ops {
            match op.ok() {
                Some(Response::Range(r)) => pinned.extend(r.kvs.iter().map(|kv| kv.mod_revision)),
                Some(Response::Txn(t)) => {
                    for inner in &t.responses {
                        if let ResponseOp::Range(r) = inner {
                            pinned.extend(r.kvs.iter().map(|kv| kv.mod_revision));
                        }
                    }
                }
                _ => {}
            }
        }
        p.free_gaps = p
            .gaps
            .iter()
            .copied()
            .filter(|g| !pinned.contains(g))
            .collect();
        p.index_min_revisions();
        p
    }

    fn index_min_revisions(&mut self) {
        let mut done: Vec<(u64, i64, usize)> = self
            .ops
            .iter()
            .filter_map(|op| Some((op.complete_time?, self.key[op.id]?, op.id)))
            .collect();
        done.sort_unstable();
        let mut best = (i64::MIN, usize::MAX);
        self.reached = done
            .iter()
            .map(|d| {
                if d.1 > best.0 {
                    best = (d.1, d.2);
                }
                (d.0, best.0, best.1)
            })
            .collect();
        for &id in &self.in_doubt {
            if let Some((key, _)) = self.reached_before(self.ops[id].invoke_time) {
                self.min_revision[id] = (key / 2 + 1).max(self.initial + 1);
            }
        }
    }

    /// The largest order key among `ok` ops completed before `t`, and that op.
    pub fn reached_before(&self, t: u64) -> Option<(i64, usize)> {
        let n = self.reached.partition_point(|d| d.0 < t);
        let &(_, key, id) = self.reached.get(n.checked_sub(1)?)?;
        Some((key, id))
    }

    /// Whether an in-doubt write `id` could make some revision in `(lo, hi]`: a gap it was
    /// invoked early enough for, that `allowed` accepts, and for a plain delete, one no read saw
    /// a put at.
    pub fn could_place(
        &self,
        id: usize,
        lo: Revision,
        hi: Revision,
        allowed: impl Fn(Revision) -> bool,
    ) -> bool {
        let lo = lo.max(self.min_revision[id] - 1);
        let gaps = match self.ops[id].request {
            Request::Delete(_) => &self.free_gaps,
            _ => &self.gaps,
        };
        let n = gaps.partition_point(|g| *g <= lo);
        gaps[n..]
            .iter()
            .take_while(|g| **g <= hi)
            .any(|g| allowed(*g))
    }

    fn op(&self, id: usize) -> &'a Operation {
        &self.ops[id]
    }
}

/// All the order checks, in the order that gives the clearest explanation.
pub fn check_order(p: &Prepared<'_>) -> Result<(), Violation> {
    bad_revisions(p)?;
    duplicate_revisions(p)?;
    future_revisions(p)?;
    per_client(p)?;
    real_time(p)?;
    compaction(p)?;
    failed_reads(p)
}

/// A read at a past revision that failed with `compacted` needs a compaction above that
/// revision requested before it completed; one that failed with `future_rev` must ask for a
/// revision the store had not reached when it was invoked.
fn failed_reads(p: &Prepared<'_>) -> Result<(), Violation> {
    for op in p.ops {
        let (Request::Range(r), Outcome::Fail(Some(error))) = (&op.request, &op.outcome) else {
            continue;
        };
        let Some(rv) = r.revision.filter(|r| *r > 0) else {
            continue;
        };
        let end = op.complete_time.unwrap_or(u64::MAX);
        if error.contains("compacted") {
            let compaction = p.ops.iter().any(|c| match (&c.request, &c.outcome) {
                (Request::Compact(x), Outcome::Ok(_) | Outcome::Info(_)) => {
                    x.revision > rv && c.invoke_time < end
                }
                _ => false,
            });
            if !compaction {
                return Err(Violation::new(
                    ViolationKind::WrongError,
                    &[op],
                    format!(
                        "{} failed with compacted, but no compaction above rev {rv} was \
                         requested before it completed",
                        who(op)
                    ),
                ));
            }
        }
        if error.contains("future") {
            if let Some((key, id)) = p.reached_before(op.invoke_time).filter(|x| x.0 / 2 >= rv) {
                let a = p.op(id);
                return Err(Violation::new(
                    ViolationKind::WrongError,
                    &[a, op],
                    format!(
                        "{} failed with future_rev, but {} at rev {} completed before it was \
                         invoked",
                        who(op),
                        who(a),
                        key / 2
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn bad_revisions(p: &Prepared<'_>) -> Result<(), Violation> {
    for op in p.ops {
        let Some(resp) = op.ok() else { continue };
        let r = resp.revision();
        let low = if mutates(resp) {
            r <= p.initial
        } else {
            r < p.initial
        };
        if low {
            return Err(Violation::new(
                ViolationKind::BadRevision,
                &[op],
                format!(
                    "{} reports rev {r}, but the store starts at rev {} (so the first write \
                     makes rev {})",
                    who(op),
                    p.initial,
                    p.initial + 1
                ),
            ));
        }
    }
    Ok(())
}

fn duplicate_revisions(p: &Prepared<'_>) -> Result<(), Violation> {
    for op in p.ops {
        let Some(resp) = op.ok().filter(|r| mutates(r)) else {
            continue;
        };
        let r = resp.revision();
        let first = p.writer.get(&r).copied().unwrap_or(op.id);
        if first != op.id {
            let a = p.op(first);
            return Err(Violation::new(
                ViolationKind::DuplicateRevision,
                &[a, op],
                format!(
                    "{} and {} both changed the store and both report rev {r}; a revision is \
                     made by exactly one write",
                    who(a),
                    who(op)
                ),
            ));
        }
    }
    Ok(())
}

fn future_revisions(p: &Prepared<'_>) -> Result<(), Violation> {
    for op in p.ops {
        let Some(resp) = op.ok() else { continue };
        let h = resp.revision();
        let asked = match &op.request {
            Request::Range(r) => r.revision.filter(|r| *r > 0),
            Request::Compact(c) => Some(c.revision),
            _ => None,
        };
        if let Some(asked) = asked.filter(|a| *a > h) {
            return Err(Violation::new(
                ViolationKind::FutureRevision,
                &[op],
                format!(
                    "{} succeeded at header rev {h}, but rev {asked} did not exist yet; etcd \
                     answers future_rev",
                    who(op)
                ),
            ));
        }
    }
    Ok(())
}

fn per_client(p: &Prepared<'_>) -> Result<(), Violation> {
    let mut last: HashMap<u64, usize> = HashMap::new(); // process -> op with the highest key
    for op in p.ops {
        let Some(k) = p.key[op.id] else { continue };
        if let Some(&prev) = last.get(&op.process) {
            let pk = p.key[prev].unwrap_or(i64::MIN);
            if pk > k && !op.request.is_serializable() {
                let a = p.op(prev);
                return Err(Violation::new(
                    ViolationKind::RevisionBackwards,
                    &[a, op],
                    format!(
                        "p{} saw rev {} ({}) and then rev {} ({}): the revision went backwards \
                         for one client",
                        op.process,
                        rev_of(a),
                        who(a),
                        rev_of(op),
                        who(op)
                    ),
                ));
            }
            if pk >= k {
                continue;
            }
        }
        last.insert(op.process, op.id);
    }
    Ok(())
}

fn rev_of(op: &Operation) -> Revision {
    op.ok().map_or(0, |r| r.revision())
}

fn is_write(p: &Prepared<'_>, op: &Operation) -> bool {
    p.key[op.id].is_some_and(|k| k % 2 == 0)
}

/// One sort and one sweep: for each operation `b`, the largest key among operations completed
/// before `b` was invoked must not exceed `b`'s key.
fn real_time(p: &Prepared<'_>) -> Result<(), Violation> {
    let mut by_completion: Vec<(u64, usize)> = Vec::new();
    let mut by_invoke: Vec<(u64, usize)> = Vec::new();
    for op in p.ops {
        if let (Some(_), Some(t)) = (p.key[op.id], op.complete_time) {
            by_completion.push((t, op.id));
            by_invoke.push((op.invoke_time, op.id));
        }
    }
    by_completion.sort_unstable();
    by_invoke.sort_unstable();
    let mut i = 0;
    let mut best: Option<(i64, usize)> = None;
    for &(invoked, b) in &by_invoke {
        while i < by_completion.len() && by_completion[i].0 < invoked {
            let a = by_completion[i].1;
            let ka = p.key[a].unwrap_or(i64::MIN);
            if best.is_none_or(|(k, _)| ka > k) {
                best = Some((ka, a));
            }
            i += 1;
        }
        let (Some((ka, a)), Some(kb)) = (best, p.key[b]) else {
            continue;
        };
        let checked = is_write(p, p.op(b)) || !p.op(b).request.is_serializable();
        if checked && ka > kb {
            return Err(real_time_violation(p, p.op(a), p.op(b)));
        }
    }
    Ok(())
}

fn real_time_violation(p: &Prepared<'_>, a: &Operation, b: &Operation) -> Violation {
    let what = if is_write(p, b) { "write" } else { "read" };
    let stale = if is_write(p, b) {
        "writes must take revisions in real-time order"
    } else {
        "a stale read"
    };
    let a_end = a.complete_time.unwrap_or(0);
    Violation::new(
        ViolationKind::RealTime,
        &[a, b],
        format!(
            "{what} at rev {} by p{} ({}){}, but {} at rev {} completed (t {a_end}) before p{}'s \
             {what} was invoked (t {}): {stale}",
            rev_of(b),
            b.process,
            super::describe::request_text(&b.request),
            b.ok().map(super::describe::seen_text).unwrap_or_default(),
            who(a),
            rev_of(a),
            b.process,
            b.invoke_time
        ),
    )
}

/// A successful read at revision `rv` must come before every compaction to a revision above
/// `rv`: neither after it in revision order nor invoked after it completed.
fn compaction(p: &Prepared<'_>) -> Result<(), Violation> {
    let compacts: Vec<(&Operation, Revision)> = p
        .ops
        .iter()
        .filter_map(|op| match (&op.request, op.ok()) {
            (Request::Compact(c), Some(_)) => Some((op, c.revision)),
            _ => None,
        })
        .collect();
    if compacts.is_empty() {
        return Ok(());
    }
    // Prefix maxima of compaction revisions by key and by completion time.
    let mut by_key: Vec<(i64, Revision, usize)> = compacts
        .iter()
        .map(|(op, c)| (p.key[op.id].unwrap_or(i64::MAX), *c, op.id))
        .collect();
    by_key.sort_unstable();
    let mut by_end: Vec<(u64, Revision, usize)> = compacts
        .iter()
        .map(|(op, c)| (op.complete_time.unwrap_or(u64::MAX), *c, op.id))
        .collect();
    by_end.sort_unstable();
    let key_max = prefix_max(by_key.iter().map(|x| (x.1, x.2)));
    let end_max = prefix_max(by_end.iter().map(|x| (x.1, x.2)));
    let before = |k: i64, invoked: u64| {
        let n = by_key.partition_point(|x| x.0 < k);
        let m = by_end.partition_point(|x| x.0 < invoked);
        [
            n.checked_sub(1).map(|i| key_max[i]),
            m.checked_sub(1).map(|i| end_max[i]),
        ]
    };
    let mut same: HashMap<Revision, usize> = HashMap::new();
    for &(op, c) in &compacts {
        let first = *same.entry(c).or_insert(op.id);
        let earlier = before(p.key[op.id].unwrap_or(i64::MAX), op.invoke_time);
        let clash = earlier
            .into_iter()
            .flatten()
            .find(|x| x.0 >= c)
            .map(|x| x.1);
        if let Some(cid) = clash.or((first != op.id).then_some(first)) {
            let cop = p.op(cid);
            return Err(Violation::new(
                ViolationKind::ReadBelowCompaction,
                &[cop, op],
                format!(
                    "{} succeeded, but {} came before it or beside it; a compaction to a \
                     revision already compacted fails with compacted",
                    who(op),
                    who(cop)
                ),
            ));
        }
    }
    for op in p.ops {
        let (Request::Range(r), Some(_), Some(k)) = (&op.request, op.ok(), p.key[op.id]) else {
            continue;
        };
        let Some(rv) = r.revision.filter(|r| *r > 0) else {
            continue;
        };
        let n = by_key.partition_point(|x| x.0 < k);
        let m = by_end.partition_point(|x| x.0 < op.invoke_time);
        let before = [
            n.checked_sub(1).map(|i| key_max[i]),
            m.checked_sub(1).map(|i| end_max[i]),
        ];
        for (c, cid) in before.into_iter().flatten() {
            if c > rv {
                let cop = p.op(cid);
                return Err(Violation::new(
                    ViolationKind::ReadBelowCompaction,
                    &[cop, op],
                    format!(
                        "{} succeeded, but {} (compacting below rev {c}) came \
                         before it; etcd answers compacted",
                        who(op),
                        who(cop)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn prefix_max(items: impl Iterator<Item = (Revision, usize)>) -> Vec<(Revision, usize)> {
    let mut out: Vec<(Revision, usize)> = Vec::new();
    for (c, id) in items {
        let next = match out.last() {
            Some(&(m, mid)) if m >= c => (m, mid),
            _ => (c, id),
        };
        out.push(next);
    }
    out
}
