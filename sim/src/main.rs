//! `keel-sim`: runs keel under madsim with a seeded nemesis.
//!
//! ```text
//! keel-sim --seed 7                 # one seed: prints `seed=7 trace=<hex>`
//! keel-sim --seeds 0..100           # a sweep: ends with `seeds=100 passed=.. failed=..`
//! keel-sim --seeds 0..20 --bug ack-before-fsync
//! ```
//! Build with `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=/work/tgt/sim`; see sim/README.md.

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    cli::main(cli::Args::parse())
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "keel-sim runs only in the simulation build: \
         RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=/work/tgt/sim cargo run --release -p keel-sim -- --seed 1"
    );
    std::process::ExitCode::from(2)
}

#[cfg(madsim)]
mod cli {
    use std::ops::Range;
    use std::process::ExitCode;
    use std::time::Instant;

    use keel_engine::bugs::Bug;
    use keel_sim::run::{run_seed, Report, SimConfig};

    /// Deterministic simulation of keel: one seed decides the faults, the workload and the
    /// schedule.
    #[derive(Debug, clap::Parser)]
    #[command(name = "keel-sim")]
    pub struct Args {
        /// Run this one seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run every seed in `A..B` (B excluded).
        #[arg(long, value_parser = parse_range)]
        seeds: Option<Range<u64>>,
        /// Members in the cluster.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Simulated seconds of faults (the safety phase).
        #[arg(long, default_value_t = 3)]
        duration: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Lease clients (grant, keepalive, revoke, leased puts and reads).
        #[arg(long, default_value_t = 2)]
        lease_clients: usize,
        /// Watch clients (0: no watches and no compactor).
        #[arg(long, default_value_t = 2)]
        watch_clients: usize,
        /// Lock clients (etcd's Lock service, fenced writes, the lock-overlap check).
        #[arg(long, default_value_t = 0)]
        lock_clients: usize,
        /// v2 clients (etcd's v2 keys API over HTTP; members run `--enable-v2`).
        #[arg(long, default_value_t = 0)]
        v2_clients: usize,
        /// Make lock client 0 take the lock without waiting: an injected overlap.
        #[arg(long)]
        lock_rogue: bool,
        /// Inject a bug (repeatable): ack-before-fsync, skip-crc, stale-read,
        /// watch-skip-compaction-boundary, lease-expire-on-follower-clock, skip-apply-auth-check
        /// (see `keel_engine::bugs::Bug`).
        #[arg(long = "bug", value_parser = parse_bug)]
        bugs: Vec<Bug>,
        /// Add a learner, let it join and promote it during the faults (membership nemesis).
        #[arg(long)]
        membership: bool,
        /// Keep the disk-full fault out of the seeds' swarms (it is in by default; a seed's
        /// schedule differs with and without it).
        #[arg(long, conflicts_with = "disk_full")]
        no_disk_full: bool,
        /// The default (kept so older replay commands still parse): the nemesis may fill a
        /// member's disk and free it again.
        #[arg(long, hide = true)]
        disk_full: bool,
        /// Every member runs periodic auto-compaction with this retention (e.g. `1s`),
        /// proposed by the leader from the simulated clock.
        #[arg(long = "auto-compaction")]
        auto_compaction: Option<String>,
        /// Auth mode: users and roles on disjoint prefixes, auth clients logged in as them,
        /// and a churn client granting and revoking permissions and roles and deleting users
        /// during the faults (lease, watch and lock clients off).
        #[arg(long)]
        auth: bool,
        /// Print the single seed's trace (every nemesis event and operation).
        #[arg(long)]
        trace: bool,
        /// Write the history (keel-jepsen JSON lines) of the single seed to this file, and its
        /// watch log (keel-jepsen watch-log JSON lines) next to it as `<stem>.watch.jsonl`.
        #[arg(long)]
        history_out: Option<std::path::PathBuf>,
        /// Write every seed's history (keel-jepsen JSON lines) to `DIR/seed-N.jsonl`, for a
        /// sweep whose histories `keel-jepsen check` decides again without re-running the sim.
        #[arg(long, value_name = "DIR")]
        history_dir: Option<std::path::PathBuf>,
    }

    fn parse_range(s: &str) -> Result<Range<u64>, String> {
        let (a, b) = s.split_once("..").ok_or("expected A..B")?;
        let a: u64 = a.parse().map_err(|e| format!("{a}: {e}"))?;
        let b: u64 = b.parse().map_err(|e| format!("{b}: {e}"))?;
        if a >= b {
            return Err(format!("empty range {a}..{b}"));
        }
        Ok(a..b)
    }

    fn parse_bug(s: &str) -> Result<Bug, String> {
        Bug::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            format!("unknown bug {s:?}; known: {}", names.join(", "))
        })
    }

    fn config(args: &Args, seed: u64) -> SimConfig {
        SimConfig {
            nodes: args.nodes,
            duration_s: args.duration,
            clients: args.clients,
            lease_clients: args.lease_clients,
            watch_clients: args.watch_clients,
            bugs: args.bugs.clone(),
            membership: args.membership,
            disk_full: !args.no_disk_full,
            lock_clients: args.lock_clients,
            lock_rogue: args.lock_rogue,
            auto_compaction: args.auto_compaction.clone(),
            auth: args.auth,
            v2_clients: args.v2_clients,
            ..SimConfig::new(seed)
        }
    }

    /// Failures printed per seed (the first is usually the clearest).
    const FAILURES_SHOWN_MAX: usize = 3;

    fn print_report(r: &Report) {
        let verdict = if r.passed() { "ok" } else { "FAILED" };
        println!(
            "seed={} trace={:016x} {verdict} ops={} sim={:.1}s {}",
            r.config.seed,
            r.trace_hash,
            r.ops,
            r.sim_time.as_secs_f64(),
            r.swarm
        );
        if !r.passed() {
            println!("  replay: {}", r.config.replay_command());
            for f in r.failures.iter().take(FAILURES_SHOWN_MAX) {
                print!("  {f}");
            }
            if r.failures.len() > FAILURES_SHOWN_MAX {
                println!(
                    "  ... and {} more failures",
                    r.failures.len() - FAILURES_SHOWN_MAX
                );
            }
        }
    }

    pub fn main(args: Args) -> ExitCode {
        // A panic inside a simulated node becomes a failure of its seed (with the message);
        // one line on stderr is enough.
        std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
        if args.nodes == 0 || args.clients == 0 {
            eprintln!("--nodes and --clients must be positive");
            return ExitCode::from(2);
        }
        let seeds = match (args.seed, args.seeds.clone()) {
            (Some(s), _) => s..s.saturating_add(1),
            (None, Some(r)) => r,
            (None, None) => 0..1,
        };
        let single = args.seed.is_some();
        let started = Instant::now();
        let (mut passed, mut failed, mut sim_secs) = (0u64, 0u64, 0f64);
        for seed in seeds {
            let report = run_seed(&config(&args, seed));
            if single {
                println!("seed={seed} trace={:016x}", report.trace_hash);
                if args.trace {
                    for e in &report.trace_events {
                        println!("  {e}");
                    }
                }
                if let Some(path) = &args.history_out {
                    if let Err(e) = std::fs::write(path, &report.history_jsonl) {
                        eprintln!("writing {}: {e}", path.display());
                    }
                    // The watch log goes next to the history: h.jsonl -> h.watch.jsonl.
                    let watch_path = path.with_extension("watch.jsonl");
                    if let Err(e) = std::fs::write(&watch_path, report.watch_log.to_jsonl()) {
                        eprintln!("writing {}: {e}", watch_path.display());
                    }
                }
            }
            if let Some(dir) = &args.history_dir {
                let path = dir.join(format!("seed-{seed}.jsonl"));
                if let Err(e) = std::fs::write(&path, &report.history_jsonl) {
                    eprintln!("writing {}: {e}", path.display());
                }
            }
            print_report(&report);
            sim_secs += report.sim_time.as_secs_f64();
            if report.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let n = passed + failed;
        println!(
            "speed: {sim_secs:.1} simulated s in {wall:.1} wall s = {:.1} sim-s/wall-s, {:.1} seeds/min",
            sim_secs / wall.max(1e-9),
            n as f64 * 60.0 / wall.max(1e-9)
        );
        println!("seeds={n} passed={passed} failed={failed}");
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
