//! Where reads showed a key absent, for pruning the replay.
//!
//! A read at `d` whose range covers `x` without showing it says `x` was not live at `d`; a read
//! showing `x` created at `c` says it was not live at `c - 1`. If the
//! replay makes `x` live at `r < d`, something must delete `x` in `(r, d]`: an acknowledged
//! delete at a revision there, or an in-doubt one not yet placed and invoked early enough to
//! take a revision at or before `d`. With neither, no order that extends the replay's choices
//! satisfies that read, so the choice is refuted on the spot instead of after every choice up
//! to `d` has been tried.
use std::collections::{BTreeSet, HashMap};

use super::facts::{shown, Facts};
use super::order::{data_revision, Prepared};
use crate::history::{Request, Revision};
use crate::model::in_range;

/// Per key, the revisions at which reads showed it absent, ascending.
#[derive(Default)]
pub struct Absences {
    at: HashMap<String, Vec<Revision>>,
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
        a
    }

    /// The keys some read showed absent.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.at.keys().map(String::as_str)
    }

    /// The first revision after `r` at which a read showed `key` absent.
    pub fn next_after(&self, key: &str, r: Revision) -> Option<Revision> {
        let revs = self.at.get(key)?;
        revs.get(revs.partition_point(|d| *d <= r)).copied()
    }
}
