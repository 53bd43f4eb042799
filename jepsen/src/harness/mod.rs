//! The real-cluster harness behind `keel-jepsen test`: real server processes (keel or etcd,
//! started with the same etcd flags) in network namespaces, clients recording a history over
//! gRPC, a nemesis injecting faults on a seeded schedule, then a heal phase, final reads, the
//! checker and a verdict in `RESULTS/results.json`.
//!
//! - [`net`]: namespaces, bridge, veth pairs, nftables partitions, netem; cleanup.
//! - [`member`], [`membership`]: the member processes, their flags, membership changes.
//! - [`client`], [`recorder`]: the gRPC KV client and the history it records.
//! - [`register`], [`watch`], [`lease`], [`lock`], [`election`]: the workloads, spawned by
//!   [`clients`]; [`checks`], [`lease_check`], [`lock_check`]: the checkers of a run.
//! - [`nemesis`], [`partition`]: faults and their timeline.
//! - [`run`]: the phases of one test; [`report`], [`plot`]: `results.json`, `latency.svg`.
use std::path::PathBuf;

pub mod checks;
pub mod client;
pub mod clients;
pub mod election;
pub mod lease;
pub mod lease_check;
pub mod lock;
pub mod lock_check;
pub mod lock_fences;
pub mod member;
pub mod membership;
pub mod nemesis;
pub mod net;
pub mod partition;
pub mod plot;
pub mod recorder;
pub mod register;
pub mod report;
pub mod run;
pub mod watch;

/// What can stop a test before it reaches a verdict.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Namespaces, links and nftables need root.
    #[error("keel-jepsen test must run as root (network namespaces, bridges, nftables)")]
    NotRoot,
    /// A command the harness ran failed.
    #[error("{command}: {why}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error, or why it could not start.
        why: String,
    },
    /// A file could not be written or read.
    #[error("{what}: {why}")]
    Io {
        /// The file.
        what: String,
        /// The error.
        why: String,
    },
    /// The gRPC client could not be built.
    #[error("client: {why}")]
    Client {
        /// The error.
        why: String,
    },
    /// A bad option.
    #[error("{0}")]
    Usage(String),
    /// The cluster did not form in time.
    #[error("the cluster did not serve within {0} s of its start")]
    NoCluster(u64),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// `latency.svg` could not be drawn.
    #[error("latency plot: {0}")]
    Plot(String),
}

/// Which server the members run (both take etcd's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Server {
    /// keel.
    Keel,
    /// etcd.
    Etcd,
}

/// Which workload the clients run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Gets, puts and CAS txns on a few keys.
    Register,
    /// The register's writers, and watchers checked by the watch checker.
    Watch,
    /// Leased keys with keepalives and revokes, checked by the lease checks.
    Lease,
    /// Multi-key transactions of gets and puts.
    Txn,
    /// The Lock service with fenced writes, checked by the lock check.
    Lock,
    /// The Election service, checked for two leaders in one term.
    Election,
}

impl Workload {
    /// Parses a workload name.
    pub fn parse(s: &str) -> Result<Workload, HarnessError> {
        match s {
            "register" => Ok(Workload::Register),
            "watch" => Ok(Workload::Watch),
            "lease" => Ok(Workload::Lease),
            "txn" => Ok(Workload::Txn),
            "lock" => Ok(Workload::Lock),
            "election" => Ok(Workload::Election),
            other => Err(HarnessError::Usage(format!(
                "workload {other:?} is not implemented (register, txn, watch, lease, lock, election)"
            ))),
        }
    }
}

/// Everything one test needs.
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// The server kind (for the report; the flags are the same).
    pub server: Server,
    /// The server's binary.
    pub bin: PathBuf,
    /// Number of members (3 or 5).
    pub nodes: usize,
    /// The workload.
    pub workload: Workload,
    /// The nemeses (`--nemesis`).
    pub nemesis: Vec<nemesis::Kind>,
    /// Length of the fault phase.
    pub time_limit_secs: u64,
    /// Seed of the schedule and the clients.
    pub seed: u64,
    /// Results directory.
    pub results: PathBuf,
    /// Clients per member.
    pub clients_per_member: usize,
    /// Send reads serializable; record those to a member the partition cut off as
    /// linearizable (the partition's proof).
    pub stale_probe: bool,
    /// The cluster must serve again within this many seconds of the heal.
    pub heal_bound_secs: u64,
    /// The checker's time limit.
    pub check_time_limit_secs: u64,
}
