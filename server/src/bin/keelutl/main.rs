//! `keelutl`: offline administration of keel members and backups, in the spirit of etcd
//! 3.5's `etcdutl` (same commands, flags and outputs where they apply).
//!
//! - `keelutl snapshot restore FILE ...`: a member directory for a new cluster from a backup
//!   saved with `etcdctl snapshot save` from keel ([`restore`]);
//! - `keelutl snapshot status FILE [-w simple|table|json]` ([`status`]);
//! - `keelutl defrag --data-dir DIR`: rewrites a stopped member's storage compactly
//!   ([`defrag`]).
//!
//! Errors go to stderr as `Error: ...` with exit status 1, as etcdutl's do.

mod defrag;
mod progress;
mod restore;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// An offline administration tool for keel members and backups (etcdutl's commands).
#[derive(Debug, Parser)]
#[command(name = "keelutl", version)]
struct Cli {
    /// Output format for `snapshot status`: simple, table or json.
    #[arg(short = 'w', long = "write-out", global = true, default_value = "simple",
          value_parser = ["simple", "table", "json"])]
    write_out: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manages keel backups (etcd's snapshots).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Rewrites a stopped member's storage compactly: a fresh snapshot of its state, older
    /// snapshot files and the WAL before it removed.
    Defrag {
        /// The member's data directory.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Restores a backup into a member directory for a new cluster.
    Restore(restore::RestoreArgs),
    /// Checks a backup and prints its hash, revision, total keys and size.
    Status {
        /// The backup file.
        file: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let done = match &cli.command {
        Command::Snapshot {
            command: SnapshotCommand::Restore(args),
        } => restore::restore(args),
        Command::Snapshot {
            command: SnapshotCommand::Status { file },
        } => status::status(file).map(|s| print!("{}", status::render(&s, &cli.write_out))),
        Command::Defrag { data_dir } => defrag::defrag(data_dir),
    };
    if let Err(e) = done {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
