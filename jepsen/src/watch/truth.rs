//! The ground truth the watch checker compares streams against: what is *known* to have
//! changed at each revision, and where the changes to a key are known *completely*.
//!
//! - [`Writes`]: from the KV history. An `ok` write that changed the store made exactly its
//!   revision; its changes are known (a put's key and value, a single-key delete; a range
//!   delete only with its `prev_kvs`). Every op of any outcome is indexed by what it may put
//!   or delete, to tell where an event's value can come from.
//! - [`Chains`]: per key, the known changes by revision, from `ok` writes and from every
//!   watch's events (a put event also brings its create revision and version).
//! - [`Coverage`]: per key, the revisions at which *every* change to the key is known: those a
//!   watch without filters covering the key delivered through (its start to its last event or
//!   progress notification), and those an `ok` write with fully known changes made.
//!
//! For example, with `put x -> rev 2 (ok)`, `put y -> rev 3 (info)`, and a watch of `x` from 2
//! that delivered `x@2` and a progress notification at 5: `x`'s chain is `{2: put}`, and `x`'s
//! coverage is `[2, 5]` (the watch) — so `x` certainly did not change at 3, 4 or 5.
use std::collections::{BTreeMap, HashMap};

use crate::history::{
    DeleteRequest, DeleteResponse, KeyValue, Operation, Outcome, Request, RequestOp, Response,
    ResponseOp, Revision,
};
use crate::model::{in_range, mutates};

use super::stream::Stream;
use super::verdict::{bad, Check, WatchViolation, WatchViolationKind as Kind};
use super::EventType;

/// A change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Put this value.
    Put(String),
    /// Deleted.
    Delete,
}

/// What an acknowledged write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Key → its change (the last one if a txn wrote a key twice).
    pub changes: BTreeMap<String, Change>,
    /// Whether `changes` is every change of the write (false for a range delete without
    /// `prev_kvs`).
    pub complete: bool,
    /// Range deletes whose keys are unknown: `(key, range_end)`.
    pub range_deletes: Vec<(String, Option<String>)>,
}

impl Effects {
    fn of(op: &Operation) -> Option<Effects> {
        let resp = op.ok().filter(|r| mutates(r))?;
        let mut fx = Effects {
            complete: true,
            ..Effects::default()
        };
        match (&op.request, resp) {
            (Request::Put(p), _) => fx.put(&p.key, &p.value),
            (Request::Delete(d), Response::Delete(r)) => fx.delete(d, r),
            (Request::Txn(t), Response::Txn(r)) => {
                let branch = if r.succeeded { &t.success } else { &t.failure };
                if branch.len() != r.responses.len() {
                    fx.complete = false;
                }
                for (q, a) in branch.iter().zip(&r.responses) {
                    match (q, a) {
                        (RequestOp::Put(p), _) => fx.put(&p.key, &p.value),
                        (RequestOp::Delete(d), ResponseOp::Delete(r)) => fx.delete(d, r),
                        _ => {}
                    }
                }
            }
            _ => fx.complete = false,
        }
        Some(fx)
    }

    fn put(&mut self, key: &str, value: &str) {
        self.changes
            .insert(key.to_string(), Change::Put(value.to_string()));
    }

    fn delete(&mut self, d: &DeleteRequest, r: &DeleteResponse) {
        if r.deleted <= 0 {
            return;
        }
        match d.range_end.as_deref() {
            None | Some("") => {
                self.changes.insert(d.key.clone(), Change::Delete);
            }
            Some(_) if usize::try_from(r.deleted).ok() == Some(r.prev_kvs.len()) => {
                for kv in &r.prev_kvs {
                    self.changes.insert(kv.key.clone(), Change::Delete);
                }
            }
            Some(_) => {
                self.complete = false;
                self.range_deletes
                    .push((d.key.clone(), d.range_end.clone()));
            }
        }
    }

    /// Whether this write may have deleted `key` without saying so (an unknown range delete).
    pub fn may_have_deleted(&self, key: &str) -> bool {
        self.range_deletes
            .iter()
            .any(|(k, e)| in_range(key, k, e.as_deref()))
    }
}

/// What the KV history says about writes.
#[derive(Clone, Debug)]
pub struct Writes<'h> {
    /// The history's operations.
    pub ops: &'h [Operation],
    /// Revision → the acknowledged write that made it, and what it did.
    pub ok_at: BTreeMap<Revision, (usize, Effects)>,
    /// `(key, value)` → every op (any outcome, any txn branch) that may put it.
    pub puts_by: HashMap<(String, String), Vec<usize>>,
    /// Key → every op that may delete exactly that key.
    pub deletes_by_key: HashMap<String, Vec<usize>>,
    /// Every range delete any op may do: `(op, key, range_end)`.
    pub range_deletes: Vec<(usize, String, Option<String>)>,
    /// Every compaction of any outcome: `(op, revision)`.
    pub compactions: Vec<(usize, Revision)>,
}

impl<'h> Writes<'h> {
    /// Indexes `ops`; two acknowledged writes with one revision are a [`Kind::Malformed`]
    /// history.
    pub fn new(ops: &'h [Operation]) -> Check<Writes<'h>> {
        let mut w = Writes {
            ops,
            ok_at: BTreeMap::new(),
            puts_by: HashMap::new(),
            deletes_by_key: HashMap::new(),
            range_deletes: Vec::new(),
            compactions: Vec::new(),
        };
        for op in ops {
            w.index(op);
            let Some(fx) = Effects::of(op) else { continue };
            let r = op.ok().map_or(0, Response::revision);
            if let Some((other, _)) = w.ok_at.get(&r) {
                let text = format!(
                    "the history itself is not linearizable: two acknowledged writes have \
                     revision {r}"
                );
                let v = WatchViolation::new(Kind::Malformed, text).at_revision(r);
                return bad(v.op(&ops[*other]).op(op));
            }
            w.ok_at.insert(r, (op.id, fx));
        }
        Ok(w)
    }

    fn index(&mut self, op: &Operation) {
        let single: Vec<RequestOp>;
        let reqs: &[RequestOp] = match &op.request {
            Request::Put(p) => {
                single = vec![RequestOp::Put(p.clone())];
                &single
            }
            Request::Delete(d) => {
                single = vec![RequestOp::Delete(d.clone())];
                &single
            }
            Request::Txn(t) => {
                for q in t.success.iter().chain(&t.failure) {
                    self.index_one(op.id, q);
                }
                return;
            }
            Request::Compact(c) => {
                self.compactions.push((op.id, c.revision));
                return;
            }
            Request::Get(_) | Request::Range(_) => return,
        };
        for q in reqs {
            self.index_one(op.id, q);
        }
    }

    fn index_one(&mut self, id: usize, q: &RequestOp) {
        match q {
            RequestOp::Put(p) => {
                let k = (p.key.clone(), p.value.clone());
                self.puts_by.entry(k).or_default().push(id);
            }
            RequestOp::Delete(d) => match d.range_end.as_deref() {
                None | Some("") => self
                    .deletes_by_key
                    .entry(d.key.clone())
                    .or_default()
                    .push(id),
                Some(_) => {
                    let (k, e) = (d.key.clone(), d.range_end.clone());
                    self.range_deletes.push((id, k, e));
                }
            },
            RequestOp::Range(_) => {}
        }
    }

    /// Ops that may delete `key` (any outcome, any branch).
    pub fn may_delete(&self, key: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.deletes_by_key.get(key).cloned().unwrap_or_default();
        for (id, k, e) in &self.range_deletes {
            if in_range(key, k, e.as_deref()) {
                out.push(*id);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The acknowledged write at revision `r` whose changes are fully known.
    pub fn complete_at(&self, r: Revision) -> Option<(usize, &Effects)> {
        let (id, fx) = self.ok_at.get(&r)?;
        fx.complete.then_some((*id, fx))
    }

    /// Whether a compaction to at least `revision` may have applied by `time` (an op of any
    /// outcome invoked by then).
    pub fn compaction_by(&self, revision: Revision, time: u64) -> bool {
        self.compactions.iter().any(|&(id, c)| {
            c >= revision && self.ops.get(id).is_some_and(|o| o.invoke_time <= time)
        })
    }

    /// Whether op `id` is acknowledged.
    pub fn is_ok(&self, id: usize) -> bool {
        self.ops
            .get(id)
            .is_some_and(|o| matches!(o.outcome, Outcome::Ok(_)))
    }
}

/// Where a known change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An acknowledged write (op id).
    Op(usize),
    /// An event in a watch-log record.
    Record(usize),
}

/// One known change to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// Put or delete.
    pub kind: EventType,
    /// A put's value.
    pub value: Option<String>,
    /// A put's full pair, when a watch delivered it.
    pub kv: Option<KeyValue>,
    /// Where it is known from (the first source).
    pub source: Source,
}

/// Key → revision → the known change.
pub type Chains = BTreeMap<String, BTreeMap<Revision, Known>>;

/// The changes acknowledged writes are known to have made.
pub fn chains_of(writes: &Writes) -> Chains {
    let mut chains = Chains::new();
    for (&r, (id, fx)) in &writes.ok_at {
        for (key, change) in &fx.changes {
            let (kind, value) = match change {
                Change::Put(v) => (EventType::Put, Some(v.clone())),
                Change::Delete => (EventType::Delete, None),
            };
            let known = Known {
                kind,
                value,
                kv: None,
                source: Source::Op(*id),
            };
            chains.entry(key.clone()).or_default().insert(r, known);
        }
    }
    chains
}

/// Per key, the revision intervals over which every change to it is known.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    per_key: BTreeMap<String, Vec<(Revision, Revision)>>,
}

impl Coverage {
    /// Coverage of `keys` by watches without filters and fully known acknowledged writes.
    pub fn new<'k>(
        keys: impl Iterator<Item = &'k String>,
        writes: &Writes,
        streams: &[Stream],
    ) -> Self {
        let mut runs: Vec<(Revision, Revision)> = Vec::new();
        for (&r, (_, fx)) in &writes.ok_at {
            if fx.complete {
                runs.push((r, r));
            }
        }
        let mut per_key = BTreeMap::new();
        for key in keys {
            let mut iv = runs.clone();
            for s in streams {
                if s.req.filters.is_empty() && s.req.covers(key) && s.start <= s.horizon {
                    iv.push((s.start, s.horizon));
                }
            }
            per_key.insert(key.clone(), merge(iv));
        }
        Coverage { per_key }
    }

    /// Whether every change to `key` in `[lo, hi]` is known (true for an empty interval).
    pub fn covered(&self, key: &str, lo: Revision, hi: Revision) -> bool {
        if lo > hi {
            return true;
        }
        let Some(iv) = self.per_key.get(key) else {
            return false;
        };
        let n = iv.partition_point(|&(a, _)| a <= lo);
        n > 0 && iv[n - 1].1 >= hi
    }
}

/// Sorts and merges touching intervals.
fn merge(mut iv: Vec<(Revision, Revision)>) -> Vec<(Revision, Revision)> {
    iv.sort_unstable();
    let mut out: Vec<(Revision, Revision)> = Vec::with_capacity(iv.len());
    for (a, b) in iv {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_joins_touching_intervals() {
        assert_eq!(
            merge(vec![(5, 6), (2, 2), (3, 4), (9, 9)]),
            vec![(2, 6), (9, 9)]
        );
    }
}
