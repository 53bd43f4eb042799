//! Checks over a finished run's history: acknowledged writes survive, and the history is
//! linearizable (keel-jepsen's checker). Each failure names the smallest part of the history
//! that shows it, and the nemesis events around it.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{Entry, Op, OpResult, Outcome};

/// A failed check: what is wrong, and the history (and nemesis events) that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One line: what invariant broke.
    pub what: String,
    /// The minimal part of the history that shows it, one line each.
    pub evidence: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "FAILURE: {}", self.what)?;
        for line in &self.evidence {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// Nemesis events with times in `[from_ns, to_ns]`, at most `max` (the first ones).
pub fn events_between(
    events: &[(u64, String)],
    from_ns: u64,
    to_ns: u64,
    max: usize,
) -> Vec<String> {
    events
        .iter()
        .filter(|(at, _)| (from_ns..=to_ns).contains(at))
        .take(max)
        .map(|(at, e)| format!("  nemesis @{:.3}s {e}", *at as f64 / 1e9))
        .collect()
}

/// What an acknowledged write did to one key: `Some(value)` put, `None` deleted.
#[derive(Debug, Clone)]
struct LastWrite<'h> {
    revision: i64,
    value: Option<String>,
    entry: &'h Entry,
}

/// The keys an ok write changed, with their new values (`None`: deleted).
fn writes_of(entry: &Entry) -> Vec<(String, Option<String>)> {
    let Outcome::Ok(OpResult::Write {
        succeeded, deleted, ..
    }) = &entry.outcome
    else {
        return Vec::new();
    };
    match &entry.op {
        Op::Put { key, value } => vec![(key.clone(), Some(value.clone()))],
        Op::Cas { key, value, .. } if *succeeded => vec![(key.clone(), Some(value.clone()))],
        Op::MultiPut { kvs } => kvs
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        Op::Delete { key } if *deleted > 0 => vec![(key.clone(), None)],
        _ => Vec::new(),
    }
}

/// Every acknowledged write survives: `final_read` (a linearizable range over the whole key
/// space, after every fault healed) must show, for each key, the newest acknowledged write to
/// it or something newer, and a store revision no older than any acknowledgement.
pub fn acked_writes_survive(
    entries: &[Entry],
    final_read: &Entry,
    events: &[(u64, String)],
) -> Vec<Failure> {
    let Outcome::Ok(OpResult::Read {
        revision: final_rev,
        kvs,
    }) = &final_read.outcome
    else {
        return vec![Failure {
            what: "the final read did not succeed".to_string(),
            evidence: vec![final_read.to_string()],
        }];
    };
    let mut last: BTreeMap<String, LastWrite<'_>> = BTreeMap::new();
    for e in entries {
        let revision = match &e.outcome {
            Outcome::Ok(r) => r.revision(),
            _ => continue,
        };
        for (key, value) in writes_of(e) {
            let newer = last.get(&key).is_none_or(|w| revision > w.revision);
            if newer {
                last.insert(
                    key,
                    LastWrite {
                        revision,
                        value,
                        entry: e,
                    },
                );
            }
        }
    }
    let mut failures = Vec::new();
    let evidence = |w: &LastWrite<'_>| {
        let mut lines = vec![w.entry.to_string()];
        lines.extend(events_between(
            events,
            w.entry.complete_ns,
            final_read.invoke_ns,
            12,
        ));
        lines.push(final_read.to_string());
        lines
    };
    if let Some(w) = last.values().max_by_key(|w| w.revision) {
        if w.revision > *final_rev {
            failures.push(Failure {
                what: format!(
                    "store revision went back: a write was acknowledged at revision {} but the \
                     healed store is at revision {final_rev}",
                    w.revision
                ),
                evidence: evidence(w),
            });
        }
    }
    for (key, w) in &last {
        let now = kvs.iter().find(|kv| &kv.key == key);
        let lost = match (now, &w.value) {
            (Some(kv), _) if kv.mod_revision < w.revision => true,
            (Some(kv), Some(v)) if kv.mod_revision == w.revision => &kv.value != v,
            (Some(_), _) => false,
            (None, None) => false,
            (None, Some(_)) => !deleted_later(entries, key, w),
        };
        if lost {
            failures.push(Failure {
                what: format!(
                    "acknowledged write lost: {key} was acknowledged at revision {}, the healed \
                     store shows {}",
                    w.revision,
                    now.map_or(
                        "no such key (and no later delete)".to_string(),
                        |kv| format!("{}={} at revision {}", kv.key, kv.value, kv.mod_revision)
                    )
                ),
                evidence: evidence(w),
            });
        }
    }
    failures
}

/// Whether some delete of `key` may have happened after the write `w`: an acknowledged one
/// at a later revision, or one whose outcome is unknown.
fn deleted_later(entries: &[Entry], key: &str, w: &LastWrite<'_>) -> bool {
    entries.iter().any(|e| {
        let Op::Delete { key: k } = &e.op else {
            return false;
        };
        k == key
            && match &e.outcome {
                Outcome::Ok(r) => r.revision() > w.revision,
                // Outcome unknown: the request may still be inside the cluster when its client
                // gives up (a follower holds it until a leader appears, a proposal waits in a
                // leader's log), so it may take effect at any time after its invocation.
                Outcome::Info(_) => true,
                Outcome::Fail(_) => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::KeyValue;

    fn entry(index: usize, op: Op, outcome: Outcome) -> Entry {
        Entry {
            index,
            client: 0,
            member: 0,
            op,
            invoke_ns: index as u64 * 10,
            complete_ns: index as u64 * 10 + 5,
            invoke_seq: 2 * index as u64,
            complete_seq: 2 * index as u64 + 1,
            outcome,
        }
    }

    fn put_ok(index: usize, key: &str, value: &str, revision: i64) -> Entry {
        let op = Op::Put {
            key: key.into(),
            value: value.into(),
        };
        let outcome = Outcome::Ok(OpResult::Write {
            revision,
            succeeded: true,
            deleted: 0,
        });
        entry(index, op, outcome)
    }

    fn final_read(index: usize, revision: i64, kvs: &[(&str, &str, i64)]) -> Entry {
        let kvs = kvs
            .iter()
            .map(|(k, v, r)| KeyValue {
                key: (*k).into(),
                value: (*v).into(),
                mod_revision: *r,
                create_revision: *r,
                version: 1,
            })
            .collect();
        let outcome = Outcome::Ok(OpResult::Read { revision, kvs });
        entry(
            index,
            Op::Range {
                serializable: false,
            },
            outcome,
        )
    }

    #[test]
    fn survivors_pass_and_a_lost_write_is_named() {
        let h = vec![put_ok(0, "k0", "a", 2), put_ok(1, "k1", "b", 3)];
        let good = final_read(2, 3, &[("k0", "a", 2), ("k1", "b", 3)]);
        assert!(acked_writes_survive(&h, &good, &[]).is_empty());
        let bad = final_read(2, 2, &[("k0", "a", 2)]);
        let failures = acked_writes_survive(&h, &bad, &[(17, "crash n1".into())]);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].what.contains("revision went back"));
        assert!(failures[1]
            .what
            .contains("k1 was acknowledged at revision 3"));
        assert!(failures[1].evidence.iter().any(|l| l.contains("crash n1")));
    }

    #[test]
    fn a_possible_later_delete_explains_a_missing_key() {
        let del = entry(
            1,
            Op::Delete { key: "k0".into() },
            Outcome::Info("timeout".into()),
        );
        let h = vec![put_ok(0, "k0", "a", 2), del];
        let end = final_read(2, 3, &[]);
        assert!(acked_writes_survive(&h, &end, &[]).is_empty());
    }
}
