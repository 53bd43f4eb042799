//! Checks over a finished run's history: acknowledged writes survive, and the history is
//! linearizable (keel-jepsen's checker). Each failure names the smallest part of the history
//! that shows it, and the nemesis events around it.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{Entry, Op, OpResult, Outcome};

/// Which check failed. The run and the tests decide on this, never on a failure's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// A member never served after the first boot.
    Boot,
    /// Liveness: once every fault healed, a member did not serve a linearizable put and get
    /// within the bound.
    Liveness,
    /// The harness's final read, after the liveness phase, could not connect or failed.
    FinalRead,
    /// keel-jepsen's checker found the history not linearizable.
    Linearizability,
    /// keel-jepsen's checker gave up within its time budget (counted as a failure).
    LinearizabilityUnknown,
    /// A client saw the store revision go backwards (checked as operations complete).
    RevisionBackwards,
    /// Durability: an acknowledged write is missing from the healed store, or the healed
    /// store's revision is below an acknowledged one.
    Durability,
    /// The members' HashKV at the final read's revision disagree (or some did not answer).
    HashKvDisagree,
    /// keel-jepsen's watch checker rejected the watch log.
    Watch,
    /// A leased key disappeared while its lease was provably alive.
    LeaseGoneEarly,
    /// A leased key (or the lease) outlived the lease's acknowledged revoke.
    LeaseOutlivesRevoke,
    /// Election safety (Raft §5.2): two members called themselves leader of one term.
    ElectionSafety,
    /// Two holders of the simulator's lock overlap in revision order (`src/lock_check.rs`).
    LockOverlap,
    /// A member acknowledged a write after a fatal disk fault (a failed write or fsync) was
    /// armed: the fault did not stop it.
    AckAfterDiskFault,
    /// A member started on a WAL with a flipped bit and served: corruption went undetected.
    UndetectedCorruption,
    /// An auth client's request was served without the permission it needed at its apply
    /// point (`src/auth_check.rs`).
    AuthServedWithoutPermission,
    /// An auth client's request was refused with `permission denied` though its user had the
    /// permission throughout (`src/auth_check.rs`).
    AuthRefusedWithPermission,
    /// The auth setup (root, auth enable, users and roles) or the final auth disable failed.
    AuthSetup,
    /// A request was served with a token its user's password change (or deletion) had
    /// invalidated before it (`src/auth_token_check.rs`).
    AuthTokenOutlivedInvalidation,
    /// A login was accepted with a password its user could not have had then.
    AuthLoginWithWrongPassword,
    /// The v2 clients' history is not linearizable (`src/v2_check.rs`).
    V2Linearizability,
    /// The v2 checker gave up within its step budget (counted as a failure).
    V2LinearizabilityUnknown,
    /// The simulation panicked (an assertion in keel or the harness).
    Panic,
}

impl FailureKind {
    /// A short kebab-case name, for logs and test messages.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Boot => "boot",
            FailureKind::Liveness => "liveness",
            FailureKind::FinalRead => "final-read",
            FailureKind::Linearizability => "linearizability",
            FailureKind::LinearizabilityUnknown => "linearizability-unknown",
            FailureKind::RevisionBackwards => "revision-backwards",
            FailureKind::Durability => "durability",
            FailureKind::HashKvDisagree => "hash-kv-disagree",
            FailureKind::Watch => "watch",
            FailureKind::LeaseGoneEarly => "lease-gone-early",
            FailureKind::LeaseOutlivesRevoke => "lease-outlives-revoke",
            FailureKind::ElectionSafety => "election-safety",
            FailureKind::LockOverlap => "lock-overlap",
            FailureKind::AckAfterDiskFault => "ack-after-disk-fault",
            FailureKind::UndetectedCorruption => "undetected-corruption",
            FailureKind::AuthServedWithoutPermission => "auth-served-without-permission",
            FailureKind::AuthRefusedWithPermission => "auth-refused-with-permission",
            FailureKind::AuthSetup => "auth-setup",
            FailureKind::AuthTokenOutlivedInvalidation => "auth-token-outlived-invalidation",
            FailureKind::AuthLoginWithWrongPassword => "auth-login-with-wrong-password",
            FailureKind::V2Linearizability => "v2-linearizability",
            FailureKind::V2LinearizabilityUnknown => "v2-linearizability-unknown",
            FailureKind::Panic => "panic",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed check: which check, what is wrong, and the history (and nemesis events) that
/// show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which check failed.
    pub kind: FailureKind,
    /// One line: what invariant broke.
    pub what: String,
    /// The minimal part of the history that shows it, one line each.
    pub evidence: Vec<String>,
}

impl Failure {
    /// A failure of check `kind`.
    pub fn new(kind: FailureKind, what: String, evidence: Vec<String>) -> Self {
        Failure {
            kind,
            what,
            evidence,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "FAILURE ({}): {}", self.kind, self.what)?;
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
        return vec![Failure::new(
            FailureKind::FinalRead,
            "the final read did not succeed".to_string(),
            vec![final_read.to_string()],
        )];
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
            failures.push(Failure::new(
                FailureKind::Durability,
                format!(
                    "store revision went back: a write was acknowledged at revision {} but the \
                     healed store is at revision {final_rev}",
                    w.revision
                ),
                evidence(w),
            ));
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
            failures.push(Failure::new(
                FailureKind::Durability,
                format!(
                    "acknowledged write lost: {key} was acknowledged at revision {}, the healed \
                     store shows {}",
                    w.revision,
                    now.map_or(
                        "no such key (and no later delete)".to_string(),
                        |kv| format!("{}={} at revision {}", kv.key, kv.value, kv.mod_revision)
                    )
                ),
                evidence(w),
            ));
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
        assert!(failures.iter().all(|f| f.kind == FailureKind::Durability));
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
