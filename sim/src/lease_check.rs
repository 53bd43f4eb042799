//! Lease safety: what the lease clients recorded, and the two guarantees checked over it.
//!
//! 1. **No leased key disappears early.** A lease granted (or kept alive) by a request invoked
//!    at `t` with TTL `ttl` lives at least until
//!    `t + ttl × (1 − LEASE_SKEW_BOUND)` on the simulated global clock. The leader decides
//!    expiry from its own clock (ticks of its [`crate::clock::SimClock`]), which the nemesis
//!    may drift by up to ±[`crate::clock::DRIFT_PPM_MAX`] (10%), so a TTL can elapse on the
//!    leader's clock in `ttl / 1.1 ≥ ttl × 0.9` of global time; that is the whole bound.
//!    etcd's election-timeout slack (a new leader extends every lease by one election
//!    timeout) only lengthens leases, so it does not enter this lower bound. A key
//!    "disappears" when a linearizable read invoked after its put completed does not see it,
//!    or a watch delivers its delete event; unless a revoke of its lease had been invoked
//!    (with any outcome but a certain failure) before the observation.
//! 2. **No key survives a completed revoke.** After a revoke of lease `L` was acknowledged, a
//!    read invoked later must not see `L`'s keys, a put with `L` must not succeed, and a
//!    keepalive of `L` must not succeed.
//!
//! # The lease key space
//! Leased keys are `lease/<id as 16 hex digits>/<n>`, each written once, outside the
//! workload's `k*` range (`"lease/" > "l"`), so the final range read and the per-client checks
//! never see them. For keel-jepsen's linearizability checker the lease clients' puts and
//! reads are ordinary operations, and each lease with keys adds one in-doubt delete of its
//! prefix ([`crate::history::Op::LeaseKeysGone`]): the revoke or expiry that deletes its keys
//! at a revision no client's operation reports.
//!
//! # Worked example (TTL 2 s, skew bound 10%)
//! ```text
//! grant L ttl=2      [0.10s..0.12s] ok        alive until ≥ 0.10 + 1.8 = 1.90s
//! put lease/L/0      [0.13s..0.15s] ok
//! keepalive L        [0.80s..0.81s] ok        alive until ≥ 0.80 + 1.8 = 2.60s
//! get lease/L/0      [2.20s..2.21s] ok []     VIOLATION: gone at 2.21s < 2.60s
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::check::{events_between, Failure, FailureKind};
use crate::clock::DRIFT_PPM_MAX;
use crate::history::{Entry, Op, OpResult, Outcome};

/// Every leased key starts with this.
pub const LEASE_PREFIX: &str = "lease/";

/// The fraction of a TTL the leader's clock may gain on the global clock, in parts per
/// million: the nemesis's largest drift (10%).
pub const LEASE_SKEW_BOUND_PPM: i64 = DRIFT_PPM_MAX;

/// Whether `key` belongs to the lease key space.
pub fn is_lease_key(key: &str) -> bool {
    key.starts_with(LEASE_PREFIX)
}

/// The prefix of lease `id`'s keys.
pub fn lease_prefix(id: i64) -> String {
    format!("{LEASE_PREFIX}{id:016x}/")
}

/// The lease a leased key belongs to.
pub fn lease_of_key(key: &str) -> Option<i64> {
    let rest = key.strip_prefix(LEASE_PREFIX)?;
    let (hex, _) = rest.split_once('/')?;
    i64::from_str_radix(hex, 16).ok()
}

/// A lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// LeaseGrant with the client's id and this TTL.
    Grant {
        /// The requested TTL, seconds.
        ttl_s: i64,
    },
    /// One keepalive on a LeaseKeepAlive stream.
    KeepAlive,
    /// LeaseRevoke.
    Revoke,
}

/// How a lease request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Granted / renewed (with the TTL the server answered) / revoked (TTL 0).
    Ok {
        /// The TTL in the answer, seconds.
        ttl_s: i64,
    },
    /// It certainly did not take effect.
    Fail(String),
    /// It may or may not have taken effect.
    Info(String),
}

/// One lease request and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Position in the lease log (completion order).
    pub index: usize,
    /// The lease client.
    pub client: usize,
    /// The member it talked to.
    pub member: usize,
    /// The lease.
    pub lease: i64,
    /// The request.
    pub op: LeaseOp,
    /// Simulated ns since the run began, at invocation (the history's clock).
    pub invoke_ns: u64,
    /// At completion.
    pub complete_ns: u64,
    /// Position of the invocation among all events of the run (the history's sequence).
    pub invoke_seq: u64,
    /// The outcome.
    pub outcome: LeaseOutcome,
}

impl fmt::Display for LeaseRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match &self.op {
            LeaseOp::Grant { ttl_s } => format!("grant lease {:x} ttl={ttl_s}s", self.lease),
            LeaseOp::KeepAlive => format!("keepalive lease {:x}", self.lease),
            LeaseOp::Revoke => format!("revoke lease {:x}", self.lease),
        };
        let outcome = match &self.outcome {
            LeaseOutcome::Ok { ttl_s } => format!("ok ttl={ttl_s}s"),
            LeaseOutcome::Fail(why) => format!("fail ({why})"),
            LeaseOutcome::Info(why) => format!("info ({why})"),
        };
        write!(
            f,
            "L{} l{}→n{} [{:.3}s..{:.3}s] {op} => {outcome}",
            self.index,
            self.client,
            self.member + 1,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
        )
    }
}

/// A shared, append-only log of lease requests.
#[derive(Debug, Clone, Default)]
pub struct LeaseLog {
    records: Arc<Mutex<Vec<LeaseRecord>>>,
}

impl LeaseLog {
    fn lock(&self) -> MutexGuard<'_, Vec<LeaseRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record (its index is assigned here) and returns it.
    pub fn push(&self, mut record: LeaseRecord) -> LeaseRecord {
        let mut records = self.lock();
        record.index = records.len();
        records.push(record.clone());
        record
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<LeaseRecord> {
        self.lock().clone()
    }
}

/// A leased key seen gone: by a read that did not find it, or a watch's delete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// The key.
    pub key: String,
    /// The key was certainly gone by then (a read's completion, a watch event's arrival).
    pub by_ns: u64,
    /// A read not finding the key counts only if the key's put completed before the read was
    /// invoked (`Some(invocation)`); a delete event proves by itself that the key was there
    /// (`None`).
    pub after_put_ns: Option<u64>,
    /// What saw it, for the report.
    pub what: String,
}

/// The lower bound on how long a renewal at `invoke_ns` with `ttl_s` keeps a lease alive.
pub fn alive_until_ns(invoke_ns: u64, ttl_s: i64) -> u64 {
    let ttl_ns = ttl_s.max(0) as u128 * 1_000_000_000;
    let kept = ttl_ns * (1_000_000 - LEASE_SKEW_BOUND_PPM as u128) / 1_000_000;
    invoke_ns.saturating_add(kept.min(u64::MAX as u128) as u64)
}

/// What the records say about one lease.
#[derive(Debug, Default)]
struct LeaseFacts<'a> {
    /// Acknowledged grant and keepalives: (renewal, its lower bound on the lease's life).
    renewals: Vec<(&'a LeaseRecord, u64)>,
    /// The earliest invocation of a revoke that may have taken effect.
    revoke_invoked_ns: Option<u64>,
    /// The first acknowledged revoke.
    revoked: Option<&'a LeaseRecord>,
    /// Acknowledged puts with this lease, by key.
    puts: BTreeMap<&'a str, &'a Entry>,
}

fn facts<'a>(entries: &'a [Entry], records: &'a [LeaseRecord]) -> BTreeMap<i64, LeaseFacts<'a>> {
    let mut by_lease: BTreeMap<i64, LeaseFacts<'a>> = BTreeMap::new();
    for r in records {
        let f = by_lease.entry(r.lease).or_default();
        match (&r.op, &r.outcome) {
            (LeaseOp::Grant { .. } | LeaseOp::KeepAlive, LeaseOutcome::Ok { ttl_s })
                if *ttl_s > 0 =>
            {
                f.renewals.push((r, alive_until_ns(r.invoke_ns, *ttl_s)));
            }
            (LeaseOp::Grant { .. } | LeaseOp::KeepAlive, _) => {}
            (LeaseOp::Revoke, outcome) => {
                if !matches!(outcome, LeaseOutcome::Fail(_)) {
                    let at = f
                        .revoke_invoked_ns
                        .map_or(r.invoke_ns, |t| t.min(r.invoke_ns));
                    f.revoke_invoked_ns = Some(at);
                }
                if matches!(outcome, LeaseOutcome::Ok { .. })
                    && f.revoked.is_none_or(|p| r.complete_ns < p.complete_ns)
                {
                    f.revoked = Some(r);
                }
            }
        }
    }
    for e in entries {
        if let (Op::LeasePut { key, lease, .. }, Outcome::Ok(_)) = (&e.op, &e.outcome) {
            by_lease.entry(*lease).or_default().puts.insert(key, e);
        }
    }
    by_lease
}

/// Reads of leased keys in the history that did not find them.
pub fn reads_not_finding(entries: &[Entry]) -> Vec<Gone> {
    entries
        .iter()
        .filter_map(|e| {
            let Op::Get {
                key,
                serializable: false,
            } = &e.op
            else {
                return None;
            };
            let Outcome::Ok(OpResult::Read { kvs, .. }) = &e.outcome else {
                return None;
            };
            (is_lease_key(key) && kvs.is_empty()).then(|| Gone {
                key: key.clone(),
                by_ns: e.complete_ns,
                after_put_ns: Some(e.invoke_ns),
                what: e.to_string(),
            })
        })
        .collect()
}

/// Checks both lease guarantees over the history's leased puts and reads, the lease log, and
/// further disappearances `gone` (e.g. watch delete events). `events` are the nemesis events,
/// for evidence.
pub fn check_leases(
    entries: &[Entry],
    records: &[LeaseRecord],
    gone: &[Gone],
    events: &[(u64, String)],
) -> Vec<Failure> {
    let by_lease = facts(entries, records);
    let mut failures = Vec::new();
    let mut all_gone = reads_not_finding(entries);
    all_gone.extend(gone.iter().cloned());
    for g in &all_gone {
        if let Some(f) = gone_early(&by_lease, g, events) {
            failures.push(f);
        }
    }
    for (lease, f) in &by_lease {
        failures.extend(survives_revoke(*lease, f, entries, records));
    }
    failures
}

/// Failure if `g` saw a key of a live lease gone before the lease's lower bound.
fn gone_early(
    by_lease: &BTreeMap<i64, LeaseFacts<'_>>,
    g: &Gone,
    events: &[(u64, String)],
) -> Option<Failure> {
    let lease = lease_of_key(&g.key)?;
    let f = by_lease.get(&lease)?;
    let put = f.puts.get(g.key.as_str())?;
    if g.after_put_ns.is_some_and(|t| put.complete_ns > t) {
        return None;
    }
    if f.revoke_invoked_ns.is_some_and(|t| t <= g.by_ns) {
        return None;
    }
    let (renewal, until_ns) = f.renewals.iter().max_by_key(|(_, until)| *until)?;
    if g.by_ns >= *until_ns {
        return None;
    }
    let mut evidence = vec![put.to_string(), renewal.to_string(), g.what.clone()];
    evidence.extend(events_between(events, renewal.invoke_ns, g.by_ns, 12));
    Some(Failure {
        kind: FailureKind::LeaseGoneEarly,
        what: format!(
            "leased key {} disappeared by {:.3}s, but lease {lease:x} was kept alive until at \
             least {:.3}s (renewed at {:.3}s; TTL × (1 − {}% skew bound)) and never revoked",
            g.key,
            g.by_ns as f64 / 1e9,
            *until_ns as f64 / 1e9,
            renewal.invoke_ns as f64 / 1e9,
            LEASE_SKEW_BOUND_PPM / 10_000
        ),
        evidence,
    })
}

/// Failures if anything of `lease` outlived its acknowledged revoke.
fn survives_revoke(
    lease: i64,
    f: &LeaseFacts<'_>,
    entries: &[Entry],
    records: &[LeaseRecord],
) -> Vec<Failure> {
    let Some(revoke) = f.revoked else {
        return Vec::new();
    };
    let after = revoke.complete_ns;
    let mut failures = Vec::new();
    let mut fail = |what: String, seen: String| {
        failures.push(Failure::new(
            FailureKind::LeaseOutlivesRevoke,
            what,
            vec![revoke.to_string(), seen],
        ));
    };
    for e in entries.iter().filter(|e| e.invoke_ns > after) {
        let Outcome::Ok(result) = &e.outcome else {
            continue;
        };
        match (&e.op, result) {
            (Op::Get { key, .. }, OpResult::Read { kvs, .. })
                if !e.op.is_serializable()
                    && lease_of_key(key) == Some(lease)
                    && !kvs.is_empty() =>
            {
                fail(
                    format!("leased key {key} survived the acknowledged revoke of lease {lease:x}"),
                    e.to_string(),
                );
            }
            (Op::LeasePut { lease: l, key, .. }, _) if *l == lease => fail(
                format!("put {key} with lease {lease:x} succeeded after its revoke"),
                e.to_string(),
            ),
            _ => {}
        }
    }
    for r in records
        .iter()
        .filter(|r| r.invoke_ns > after && r.lease == lease)
    {
        if r.op == LeaseOp::KeepAlive
            && matches!(r.outcome, LeaseOutcome::Ok { ttl_s } if ttl_s > 0)
        {
            fail(
                format!("a keepalive of lease {lease:x} succeeded after its revoke"),
                r.to_string(),
            );
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::KeyValue;

    const S: u64 = 1_000_000_000;

    fn entry(index: usize, op: Op, at_ms: u64, outcome: Outcome) -> Entry {
        Entry {
            index,
            client: 0,
            member: 0,
            op,
            invoke_ns: at_ms * 1_000_000,
            complete_ns: at_ms * 1_000_000 + 10_000_000,
            invoke_seq: 2 * index as u64,
            complete_seq: 2 * index as u64 + 1,
            outcome,
        }
    }

    fn record(
        index: usize,
        lease: i64,
        op: LeaseOp,
        at_ms: u64,
        outcome: LeaseOutcome,
    ) -> LeaseRecord {
        LeaseRecord {
            index,
            client: 0,
            member: 0,
            lease,
            op,
            invoke_ns: at_ms * 1_000_000,
            complete_ns: at_ms * 1_000_000 + 10_000_000,
            invoke_seq: index as u64,
            outcome,
        }
    }

    fn put(index: usize, key: &str, lease: i64, at_ms: u64) -> Entry {
        let op = Op::LeasePut {
            key: key.into(),
            value: "v".into(),
            lease,
        };
        let ok = Outcome::Ok(OpResult::Write {
            revision: 2,
            succeeded: true,
            deleted: 0,
        });
        entry(index, op, at_ms, ok)
    }

    fn get(index: usize, key: &str, at_ms: u64, found: bool) -> Entry {
        let kvs = if found {
            vec![KeyValue {
                key: key.into(),
                value: "v".into(),
                mod_revision: 2,
                create_revision: 2,
                version: 1,
            }]
        } else {
            Vec::new()
        };
        let op = Op::Get {
            key: key.into(),
            serializable: false,
        };
        entry(
            index,
            op,
            at_ms,
            Outcome::Ok(OpResult::Read { revision: 3, kvs }),
        )
    }

    #[test]
    fn keys_map_back_to_their_lease() {
        let key = format!("{}0", lease_prefix(0x1_0000_0002));
        assert_eq!(key, "lease/0000000100000002/0");
        assert!(is_lease_key(&key) && !is_lease_key("k1"));
        assert!("lease/" > "l" && key.as_str() > "l", "outside the k* range");
        assert_eq!(lease_of_key(&key), Some(0x1_0000_0002));
        assert_eq!(alive_until_ns(S, 2), S + 18 * S / 10);
    }

    #[test]
    fn a_key_gone_before_its_renewed_ttl_is_named_and_one_gone_after_is_not() {
        let l = 7;
        let key = format!("{}0", lease_prefix(l));
        let grant = LeaseOp::Grant { ttl_s: 2 };
        let records = vec![
            record(0, l, grant, 100, LeaseOutcome::Ok { ttl_s: 2 }),
            record(1, l, LeaseOp::KeepAlive, 800, LeaseOutcome::Ok { ttl_s: 2 }),
        ];
        // Gone at 2.21 s: the keepalive at 0.8 s holds it until 2.6 s.
        let early = vec![put(0, &key, l, 130), get(1, &key, 2_200, false)];
        let failures = check_leases(&early, &records, &[], &[]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].kind, FailureKind::LeaseGoneEarly);
        assert!(
            failures[0].what.contains("disappeared by 2.210s"),
            "{failures:?}"
        );
        // Gone at 2.71 s: fine.
        let late = vec![put(0, &key, l, 130), get(1, &key, 2_700, false)];
        assert!(check_leases(&late, &records, &[], &[]).is_empty());
        // A revoke invoked (outcome unknown) before the read explains it.
        let mut revoked = records.clone();
        revoked.push(record(
            2,
            l,
            LeaseOp::Revoke,
            1_000,
            LeaseOutcome::Info("timeout".into()),
        ));
        assert!(check_leases(&early, &revoked, &[], &[]).is_empty());
        // A watch's delete event counts too.
        let watched = Gone {
            key: key.clone(),
            by_ns: S,
            after_put_ns: None,
            what: "watch".into(),
        };
        let failures = check_leases(&late[..1], &records, &[watched], &[]);
        assert_eq!(failures.len(), 1, "{failures:?}");
    }

    #[test]
    fn a_key_seen_after_an_acknowledged_revoke_is_named() {
        let l = 9;
        let key = format!("{}0", lease_prefix(l));
        let records = vec![
            record(
                0,
                l,
                LeaseOp::Grant { ttl_s: 2 },
                100,
                LeaseOutcome::Ok { ttl_s: 2 },
            ),
            record(1, l, LeaseOp::Revoke, 500, LeaseOutcome::Ok { ttl_s: 0 }),
            record(2, l, LeaseOp::KeepAlive, 600, LeaseOutcome::Ok { ttl_s: 2 }),
        ];
        let entries = vec![
            put(0, &key, l, 130),
            get(1, &key, 505, true), // overlaps the revoke: fine
            get(2, &key, 700, true),
        ];
        let failures = check_leases(&entries, &records, &[], &[]);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures
            .iter()
            .all(|f| f.kind == FailureKind::LeaseOutlivesRevoke));
        assert!(failures[0]
            .what
            .contains("survived the acknowledged revoke"));
        assert!(failures[1].what.contains("keepalive"));
    }
}
