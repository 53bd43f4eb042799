//! One seed, end to end: build the cluster, run the workload under the seed's nemesis (safety
//! phase), heal every fault and require the cluster to serve again (liveness phase), then check
//! the history. Each seed runs in a fresh madsim runtime, so a seed replays exactly.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_engine::bugs::{Bug, Bugs};
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::HashKvRequest;
use madsim::runtime::Runtime;

use crate::alarm::{disarm_alarms, is_no_space_text};
use crate::auth;
use crate::auth_check::{check_auth, AuthLog};
use crate::auth_client::spawn_auth_clients;
use crate::check::{acked_writes_survive, events_between, Failure, FailureKind};
use crate::cluster::Cluster;
use crate::history::{to_jepsen, Entry, Op, Outcome};
use crate::lease::{record_lease_deletions, spawn_lease_clients};
use crate::lease_check::check_leases;
use crate::linearizable::{check_history, check_watch_log};
use crate::lock::spawn_lock_clients;
use crate::lock_check::check_locks;
use crate::membership::add_and_promote_spare;
use crate::nemesis::{Nemesis, Swarm};
use crate::trace::Trace;
use crate::v2::{final_v2_reads, spawn_v2_clients};
use crate::v2_check::check_v2;
use crate::v2_history::{V2Entry, V2Log};
use crate::watch::{lease_deletions, spawn_watch_clients};
use crate::workload::{probe_serves, recorded_op, spawn_clients, Ctx, OP_TIMEOUT};
use keel_jepsen::watch::WatchLog;

/// Simulated seconds a run may take beyond its safety and liveness phases (boot, draining
/// clients, the final read) before madsim's time limit fails it.
pub const RUN_SLACK_S: u64 = 60;

/// Client ids from here on are the harness's own (liveness probes, the final read).
pub const HARNESS_CLIENT_BASE: usize = 1000;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed: decides the fault mix, fault timing, workload and madsim's scheduling.
    pub seed: u64,
    /// Members in the cluster.
    pub nodes: usize,
    /// Simulated seconds of the safety phase (faults on).
    pub duration_s: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Bugs to inject (simulation builds only).
    pub bugs: Vec<Bug>,
    /// Simulated seconds the healed cluster has to serve again.
    pub liveness_bound_s: u64,
    /// Lease clients (see `src/lease.rs`).
    pub lease_clients: usize,
    /// Watch clients (see `src/watch.rs`); the compactor runs whenever there is one.
    pub watch_clients: usize,
    /// Run the membership nemesis (see `src/membership.rs`): a spare member is added as a
    /// learner, joins and is promoted during the faults.
    pub membership: bool,
    /// Let the seed's swarm draw the disk-full fault (see `Swarm::with_disk_full`). On by
    /// default: the server answers a full disk with etcd's NOSPACE alarm.
    pub disk_full: bool,
    /// Lock clients (see `src/lock.rs`); none by default.
    pub lock_clients: usize,
    /// Make lock client 0 a rogue that takes the lock without waiting (the injected overlap
    /// the lock checker must catch).
    pub lock_rogue: bool,
    /// Every member runs periodic auto-compaction with this retention (`--auto-compaction-
    /// retention`, e.g. `1s`), proposed by the leader from the simulated clock.
    pub auto_compaction: Option<String>,
    /// Auth mode (`src/auth.rs`): root, users and roles, auth enable; `clients` auth clients
    /// log in as users while a churn client changes their permissions during the faults;
    /// lease, watch and lock clients (which have no credentials) do not run.
    pub auth: bool,
    /// v2 clients (see `src/v2.rs`); none by default. With any, members run `--enable-v2`.
    pub v2_clients: usize,
}

impl SimConfig {
    /// The defaults for `seed`: one member (replication comes next), 3 s of faults, 4 clients.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 1,
            duration_s: 3,
            clients: 4,
            bugs: Vec::new(),
            liveness_bound_s: 15,
            lease_clients: 2,
            watch_clients: 2,
            membership: false,
            disk_full: true,
            lock_clients: 0,
            lock_rogue: false,
            auto_compaction: None,
            auth: false,
            v2_clients: 0,
        }
    }

    /// In auth mode, no lease, watch or lock clients: they carry no token, so auth would
    /// refuse all they do.
    fn without_uncredentialed_clients(&self) -> SimConfig {
        match self.auth {
            true => SimConfig {
                lease_clients: 0,
                watch_clients: 0,
                lock_clients: 0,
                lock_rogue: false,
                ..self.clone()
            },
            false => self.clone(),
        }
    }

    /// The server flags every member gets beyond the simulator's own.
    pub fn extra_flags(&self) -> Vec<String> {
        let mut flags = match &self.auto_compaction {
            Some(retention) => vec![
                "--auto-compaction-mode=periodic".to_string(),
                format!("--auto-compaction-retention={retention}"),
            ],
            None => Vec::new(),
        };
        if self.auth {
            // bcrypt's smallest cost: hashing is real CPU time, which a simulation only wastes.
            flags.push("--bcrypt-cost=4".to_string());
        }
        if self.v2_clients > 0 {
            flags.push("--enable-v2".to_string());
        }
        flags
    }

    /// The seed's fault mix.
    pub fn swarm(&self) -> Swarm {
        let swarm = Swarm::from_seed(self.seed, self.nodes);
        if self.disk_full {
            swarm.with_disk_full(self.seed)
        } else {
            swarm
        }
    }

    /// The one-line command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=/work/tgt/sim cargo run --release -p \
             keel-sim -- --seed {} --nodes {} --duration {} --clients {} --lease-clients {} \
             --watch-clients {}",
            self.seed,
            self.nodes,
            self.duration_s,
            self.clients,
            self.lease_clients,
            self.watch_clients
        );
        for b in &self.bugs {
            cmd.push_str(&format!(" --bug {}", b.name()));
        }
        if self.membership {
            cmd.push_str(" --membership");
        }
        if !self.disk_full {
            cmd.push_str(" --no-disk-full");
        }
        if self.lock_clients > 0 {
            cmd.push_str(&format!(" --lock-clients {}", self.lock_clients));
        }
        if self.lock_rogue {
            cmd.push_str(" --lock-rogue");
        }
        if let Some(retention) = &self.auto_compaction {
            cmd.push_str(&format!(" --auto-compaction {retention}"));
        }
        if self.auth {
            cmd.push_str(" --auth");
        }
        if self.v2_clients > 0 {
            cmd.push_str(&format!(" --v2-clients {}", self.v2_clients));
        }
        cmd
    }
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    /// What ran.
    pub config: SimConfig,
    /// Hash of the trace: every nemesis event and every operation, in order.
    pub trace_hash: u64,
    /// The seed's fault mix.
    pub swarm: String,
    /// Operations recorded.
    pub ops: usize,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// Everything that went wrong (empty: passed).
    pub failures: Vec<Failure>,
    /// The history in keel-jepsen's JSON-lines format.
    pub history_jsonl: String,
    /// The watch clients' log (keel-jepsen's watch-log format).
    pub watch_log: WatchLog,
    /// The trace's events, in order.
    pub trace_events: Vec<String>,
    /// The history, in completion order.
    pub entries: Vec<Entry>,
    /// The nemesis events: (simulated ns since start, description).
    pub events: Vec<(u64, String)>,
    /// The v2 clients' history (empty without `v2_clients`).
    pub v2_entries: Vec<V2Entry>,
}

impl Report {
    /// The seed, its fault mix, every failure and the command that replays it: what a sweep
    /// prints for a failed seed.
    pub fn describe(&self) -> String {
        let mut out = format!("seed {} ({}):\n", self.config.seed, self.swarm);
        for f in &self.failures {
            out.push_str(&f.to_string());
        }
        out.push_str(&format!("replay: {}\n", self.config.replay_command()));
        out
    }
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether some failure is of kind `kind`.
    pub fn failed_with(&self, kind: FailureKind) -> bool {
        self.failures.iter().any(|f| f.kind == kind)
    }

    /// The kinds of the failures, each once, in [`FailureKind`] order.
    pub fn failure_kinds(&self) -> Vec<FailureKind> {
        let kinds: std::collections::BTreeSet<FailureKind> =
            self.failures.iter().map(|f| f.kind).collect();
        kinds.into_iter().collect()
    }
}

/// Runs `config` (whose `bugs` name the bug under test) and tells whether it failed with one
/// of `kinds`, the failures that bug should cause; any failure is printed with its kinds, so
/// a sweep shows what else the bug broke.
pub fn catches(config: &SimConfig, kinds: &[FailureKind]) -> bool {
    assert!(
        !kinds.is_empty(),
        "a bug test names the failure kinds it expects"
    );
    let report = run_seed(config);
    if !report.passed() {
        let names: Vec<&str> = config.bugs.iter().map(|b| b.name()).collect();
        eprintln!(
            "{}: seed {} failed with {:?}",
            names.join(","),
            config.seed,
            report.failure_kinds()
        );
    }
    kinds.iter().any(|&kind| report.failed_with(kind))
}

/// Runs one seed in a fresh madsim runtime. Never panics: a panic inside the simulation (an
/// assertion in keel, say) becomes a failure of the run.
pub fn run_seed(config: &SimConfig) -> Report {
    let mut rt = Runtime::with_seed_and_config(config.seed, madsim::Config::default());
    // A run that never ends (a client or the liveness loop stuck) fails instead of spinning.
    rt.set_time_limit(Duration::from_secs(
        config.duration_s + config.liveness_bound_s + RUN_SLACK_S,
    ));
    let cfg = config.clone();
    let recorder: Recorder = Arc::default();
    let slot = Arc::clone(&recorder);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(simulate(cfg, slot))));
    match result {
        Ok(mut report) => {
            // Outside the runtime: the checker's time budget needs the real clock.
            if let Some(f) = check_history(&report.entries, &report.events) {
                report.failures.push(f);
            }
            if let Some(f) = check_watch_log(&report.entries, &report.watch_log, &report.events) {
                report.failures.push(f);
            }
            report
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            panicked_report(config, &recorder, msg)
        }
    }
}

/// The trace and context of a run in progress, kept outside the runtime so that a run that
/// panics can still report what happened up to the panic.
type Recorder = Arc<Mutex<Option<(Trace, Ctx)>>>;

/// The report of a run that panicked: the trace and history up to the panic, and the last
/// nemesis events before it as evidence.
fn panicked_report(config: &SimConfig, recorder: &Recorder, msg: String) -> Report {
    let recorded = recorder.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (trace_hash, trace_events, entries, events, watch_log) = match &recorded {
        Some((trace, ctx)) => (
            trace.hash(),
            trace.events(),
            ctx.history.entries(),
            ctx.events(),
            ctx.watches.log(),
        ),
        None => (0, Vec::new(), Vec::new(), Vec::new(), WatchLog::default()),
    };
    let tail_from = events.len().saturating_sub(8);
    let sim_time = entries
        .iter()
        .map(|e| e.complete_ns)
        .chain(events.iter().map(|(at, _)| *at))
        .max()
        .unwrap_or(0);
    Report {
        config: config.clone(),
        trace_hash,
        swarm: config.swarm().describe(),
        ops: entries.len(),
        sim_time: Duration::from_nanos(sim_time),
        failures: vec![Failure::new(
            FailureKind::Panic,
            format!("the simulation panicked: {msg}"),
            events_between(&events[tail_from..], 0, u64::MAX, 8),
        )],
        history_jsonl: to_jepsen(&entries).to_jsonl(),
        watch_log,
        trace_events,
        entries,
        events,
        v2_entries: Vec::new(),
    }
}

async fn simulate(config: SimConfig, recorder: Recorder) -> Report {
    let trace = Trace::new();
    let ctx = Ctx::new(trace.clone());
    *recorder.lock().unwrap_or_else(|e| e.into_inner()) = Some((trace.clone(), ctx.clone()));
    let swarm = config.swarm();
    trace.record(format!(
        "run seed={} nodes={} duration={}s clients={} bugs={:?} {}",
        config.seed,
        config.nodes,
        config.duration_s,
        config.clients,
        config.bugs,
        swarm.describe()
    ));
    let cluster = if config.membership {
        Cluster::with_spare(
            config.nodes,
            config.seed,
            Bugs::of(&config.bugs),
            config.extra_flags(),
        )
    } else {
        Cluster::with_flags(
            config.nodes,
            config.seed,
            Bugs::of(&config.bugs),
            config.extra_flags(),
        )
    };
    let mut failures = Vec::new();
    for i in 0..config.nodes {
        if !probe_serves(&cluster, i, 10_000).await {
            failures.push(Failure::new(
                FailureKind::Boot,
                format!("n{} never served after the first boot", i + 1),
                Vec::new(),
            ));
        }
    }
    let v2_log = V2Log::default();
    if failures.is_empty() {
        failures = phases(&config, &cluster, &ctx, swarm.clone(), &v2_log).await;
    }
    record_lease_deletions(&ctx);
    let entries = ctx.history.entries();
    let history_jsonl = to_jepsen(&entries).to_jsonl();
    Report {
        config,
        trace_hash: trace.hash(),
        swarm: swarm.describe(),
        ops: entries.len(),
        sim_time: Duration::from_nanos(ctx.now_ns()),
        failures,
        history_jsonl,
        watch_log: ctx.watches.log(),
        trace_events: trace.events(),
        entries,
        events: ctx.events(),
        v2_entries: v2_log.entries(),
    }
}

/// The safety phase, the liveness phase and the checks; returns the failures.
async fn phases(
    config: &SimConfig,
    cluster: &Cluster,
    ctx: &Ctx,
    swarm: Swarm,
    v2_log: &V2Log,
) -> Vec<Failure> {
    let auth_log = AuthLog::default();
    let admin = match config.auth {
        true => match auth::setup(cluster, ctx, &auth_log, config.seed).await {
            Ok(admin) => Some(admin),
            Err(f) => return vec![f],
        },
        false => None,
    };
    let config = &config.without_uncredentialed_clients();
    let until = tokio::time::Instant::now() + Duration::from_secs(config.duration_s);
    let mut clients = match config.auth {
        true => spawn_auth_clients(cluster, ctx, &auth_log, config.clients, config.seed, until),
        false => spawn_clients(cluster, ctx, config.clients, config.seed, until),
    };
    let churn = admin.map(|admin| auth::spawn_churn(cluster, admin, until));
    clients.extend(spawn_lease_clients(
        cluster,
        ctx,
        config.lease_clients,
        config.seed,
        until,
    ));
    if config.watch_clients > 0 {
        clients.extend(spawn_watch_clients(
            cluster,
            ctx,
            config.watch_clients,
            config.seed,
            until,
        ));
    }
    let (lockers, locks) = spawn_lock_clients(
        cluster,
        ctx,
        config.lock_clients,
        config.lock_rogue,
        config.seed,
        until,
    );
    clients.extend(lockers);
    clients.extend(spawn_v2_clients(
        cluster,
        ctx,
        v2_log,
        config.v2_clients,
        config.seed,
        until,
    ));
    let mut nemesis = Nemesis::new(cluster, swarm, config.seed, ctx.clone());
    let spare_voter = if config.membership {
        let changes = add_and_promote_spare(cluster, ctx, config.seed, until);
        tokio::join!(nemesis.run_until(until), changes).1
    } else {
        nemesis.run_until(until).await;
        false
    };
    for c in clients {
        let _ = c.await;
    }
    let admin = match churn {
        Some(churn) => churn.await.ok(),
        None => None,
    };
    nemesis.heal();
    let mut failures: Vec<Failure> = ctx.violations();
    failures.extend(check_locks(&locks.holdings()));
    let healed_ns = ctx.now_ns();
    let bound = Duration::from_secs(config.liveness_bound_s);
    let deadline = tokio::time::Instant::now() + bound;
    if let Some(admin) = admin {
        // The probes and the final read carry no token.
        if let Some(f) = auth::disable(cluster, admin, deadline).await {
            failures.push(f);
            return failures;
        }
    }
    if config.auth {
        let (changes, ops) = auth_log.records();
        // Refusals of writes are checked on any cluster: writes are checked only at apply.
        failures.extend(check_auth(&changes, &ops, true));
        failures.extend(crate::auth_token_check::check_tokens(&changes, &ops));
        failures.extend(crate::auth_token_check::check_logins(
            &changes,
            &auth_log.logins(),
        ));
    }
    for i in 0..config.nodes {
        if let Err(f) = serve_again(cluster, ctx, i, deadline).await {
            failures.push(f);
        }
    }
    if failures.iter().any(|f| f.kind == FailureKind::Liveness) {
        return failures;
    }
    ctx.event(format!(
        "liveness: every member served again {:.3}s after healing",
        (ctx.now_ns() - healed_ns) as f64 / 1e9
    ));
    let final_read = recorded_op(
        cluster,
        ctx,
        HARNESS_CLIENT_BASE + 999,
        0,
        Op::Range {
            serializable: false,
        },
    )
    .await;
    let entries = ctx.history.entries();
    match final_read {
        Some(read) => {
            failures.extend(acked_writes_survive(&entries, &read, &ctx.events()));
            let spare = cluster.spare_endpoint().filter(|_| spare_voter);
            if spare.is_some() {
                // The newest voter may still be applying the last entries.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Some(f) = hash_kv_agree(cluster, spare, &read).await {
                failures.push(f);
            }
        }
        None => failures.push(Failure::new(
            FailureKind::FinalRead,
            "the final read could not connect".to_string(),
            Vec::new(),
        )),
    }
    if config.v2_clients > 0 {
        final_v2_reads(cluster, ctx, v2_log, 3 * config.nodes).await;
        failures.extend(check_v2_with_events(&v2_log.entries(), &ctx.events()));
    }
    let entries = ctx.history.entries();
    failures.extend(check_leases(
        &entries,
        &ctx.leases.records(),
        &lease_deletions(&ctx.watches.log()),
        &ctx.events(),
    ));
    failures
}

/// The v2 checker's verdict, with the nemesis events while its evidence ran.
fn check_v2_with_events(entries: &[V2Entry], events: &[(u64, String)]) -> Option<Failure> {
    let mut f = check_v2(entries)?;
    let shown: Vec<&V2Entry> = entries
        .iter()
        .filter(|e| f.evidence.contains(&e.to_string()))
        .collect();
    let from = shown.iter().map(|e| e.invoke_ns).min();
    let to = shown.iter().map(|e| e.complete_ns).max();
    if let (Some(from), Some(to)) = (from, to) {
        f.evidence.extend(events_between(events, from, to, 8));
    }
    Some(f)
}

/// Requires member `i` to take a linearizable write and read before `deadline`.
async fn serve_again(
    cluster: &Cluster,
    ctx: &Ctx,
    i: usize,
    deadline: tokio::time::Instant,
) -> Result<(), Failure> {
    let client = HARNESS_CLIENT_BASE + i;
    let mut attempt = 0u64;
    let mut last: Option<Entry> = None;
    while tokio::time::Instant::now() < deadline {
        attempt += 1;
        let put = Op::Put {
            key: "k0".to_string(),
            value: format!("live-n{}-{attempt}", i + 1),
        };
        let get = Op::Get {
            key: "k0".to_string(),
            serializable: false,
        };
        if let Some(e) = recorded_op(cluster, ctx, client, i, put).await {
            if let Outcome::Fail(why) | Outcome::Info(why) = &e.outcome {
                if is_no_space_text(why) {
                    // A NOSPACE alarm outlives the full disk: disarm it, as an operator would.
                    disarm_alarms(cluster, ctx, i).await;
                }
            }
            if matches!(e.outcome, Outcome::Ok(_)) {
                if let Some(g) = recorded_op(cluster, ctx, client, i, get).await {
                    if matches!(g.outcome, Outcome::Ok(_)) {
                        return Ok(());
                    }
                    last = Some(g);
                }
            } else {
                last = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut evidence: Vec<String> = last.iter().map(|e| e.to_string()).collect();
    if let Some(why) = cluster.exited(i) {
        evidence.push(format!("n{} stopped: {why}", i + 1));
    }
    let events = ctx.events();
    let tail_from = events.len().saturating_sub(6);
    evidence.extend(events_between(&events[tail_from..], 0, u64::MAX, 6));
    Err(Failure::new(
        FailureKind::Liveness,
        format!(
            "liveness: n{} did not serve a linearizable put and get within the bound after \
             every fault healed",
            i + 1
        ),
        evidence,
    ))
}

/// Every member's HashKV at the final read's revision agrees (the spare's too, when it
/// joined as a voter).
async fn hash_kv_agree(
    cluster: &Cluster,
    spare: Option<String>,
    final_read: &Entry,
) -> Option<Failure> {
    let Outcome::Ok(result) = &final_read.outcome else {
        return None;
    };
    let revision = result.revision();
    let mut hashes = Vec::new();
    let endpoints = (0..cluster.members.len()).map(|i| cluster.endpoint(i));
    for endpoint in endpoints.chain(spare) {
        let task = cluster.client_node.spawn(async move {
            let mut m = tokio::time::timeout(OP_TIMEOUT, MaintenanceClient::connect(endpoint))
                .await
                .ok()?
                .ok()?;
            let r = tokio::time::timeout(OP_TIMEOUT, m.hash_kv(HashKvRequest { revision }))
                .await
                .ok()?
                .ok()?
                .into_inner();
            Some((r.hash, r.compact_revision))
        });
        hashes.push(task.await.ok().flatten());
    }
    let first = hashes.first().cloned().flatten();
    let agree = first.is_some() && hashes.iter().all(|h| *h == first);
    (!agree).then(|| Failure {
        kind: FailureKind::HashKvDisagree,
        what: format!("members' HashKV at revision {revision} disagree (or did not answer)"),
        evidence: hashes
            .iter()
            .enumerate()
            .map(|(i, h)| format!("n{}: {h:?}", i + 1))
            .chain(
                cluster
                    .spare_exited()
                    .map(|why| format!("the spare stopped: {why}")),
            )
            .collect(),
    })
}
