//! The checkers of one run: linearizability of the history, and the workload's own checks
//! (the watch log against the history; the lease guarantees). Writes `history.jsonl`,
//! `watches.jsonl` and `leases.jsonl` into the results directory.
use std::path::Path;
use std::time::{Duration, Instant};

use super::lease::LeaseRecord;
use super::lease_check::check_leases;
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
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|e| HarnessError::Io {
        what: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Writes the inputs and runs every checker (on a blocking thread).
pub async fn run_checks(inputs: Inputs<'_>) -> Result<Checked, HarnessError> {
    write(
        &inputs.results.join("history.jsonl"),
        &inputs.history.to_jsonl(),
    )?;
    if let Some(log) = &inputs.watches {
        write(&inputs.results.join("watches.jsonl"), &log.to_jsonl())?;
    }
    if let Some(records) = &inputs.leases {
        let lines: Vec<String> = records
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .collect();
        write(
            &inputs.results.join("leases.jsonl"),
            &(lines.join("\n") + "\n"),
        )?;
    }
    let options = CheckOptions {
        time_limit: inputs.time_limit,
        ..CheckOptions::default()
    };
    let (history, watches, leases) = (inputs.history, inputs.watches, inputs.leases);
    let started = Instant::now();
    let checked = tokio::task::spawn_blocking(move || {
        let verdict = check(&history, &options);
        let mut extra = Vec::new();
        if let Some(log) = watches {
            let watch_options = WatchOptions {
                initial_revision: 1,
                unrecorded_compactions: false,
                unrecorded_deletes: false,
            };
            let violation = match check_watches_with(&history, &log, &watch_options) {
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
    })
}
