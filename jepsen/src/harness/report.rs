//! `results.json`: the verdict and the run's figures (operations by outcome, faults, heal
//! time, checker time), and `latency.svg` ([`super::plot`]), written at the end of every test
//! that reached the checker.
use super::run::{Report, Summary};
use super::{HarnessError, TestOptions};
use crate::check::Verdict;

/// The verdict word: a history that checks valid still fails when the cluster did not serve
/// again within the heal bound, or would not take a removed member back (`unavailable`).
fn verdict_word(summary: &Summary<'_>, verdict: &Verdict) -> &'static str {
    if verdict.is_valid() && summary.extra.iter().any(|c| c.violation.is_some()) {
        return "invalid";
    }
    match verdict {
        Verdict::Valid if summary.healed.is_none() || summary.left_out.is_some() => "unavailable",
        Verdict::Valid => "valid",
        Verdict::Invalid(_) => "invalid",
        Verdict::Unknown { .. } => "unknown",
    }
}

fn write(path: &std::path::Path, text: String) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|e| HarnessError::Io {
        what: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Writes `results.json` and prints a one-paragraph summary; the report says whether it passed.
pub fn write_results(
    opts: &TestOptions,
    summary: &Summary<'_>,
    verdict: &Verdict,
) -> Result<Report, HarnessError> {
    let word = verdict_word(summary, verdict);
    let mut explanation = match verdict {
        Verdict::Valid => String::new(),
        v => v.to_string(),
    };
    if let Some(why) = summary.left_out {
        explanation.push_str(&format!("unavailable: {why}\n"));
    }
    let mut extra = serde_json::Map::new();
    for c in summary.extra {
        if let Some(v) = &c.violation {
            explanation.push_str(&format!("{} checker: invalid: {v}", c.name));
        }
        let word = if c.violation.is_some() {
            "invalid"
        } else {
            "valid"
        };
        extra.insert(c.name.to_string(), word.into());
    }
    let (ok, fail, info) = summary.outcomes();
    let faults: Vec<_> = summary.windows.iter().collect();
    let json = serde_json::json!({
        "verdict": word,
        "valid": word == "valid",
        "explanation": explanation,
        "linearizability": verdict.to_string().lines().next().unwrap_or_default(),
        "workload_checks": extra,
        "server": opts.server,
        "bin": opts.bin.display().to_string(),
        "nodes": opts.nodes,
        "workload": opts.workload,
        "nemesis": opts.nemesis,
        "seed": opts.seed,
        "time_limit_secs": opts.time_limit_secs,
        "stale_probe": opts.stale_probe,
        "operations": { "total": ok + fail + info, "ok": ok, "fail": fail, "info": info },
        "faults": faults.len(),
        "fault_windows": faults,
        "healed_ms": summary.healed.map(|d| d.as_millis() as u64),
        "left_out": summary.left_out,
        "heal_bound_secs": opts.heal_bound_secs,
        "final_reads_ok": summary.final_ok,
        "checker_ms": summary.check_ms,
        "checker_peak_mib": summary.check_peak_kib.map(|k| k / 1024),
    });
    let title = format!(
        "{:?} {:?}, {} members, nemesis {:?}, seed {}: {word}",
        opts.server, opts.workload, opts.nodes, opts.nemesis, opts.seed
    );
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    write(&opts.results.join("results.json"), text + "\n")?;
    // The picture is for people; a failure to draw it does not change the verdict.
    let ops = match summary.locks {
        Some(records) => super::plot::lock_ops(records),
        None => super::plot::history_ops(summary.history),
    };
    match super::plot::latency_svg(&ops, summary.windows, &title) {
        Ok(svg) => write(&opts.results.join("latency.svg"), svg)?,
        Err(e) => eprintln!("{e}"),
    }
    println!(
        "{word}: {} ops ({ok} ok, {fail} fail, {info} info), {} faults, healed in {}, checker {} ms, {} MiB; results in {}",
        ok + fail + info,
        faults.len(),
        summary
            .healed
            .map_or("never".to_string(), |d| format!("{} ms", d.as_millis())),
        summary.check_ms,
        summary
            .check_peak_kib
            .map_or("?".to_string(), |k| (k / 1024).to_string()),
        opts.results.display()
    );
    if !explanation.is_empty() {
        println!("{explanation}");
    }
    Ok(Report {
        verdict: word.to_string(),
        explanation,
        results: opts.results.clone(),
    })
}
