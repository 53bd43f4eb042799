//! What reads pin without search.
//!
//! A read at revision `d` that shows `x=v@m` (mod revision `m`) says two things that hold in
//! every linearization: the write that made revision `m` put `x=v`, and no write touched `x` in
//! `(m, d]`. So if an acknowledged write put `x` at a revision in `(m, d]`, the read lost it; if
//! the acknowledged write at `m` put something else, or no acknowledged or in-doubt write ever
//! put `x=v`, the value is a phantom. A single-key read that shows nothing after an acknowledged
//! put, with no delete that could have removed it, lost that put too.
use std::collections::{BTreeMap, HashMap};

use super::describe::who;
use super::forbid::Forbidden;
use super::order::{data_revision, Prepared};
use super::{Violation, ViolationKind};
use crate::history::{
    CompareResult, CompareTarget, KeyValue, Operand, Operation, Outcome, Request, RequestOp,
    Response, ResponseOp, Revision,
};
use crate::model::in_range;

/// Indexes of who put what.
pub struct Facts {
    /// Acknowledged puts per key: (revision, op, value), by revision.
    pub ok_puts: BTreeMap<String, Vec<(Revision, usize, String)>>,
    /// Every op (any outcome) that might put `(key, value)`.
    pub any_puts: HashMap<(String, String), Vec<usize>>,
    /// Ops that could delete a range of keys (ok with their revision, or in doubt):
    /// (start, end, rev, op).
    pub deletes: Vec<(String, Option<String>, Option<Revision>, usize)>,
    /// Ops that could delete one key: key -> (rev, op).
    pub key_deletes: HashMap<String, Vec<(Option<Revision>, usize)>>,
    /// Where what reads and CAS guards saw forbids a put of a key.
    pub no_puts: Forbidden,
    /// Where what reads and CAS guards saw forbids a delete of a key.
    pub no_deletes: Forbidden,
}

fn branch_ops<'r>(req: &'r Request, resp: Option<&Response>) -> Vec<&'r RequestOp> {
    match (req, resp) {
        (Request::Txn(t), Some(Response::Txn(r))) => {
            let b = if r.succeeded { &t.success } else { &t.failure };
            b.iter().collect()
        }
        (Request::Txn(t), _) => t.success.iter().chain(&t.failure).collect(),
        _ => Vec::new(),
    }
}

impl Facts {
    /// Indexes the history.
    pub fn new(p: &Prepared<'_>) -> Self {
        let mut f = Facts {
            ok_puts: BTreeMap::new(),
            any_puts: HashMap::new(),
            deletes: Vec::new(),
            key_deletes: HashMap::new(),
            no_puts: Forbidden::default(),
            no_deletes: Forbidden::default(),
        };
        for op in p.ops {
            let ok = op.ok();
            let rev = ok
                .filter(|r| crate::model::mutates(r))
                .map(|r| r.revision());
            let in_doubt = matches!(op.outcome, Outcome::Info(_));
            let mut puts: Vec<(&str, &str)> = Vec::new();
            let mut dels: Vec<(&str, Option<&str>)> = Vec::new();
            match &op.request {
                Request::Put(x) => puts.push((&x.key, &x.value)),
                Request::Delete(d) => dels.push((&d.key, d.range_end.as_deref())),
                Request::Txn(_) => {
                    for o in branch_ops(&op.request, ok) {
                        match o {
                            RequestOp::Put(x) => puts.push((&x.key, &x.value)),
                            RequestOp::Delete(d) => dels.push((&d.key, d.range_end.as_deref())),
                            RequestOp::Range(_) => {}
                        }
                    }
                }
                _ => {}
            }
            for (k, v) in puts {
                let kv = (k.to_string(), v.to_string());
                f.any_puts.entry(kv).or_default().push(op.id);
                if let Some(r) = rev {
                    let e = f.ok_puts.entry(k.to_string()).or_default();
                    e.push((r, op.id, v.to_string()));
                }
            }
            if rev.is_some() || in_doubt {
                for (k, end) in dels {
                    if end.is_none_or(str::is_empty) {
                        let e = f.key_deletes.entry(k.to_string()).or_default();
                        e.push((rev, op.id));
                    } else {
                        f.deletes
                            .push((k.to_string(), end.map(str::to_string), rev, op.id));
                    }
                }
            }
        }
        for puts in f.ok_puts.values_mut() {
            puts.sort_unstable_by_key(|x| x.0);
        }
        f.index_forbidden(p);
        f
    }

    fn index_forbidden(&mut self, p: &Prepared<'_>) {
        let distinct = distinct_revisions(&self.ok_puts);
        for op in p.ops {
            let Some(resp) = op.ok() else { continue };
            let read = p.key[op.id].is_some_and(|k| k % 2 == 1);
            if read && !matches!(op.request, Request::Compact(_)) {
                let d = data_revision(op, resp.revision());
                for (_, _, kvs, _) in shown(op, resp) {
                    for kv in kvs {
                        self.forbid_around(&distinct, kv, d);
                    }
                }
            }
            // A txn whose guard mod(k) = m held saw k unchanged since m, too.
            let (Request::Txn(t), Response::Txn(r)) = (&op.request, resp) else {
                continue;
            };
            if !r.succeeded {
                continue;
            }
            let at = if read { r.revision } else { r.revision - 1 };
            for c in &t.compares {
                if let (CompareTarget::Mod, CompareResult::Equal, Operand::Int(m)) =
                    (c.target, c.result, &c.operand)
                {
                    if *m > 0 {
                        self.no_puts.add(&c.key, *m, at);
                        self.no_deletes.add(&c.key, *m, at);
                    }
                }
            }
        }
        self.no_puts.build();
        self.no_deletes.build();
    }

    /// What a read at `d` showing `kv` forbids (see [`Forbidden`]). `distinct` is
    /// [`distinct_revisions`] of the acknowledged puts.
    fn forbid_around(
        &mut self,
        distinct: &HashMap<String, Vec<usize>>,
        kv: &KeyValue,
        d: Revision,
    ) {
        let (c, m) = (kv.create_revision, kv.mod_revision);
        let acked = match (self.ok_puts.get(&kv.key), distinct.get(&kv.key)) {
            (Some(puts), Some(starts)) => {
                let lo = puts.partition_point(|x| x.0 < c);
                let hi = puts.partition_point(|x| x.0 <= m).max(lo);
                // The distinct revisions among puts[lo..hi]: the first, and every later one
                // that differs from the put before it.
                if hi > lo {
                    1 + starts[hi] - starts[lo + 1]
                } else {
                    0
                }
            }
            _ => 0,
        };
        let counted = i64::try_from(acked).unwrap_or(i64::MAX) >= kv.version;
        self.no_puts
            .add(&kv.key, if counted { c - 1 } else { m }, d);
        self.no_deletes.add(&kv.key, c, d);
    }

    /// Checks every `ok` read's kvs against the facts.
    pub fn check_reads(&self, p: &Prepared<'_>) -> Result<(), Violation> {
        for op in p.ops {
            let Some(resp) = op.ok() else { continue };
            let read = p.key[op.id].is_some_and(|k| k % 2 == 1);
            if !read || matches!(op.request, Request::Compact(_)) {
                continue;
            }
            let d = data_revision(op, resp.revision());
            for (start, end, kvs, complete) in shown(op, resp) {
                for kv in kvs {
                    self.check_kv(p, op, d, kv)?;
                }
                if complete {
                    self.check_absent_keys(p, op, d, &start, end.as_deref(), kvs)?;
                }
            }
        }
        Ok(())
    }

    fn check_kv(
        &self,
        p: &Prepared<'_>,
        op: &Operation,
        d: Revision,
        kv: &KeyValue,
    ) -> Result<(), Violation> {
        let m = kv.mod_revision;
        let sane = m <= d
            && m > p.initial
            && kv.create_revision <= m
            && kv.create_revision > p.initial
            && kv.version >= 1;
        if !sane {
            return Err(Violation::new(
                ViolationKind::PhantomValue,
                &[op],
                format!(
                    "read at rev {d} by p{} saw {kv}, which no store at rev {d} can hold",
                    op.process
                ),
            ));
        }
        let puts = self.ok_puts.get(&kv.key).map_or(&[][..], |v| v.as_slice());
        // An acknowledged put of the key after m, at or before d: the read lost it.
        let after = puts.partition_point(|x| x.0 <= m);
        if let Some((w, wid, wv)) = puts.get(after).filter(|x| x.0 <= d) {
            let wop = &p.ops[*wid];
            return Err(Violation::new(
                ViolationKind::LostWrite,
                &[op, wop],
                format!(
                    "read at rev {d} by p{} saw {}={} (mod rev {m}), but p{}'s {} of {}={wv} \
                     was acknowledged at rev {w}, and {m} < {w} <= {d}: the read lost an \
                     acknowledged write",
                    op.process,
                    kv.key,
                    kv.value,
                    wop.process,
                    wop.request.function().name(),
                    kv.key
                ),
            ));
        }
        if let Some(&wid) = p.writer.get(&m) {
            let at = puts.partition_point(|x| x.0 < m);
            let wrote = puts[at..]
                .iter()
                .take_while(|x| x.0 == m)
                .any(|x| x.1 == wid && x.2 == kv.value);
            if !wrote {
                let wop = &p.ops[wid];
                return Err(Violation::new(
                    ViolationKind::PhantomValue,
                    &[op, wop],
                    format!(
                        "read at rev {d} by p{} saw {kv}, but rev {m} was made by {}, which did \
                         not put {}={}",
                        op.process,
                        who(wop),
                        kv.key,
                        kv.value
                    ),
                ));
            }
            return Ok(());
        }
        self.check_in_doubt_writer(p, op, d, kv)
    }

    /// Revision `m` was taken by no acknowledged write: an in-doubt write must have put the value.
    fn check_in_doubt_writer(
        &self,
        p: &Prepared<'_>,
        op: &Operation,
        d: Revision,
        kv: &KeyValue,
    ) -> Result<(), Violation> {
        let key = (kv.key.clone(), kv.value.clone());
        let writers = self.any_puts.get(&key).map_or(&[][..], |v| v.as_slice());
        let in_doubt = writers
            .iter()
            .any(|&w| matches!(p.ops[w].outcome, Outcome::Info(_)));
        if in_doubt {
            return Ok(());
        }
        let mut named: Vec<&Operation> = vec![op];
        named.extend(writers.iter().take(3).map(|&w| &p.ops[w]));
        let why = match writers.first().map(|&w| &p.ops[w]) {
            None => "no operation ever wrote that value".to_string(),
            Some(w) if matches!(w.outcome, Outcome::Fail(_)) => {
                format!("only {}, which failed, wrote it", who(w))
            }
            Some(w) => format!(
                "{} wrote it at rev {}, not at {}",
                who(w),
                w.ok().map_or(0, |r| r.revision()),
                kv.mod_revision
            ),
        };
        Err(Violation::new(
            ViolationKind::PhantomValue,
            &named,
            format!(
                "read at rev {d} by p{} saw {}={} (mod rev {}), but {why}",
                op.process, kv.key, kv.value, kv.mod_revision
            ),
        ))
    }

    /// Every key of the range that the read did not show.
    fn check_absent_keys(
        &self,
        p: &Prepared<'_>,
        op: &Operation,
        d: Revision,
        start: &str,
        end: Option<&str>,
        kvs: &[KeyValue],
    ) -> Result<(), Violation> {
        if end.is_none() {
            return match kvs.is_empty() {
                true => self.check_absent(p, op, d, start),
                false => Ok(()),
            };
        }
        for key in self.ok_puts.range(start.to_string()..).map(|x| x.0) {
            if !in_range(key, start, end) {
                break;
            }
            if !kvs.iter().any(|kv| &kv.key == key) {
                self.check_absent(p, op, d, key)?;
            }
        }
        Ok(())
    }

    /// A read that saw no `key`: the last acknowledged put at or before `d` must have been
    /// deleted by something.
    fn check_absent(
        &self,
        p: &Prepared<'_>,
        op: &Operation,
        d: Revision,
        key: &str,
    ) -> Result<(), Violation> {
        let puts = self.ok_puts.get(key).map_or(&[][..], |v| v.as_slice());
        let n = puts.partition_point(|x| x.0 <= d);
        let Some((w, wid, wv)) = n.checked_sub(1).and_then(|i| puts.get(i)) else {
            return Ok(());
        };
        let could = |rev: &Option<Revision>, id: usize| match rev {
            Some(r) => *r > *w && *r <= d,
            None => p.could_place(id, *w, d, |g| !self.no_deletes.forbids(key, g)),
        };
        let one = self.key_deletes.get(key).map_or(&[][..], |v| v.as_slice());
        let deletable = one.iter().any(|(rev, id)| could(rev, *id))
            || self
                .deletes
                .iter()
                .any(|(s, e, rev, id)| in_range(key, s, e.as_deref()) && could(rev, *id));
        if deletable {
            return Ok(());
        }
        let wop = &p.ops[*wid];
        Err(Violation::new(
            ViolationKind::LostWrite,
            &[op, wop],
            format!(
                "read at rev {d} by p{} saw no {key}, but p{}'s {} of {key}={wv} was \
                 acknowledged at rev {w} <= {d} and nothing could have deleted it: the read lost \
                 an acknowledged write",
                op.process,
                wop.process,
                wop.request.function().name()
            ),
        ))
    }
}

/// The (range start, range end, kvs, whether every live key is shown) a non-mutating `ok` op
/// shows about the state at its data revision: a range's result, or the ranges inside a txn
/// that wrote nothing.
pub(crate) fn shown<'o>(
    op: &'o Operation,
    resp: &'o Response,
) -> Vec<(String, Option<String>, &'o [KeyValue], bool)> {
    let mut out = Vec::new();
    match (&op.request, resp) {
        (Request::Get(_) | Request::Range(_), Response::Range(r)) => {
            if let Some(req) = op.request.as_range() {
                let complete = req.limit.filter(|l| *l > 0).is_none();
                out.push((req.key, req.range_end, &r.kvs[..], complete));
            }
        }
        (Request::Txn(_), Response::Txn(t)) => {
            for (o, r) in branch_ops(&op.request, Some(resp))
                .into_iter()
                .zip(&t.responses)
            {
                if let (RequestOp::Range(q), ResponseOp::Range(rr)) = (o, r) {
                    let complete = q.limit.filter(|l| *l > 0).is_none();
                    out.push((q.key.clone(), q.range_end.clone(), &rr.kvs[..], complete));
                }
            }
        }
        _ => {}
    }
    out
}

/// Per key, over its acknowledged puts sorted by revision: `starts[i]` counts the puts among the
/// first `i` that begin a new revision (revision differs from the put before), so the distinct
/// revisions in `puts[lo..hi]` (`hi > lo`) are `1 + starts[hi] - starts[lo + 1]`, in constant
/// time; counting them by a walk made the facts quadratic in a key's puts.
fn distinct_revisions(
    ok_puts: &BTreeMap<String, Vec<(Revision, usize, String)>>,
) -> HashMap<String, Vec<usize>> {
    ok_puts
        .iter()
        .map(|(key, puts)| {
            let mut starts = Vec::with_capacity(puts.len() + 1);
            starts.push(0);
            for (i, put) in puts.iter().enumerate() {
                let new = i == 0 || puts[i - 1].0 != put.0;
                starts.push(starts[i] + usize::from(new));
            }
            (key.clone(), starts)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::distinct_revisions;

    #[test]
    fn distinct_revisions_in_a_range_match_a_walk() {
        let revs = [3, 5, 5, 6, 9, 9, 9, 12];
        let puts: Vec<_> = revs.iter().map(|&r| (r, 0, String::new())).collect();
        let map = BTreeMap::from([("k".to_string(), puts)]);
        let starts = &distinct_revisions(&map)["k"];
        for lo in 0..revs.len() {
            for hi in lo + 1..=revs.len() {
                let mut walk = revs[lo..hi].to_vec();
                walk.dedup();
                assert_eq!(
                    1 + starts[hi] - starts[lo + 1],
                    walk.len(),
                    "distinct revisions of puts[{lo}..{hi}]"
                );
            }
        }
    }
}
