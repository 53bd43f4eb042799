//! keel-bench: a load generator shaped like etcd's `benchmark` tool.
//!
//! ```text
//! keel-bench --endpoints 127.0.0.1:2379 --conns 10 --clients 100 --total 100000 \
//!     put --key-size 8 --val-size 256 --key-space-size 100000
//! keel-bench --clients 100 range foo --consistency s
//! ```
//!
//! It speaks only the etcd v3 KV API, so it measures real etcd and keel alike. The report
//! mirrors etcd's (summary, histogram, latency percentiles) and ends with one `RESULT` line for
//! scripts.

mod load;
mod report;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

/// etcd-benchmark-shaped load generator for the etcd v3 KV API.
#[derive(Debug, Parser)]
#[command(name = "keel-bench", version)]
pub struct Cli {
    /// Comma-separated endpoints: host:port or http://host:port.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections (HTTP/2 channels).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients, spread round-robin over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Total number of requests.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub total: u64,
    /// Per-request deadline in seconds; a request that misses it counts as an error.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Tokio worker threads for the load generator (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    #[command(subcommand)]
    pub command: Command,
}

/// The benchmark to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write keys with Put.
    Put {
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        /// Keys are drawn from [0, key-space-size).
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        /// Use keys 0, 1, 2, ... (mod key-space-size) instead of random ones.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Read a key or the range [KEY, END) with Range.
    Range {
        /// Key to read (the start of the range).
        key: String,
        /// End of the range, exclusive.
        end: Option<String>,
        /// l: linearizable (default); s: serializable.
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
}

/// Read consistency of a Range request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    validate(&cli)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        builder.worker_threads(cli.threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let run = runtime.block_on(load::run(&cli))?;
    let summary = report::Summary::new(&run.latencies, run.elapsed, run.errors.total());
    print!("{}", summary.render());
    print!("{}", run.errors.render());
    if let Command::Range { .. } = cli.command {
        println!(
            "\nRange responses returned {} key-value pairs in total.",
            run.range_kvs
        );
    }
    println!(
        "{}",
        summary.result_line(op_name(&cli.command), cli.clients, cli.total)
    );
    Ok(())
}

fn validate(cli: &Cli) -> anyhow::Result<()> {
    if cli.endpoints.is_empty() {
        bail!("--endpoints must name at least one endpoint");
    }
    if cli.conns == 0 || cli.clients == 0 {
        bail!("--conns and --clients must be at least 1");
    }
    if cli.timeout_secs == 0 {
        bail!("--timeout-secs must be at least 1");
    }
    if let Command::Put {
        key_size,
        key_space_size,
        ..
    } = cli.command
    {
        if key_size == 0 || key_space_size == 0 {
            bail!("--key-size and --key-space-size must be at least 1");
        }
    }
    Ok(())
}

fn op_name(command: &Command) -> &'static str {
    match command {
        Command::Put { .. } => "put",
        Command::Range {
            consistency: Consistency::L,
            ..
        } => "range-l",
        Command::Range {
            consistency: Consistency::S,
            ..
        } => "range-s",
    }
}

/// The per-request deadline.
pub fn request_timeout(cli: &Cli) -> Duration {
    Duration::from_secs(cli.timeout_secs)
}
