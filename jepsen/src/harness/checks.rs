//! The checkers of one run: linearizability of the history, and the workload's own checks
//! (the watch log against the history; the lease guarantees; the lock and election checks).
//! Writes `history.jsonl`, `watches.jsonl`, `leases.jsonl`, `locks.jsonl` and
//! `elections.jsonl` into the results directory.
use std::path::Path;
use std::time::{Duration, Instant};

use super::election::{check_elections, ElectionRecord};
use super::lease::LeaseRecord;
use super::lease_check::check_leases;
use super::lock::LockRecord;
use super::lock_check::check_locks;
use super::HarnessError;
use crate::check::{check, CheckOptions, Verdict};
use crate::history::History;
use crate::watch::{check_watches_with, WatchLog, WatchOptions, WatchVerdict};

/// What the checkers get.
pub struct Inputs<'a> {
    /// The results directory.
    pub results: &'a Path,
    /// The linearizability checker's time limit.
    pub time_limit: Duration,
    /// The history.
    pub history: History,
    /// The watch log (watch workload).
    pub watches: Option<WatchLog>,
    /// The lease records (lease workload).
    pub leases: Option<Vec<LeaseRecord>>,
    /// The lock records (lock workload).
    pub locks: Option<Vec<LockRecord>>,
    /// The election records (election workload).
    pub elections: Option<Vec<ElectionRecord>>,
}

/// One of the workload's own checks.
#[derive(Clone, Debug)]
pub struct ExtraCheck {
    /// `watch` or `lease`.
    pub name: &'static str,
    /// The violation with its evidence, if any.
    pub violation: Option<String>,
}

/// All verdicts and the checkers' wall time.
pub struct Checked {
    /// Linearizability.
    pub verdict: Verdict,
    /// The workload's own checks.
    pub extra: Vec<ExtraCheck>,
    /// Wall time of all checkers.
    pub check_ms: u64,
    /// The process's peak resident memory while the checkers ran, in KiB (`None` where
    /// `/proc` cannot tell).
    pub peak_kib: Option<u64>,
}

/// Resets the process's peak resident set (`VmHWM`) to its current size, so that a later
/// [`peak_rss_kib`] measures what came after (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident set (`VmHWM`) in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|e| HarnessError::Io {
        what: path.display().to_string(),
        why: e.to_string(),
    })
}

fn jsonl<T: serde::Serialize>(records: &[T]) -> String {
    let lines: Vec<String> = records
        .iter()
        .filter_map(|r| serde_json::to_string(r).ok())
        .collect();
    lines.join("\n") + "\n"
}

/// The lock check as one violation text: fenced writes that went backwards (what keel and
/// etcd guarantee never happens), overlapping holds and writes by clients that had lost the
/// lock (mutual exclusion without fencing, which a lease expiring under a paused or cut-off
/// holder breaks, on etcd as on keel).
fn lock_check(records: &[LockRecord]) -> Option<String> {
    let found = check_locks(records);
    let mut text = String::new();
    if let Some(b) = &found.backwards {
        text.push_str(&format!("fenced writes went backwards: {b}\n"));
    }
    if let Some(why) = &found.unread {
        text.push_str(&format!(
            "the guarded key's history could not be read after the heal ({why}): in-doubt fenced writes are unchecked\n"
        ));
    }
    for m in found.mismatches.iter().take(3) {
        text.push_str(&format!("the store and the clients disagree: {m}\n"));
    }
    if !found.exclusive() {
        text.push_str(&format!(
            "two holders at once: {} overlapping holds, {} writes by a client that had lost the lock ({} of them applied); fenced writes {}:\n",
            found.overlaps.len(),
            found.stale.len(),
            found.stale_applied,
            if found.backwards.is_some() {
                "went backwards"
            } else {
                "never went backwards"
            }
        ));
        for o in found
            .overlaps
            .iter()
            .take(3)
            .chain(found.stale.iter().take(3))
        {
            text.push_str(&format!("  {o}\n"));
        }
    }
    (!text.is_empty()).then_some(text)
}

fn write_inputs(inputs: &Inputs<'_>) -> Result<(), HarnessError> {
    let dir = inputs.results;
    write(&dir.join("history.jsonl"), &inputs.history.to_jsonl())?;
    if let Some(log) = &inputs.watches {
        write(&dir.join("watches.jsonl"), &log.to_jsonl())?;
    }
    if let Some(records) = &inputs.leases {
        write(&dir.join("leases.jsonl"), &jsonl(records))?;
    }
    if let Some(records) = &inputs.locks {
        write(&dir.join("locks.jsonl"), &jsonl(records))?;
    }
    if let Some(records) = &inputs.elections {
        write(&dir.join("elections.jsonl"), &jsonl(records))?;
    }
    Ok(())
}

/// The history-based checks: the watch log and the lease guarantees.
fn history_checks(
    history: &History,
    watches: Option<WatchLog>,
    leases: Option<Vec<LeaseRecord>>,
) -> Vec<ExtraCheck> {
    let mut extra = Vec::new();
    if let Some(log) = watches {
        let watch_options = WatchOptions {
            initial_revision: 1,
            unrecorded_compactions: false,
            unrecorded_deletes: false,
        };
        let violation = match check_watches_with(history, &log, &watch_options) {
            WatchVerdict::Valid => None,
            WatchVerdict::Invalid(v) => Some(v.to_string()),
        };
        extra.push(ExtraCheck {
            name: "watch",
            violation,
        });
    }
    if let Some(records) = leases {
        let ops = history.operations().unwrap_or_default();
        let violation = check_leases(&ops, &records).map(|v| v.to_string());
        extra.push(ExtraCheck {
            name: "lease",
            violation,
        });
    }
    extra
}

/// Writes the inputs and runs every checker (on a blocking thread).
pub async fn run_checks(inputs: Inputs<'_>) -> Result<Checked, HarnessError> {
    write_inputs(&inputs)?;
    let mut services = Vec::new();
    if let Some(records) = inputs.locks.as_deref() {
        services.push(ExtraCheck {
            name: "lock",
            violation: lock_check(records),
        });
    }
    if let Some(records) = inputs.elections.as_deref() {
        services.push(ExtraCheck {
            name: "election",
            violation: check_elections(records),
        });
    }
    let options = CheckOptions {
        time_limit: inputs.time_limit,
        ..CheckOptions::default()
    };
    let (history, watches, leases) = (inputs.history, inputs.watches, inputs.leases);
    let reset = reset_peak_rss();
    let started = Instant::now();
    let checked = tokio::task::spawn_blocking(move || {
        let verdict = check(&history, &options);
        let mut extra = history_checks(&history, watches, leases);
        extra.extend(services);
        (verdict, extra)
    })
    .await;
    let (verdict, extra) = checked.unwrap_or_else(|e| {
        let reason = format!("the checker panicked: {e}");
        (Verdict::Unknown { reason }, Vec::new())
    });
    Ok(Checked {
        verdict,
        extra,
        check_ms: started.elapsed().as_millis() as u64,
        peak_kib: if reset { peak_rss_kib() } else { None },
    })
}

#[cfg(test)]
mod tests {
    use super::{peak_rss_kib, reset_peak_rss};

    #[test]
    fn the_peak_resident_set_is_read_and_reset() {
        assert!(reset_peak_rss(), "/proc/self/clear_refs takes 5 on Linux");
        let before = peak_rss_kib().expect("VmHWM in /proc/self/status");
        let block = vec![1u8; 64 << 20];
        let after = peak_rss_kib().expect("VmHWM in /proc/self/status");
        assert!(
            after >= before + 60 * 1024,
            "a 64 MiB block raises the peak: {before} -> {after} KiB ({})",
            block.iter().map(|&b| b as usize).sum::<usize>()
        );
    }
}
