//! `keel-jepsen check FILE`: checks a JSON-lines history; prints `valid` or the explanation.
//! Exit codes: 0 valid, 1 invalid, 2 unknown (budget, or a history that cannot be read).
//!
//! `keel-jepsen check-watch HISTORY WATCHES`: checks a watch log against its history; exit
//! codes 0 valid, 1 invalid, 2 when a file cannot be read.
//!
//! `keel-jepsen test --server keel|etcd --bin PATH --nodes 3|5 --workload W --nemesis N[,N...]
//! --time-limit SECONDS --seed N [--results DIR]`: runs a real cluster in network namespaces
//! under faults and checks it (root only). Exit codes: 0 valid; 1 invalid, unknown or
//! unavailable; 2 when the test could not run; 130 when interrupted.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_jepsen::check::{check, CheckOptions, Verdict};
use keel_jepsen::history::History;
use keel_jepsen::watch::{check_watches_with, WatchLog, WatchOptions, WatchVerdict};

#[derive(Parser)]
#[command(
    name = "keel-jepsen",
    about = "Linearizability checker for keel/etcd KV histories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a history (JSON lines; `-` for standard input).
    Check {
        /// The history file.
        file: PathBuf,
        /// The store's revision before the history.
        #[arg(long, default_value_t = 1)]
        initial_revision: i64,
        /// Give up (unknown) after this many seconds.
        #[arg(long, default_value_t = 60)]
        time_limit_secs: u64,
        /// Give up (unknown) after this many replay steps.
        #[arg(long, default_value_t = 20_000_000)]
        max_steps: u64,
    },
    /// Check a watch log (JSON lines) against the history of the same run.
    CheckWatch {
        /// The history file (`-` for standard input).
        history: PathBuf,
        /// The watch log.
        watches: PathBuf,
        /// The store's revision before the history (empty then).
        #[arg(long, default_value_t = 1)]
        initial_revision: i64,
        /// The server may compact on its own, so a compaction outside the history may explain
        /// a null `prev_kv`.
        #[arg(long)]
        unrecorded_compactions: bool,
        /// The server may delete keys on its own (leases outside the history), so a delete
        /// no op explains may still be real.
        #[arg(long)]
        unrecorded_deletes: bool,
    },
    /// Run a real cluster under faults and check it (root only).
    #[cfg(not(madsim))]
    Test(test_cmd::TestArgs),
}

#[cfg(not(madsim))]
#[path = "keel-jepsen/test_cmd.rs"]
mod test_cmd;

fn read_text(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn read(file: &PathBuf) -> anyhow::Result<History> {
    Ok(History::from_jsonl(&read_text(file)?)?)
}

fn read_watches(file: &PathBuf) -> anyhow::Result<WatchLog> {
    let text = read_text(file)?;
    WatchLog::from_jsonl(&text).with_context(|| format!("parsing {}", file.display()))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check {
            file,
            initial_revision,
            time_limit_secs,
            max_steps,
        } => check_history(file, initial_revision, time_limit_secs, max_steps),
        Command::CheckWatch {
            history,
            watches,
            initial_revision,
            unrecorded_compactions,
            unrecorded_deletes,
        } => {
            let options = WatchOptions {
                initial_revision,
                unrecorded_compactions,
                unrecorded_deletes,
            };
            check_watch(&history, &watches, &options)
        }
        #[cfg(not(madsim))]
        Command::Test(args) => test_cmd::run(args),
    }
}

fn check_watch(history: &PathBuf, watches: &PathBuf, options: &WatchOptions) -> ExitCode {
    let inputs = read(history).and_then(|h| Ok((h, read_watches(watches)?)));
    let (history, log) = match inputs {
        Ok(x) => x,
        Err(e) => {
            eprintln!("unknown: cannot read the inputs: {e:#}");
            return ExitCode::from(2);
        }
    };
    match check_watches_with(&history, &log, options) {
        WatchVerdict::Valid => {
            println!("valid");
            ExitCode::SUCCESS
        }
        WatchVerdict::Invalid(v) => {
            print!("invalid: {v}");
            ExitCode::from(1)
        }
    }
}

fn check_history(
    file: PathBuf,
    initial_revision: i64,
    time_limit_secs: u64,
    max_steps: u64,
) -> ExitCode {
    let history = match read(&file) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("unknown: cannot read the history: {e}");
            return ExitCode::from(2);
        }
    };
    let options = CheckOptions {
        initial_revision,
        max_steps,
        time_limit: Duration::from_secs(time_limit_secs),
        ..CheckOptions::default()
    };
    let verdict = check(&history, &options);
    match &verdict {
        Verdict::Valid => {
            println!("valid");
            ExitCode::SUCCESS
        }
        Verdict::Invalid(v) => {
            print!("invalid: {v}");
            ExitCode::from(1)
        }
        Verdict::Unknown { reason } => {
            println!("unknown: {reason}");
            ExitCode::from(2)
        }
    }
}
