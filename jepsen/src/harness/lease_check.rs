//! The lease checks over a history and its lease records ([`super::lease`]):
//!
//! 1. **No leased key disappears before its TTL.** A lease granted or kept alive by a request
//!    invoked at `t` that answered TTL `ttl` lives at least until `t + ttl` (the leader starts
//!    counting no earlier than the request's invocation, on a clock the harness does not skew:
//!    libfaketime fakes only the wall clock). A key is gone when a linearizable read invoked
//!    after its put completed does not show it; that read completing before the lease's
//!    bound, with no revoke of the lease invoked before it completed, is a violation.
//! 2. **No key outlives a completed revoke.** A read invoked after a revoke of its lease was
//!    acknowledged must not show the key; a keepalive invoked then must not answer a TTL.
use std::collections::BTreeMap;

use super::lease::LeaseRecord;
use crate::history::{Operation, Outcome, Request, Response};

/// A lease violation: what broke and the operations that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseViolation {
    /// One sentence.
    pub what: String,
    /// The operations and lease records involved, one line each.
    pub evidence: Vec<String>,
}

impl std::fmt::Display for LeaseViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.what)?;
        for e in &self.evidence {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// What the records say of one lease.
#[derive(Default)]
struct Facts<'a> {
    /// The latest `invoke + ttl` of an acknowledged grant or keepalive, and its record.
    alive_until: Option<(u64, &'a LeaseRecord)>,
    /// The earliest invocation of a revoke that may have applied.
    revoke_invoked: Option<&'a LeaseRecord>,
    /// The earliest acknowledgement of a revoke.
    revoke_acked: Option<&'a LeaseRecord>,
}

fn facts(records: &[LeaseRecord]) -> BTreeMap<i64, Facts<'_>> {
    let mut map: BTreeMap<i64, Facts<'_>> = BTreeMap::new();
    for r in records {
        let f = map.entry(r.lease).or_default();
        match (r.op.as_str(), r.outcome.as_str()) {
            ("grant" | "keepalive", "ok") if r.ttl > 0 => {
                let until = r.invoke_ns + r.ttl as u64 * 1_000_000_000;
                if f.alive_until.is_none_or(|(u, _)| until > u) {
                    f.alive_until = Some((until, r));
                }
            }
            ("revoke", outcome) if outcome != "fail" => {
                if f.revoke_invoked.is_none_or(|x| r.invoke_ns < x.invoke_ns) {
                    f.revoke_invoked = Some(r);
                }
                if outcome == "ok" && f.revoke_acked.is_none_or(|x| r.complete_ns < x.complete_ns) {
                    f.revoke_acked = Some(r);
                }
            }
            _ => {}
        }
    }
    map
}

fn lease_of(key: &str) -> Option<i64> {
    let hex = key.strip_prefix("lease/")?.split('/').next()?;
    i64::from_str_radix(hex, 16).ok()
}

fn text(r: &LeaseRecord) -> String {
    format!(
        "p{} {} {:x} -> {} ttl {} [t {}..{}]",
        r.process, r.op, r.lease, r.outcome, r.ttl, r.invoke_ns, r.complete_ns
    )
}

fn op_text(o: &Operation) -> String {
    format!(
        "p{} {:?} -> {:?} [t {}..{}]",
        o.process,
        o.request,
        o.outcome,
        o.invoke_time,
        o.complete_time.unwrap_or(0)
    )
}

/// Whether `op` is an ok read of `key`, and whether it showed it.
fn read_of(op: &Operation) -> Option<(&str, bool)> {
    let (Request::Get(g), Outcome::Ok(Response::Range(r))) = (&op.request, &op.outcome) else {
        return None;
    };
    if g.serializable {
        return None;
    }
    Some((&g.key, r.kvs.iter().any(|kv| kv.key == g.key)))
}

/// Checks the lease guarantees; the first violation found, if any.
pub fn check_leases(ops: &[Operation], records: &[LeaseRecord]) -> Option<LeaseViolation> {
    let facts = facts(records);
    let mut put_done: BTreeMap<&str, &Operation> = BTreeMap::new();
    for op in ops {
        if let (Request::Put(p), Outcome::Ok(_)) = (&op.request, &op.outcome) {
            put_done.insert(&p.key, op);
        }
    }
    for op in ops {
        let Some((key, seen)) = read_of(op) else {
            continue;
        };
        let (Some(lease), Some(complete)) = (lease_of(key), op.complete_time) else {
            continue;
        };
        let Some(f) = facts.get(&lease) else { continue };
        let put = put_done
            .get(key)
            .filter(|p| p.complete_time < Some(op.invoke_time));
        if let (false, Some(put), Some((until, by))) = (seen, put, f.alive_until) {
            let revoked = f.revoke_invoked.is_some_and(|r| r.invoke_ns < complete);
            if complete < until && !revoked {
                return Some(LeaseViolation {
                    what: format!(
                        "{key} disappeared {} ms before its lease {lease:x} could expire",
                        (until - complete) / 1_000_000
                    ),
                    evidence: vec![op_text(put), text(by), op_text(op)],
                });
            }
        }
        if let (true, Some(r)) = (seen, f.revoke_acked) {
            if r.complete_ns < op.invoke_time {
                return Some(LeaseViolation {
                    what: format!("{key} outlived the acknowledged revoke of lease {lease:x}"),
                    evidence: vec![text(r), op_text(op)],
                });
            }
        }
    }
    revived(records, &facts)
}

/// A keepalive answering a TTL after its lease's revoke was acknowledged.
fn revived(records: &[LeaseRecord], facts: &BTreeMap<i64, Facts<'_>>) -> Option<LeaseViolation> {
    records.iter().find_map(|r| {
        let revoke = facts.get(&r.lease)?.revoke_acked?;
        let alive = r.op == "keepalive" && r.outcome == "ok" && r.ttl > 0;
        (alive && revoke.complete_ns < r.invoke_ns).then(|| LeaseViolation {
            what: format!("lease {:x} kept alive after its revoke", r.lease),
            evidence: vec![text(revoke), text(r)],
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{KeyValue, Request, Response};

    const S: u64 = 1_000_000_000;

    fn record(op: &str, lease: i64, ttl: i64, at: u64, outcome: &str) -> LeaseRecord {
        LeaseRecord {
            process: 1,
            op: op.to_string(),
            lease,
            ttl,
            invoke_ns: at,
            complete_ns: at + S / 100,
            outcome: outcome.to_string(),
        }
    }

    fn op(id: usize, request: Request, at: u64, outcome: Outcome) -> Operation {
        Operation {
            id,
            process: 1,
            invoke_time: at,
            complete_time: Some(at + S / 100),
            request,
            outcome,
        }
    }

    fn get(id: usize, key: &str, at: u64, found: bool) -> Operation {
        let kvs = if found {
            vec![KeyValue::new(key, "v", 2, 2, 1)]
        } else {
            vec![]
        };
        op(
            id,
            Request::get(key),
            at,
            Outcome::Ok(Response::range(3, kvs)),
        )
    }

    #[test]
    fn a_key_gone_before_its_renewed_ttl_is_named_and_one_gone_after_is_not() {
        let key = "lease/0000000000000007/0";
        let put = op(
            0,
            Request::put(key, "v"),
            S / 10,
            Outcome::Ok(Response::put(2)),
        );
        let records = vec![
            record("grant", 7, 2, 0, "ok"),
            record("keepalive", 7, 2, S, "ok"),
        ];
        let early = vec![put.clone(), get(1, key, 2 * S, false)];
        let v = check_leases(&early, &records).expect("gone at 2 s, alive until 3 s");
        assert!(v.what.contains("disappeared"), "{v}");
        let late = vec![put, get(1, key, 3 * S + S / 10, false)];
        assert_eq!(
            check_leases(&late, &records),
            None,
            "gone after 3 s is fine"
        );
    }

    #[test]
    fn a_key_seen_after_an_acknowledged_revoke_is_named() {
        let key = "lease/0000000000000009/1";
        let records = vec![
            record("grant", 9, 5, 0, "ok"),
            record("revoke", 9, 0, S, "ok"),
        ];
        let ops = vec![get(0, key, 2 * S, true)];
        let v = check_leases(&ops, &records).expect("seen after the revoke");
        assert!(v.what.contains("outlived"), "{v}");
        let gone_early_but_revoked = vec![
            op(0, Request::put(key, "v"), 0, Outcome::Ok(Response::put(2))),
            get(1, key, 2 * S, false),
        ];
        assert_eq!(
            check_leases(&gone_early_but_revoked, &records),
            None,
            "a revoke explains an early disappearance"
        );
    }
}
