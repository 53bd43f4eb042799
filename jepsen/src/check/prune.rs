//! Facts that fix or bound where in-doubt writes landed, for pruning the replay.
//!
//! Three rules, each from what reads saw (a read at `d` showing `x=v` with create `c`, mod `m`,
//! version `v`):
//!
//! 1. **A value seen pins its writer.** If `m` is a revision no acknowledged write reports and
//!    exactly one operation that did not fail ever put `x=v`, and it is in doubt, that operation
//!    made revision `m` — and, since an operation makes at most one revision, no other.
//!    It is no candidate anywhere else ([`Pins::allows`]).
//! 2. **A create revision seen pins a create.** If `c` is such a revision, the write that made
//!    it created `x` there: after it, `x` is live with create revision `c`
//!    ([`Pins::creates_hold`]).
//! 3. **Versions count the puts in between.** The generation `c` of `x` is live from `c` to
//!    `d`, and its version counts its puts. So if the replay is at `r` with `c <= r < m`, `x`
//!    must be live there with create revision `c` and a version `e <= v`, and exactly
//!    `v - e - a` in-doubt writes put `x` in `(r, m]`, where `a` is the number of acknowledged
//!    puts of `x` in `(r, m]` and of in-doubt puts of `x` rule 1 pins there. Each takes its own revision a gap in `(r, m]` where no read
//!    forbids a put of `x`, and each is a distinct unused in-doubt write that may put `x`,
//!    invoked early enough. Fewer gaps or writes than that: the replay is on a dead branch
//!    ([`Pins::counts_fit`]). This is what refutes a wrong choice at the first gap it starves
//!    rather than at the read that shows the missing version.
use std::collections::HashMap;

use super::facts::Facts;
use super::order::Prepared;
use crate::history::{KeyValue, Outcome, Request, RequestOp, Revision};
use crate::model::{in_range, Model};

/// The pins and indexes of the three rules.
#[derive(Debug, Default)]
pub struct Pins {
    /// In-doubt op -> the one revision a read shows it made (rule 1).
    at: HashMap<usize, Revision>,
    /// Gap revision -> keys a read shows created there (rule 2).
    creates: HashMap<Revision, Vec<String>>,
    /// Per key, the in-doubt ops that may put it (rule 3).
    /// (op, most puts of the key in one branch).
    putters: HashMap<String, Vec<(usize, i64)>>,
    /// Per key, the gap revisions at which rule 1 pins an in-doubt write that puts it, with
    /// how many times it does (a txn may put a key twice), ascending.
    pinned_puts: HashMap<String, Vec<(Revision, i64)>>,
}

/// The keys an in-doubt request may put, in either branch of a txn.
pub(crate) fn put_keys(req: &Request) -> Vec<&str> {
    match req {
        Request::Put(p) => vec![p.key.as_str()],
        Request::Txn(t) => t
            .success
            .iter()
            .chain(&t.failure)
            .filter_map(|o| match o {
                RequestOp::Put(p) => Some(p.key.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// How many times `req` puts `key` if it put `key=value`: `None` unless that is certain (a
/// txn with the put in both branches, or a delete of the key beside it).
fn certain_puts(req: &Request, key: &str, value: &str) -> Option<i64> {
    let is_it = |o: &RequestOp| matches!(o, RequestOp::Put(p) if p.key == key && p.value == value);
    match req {
        Request::Put(p) => (p.key == key && p.value == value).then_some(1),
        Request::Txn(t) => {
            let branch = match (t.success.iter().any(is_it), t.failure.iter().any(is_it)) {
                (true, false) => &t.success,
                (false, true) => &t.failure,
                _ => return None,
            };
            let mut n = 0i64;
            for o in branch {
                match o {
                    RequestOp::Put(p) if p.key == key => n += 1,
                    RequestOp::Delete(d) if in_range(key, &d.key, d.range_end.as_deref()) => {
                        return None
                    }
                    _ => {}
                }
            }
            Some(n)
        }
        _ => None,
    }
}

/// The most times one branch of `req` puts `key`.
fn most_puts(req: &Request, key: &str) -> i64 {
    let count = |b: &[RequestOp]| {
        let n = b
            .iter()
            .filter(|o| matches!(o, RequestOp::Put(p) if p.key == key))
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
    };
    match req {
        Request::Put(p) => i64::from(p.key == key),
        Request::Txn(t) => count(&t.success).max(count(&t.failure)),
        _ => 0,
    }
}

/// The ranges an in-doubt request may delete, in either branch of a txn.
pub(crate) fn delete_ranges(req: &Request) -> Vec<(&str, Option<&str>)> {
    match req {
        Request::Delete(d) => vec![(d.key.as_str(), d.range_end.as_deref())],
        Request::Txn(t) => t
            .success
            .iter()
            .chain(&t.failure)
            .filter_map(|o| match o {
                RequestOp::Delete(d) => Some((d.key.as_str(), d.range_end.as_deref())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// How many of `puts` (by revision, one entry per put: a txn may put a key twice) lie in
/// `(lo, hi]`.
pub fn puts_between(puts: &[(Revision, usize, String)], lo: Revision, hi: Revision) -> i64 {
    let a = puts.partition_point(|x| x.0 <= lo);
    let b = puts.partition_point(|x| x.0 <= hi).max(a);
    i64::try_from(b - a).unwrap_or(i64::MAX)
}

/// With the model at `r`: the next revision `m > r` at which a read saw `key` in a generation
/// already live at `r`, and how many in-doubt puts of `key` must fall in `(r, m]` (negative,
/// or `i64::MIN` if the generation is not live: impossible). `None`: no such read.
pub(crate) fn puts_needed(
    model: &Model,
    r: Revision,
    key: &str,
    versions: &[(Revision, Revision, i64)],
    (facts, pins): (&Facts, &Pins),
) -> Option<(Revision, i64)> {
    let n = versions.partition_point(|x| x.0 <= r);
    let &(m, c, v) = versions.get(n)?;
    if c > r {
        return None; // a later generation: created after r
    }
    let Some(e) = model.current(key).filter(|e| e.create_revision == c) else {
        return Some((m, i64::MIN)); // generation c is live from c through m
    };
    let acked = facts
        .ok_puts
        .get(key)
        .map_or(0, |puts| puts_between(puts, r, m));
    // Puts rule 1 pins into (r, m] are as certain as acknowledged ones.
    let pinned = pins.pinned_puts.get(key).map_or(0, |revs| {
        let a = revs.partition_point(|x| x.0 <= r);
        let b = revs.partition_point(|x| x.0 <= m).max(a);
        revs[a..b].iter().map(|x| x.1).sum()
    });
    Some((m, v - e.version - acked - pinned))
}

impl Pins {
    /// Indexes the reads of `p`; `seen` yields every (read op, kv shown).
    pub fn new<'k>(
        p: &Prepared<'_>,
        facts: &Facts,
        seen: impl Iterator<Item = &'k KeyValue>,
    ) -> Self {
        let mut pins = Pins::default();
        for kv in seen {
            if !p.writer.contains_key(&kv.mod_revision) {
                let key = (kv.key.clone(), kv.value.clone());
                let writers: Vec<usize> = facts
                    .any_puts
                    .get(&key)
                    .map_or(&[][..], |v| v.as_slice())
                    .iter()
                    .copied()
                    .filter(|&w| !matches!(p.ops[w].outcome, Outcome::Fail(_)))
                    .collect();
                if let [only] = writers[..] {
                    if matches!(p.ops[only].outcome, Outcome::Info(_)) {
                        pins.at.entry(only).or_insert(kv.mod_revision);
                        let req = &p.ops[only].request;
                        if let Some(n) = certain_puts(req, &kv.key, &kv.value) {
                            let revs = pins.pinned_puts.entry(kv.key.clone()).or_default();
                            revs.push((kv.mod_revision, n));
                        }
                    }
                }
            }
            let c = kv.create_revision;
            if c > p.initial && !p.writer.contains_key(&c) {
                let keys = pins.creates.entry(c).or_default();
                if !keys.contains(&kv.key) {
                    keys.push(kv.key.clone());
                }
            }
        }
        for revs in pins.pinned_puts.values_mut() {
            revs.sort_unstable();
            revs.dedup();
        }
        for &id in &p.in_doubt {
            for key in put_keys(&p.ops[id].request) {
                let ids = pins.putters.entry(key.to_string()).or_default();
                if ids.last().is_none_or(|x| x.0 != id) {
                    ids.push((id, most_puts(&p.ops[id].request, key)));
                }
            }
        }
        pins
    }

    /// Rule 1: whether in-doubt op `id` may make revision `r`.
    pub fn allows(&self, id: usize, r: Revision) -> bool {
        self.at.get(&id).is_none_or(|&m| m == r)
    }

    /// The revision a read pins in-doubt op `id` to, if any.
    pub fn pinned(&self, id: usize) -> Option<Revision> {
        self.at.get(&id).copied()
    }

    /// Rule 2: with the model at `r`, every key a read shows created at `r` was created there.
    pub fn creates_hold(&self, model: &Model, r: Revision) -> bool {
        self.creates.get(&r).is_none_or(|keys| {
            keys.iter()
                .all(|k| model.current(k).is_some_and(|e| e.create_revision == r))
        })
    }

    /// Rule 3 for every key a read saw, with the model at `r` (see the module doc). `seen`:
    /// per key, (mod, create, version) by mod revision; `used`: in-doubt ops already placed.
    pub fn counts_fit(
        &self,
        model: &Model,
        r: Revision,
        seen: &HashMap<String, Vec<(Revision, Revision, i64)>>,
        ctx: (&Prepared<'_>, &Facts, &[bool]),
    ) -> bool {
        let (p, facts, used) = ctx;
        seen.iter().all(|(key, versions)| {
            let Some((m, needed)) = puts_needed(model, r, key, versions, (facts, self)) else {
                return true;
            };
            if needed <= 0 {
                return needed == 0;
            }
            // What the in-doubt writers left can still put, and in how many gaps.
            let ids = self.putters.get(key).map_or(&[][..], |v| v.as_slice());
            let mut most = 0i64;
            let mut writers = 0i64;
            for &(id, n) in ids {
                let open = !used[id]
                    && p.min_revision[id] <= m
                    && self.pinned(id).is_none_or(|at| at > r && at <= m);
                if open {
                    most = most.max(n);
                    writers = writers.saturating_add(n);
                }
            }
            if writers < needed || most == 0 {
                return false;
            }
            let gaps = (needed + most - 1) / most;
            let lo = p.gaps.partition_point(|g| *g <= r);
            let slots = p.gaps[lo..]
                .iter()
                .take_while(|g| **g <= m)
                .filter(|g| !facts.no_puts.forbids(key, **g))
                .take(usize::try_from(gaps).unwrap_or(usize::MAX))
                .count();
            i64::try_from(slots).unwrap_or(i64::MAX) >= gaps
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_between_counts_every_put() {
        let puts = vec![
            (3, 0, "a".to_string()),
            (5, 1, "b".to_string()),
            (5, 1, "c".to_string()),
            (9, 2, "d".to_string()),
        ];
        assert_eq!(puts_between(&puts, 2, 9), 4, "3, 5 (twice) and 9");
        assert_eq!(
            puts_between(&puts, 3, 8),
            2,
            "only 5 (twice) lies in (3, 8]"
        );
        assert_eq!(puts_between(&puts, 9, 20), 0, "nothing after 9");
    }
}
