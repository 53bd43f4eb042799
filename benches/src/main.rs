//! keel-bench: a load generator shaped like etcd's `benchmark` tool.
//!
//! ```text
//! keel-bench --endpoints 127.0.0.1:2379 --conns 10 --clients 100 --total 100000 \
//!     put --key-size 8 --val-size 256 --key-space-size 100000
//! keel-bench --clients 100 range foo --consistency s
//! keel-bench --conns 10 watch --watchers 10000 --streams 100 --puts 100 --rate 20
//! keel-bench --conns 10 watch-mem --pid 1234 --watchers 100000 --streams 100
//! keel-bench --conns 10 --clients 100 --total 200000 lease-keepalive --leases 1000 --streams 10
//! keel-bench --clients 16 --total 500 --user bench:benchpw authenticate
//! ```
//!
//! It speaks only the etcd v3 API (KV, Watch, Lease), so it measures real etcd and keel alike.
//! The KV and lease reports mirror etcd's benchmark (summary, histogram, latency percentiles);
//! every report ends with one `RESULT` line for scripts.
//!
//! The binary drives real servers over real sockets. Under `--cfg madsim` (the simulator's
//! build, which compiles the whole workspace) it is an empty program: its custom Watch codec
//! needs real tonic, and a simulated load generator would measure nothing.

#![cfg_attr(madsim, allow(dead_code, unused_imports))]

#[cfg(not(madsim))]
mod catchup;
#[cfg(not(madsim))]
mod coalesce;
mod histogram;
#[cfg(not(madsim))]
mod lease;
mod load;
mod procfs;
mod report;
#[cfg(not(madsim))]
mod tls;
#[cfg(not(madsim))]
mod watch;
#[cfg(not(madsim))]
mod watch_mem;
#[cfg(not(madsim))]
mod watch_wire;

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
    /// CA bundle that signs the server's certificate (https:// endpoints).
    #[arg(long, global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (https:// endpoints, servers with --client-cert-auth).
    #[arg(long, global = true)]
    pub cert: Option<std::path::PathBuf>,
    /// Client certificate's key. (Its own id: `range`'s positional KEY is `key`, and one
    /// id for both made clap panic on every `range`.)
    #[arg(long = "key", id = "key_file", global = true)]
    pub key_file: Option<std::path::PathBuf>,
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
    /// Write each request as h2 hands it over (tonic's default), instead of gathering the
    /// requests of one scheduler turn into one write (see `coalesce.rs`).
    #[arg(long, global = true)]
    pub no_coalesce: bool,
    /// Tokio worker threads for the load generator (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// Log in as `name:password` first and send every request with the token (auth on).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Also write every successful request of a put/range run to this file, one line each:
    /// its start (Unix seconds, microsecond precision) and its latency in ms, in start order.
    /// Shows when in a run the slow requests were sent (to set beside the servers' logs).
    #[arg(long, global = true)]
    pub timeline: Option<std::path::PathBuf>,
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
        /// Read one random key of `put`'s encoding from [0, key-space-size) per request
        /// instead of KEY (which is then ignored, as is END).
        #[arg(long)]
        key_space_size: Option<u64>,
        /// Key size in bytes of the random keys (with --key-space-size).
        #[arg(long, default_value_t = 8)]
        key_size: usize,
    },
    /// Watch fan-out: N watchers on one prefix, a paced writer, delivery latency and loss.
    Watch(WatchArgs),
    /// Server memory per watcher and per Watch stream (reads /proc/PID/status).
    WatchMem(WatchMemArgs),
    /// Lease keepalives over LeaseKeepAlive streams, as fast as answers come back
    /// (`--total` keepalives; `--clients` concurrent grants).
    LeaseKeepalive(LeaseArgs),
    /// Log in with Authenticate as `--user name:password`, `--total` times (each login
    /// checks the password's bcrypt hash on the server, and assigns a token through raft).
    Authenticate,
    /// Wait until the member at `--rejoined` reaches the revision the `--endpoints` had one
    /// poll earlier (Maintenance.Status over one connection each); print the seconds taken.
    CatchUp(CatchUpArgs),
}

/// Arguments of `catch-up`.
#[derive(Debug, Clone, clap::Args)]
pub struct CatchUpArgs {
    /// The rejoined member's client endpoint (host:port or http://host:port).
    #[arg(long)]
    pub rejoined: String,
    /// Milliseconds between polls.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Give up (exit with an error) after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub give_up_secs: u64,
}

/// Arguments of `watch`. Watchers and streams are spread over `--conns` connections.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Watchers in total, all on the prefix.
    #[arg(long, default_value_t = 10_000)]
    pub watchers: u64,
    /// Watch streams (many creates per stream), round-robin over the connections.
    #[arg(long, default_value_t = 100)]
    pub streams: u64,
    /// Values the writer puts into the prefix; every watcher must see each once.
    #[arg(long, default_value_t = 100)]
    pub puts: u64,
    /// Puts per second (0: as fast as --writers in flight allow).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Puts in flight at most (on a connection of the writer's own).
    #[arg(long, default_value_t = 1)]
    pub writers: u64,
    /// Value size in bytes (at least 20: the stamp).
    #[arg(long, default_value_t = 20)]
    pub val_size: usize,
    /// Key prefix watched and written.
    #[arg(long, default_value = "keel-bench/watch/")]
    pub prefix: String,
    /// Give up waiting for events once none has arrived for this long after the last put.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
    /// Server pid: report its CPU time and resident set too.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Arguments of `watch-mem`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchMemArgs {
    /// Server pid, whose VmRSS is read.
    #[arg(long)]
    pub pid: u32,
    /// Watchers in total.
    #[arg(long, default_value_t = 100_000)]
    pub watchers: u64,
    /// Watch streams, round-robin over the connections.
    #[arg(long, default_value_t = 100)]
    pub streams: u64,
    /// Seconds to wait before each reading.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Key prefix watched.
    #[arg(long, default_value = "keel-bench/watch-mem/")]
    pub prefix: String,
}

/// Arguments of `lease-keepalive`.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaseArgs {
    /// Leases granted and kept alive.
    #[arg(long, default_value_t = 1_000)]
    pub leases: u64,
    /// LeaseKeepAlive streams, round-robin over the connections; leases are dealt over them.
    #[arg(long, default_value_t = 10)]
    pub streams: u64,
    /// TTL of each lease in seconds (long enough that none expires during the run).
    #[arg(long, default_value_t = 600)]
    pub ttl_secs: i64,
}

#[cfg(test)]
impl WatchArgs {
    /// Small valid arguments.
    pub fn for_tests() -> Self {
        WatchArgs {
            watchers: 10,
            streams: 2,
            puts: 5,
            rate: 0.0,
            writers: 1,
            val_size: 20,
            prefix: "p/".into(),
            drain_secs: 1,
            pid: None,
        }
    }
}

/// Read consistency of a Range request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[cfg(madsim)]
fn main() {
    eprintln!("keel-bench measures real servers; build it without --cfg madsim");
    std::process::exit(2);
}

#[cfg(not(madsim))]
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
    match &cli.command {
        Command::Put { .. } | Command::Range { .. } | Command::Authenticate => {
            let run = runtime.block_on(load::run(&cli))?;
            if let Some(path) = &cli.timeline {
                load::write_timeline(&run, path)
                    .with_context(|| format!("writing the timeline {}", path.display()))?;
            }
            print_kv_report(&cli, &run);
        }
        Command::Watch(args) => {
            let report = runtime.block_on(watch::run(&cli, args.clone()))?;
            print!("{}", report.render(&cli, args));
        }
        Command::WatchMem(args) => {
            let report = runtime.block_on(watch_mem::run(&cli, args))?;
            print!("{}", report.render(&cli, args));
        }
        Command::CatchUp(args) => {
            let took = runtime.block_on(catchup::run(&cli, args))?;
            println!("{:.2}", took.as_secs_f64());
        }
        Command::LeaseKeepalive(args) => {
            let run = runtime.block_on(lease::run(&cli, args))?;
            println!(
                "\nLease keepalive: {} leases over {} streams on {} connections",
                args.leases, args.streams, cli.conns
            );
            print_kv_report(&cli, &run);
        }
    }
    Ok(())
}

/// Prints etcd benchmark's report for a run of individually timed requests.
fn print_kv_report(cli: &Cli, run: &load::Run) {
    let summary = report::Summary::new(&run.latencies, run.elapsed, run.errors.total());
    print!("{}", summary.render());
    print!("{}", run.errors.render());
    if let Command::Range { .. } = cli.command {
        println!(
            "\nRange responses returned {} key-value pairs in total.",
            run.range_kvs
        );
    }
    let clients = match &cli.command {
        Command::LeaseKeepalive(args) => args.streams as usize,
        _ => cli.clients,
    };
    println!(
        "{}",
        summary.result_line(op_name(&cli.command), clients, cli.total)
    );
}

fn validate(cli: &Cli) -> anyhow::Result<()> {
    if cli.endpoints.is_empty() {
        bail!("--endpoints must name at least one endpoint");
    }
    if cli.conns == 0 || cli.clients == 0 {
        bail!("--conns and --clients must be at least 1");
    }
    if matches!(cli.command, Command::Authenticate) && cli.user.is_none() {
        bail!("authenticate needs --user name:password");
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
    if let Command::Range {
        key_space_size: Some(key_space_size),
        key_size,
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
        Command::Watch(_) => "watch",
        Command::WatchMem(_) => "watch-mem",
        Command::LeaseKeepalive(_) => "lease-keepalive",
        Command::Authenticate => "authenticate",
        Command::CatchUp(_) => "catch-up",
    }
}

/// The per-request deadline.
pub fn request_timeout(cli: &Cli) -> Duration {
    Duration::from_secs(cli.timeout_secs)
}
