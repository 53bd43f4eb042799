//! The lock check over `locks.jsonl` ([`LockRecord`]s):
//!
//! - **two holders at once**: a client's hold runs from its acquire's completion to the
//!   invocation of its unlock (what the client believes); two clients' holds that overlap
//!   broke mutual exclusion;
//! - **stale-fenced writes**: a fenced write (acknowledged, applied or not) evaluated at
//!   revision `r` by a client with fence `f`, where another client was granted the lock with a
//!   fence above `f` at a revision at or below `r`. That grant means no older lock key existed
//!   there, so the writer had already lost the lock when it wrote. The guard lets such a write
//!   apply as long as the newer holder has not written yet;
//! - **fenced writes that went backwards**: the applied fenced writes, in revision order, must
//!   have increasing fences. This is the guarantee fencing by the lock key's revision gives, on
//!   etcd as on keel.
//!
//! The applied fenced writes come from the store itself when the harness read the guarded
//! key's history after the heal (`applied` records, [`super::lock_fences`]): that includes
//! writes whose clients timed out (in doubt) but which landed later, which the clients' records
//! alone cannot place. The store's list and the clients' records must also agree: every
//! acknowledged applied write is in the store at its revision, and every write in the store was
//! made by a client that sent that fence. A `fences-read` record marks a complete read; without
//! one (`fences-unread`: the check says why) it judges from the acknowledged writes.
use super::lock::LockRecord;

/// What the lock check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockFindings {
    /// Overlapping holds, one sentence each.
    pub overlaps: Vec<String>,
    /// Writes by clients that had lost the lock, one sentence each.
    pub stale: Vec<String>,
    /// How many of the stale writes the guard let through (applied).
    pub stale_applied: usize,
    /// The first fenced write that went backwards.
    pub backwards: Option<String>,
    /// Disagreements between the store's fenced writes and the clients' records (a lost
    /// acknowledged write, a write nobody sent), one sentence each.
    pub mismatches: Vec<String>,
    /// Fenced writes in doubt for their clients that the store shows applied.
    pub in_doubt_applied: usize,
    /// Why the store's fenced writes could not be read, if they could not.
    pub unread: Option<String>,
}

impl LockFindings {
    /// Mutual exclusion held: no overlap and no stale write.
    pub fn exclusive(&self) -> bool {
        self.overlaps.is_empty() && self.stale.is_empty()
    }
}

fn overlaps(records: &[LockRecord]) -> Vec<String> {
    let mut holds: Vec<(u64, u64, &LockRecord)> = Vec::new();
    for a in records
        .iter()
        .filter(|r| r.op == "acquire" && r.outcome == "ok")
    {
        let end = records
            .iter()
            .filter(|r| r.client == a.client && r.op == "release" && r.invoke_ns >= a.complete_ns)
            .map(|r| r.invoke_ns)
            .min()
            .unwrap_or(u64::MAX);
        holds.push((a.complete_ns, end, a));
    }
    holds.sort_by_key(|h| h.0);
    let mut found = Vec::new();
    for (i, x) in holds.iter().enumerate() {
        for y in holds[i + 1..].iter().take_while(|y| y.0 < x.1) {
            if y.2.client != x.2.client {
                found.push(format!(
                    "client {} (fence {}) held [t {}..{}] while client {} (fence {}) acquired at t {}",
                    x.2.client, x.2.fence, x.0, x.1, y.2.client, y.2.fence, y.0
                ));
            }
        }
    }
    found
}

/// Stale writes and how many of them applied.
fn stale_writes(records: &[LockRecord]) -> (Vec<String>, usize) {
    let grants: Vec<&LockRecord> = records
        .iter()
        .filter(|r| r.op == "acquire" && r.outcome == "ok" && r.fence > 0 && r.revision > 0)
        .collect();
    let mut found = Vec::new();
    let mut applied = 0;
    let acknowledged = records
        .iter()
        .filter(|r| r.op == "write" && r.outcome == "ok" && r.fence > 0 && r.revision > 0);
    let known: Vec<i64> = acknowledged.clone().map(|r| r.revision).collect();
    let landed_in_doubt = store_list(records)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.fence > 0 && !known.contains(&r.revision));
    for w in acknowledged.chain(landed_in_doubt) {
        let newer = grants
            .iter()
            .filter(|g| g.client != w.client && g.fence > w.fence && g.revision <= w.revision)
            .min_by_key(|g| g.revision);
        if let Some(g) = newer {
            applied += usize::from(w.applied);
            found.push(format!(
                "client {}'s fenced write with fence {} at rev {} ({}) came after client {} was granted the lock with fence {} at rev {}",
                w.client,
                w.fence,
                w.revision,
                match (w.op.as_str(), w.applied) {
                    ("applied", _) => "in doubt for the client; applied, the store shows",
                    (_, true) => "applied",
                    _ => "refused by the guard",
                },
                g.client,
                g.fence,
                g.revision
            ));
        }
    }
    (found, applied)
}

/// The store's fenced writes, when the harness read them after the heal (a `fences-read`
/// record marks a complete read).
fn store_list(records: &[LockRecord]) -> Option<Vec<&LockRecord>> {
    records
        .iter()
        .any(|r| r.op == "fences-read")
        .then(|| records.iter().filter(|r| r.op == "applied").collect())
}

/// The applied fenced writes: the store's list when the harness read it, else the
/// acknowledged ones.
fn applied_writes(records: &[LockRecord]) -> Vec<&LockRecord> {
    store_list(records).unwrap_or_else(|| {
        records
            .iter()
            .filter(|r| r.op == "write" && r.applied)
            .collect()
    })
}

/// Where the store's fenced writes and the clients' records disagree, and how many in-doubt
/// writes the store shows applied.
fn reconcile(records: &[LockRecord]) -> (Vec<String>, usize) {
    let Some(store) = store_list(records) else {
        return (Vec::new(), 0);
    };
    let mut found = Vec::new();
    for w in records
        .iter()
        .filter(|r| r.op == "write" && r.outcome == "ok" && r.applied)
    {
        let there = store
            .iter()
            .any(|a| a.revision == w.revision && a.fence == w.fence && a.client == w.client);
        if !there {
            found.push(format!(
                "client {}'s fenced write with fence {} was acknowledged as applied at rev {}, but the store has no such write",
                w.client, w.fence, w.revision
            ));
        }
    }
    let mut in_doubt = 0;
    for a in &store {
        let sent = |r: &&LockRecord| r.op == "write" && r.client == a.client && r.fence == a.fence;
        let acked = records
            .iter()
            .filter(sent)
            .any(|r| r.outcome == "ok" && r.revision == a.revision);
        if acked {
            continue;
        }
        if records.iter().filter(sent).any(|r| r.outcome == "info") {
            in_doubt += 1;
        } else {
            found.push(format!(
                "the store has a fenced write with fence {} by client {} at rev {} that no acknowledged or in-doubt write of that client explains",
                a.fence, a.client, a.revision
            ));
        }
    }
    (found, in_doubt)
}

fn backwards(records: &[LockRecord]) -> Option<String> {
    let mut writes = applied_writes(records);
    writes.sort_by_key(|w| w.revision);
    writes.windows(2).find(|w| w[1].fence <= w[0].fence).map(|w| {
        format!(
            "fenced write of client {} with fence {} at rev {} after client {}'s fence {} at rev {}",
            w[1].client, w[1].fence, w[1].revision, w[0].client, w[0].fence, w[0].revision
        )
    })
}

/// Checks a run's lock records.
pub fn check_locks(records: &[LockRecord]) -> LockFindings {
    let (stale, stale_applied) = stale_writes(records);
    let (mismatches, in_doubt_applied) = reconcile(records);
    LockFindings {
        overlaps: overlaps(records),
        stale,
        stale_applied,
        backwards: backwards(records),
        mismatches,
        in_doubt_applied,
        unread: records
            .iter()
            .find(|r| r.op == "fences-unread")
            .map(|r| r.outcome.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        client: u64,
        op: &str,
        fence: i64,
        t: (u64, u64),
        applied: bool,
        rev: i64,
    ) -> LockRecord {
        LockRecord {
            client,
            op: op.to_string(),
            fence,
            invoke_ns: t.0,
            complete_ns: t.1,
            outcome: "ok".to_string(),
            applied,
            revision: rev,
        }
    }

    /// Client 1 then client 2, one after the other, each writing its fence.
    fn sequential() -> Vec<LockRecord> {
        vec![
            rec(1, "acquire", 10, (0, 100), false, 10),
            rec(1, "write", 10, (300, 310), true, 11),
            rec(1, "release", 10, (320, 330), false, 0),
            rec(2, "acquire", 12, (50, 400), false, 13),
            rec(2, "write", 12, (500, 510), true, 14),
            rec(2, "release", 12, (520, 530), false, 0),
        ]
    }

    #[test]
    fn a_sequential_run_is_clean() {
        let found = check_locks(&sequential());
        assert_eq!(found, LockFindings::default(), "nothing to report");
        assert!(found.exclusive(), "mutual exclusion held");
    }

    #[test]
    fn two_holders_at_once_are_flagged() {
        let mut records = sequential();
        // Client 1 was paused: its write and unlock come after client 2 acquired at t 400, and
        // the guard refused its write (client 2 had written fence 12 at rev 14).
        records[1] = rec(1, "write", 10, (300, 900), false, 15);
        records[2] = rec(1, "release", 10, (910, 920), false, 0);
        let found = check_locks(&records);
        assert_eq!(found.overlaps.len(), 1, "one overlap: {found:?}");
        assert!(
            found.overlaps[0].contains("client 1 (fence 10) held [t 100..910]")
                && found.overlaps[0].contains("client 2 (fence 12) acquired at t 400"),
            "names both holders: {}",
            found.overlaps[0]
        );
        assert_eq!(
            found.stale.len(),
            1,
            "and its late write was stale: {found:?}"
        );
        assert_eq!(found.stale_applied, 0, "refused by the guard");
        assert_eq!(found.backwards, None, "the guard kept the fences in order");
        assert!(!found.exclusive(), "mutual exclusion broken");
    }

    #[test]
    fn a_stale_fenced_write_that_applied_is_flagged() {
        // Client 2 is granted the lock at rev 13; client 1's write with fence 10 applies at rev
        // 14, before client 2's own write at rev 15. The holds do not overlap in the clients'
        // records (client 1 had invoked its unlock): only the revisions show it.
        let records = vec![
            rec(1, "acquire", 10, (0, 100), false, 10),
            rec(1, "release", 10, (200, 210), false, 0),
            rec(2, "acquire", 12, (50, 400), false, 13),
            rec(1, "write", 10, (150, 450), true, 14),
            rec(2, "write", 12, (500, 510), true, 15),
            rec(2, "release", 12, (520, 530), false, 0),
        ];
        let found = check_locks(&records);
        assert!(found.overlaps.is_empty(), "no overlapping hold: {found:?}");
        assert_eq!(found.stale_applied, 1, "one applied stale write: {found:?}");
        assert!(
            found.stale[0].contains("fence 10 at rev 14 (applied)")
                && found.stale[0].contains("client 2 was granted the lock with fence 12 at rev 13"),
            "names the write and the newer grant: {}",
            found.stale[0]
        );
        assert_eq!(
            found.backwards, None,
            "fences still increase with revisions"
        );
    }

    #[test]
    fn fenced_writes_going_backwards_are_flagged() {
        let mut records = sequential();
        // A broken guard: client 1's fence 10 lands at rev 16, after client 2's fence 12.
        records.push(rec(1, "write", 10, (600, 610), true, 16));
        let found = check_locks(&records);
        let text = found.backwards.expect("the backwards write is reported");
        assert!(
            text.contains("client 1 with fence 10 at rev 16 after client 2's fence 12 at rev 14"),
            "names both writes: {text}"
        );
    }

    /// What the store holds, as the harness records it after the heal.
    fn read_marker() -> LockRecord {
        rec(0, "fences-read", 0, (0, 0), false, 0)
    }

    fn store(client: u64, fence: i64, rev: i64) -> LockRecord {
        LockRecord {
            op: "applied".to_string(),
            ..rec(client, "applied", fence, (0, 0), true, rev)
        }
    }

    fn in_doubt(client: u64, fence: i64, t: (u64, u64)) -> LockRecord {
        LockRecord {
            outcome: "info".to_string(),
            ..rec(client, "write", fence, t, false, 0)
        }
    }

    #[test]
    fn the_store_agreeing_with_the_clients_is_clean() {
        let mut records = sequential();
        records.push(store(1, 10, 11));
        records.push(store(2, 12, 14));
        records.push(read_marker());
        let found = check_locks(&records);
        assert_eq!(found, LockFindings::default(), "nothing to report");
    }

    #[test]
    fn an_in_doubt_write_that_landed_after_a_newer_grant_is_stale() {
        // Client 1's write timed out (its member paused); the store shows it landed at rev 14,
        // after client 2 was granted the lock at rev 13 and before client 2 wrote.
        let records = vec![
            rec(1, "acquire", 10, (0, 100), false, 10),
            in_doubt(1, 10, (150, 2000)),
            rec(1, "release", 10, (2010, 2020), false, 0),
            rec(2, "acquire", 12, (50, 400), false, 13),
            rec(2, "write", 12, (500, 510), true, 15),
            rec(2, "release", 12, (520, 530), false, 0),
            store(1, 10, 14),
            store(2, 12, 15),
            read_marker(),
        ];
        let found = check_locks(&records);
        assert_eq!(found.in_doubt_applied, 1, "the store placed it: {found:?}");
        assert_eq!(found.stale.len(), 1, "and it was stale: {found:?}");
        assert!(
            found.stale[0].contains("fence 10 at rev 14 (in doubt for the client; applied"),
            "says where it landed: {}",
            found.stale[0]
        );
        assert!(
            found.mismatches.is_empty(),
            "store and clients agree: {found:?}"
        );
        assert_eq!(found.backwards, None, "fences still increase");
    }

    #[test]
    fn an_in_doubt_write_landing_backwards_is_caught_only_through_the_store() {
        // A broken guard lets client 1's in-doubt fence 10 land at rev 16, after fence 12.
        let mut records = sequential();
        records[1] = in_doubt(1, 10, (300, 2000));
        records.push(store(2, 12, 14));
        let without_store = check_locks(&records);
        assert_eq!(
            without_store.backwards, None,
            "the clients' records cannot see it"
        );
        records.push(store(1, 10, 16));
        records.push(read_marker());
        let text = check_locks(&records)
            .backwards
            .expect("the store's list shows the backwards write");
        assert!(
            text.contains("client 1 with fence 10 at rev 16 after client 2's fence 12 at rev 14"),
            "names both writes: {text}"
        );
    }

    #[test]
    fn a_lost_or_unexplained_write_and_an_unread_store_are_reported() {
        let mut records = sequential();
        // Client 2's acknowledged write at rev 14 is not in the store; fence 99 is nobody's.
        records.push(store(1, 10, 11));
        records.push(store(3, 99, 20));
        records.push(read_marker());
        let found = check_locks(&records);
        assert_eq!(found.mismatches.len(), 2, "both disagreements: {found:?}");
        assert!(
            found.mismatches[0].contains("acknowledged as applied at rev 14")
                && found.mismatches[1].contains("fence 99 by client 3 at rev 20"),
            "names them: {:?}",
            found.mismatches
        );
        let mut unread = sequential();
        unread.push(LockRecord {
            outcome: "m1: watch timed out".to_string(),
            ..rec(0, "fences-unread", 0, (0, 0), false, 0)
        });
        let found = check_locks(&unread);
        assert_eq!(
            found.unread.as_deref(),
            Some("m1: watch timed out"),
            "{found:?}"
        );
    }
}
