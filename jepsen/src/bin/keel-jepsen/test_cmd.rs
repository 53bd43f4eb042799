//! `keel-jepsen test`: the command line of the real-cluster harness.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use keel_jepsen::harness::nemesis::Kind;
use keel_jepsen::harness::run::test;
use keel_jepsen::harness::{HarnessError, Server, TestOptions, Workload};

/// The server the members run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ServerArg {
    /// keel (target/release/keel).
    Keel,
    /// etcd.
    Etcd,
}

/// `keel-jepsen test` options.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// The server the members run (both take etcd's flags).
    #[arg(long, value_enum)]
    server: ServerArg,
    /// The server's binary.
    #[arg(long)]
    bin: PathBuf,
    /// Number of members: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The workload: register.
    #[arg(long, default_value = "register")]
    workload: String,
    /// Faults, comma separated: kill, pause, partition, netem, all, none.
    #[arg(long, default_value = "none")]
    nemesis: String,
    /// Length of the fault phase, seconds.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Seed of the fault schedule and the clients.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Results directory (default: jepsen-results/SERVER-WORKLOAD-sSEED).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Clients per member.
    #[arg(long, default_value_t = 2)]
    clients_per_member: usize,
    /// Proof of the partition: send every read serializable and record those sent to a member
    /// the partition has cut off as linearizable, so that its stale answers make the verdict
    /// invalid (and with no partition the same run is valid).
    #[arg(long)]
    stale_probe: bool,
    /// After the heal, every member must serve within this many seconds.
    #[arg(long, default_value_t = 30)]
    heal_bound: u64,
    /// The checker gives up (unknown) after this many seconds.
    #[arg(long, default_value_t = 60)]
    check_time_limit: u64,
}

fn options(args: TestArgs) -> Result<TestOptions, HarnessError> {
    if args.nodes != 3 && args.nodes != 5 {
        return Err(HarnessError::Usage("--nodes must be 3 or 5".to_string()));
    }
    let server = match args.server {
        ServerArg::Keel => Server::Keel,
        ServerArg::Etcd => Server::Etcd,
    };
    let results = args.results.unwrap_or_else(|| {
        let name = format!("{:?}-{}-s{}", args.server, args.workload, args.seed);
        PathBuf::from("jepsen-results").join(name.to_lowercase())
    });
    Ok(TestOptions {
        server,
        bin: args.bin,
        nodes: args.nodes,
        workload: Workload::parse(&args.workload)?,
        nemesis: Kind::parse_list(&args.nemesis)?,
        time_limit_secs: args.time_limit,
        seed: args.seed,
        results,
        clients_per_member: args.clients_per_member.max(1),
        stale_probe: args.stale_probe,
        heal_bound_secs: args.heal_bound,
        check_time_limit_secs: args.check_time_limit,
    })
}

/// Runs the test; the exit code says the verdict.
pub fn run(args: TestArgs) -> ExitCode {
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("keel-jepsen test: {e}");
            return ExitCode::from(2);
        }
    };
    match test(&opts) {
        Ok(report) if report.is_valid() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(HarnessError::Interrupted) => {
            eprintln!("keel-jepsen test: interrupted; torn down");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("keel-jepsen test: {e}");
            ExitCode::from(2)
        }
    }
}
