//! `keel-jepsen check FILE`: checks a JSON-lines history; prints `valid` or the explanation.
//! Exit codes: 0 valid, 1 invalid, 2 unknown (budget, or a history that cannot be read).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_jepsen::check::{check, CheckOptions, Verdict};
use keel_jepsen::history::History;

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
}

fn read(file: &PathBuf) -> anyhow::Result<History> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(History::from_jsonl(&text)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Check {
        file,
        initial_revision,
        time_limit_secs,
        max_steps,
    } = cli.command;
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
