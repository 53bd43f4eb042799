//! Linearizability of a run's history, decided by keel-jepsen's checker.
//!
//! Run it outside the madsim runtime: the checker's time budget reads the clock, which madsim
//! virtualizes inside a simulation.

use std::time::Duration;

use keel_jepsen::check::{check, CheckOptions, Verdict};
use keel_jepsen::watch::{check_watches, WatchLog, WatchVerdict};

use crate::check::{events_between, Failure, FailureKind};
use crate::history::{to_jepsen, Entry};

/// The checker's wall-clock budget per history.
pub const CHECK_TIME_LIMIT: Duration = Duration::from_secs(30);

/// Checks `entries` for linearizability under etcd's KV model. An `Unknown` verdict (the
/// checker gave up) is a failure too. The failure's evidence is the operations the checker
/// names, as this crate prints them, plus the nemesis events while they ran.
pub fn check_history(entries: &[Entry], events: &[(u64, String)]) -> Option<Failure> {
    let options = CheckOptions {
        time_limit: CHECK_TIME_LIMIT,
        ..CheckOptions::default()
    };
    match check(&to_jepsen(entries), &options) {
        Verdict::Valid => None,
        Verdict::Unknown { reason } => Some(Failure::new(
            FailureKind::LinearizabilityUnknown,
            format!("linearizability unknown (a failure): {reason}"),
            Vec::new(),
        )),
        Verdict::Invalid(v) => {
            // keel-jepsen numbers operations in order of invocation.
            let mut by_invocation: Vec<&Entry> = entries.iter().collect();
            by_invocation.sort_by_key(|e| e.invoke_seq);
            let named: Vec<&Entry> = v
                .ops
                .iter()
                .filter_map(|op| by_invocation.get(op.id).copied())
                .collect();
            let from = named.iter().map(|e| e.invoke_ns).min().unwrap_or(0);
            let to = named.iter().map(|e| e.complete_ns).max().unwrap_or(0);
            let mut evidence: Vec<String> = named.iter().map(|e| e.to_string()).collect();
            evidence.extend(events_between(events, from, to, 12));
            Some(Failure::new(
                FailureKind::Linearizability,
                format!("not linearizable ({:?}): {}", v.kind, v.explanation),
                evidence,
            ))
        }
    }
}

/// Checks the watch log against the history with keel-jepsen's watch checker (events in
/// revision order, exactly once, no gaps, atomic per revision, agreeing with the history and
/// with each other). The failure's evidence is the records and operations the checker names,
/// plus the nemesis events while they happened.
pub fn check_watch_log(
    entries: &[Entry],
    log: &WatchLog,
    events: &[(u64, String)],
) -> Option<Failure> {
    let WatchVerdict::Invalid(v) = check_watches(&to_jepsen(entries), log) else {
        return None;
    };
    let times: Vec<u64> = v
        .records
        .iter()
        .filter_map(|r| log.records.get(r.index).map(|rec| rec.time))
        .collect();
    let from = times.iter().copied().min().unwrap_or(0);
    let to = times.iter().copied().max().unwrap_or(0);
    let mut evidence: Vec<String> = v
        .records
        .iter()
        .map(|r| format!("watch record #{} (w{}): {}", r.index, r.watch, r.text))
        .collect();
    evidence.extend(v.ops.iter().map(|o| format!("op: {}", o.text)));
    evidence.extend(events_between(
        events,
        from.saturating_sub(2_000_000_000),
        to,
        12,
    ));
    Some(Failure::new(
        FailureKind::Watch,
        format!("watch checker ({:?}): {}", v.kind, v.explanation),
        evidence,
    ))
}
