//! Where reads showed a key absent, for pruning the replay.
//!
//! A read at `d` whose range covers `x` without showing it says `x` was not live at `d`; a read
//! showing `x` created at `c` says it was not live at `c - 1`. If the
//! replay makes `x` live at `r < d`, something must delete `x` in `(r, d]`: an acknowledged
//! delete at a revision there, or an in-doubt one not yet placed and invoked early enough to
//! take a revision at or before `d`. With neither, no order that extends the replay's choices
//! satisfies that read, so the choice is refuted on the spot instead of after every choice up
//! to `d` has been tried.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::facts::{shown, Facts};
use super::order::{data_revision, Prepared};
use crate::history::{Request, Revision};
use crate::model::in_range;

/// Per key, the revisions at which reads showed it absent, ascending.
#[derive(Default)]
pub struct Absences {
    at: BTreeMap<String, Vec<Revision>>,
    /// Per key read absent: the revisions of acknowledged deletes of it (ascending) and the
    /// in-doubt ops that may delete it.
    deleters: HashMap<String, (Vec<Revision>, Vec<usize>)>,
}

impl Absences {
    /// Indexes every `ok` read of `p` against the keys any operation writes.
    pub fn new(p: &Prepared<'_>, facts: &Facts) -> Self {
        let keys: BTreeSet<&str> = facts.any_puts.keys().map(|(k, _)| k.as_str()).collect();
        let mut a = Absences::default();
        for op in p.ops {
            let Some(resp) = op.ok() else { continue };
            let read = p.key[op.id].is_some_and(|k| k % 2 == 1);
            if !read || matches!(op.request, Request::Compact(_)) {
                continue;
            }
            let d = data_revision(op, resp.revision());
            for (start, end, kvs, complete) in shown(op, resp) {
                // A key created at `c` was absent at `c - 1`.
                for kv in kvs {
                    let at = a.at.entry(kv.key.clone()).or_default();
                    at.push(kv.create_revision - 1);
                }
                if !complete {
                    continue;
                }
                for key in keys.range(start.as_str()..) {
                    if !in_range(key, &start, end.as_deref()) {
                        break;
                    }
                    if !kvs.iter().any(|kv| kv.key == *key) {
                        a.at.entry((*key).to_string()).or_default().push(d);
                    }
                }
            }
        }
        for revs in a.at.values_mut() {
            revs.sort_unstable();
            revs.dedup();
        }
        a.index_deleters(facts);
        a
    }

    fn index_deleters(&mut self, facts: &Facts) {
        for key in self.at.keys() {
            let mut acked: Vec<Revision> = Vec::new();
            let mut in_doubt: Vec<usize> = Vec::new();
            let one = facts.key_deletes.get(key).map_or(&[][..], |v| v.as_slice());
            let ranges = facts
                .deletes
                .iter()
                .filter(|(s, e, _, _)| in_range(key, s, e.as_deref()))
                .map(|(_, _, rev, op)| (rev, op));
            for (rev, &op) in one.iter().map(|(rev, op)| (rev, op)).chain(ranges) {
                match rev {
                    Some(r) => acked.push(*r),
                    None => in_doubt.push(op),
                }
            }
            acked.sort_unstable();
            in_doubt.sort_unstable();
            in_doubt.dedup();
            self.deleters.insert(key.clone(), (acked, in_doubt));
        }
    }

    /// Whether an acknowledged delete of `key` (read absent somewhere) lies in `(lo, hi]`, and
    /// the in-doubt ops that may delete it.
    pub fn deleters(&self, key: &str, lo: Revision, hi: Revision) -> (bool, &[usize]) {
        let Some((acked, in_doubt)) = self.deleters.get(key) else {
            return (false, &[]);
        };
        let n = acked.partition_point(|r| *r <= lo);
        (acked.get(n).is_some_and(|r| *r <= hi), in_doubt)
    }

    /// The keys some read showed absent.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.at.keys().map(String::as_str)
    }

    /// The keys some read showed absent in the range `[start, end)` (etcd's range end: none
    /// or empty for `start` alone, `"\0"` for every key from `start`), in order; a walk of
    /// that range only, not of every key.
    pub fn keys_in<'a>(
        &'a self,
        start: &'a str,
        end: Option<&'a str>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.at
            .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| in_range(k, start, end))
    }

    /// The first revision after `r` at which a read showed `key` absent.
    pub fn next_after(&self, key: &str, r: Revision) -> Option<Revision> {
        let revs = self.at.get(key)?;
        revs.get(revs.partition_point(|d| *d <= r)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::Absences;

    #[test]
    fn keys_in_follows_etcds_range_ends() {
        let mut a = Absences::default();
        for k in ["a", "lease/1/a", "lease/1/b", "lease/2/a", "lease0", "m"] {
            a.at.insert(k.to_string(), vec![1]);
        }
        let keys = |s: &'static str, e: Option<&'static str>| a.keys_in(s, e).collect::<Vec<_>>();
        assert_eq!(
            keys("lease/1/", Some("lease/10")),
            ["lease/1/a", "lease/1/b"]
        );
        assert_eq!(keys("lease/1/a", None), ["lease/1/a"]);
        assert_eq!(keys("lease/1/a", Some("")), ["lease/1/a"]);
        assert_eq!(keys("lease/1/c", None), Vec::<&str>::new());
        assert_eq!(keys("lease0", Some("\0")), ["lease0", "m"]);
        assert_eq!(keys("b", Some("l")), Vec::<&str>::new());
    }
}
