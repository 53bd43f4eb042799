//! How the replay explains what it found wrong: the violations it reports, in words.
use super::Search;
use crate::check::describe::{request_text, who};
use crate::check::{Violation, ViolationKind};
use crate::history::{KeyValue, Operation, Request, Response, ResponseOp, Revision};

/// The first key whose pair differs between two range results.
pub(super) fn first_differing_key(expected: &[KeyValue], actual: &[KeyValue]) -> Option<String> {
    let mut keys: Vec<&str> = expected
        .iter()
        .chain(actual)
        .map(|k| k.key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .find(|key| {
            expected.iter().find(|k| k.key == *key) != actual.iter().find(|k| k.key == *key)
        })
        .map(str::to_string)
}

impl<'a> Search<'a> {
    pub(super) fn unexplained(&self, r: Revision, tried: &[usize]) -> Violation {
        let mut named: Vec<&Operation> = Vec::new();
        let n = self.ok_by_revision.partition_point(|x| x.0 < r);
        if let Some(&(rev, id)) = self.ok_by_revision.get(n) {
            named.push(&self.p.ops[id]);
            let mut why = format!(
                "rev {r} was made by no operation: no acknowledged write reports rev {r} and no \
                 in-doubt write can make it, yet {} reports rev {rev}",
                who(&self.p.ops[id])
            );
            for &cid in tried.iter().take(2) {
                let cop = &self.p.ops[cid];
                named.push(cop);
                why.push_str(&format!(
                    "; {} could sit there, but applied to the state at rev {} it changes nothing \
                     or contradicts what reads saw",
                    who(cop),
                    r - 1
                ));
            }
            let late = self
                .min_revision
                .iter()
                .find(|x| x.0 > r && !self.used[x.1]);
            if let Some(&(min, lid)) = late {
                let lop = &self.p.ops[lid];
                named.push(lop);
                why.push_str(&format!(
                    "; {} is in doubt but was invoked after rev {} was already observed",
                    who(lop),
                    min - 1
                ));
            }
            if let Some(hints) = self.hints.get(&r) {
                for (rid, kv) in hints.iter().take(2) {
                    named.push(&self.p.ops[*rid]);
                    why.push_str(&format!(
                        "; p{} saw {kv} written at rev {r}",
                        self.p.ops[*rid].process
                    ));
                }
            }
            return Violation::new(ViolationKind::UnexplainedRevision, &named, why);
        }
        Violation::new(
            ViolationKind::UnexplainedRevision,
            &named,
            format!("rev {r} was made by no operation"),
        )
    }

    pub(super) fn writer_of(&self, rev: Revision) -> Option<&'a Operation> {
        let id = self.p.writer.get(&rev).or_else(|| self.chosen.get(&rev))?;
        Some(&self.p.ops[*id])
    }

    pub(super) fn wrong(&self, op: &'a Operation, why: String) -> Violation {
        let mut named = vec![op];
        // Name the writers of every revision the explanation shows as `@rev` (at most three).
        for part in why.split('@').skip(1) {
            if named.len() > 3 {
                break;
            }
            let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
            let Ok(rev) = digits.parse::<Revision>() else {
                continue;
            };
            if let Some(w) = self.writer_of(rev) {
                if !named.iter().any(|n| n.id == w.id) {
                    named.push(w);
                }
            }
        }
        Violation::new(ViolationKind::WrongResponse, &named, why)
    }

    /// Why `actual` differs from `expected` (the model's answer at revision `at`), if it does.
    pub(super) fn diff(
        &self,
        op: &Operation,
        expected: &Response,
        actual: &Response,
        at: Revision,
    ) -> Option<String> {
        let subject = format!(
            "{} (ok {})",
            who(op),
            crate::check::describe::response_text(actual)
        );
        match (expected, actual) {
            (Response::Range(e), Response::Range(a)) => {
                self.diff_range(&subject, &e.kvs, &a.kvs, at).or_else(|| {
                    (e.count != a.count || e.more != a.more).then(|| {
                        format!(
                            "{subject}: count {} more {}, but the state at rev {at} gives \
                                 count {} more {}",
                            a.count, a.more, e.count, e.more
                        )
                    })
                })
            }
            (Response::Txn(e), Response::Txn(a)) => self.diff_txn(op, &subject, e, a, at),
            (Response::Delete(e), Response::Delete(a)) => {
                let same =
                    e.deleted == a.deleted && (a.prev_kvs.is_empty() || a.prev_kvs == e.prev_kvs);
                (!same).then(|| {
                    format!(
                        "{subject}: deleted {}, but the state at rev {at} gives deleted {}{}",
                        a.deleted,
                        e.deleted,
                        self.key_state(&e.prev_kvs)
                    )
                })
            }
            (Response::Put(e), Response::Put(a)) => {
                let same = a.prev_kv.is_none() || a.prev_kv == e.prev_kv;
                (!same).then(|| {
                    format!(
                        "{subject}: prev_kv {:?}, but at rev {at} it is {}",
                        a.prev_kv.as_ref().map(|k| k.to_string()),
                        e.prev_kv
                            .as_ref()
                            .map_or("absent".to_string(), |k| self.kv_with_writer(k))
                    )
                })
            }
            (Response::Compact(_), Response::Compact(_)) => None,
            _ => Some(format!("{subject}: response of the wrong kind")),
        }
    }

    pub(super) fn kv_with_writer(&self, kv: &KeyValue) -> String {
        match self.writer_of(kv.mod_revision) {
            Some(w) => format!("{kv} written by {}", who(w)),
            None => kv.to_string(),
        }
    }

    pub(super) fn key_state(&self, kvs: &[KeyValue]) -> String {
        if kvs.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = kvs.iter().take(3).map(|k| self.kv_with_writer(k)).collect();
        format!(" ({})", parts.join(", "))
    }

    pub(super) fn diff_range(
        &self,
        subject: &str,
        expected: &[KeyValue],
        actual: &[KeyValue],
        at: Revision,
    ) -> Option<String> {
        if expected == actual {
            return None;
        }
        let mut keys: Vec<&str> = expected
            .iter()
            .chain(actual)
            .map(|k| k.key.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let e = expected.iter().find(|k| k.key == key);
            let a = actual.iter().find(|k| k.key == key);
            if e == a {
                continue;
            }
            let saw = a.map_or(format!("no {key}"), |k| k.to_string());
            let is = match e {
                Some(k) => format!("{key} is {}", self.kv_with_writer(k)),
                None => format!("{key} does not exist"),
            };
            return Some(format!("{subject} saw {saw}, but at rev {at} {is}"));
        }
        Some(format!("{subject}: kvs differ from the state at rev {at}"))
    }

    pub(super) fn diff_txn(
        &self,
        op: &Operation,
        subject: &str,
        e: &crate::history::TxnResponse,
        a: &crate::history::TxnResponse,
        at: Revision,
    ) -> Option<String> {
        if e.succeeded != a.succeeded {
            let Request::Txn(t) = &op.request else {
                return Some(format!("{subject}: not a txn"));
            };
            let keys: Vec<String> = t
                .compares
                .iter()
                .map(|c| match self.model.current(&c.key) {
                    // The model has already been undone to `at` for reads; for writes it is
                    // at `at + 1`, so show the entry as of `at` from the expected state.
                    Some(x) if x.mod_revision <= at => {
                        let kv = KeyValue::new(
                            &c.key,
                            &x.value,
                            x.create_revision,
                            x.mod_revision,
                            x.version,
                        );
                        self.kv_with_writer(&kv)
                    }
                    Some(_) => format!("{} (changed by this txn)", c.key),
                    None => format!("{} absent", c.key),
                })
                .collect();
            return Some(format!(
                "{subject} {}, but its compares ({}) are {} at rev {at}: {}",
                if a.succeeded { "succeeded" } else { "failed" },
                request_text(&op.request)
                    .trim_start_matches("txn if ")
                    .split(" then ")
                    .next()
                    .unwrap_or(""),
                if e.succeeded { "true" } else { "false" },
                keys.join(", ")
            ));
        }
        if e.responses.len() != a.responses.len() {
            return Some(format!("{subject}: wrong number of responses"));
        }
        for (er, ar) in e.responses.iter().zip(&a.responses) {
            let why = match (er, ar) {
                (ResponseOp::Range(x), ResponseOp::Range(y)) => {
                    self.diff_range(subject, &x.kvs, &y.kvs, at)
                }
                (ResponseOp::Delete(x), ResponseOp::Delete(y)) => (x.deleted != y.deleted)
                    .then(|| format!("{subject}: deleted {}, expected {}", y.deleted, x.deleted)),
                (ResponseOp::Put(_), ResponseOp::Put(_)) => None,
                _ => Some(format!("{subject}: responses of the wrong kind")),
            };
            if why.is_some() {
                return why;
            }
        }
        None
    }
}
