//! Generates histories from the model and times the checker on them (a plain binary rather than
//! criterion: each case runs for seconds and the figures that matter are wall time and peak
//! memory, which `/usr/bin/time -v` reports for the whole process).
//!
//! `jepsen-bench [CASE[:FAULT][@SEED]...]`; cases: store-100k, store-10k, store-10k-info10,
//! single-1k-50, single-1k-50-info5, single-10k-10, single-10k-10-stale; faults: stale, lost,
//! dup, phantom, backwards, missing. `JEPSEN_BENCH_DUMP=DIR` writes each history there.
//!
//! Real histories: `fixtures` times every `jepsen/fixtures/*.jsonl` (histories of fault runs,
//! named `…-valid.jsonl` or `…-invalid.jsonl` for the verdict they must get), and any argument
//! ending in `.jsonl` is read and timed the same way. With no arguments the bench runs the
//! four synthetic cases below and then the fixtures.
use std::process::ExitCode;
use std::time::Instant;

use keel_jepsen::check::{check_with_stats, CheckOptions, Verdict};
use keel_jepsen::gen::{generate, Fault, GenConfig, Workload};
use keel_jepsen::history::{History, Outcome};

fn fault(name: &str) -> Option<Fault> {
    Some(match name {
        "stale" => Fault::StaleRead,
        "lost" => Fault::LostWrite,
        "dup" => Fault::DuplicateRevision,
        "phantom" => Fault::PhantomValue,
        "backwards" => Fault::RevisionBackwards,
        "missing" => Fault::MissingKey,
        _ => return None,
    })
}

fn case(spec: &str) -> Option<GenConfig> {
    let (spec, seed) = match spec.split_once('@') {
        Some((s, seed)) => (s, seed.parse().ok()?),
        None => (spec, 42),
    };
    let (name, injected) = match spec.split_once(':') {
        Some((n, f)) => (n, Some(fault(f)?)),
        None => (spec, None),
    };
    let mut cfg = base_case(name, seed)?;
    if injected.is_some() {
        cfg.fault = injected;
    }
    Some(cfg)
}

fn base_case(name: &str, seed: u64) -> Option<GenConfig> {
    let base = GenConfig {
        seed,
        fail_per_mille: 5,
        ..GenConfig::default()
    };
    Some(match name {
        "store-100k" => GenConfig {
            ops: 100_000,
            clients: 50,
            keys: 100,
            info_per_mille: 10,
            latency_max: 200,
            workload: Workload::Store,
            ..base
        },
        "store-10k" => GenConfig {
            ops: 10_000,
            clients: 50,
            keys: 20,
            info_per_mille: 10,
            latency_max: 200,
            workload: Workload::Store,
            ..base
        },
        "store-10k-info10" => GenConfig {
            ops: 10_000,
            clients: 20,
            keys: 20,
            info_per_mille: 100,
            latency_max: 200,
            workload: Workload::Store,
            ..base
        },
        "single-1k-50" => GenConfig {
            ops: 1_000,
            clients: 50,
            info_per_mille: 0,
            latency_max: 200,
            workload: Workload::SingleKey,
            ..base
        },
        "single-1k-50-info5" => GenConfig {
            ops: 1_000,
            clients: 50,
            info_per_mille: 50,
            latency_max: 200,
            workload: Workload::SingleKey,
            ..base
        },
        "single-10k-10" | "single-10k-10-stale" => GenConfig {
            ops: 10_000,
            clients: 10,
            info_per_mille: 0,
            latency_max: 200,
            workload: Workload::SingleKey,
            fault: name.ends_with("stale").then_some(Fault::StaleRead),
            ..base
        },
        _ => return None,
    })
}

/// The fixture histories shipped with the crate, by name.
fn fixtures() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Reads and checks a recorded history; the verdict it must get is in its name.
fn run_file(path: &str) -> Result<bool, String> {
    let t = Instant::now();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let history = History::from_jsonl(&text).map_err(|e| format!("{path}: {e}"))?;
    let ops = history.operations().map_err(|e| format!("{path}: {e}"))?;
    let read_time = t.elapsed();
    let t = Instant::now();
    let (verdict, stats) = check_with_stats(&ops, &CheckOptions::default());
    let check_time = t.elapsed();
    let want_valid = !path.ends_with("-invalid.jsonl");
    let right = verdict.is_valid() == want_valid && !matches!(verdict, Verdict::Unknown { .. });
    let name = std::path::Path::new(path)
        .file_name()
        .map_or(path.to_string(), |n| n.to_string_lossy().into_owned());
    println!(
        "{name}: {} ops, {} in doubt, read in {read_time:.2?}, checked in {check_time:.2?}: \
         {}{}\n    {stats:?}",
        ops.len(),
        ops.iter()
            .filter(|o| matches!(o.outcome, Outcome::Info(_)))
            .count(),
        short(&verdict),
        if right { "" } else { "  <-- WRONG" }
    );
    Ok(right)
}

fn short(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Valid => "valid".to_string(),
        Verdict::Invalid(v) => format!("invalid ({:?})", v.kind),
        Verdict::Unknown { reason } => format!("unknown ({reason})"),
    }
}

fn main() -> ExitCode {
    let mut names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        names = [
            "store-100k",
            "single-1k-50",
            "single-10k-10",
            "single-10k-10-stale",
            "fixtures",
        ]
        .map(String::from)
        .to_vec();
    }
    let names: Vec<String> = names
        .into_iter()
        .flat_map(|n| if n == "fixtures" { fixtures() } else { vec![n] })
        .collect();
    let mut ok = true;
    for name in names {
        if name.ends_with(".jsonl") {
            match run_file(&name) {
                Ok(right) => ok &= right,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
            continue;
        }
        let Some(cfg) = case(&name) else {
            eprintln!("unknown case {name}");
            return ExitCode::from(2);
        };
        let t = Instant::now();
        let g = generate(&cfg);
        let gen_time = t.elapsed();
        if let Ok(dir) = std::env::var("JEPSEN_BENCH_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("{name}.jsonl"));
            if let Err(e) = std::fs::write(&path, g.history.to_jsonl()) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
        let t = Instant::now();
        let ops = match g.history.operations() {
            Ok(ops) => ops,
            Err(e) => {
                eprintln!("{name}: generated a malformed history: {e}");
                return ExitCode::from(2);
            }
        };
        let (verdict, stats) = check_with_stats(&ops, &CheckOptions::default());
        let check_time = t.elapsed();
        let want_valid = cfg.fault.is_none();
        let short = short(&verdict);
        let right = verdict.is_valid() == want_valid && !matches!(verdict, Verdict::Unknown { .. });
        ok &= right;
        println!(
            "{name}: {} events, fault {:?}, generated in {gen_time:.2?}, checked in \
             {check_time:.2?}: {short}{}\n    {stats:?}",
            g.history.events.len(),
            g.injected,
            if right { "" } else { "  <-- WRONG" }
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
