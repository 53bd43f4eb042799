//! The phases of one test: hosts and members up, the fault phase (clients and nemesis), the
//! heal phase (every fault ended; the cluster must serve within a bound), the final reads,
//! the checker, and the results directory:
//!
//! - `history.jsonl`: the history (keel-jepsen's JSON-lines format);
//! - `timeline.jsonl`: every fault's start and end;
//! - `member-N.log`: each member's output;
//! - `results.json`: the verdict and the run's figures.
//!
//! Teardown (members killed, namespaces and links removed, data deleted) happens on every way
//! out: a verdict, an error, Ctrl-C or SIGTERM.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::RangeRequest;

use super::checks::{run_checks, ExtraCheck, Inputs};
use super::clients::{spawn_clients, Logs};
use super::member::{channel, Members};
use super::nemesis::{heal_all, Nemesis, Window};
use super::net::{cleanup_leftovers, Hosts};
use super::partition::CutOff;
use super::recorder::Recorder;
use super::register;
use super::{HarnessError, TestOptions};
use crate::history::{History, Outcome};

/// Where members keep their data (removed before and after every run).
pub const DATA_DIR: &str = "/tmp/keel-jepsen-data";
/// How long a fresh cluster may take to serve.
const STARTUP_BOUND_SECS: u64 = 30;
/// Process ids of the final reads (above any client's).
const FINAL_PROCESS: u64 = 1_000_000;

/// What a test concluded.
#[derive(Debug)]
pub struct Report {
    /// `valid`, `invalid`, `unknown` or `unavailable` (no service after the heal).
    pub verdict: String,
    /// The checker's explanation, if not valid.
    pub explanation: String,
    /// The results directory.
    pub results: PathBuf,
}

impl Report {
    /// Only a valid verdict passes.
    pub fn is_valid(&self) -> bool {
        self.verdict == "valid"
    }
}

fn io(what: &Path, e: std::io::Error) -> HarnessError {
    HarnessError::Io {
        what: what.display().to_string(),
        why: e.to_string(),
    }
}

/// Runs one test and tears everything down, however it ends.
pub fn test(opts: &TestOptions) -> Result<Report, HarnessError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| io(Path::new("tokio runtime"), e))?;
    let result = rt.block_on(async {
        tokio::select! {
            r = phases(opts) => r,
            () = interrupted() => Err(HarnessError::Interrupted),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    cleanup_leftovers();
    let _ = std::fs::remove_dir_all(DATA_DIR);
    result
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Waits until every member answers a linearizable read (not recorded) within `bound`;
/// returns how long that took.
async fn wait_serving(n: usize, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut serving = vec![false; n];
    while start.elapsed() < bound {
        for (i, ok) in serving.iter_mut().enumerate() {
            if !*ok {
                *ok = probe(i).await;
            }
        }
        if serving.iter().all(|s| *s) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn probe(i: usize) -> bool {
    let timeout = Duration::from_secs(1);
    let Ok(ch) = channel(i, timeout) else {
        return false;
    };
    let req = RangeRequest {
        key: b"r".to_vec().into(),
        ..Default::default()
    };
    let call = async { KvClient::new(ch).range(req).await };
    matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(_)))
}

fn prepare_dirs(results: &Path) -> Result<std::fs::File, HarnessError> {
    std::fs::create_dir_all(results).map_err(|e| io(results, e))?;
    for stale in ["history.jsonl", "timeline.jsonl", "results.json"] {
        let _ = std::fs::remove_file(results.join(stale));
    }
    for entry in std::fs::read_dir(results)
        .map_err(|e| io(results, e))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("member-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir_all(DATA_DIR);
    std::fs::create_dir_all(DATA_DIR).map_err(|e| io(Path::new(DATA_DIR), e))?;
    let timeline = results.join("timeline.jsonl");
    std::fs::File::create(&timeline).map_err(|e| io(&timeline, e))
}

/// What the fault phase left: the history recorder, the workload's logs and the fault windows.
struct FaultPhase {
    rec: Recorder,
    logs: Logs,
    windows: Vec<Window>,
    left_out: Option<String>,
}

async fn fault_phase(
    opts: &TestOptions,
    members: &Arc<Mutex<Members>>,
    hosts: &Arc<Hosts>,
    timeline: std::fs::File,
) -> Result<FaultPhase, HarnessError> {
    let rec = Recorder::new();
    let until = Instant::now() + Duration::from_secs(opts.time_limit_secs);
    let cut_off = CutOff::new(opts.nodes);
    let (tasks, logs) = spawn_clients(opts, &rec, until, &cut_off).await;
    let kinds = opts.nemesis.clone();
    let mut nemesis = Nemesis::new(
        kinds,
        opts.seed,
        members.clone(),
        hosts.clone(),
        rec.clone(),
        timeline,
        cut_off,
    );
    if let Some(log) = &logs.locks {
        nemesis.target_lock_holders(log.clone());
    }
    let ran = nemesis.run(until).await;
    for t in tasks {
        let _ = t.await;
    }
    ran?;
    Ok(FaultPhase {
        rec,
        logs,
        windows: nemesis.windows,
        left_out: nemesis.left_out,
    })
}

async fn phases(opts: &TestOptions) -> Result<Report, HarnessError> {
    let timeline = prepare_dirs(&opts.results)?;
    let hosts = Arc::new(Hosts::create(opts.nodes)?);
    let mut m = Members::new(
        &opts.bin,
        opts.nodes,
        &opts.results,
        Path::new(DATA_DIR),
        opts.seed,
    );
    if opts.nemesis.contains(&super::nemesis::Kind::Clock) {
        m.use_faketime()?;
    }
    m.start_all()?;
    let members = Arc::new(Mutex::new(m));
    let startup = Duration::from_secs(STARTUP_BOUND_SECS);
    if wait_serving(opts.nodes, startup).await.is_none() {
        return Err(HarnessError::NoCluster(STARTUP_BOUND_SECS));
    }
    eprintln!(
        "cluster of {} up; fault phase of {} s",
        opts.nodes, opts.time_limit_secs
    );
    let phase = fault_phase(opts, &members, &hosts, timeline).await?;
    heal_all(&members, &hosts)?;
    let bound = Duration::from_secs(opts.heal_bound_secs);
    let healed = wait_serving(opts.nodes, bound).await;
    eprintln!("heal: {healed:?}; final reads");
    // The lock and election workloads keep no history: the services' writes and lease expiries
    // make revisions no client reports, so a read of the store could not be explained.
    let no_history = [super::Workload::Lock, super::Workload::Election];
    let final_ok = if no_history.contains(&opts.workload) {
        0
    } else {
        register::final_reads(&phase.rec, opts.nodes, FINAL_PROCESS).await
    };
    if let Some(log) = &phase.logs.locks {
        super::lock_fences::record_applied_fences(log, opts.nodes).await;
    }
    members.lock().unwrap_or_else(|e| e.into_inner()).stop_all();
    let lock_records = phase.logs.locks.as_ref().map(|l| l.records());
    let inputs = Inputs {
        results: &opts.results,
        time_limit: Duration::from_secs(opts.check_time_limit_secs),
        history: phase.rec.history(),
        watches: phase.logs.watches.as_ref().map(|w| w.log()),
        leases: phase.logs.leases.as_ref().map(|l| l.records()),
        locks: lock_records.clone(),
        elections: phase.logs.elections.as_ref().map(|l| l.records()),
    };
    let checked = run_checks(inputs).await?;
    let summary = Summary {
        history: &phase.rec.history(),
        windows: &phase.windows,
        healed,
        final_ok,
        check_ms: checked.check_ms,
        check_peak_kib: checked.peak_kib,
        extra: &checked.extra,
        locks: lock_records.as_deref(),
        left_out: phase.left_out.as_deref(),
    };
    super::report::write_results(opts, &summary, &checked.verdict)
}

/// The figures of a finished run, for `results.json`.
pub struct Summary<'a> {
    /// The recorded history.
    pub history: &'a History,
    /// The faults.
    pub windows: &'a [Window],
    /// How long after the heal every member served again (`None`: not within the bound).
    pub healed: Option<Duration>,
    /// How many final reads succeeded.
    pub final_ok: usize,
    /// The checkers' wall time.
    pub check_ms: u64,
    /// The process's peak resident memory while the checkers ran, in KiB.
    pub check_peak_kib: Option<u64>,
    /// The workload's own checks (watch, lease).
    pub extra: &'a [ExtraCheck],
    /// Why a removed member could not be added back, if so (the run is then unavailable).
    pub left_out: Option<&'a str>,
    /// The lock workload's records (plotted instead of the empty history).
    pub locks: Option<&'a [super::lock::LockRecord]>,
}

impl Summary<'_> {
    /// Counts of (ok, fail, info) operations.
    pub fn outcomes(&self) -> (usize, usize, usize) {
        let ops = self.history.operations().unwrap_or_default();
        let mut c = (0, 0, 0);
        for op in &ops {
            match op.outcome {
                Outcome::Ok(_) => c.0 += 1,
                Outcome::Fail(_) => c.1 += 1,
                Outcome::Info(_) => c.2 += 1,
            }
        }
        c
    }
}
