//! The seeded nemesis end to end: a bounded sweep of seeds must pass, each injected bug must be
//! caught within a bounded number of seeds (the same seeds the clean sweep passes), and a seed
//! replays to the same trace hash, crashes and restarts included.
#![cfg(madsim)]

use std::ops::Range;

use keel_engine::bugs::Bug;
use keel_sim::check::FailureKind;
use keel_sim::run::{catches, run_seed, SimConfig};

/// Seeds of the clean sweep.
const SWEEP: Range<u64> = 0..100;
/// Every bug must be caught by some seed in here (a prefix of `SWEEP`).
const BUG_SEEDS: Range<u64> = 0..20;

#[test]
fn bounded_sweep_passes() {
    let failed: Vec<String> = SWEEP
        .map(|seed| run_seed(&SimConfig::new(seed)))
        .filter(|r| !r.passed())
        .map(|r| r.describe())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn bounded_sweep_of_three_and_five_member_clusters_passes() {
    let configs = (0..40u64)
        .map(|seed| SimConfig {
            nodes: 3,
            ..SimConfig::new(seed)
        })
        .chain((0..10u64).map(|seed| SimConfig {
            nodes: 5,
            ..SimConfig::new(seed)
        }));
    let failed: Vec<String> = configs
        .map(|config| run_seed(&config))
        .filter(|r| !r.passed())
        .map(|r| r.describe())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn longer_runs_pass() {
    let failed: Vec<String> = (100..105)
        .map(|seed| {
            run_seed(&SimConfig {
                duration_s: 20,
                clients: 8,
                ..SimConfig::new(seed)
            })
        })
        .filter(|r| !r.passed())
        .map(|r| r.describe())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn the_history_is_valid_keel_jepsen_json_lines() {
    let report = run_seed(&SimConfig::new(3));
    let verdict = keel_jepsen::check::check_jsonl(
        &report.history_jsonl,
        &keel_jepsen::check::CheckOptions::default(),
    )
    .expect("the history parses");
    assert!(verdict.is_valid(), "{verdict}");
    assert_eq!(
        report.history_jsonl.lines().count(),
        2 * report.ops,
        "one invocation and one completion per operation"
    );
}

#[test]
fn the_watch_log_round_trips_and_covers_compaction_boundaries_and_reconnects() {
    use keel_jepsen::watch::{check_watches, WatchLog, WatchRecordKind};
    use keel_sim::history::{Op, Outcome};
    // Seeds whose runs compact and whose nemesis breaks a watch stream.
    for (nodes, seed) in [(1, 3), (3, 11)] {
        let report = run_seed(&SimConfig {
            nodes,
            ..SimConfig::new(seed)
        });
        assert!(report.passed(), "{}", report.describe());
        let log = &report.watch_log;
        let parsed = WatchLog::from_jsonl(&log.to_jsonl()).expect("the watch log parses");
        assert_eq!(&parsed, log);
        let history = keel_jepsen::history::History::from_jsonl(&report.history_jsonl)
            .expect("the history parses");
        assert!(check_watches(&history, log).is_valid());
        let compactions: Vec<i64> = report
            .entries
            .iter()
            .filter_map(|e| match (&e.op, &e.outcome) {
                (Op::Compact { revision }, Outcome::Ok(_)) => Some(*revision),
                _ => None,
            })
            .collect();
        let starts: Vec<i64> = log
            .records
            .iter()
            .filter_map(|r| match &r.kind {
                WatchRecordKind::Open(req) => Some(req.start_revision),
                _ => None,
            })
            .collect();
        assert!(
            compactions.iter().any(|c| starts.contains(c)),
            "{nodes} members: some watch starts at a compaction revision: {compactions:?} {starts:?}"
        );
        let broken = log
            .records
            .iter()
            .filter(|r| matches!(&r.kind, WatchRecordKind::Closed { error: Some(_) }))
            .count();
        assert!(
            broken > 0,
            "{nodes} members: the nemesis broke some watch stream"
        );
        assert!(starts.len() > broken, "every broken watch was reopened");
    }
}

/// Runs `bug` over `BUG_SEEDS` on one-member clusters; returns the seeds that caught it with a
/// failure of one of `kinds` (the checks expected to catch it; an unrelated failure, a
/// liveness one say, does not count).
fn seeds_catching(bug: Bug, kinds: &[FailureKind]) -> Vec<u64> {
    seeds_catching_with(bug, 1, kinds)
}

/// Runs `bug` over `BUG_SEEDS` on `nodes`-member clusters; returns the seeds that caught it
/// with a failure of one of `kinds`.
fn seeds_catching_with(bug: Bug, nodes: usize, kinds: &[FailureKind]) -> Vec<u64> {
    assert!(
        !kinds.is_empty(),
        "a bug test names the failure kinds it expects"
    );
    BUG_SEEDS
        .filter(|&seed| {
            let config = SimConfig {
                nodes,
                bugs: vec![bug],
                ..SimConfig::new(seed)
            };
            catches(&config, kinds)
        })
        .collect()
}

/// What acknowledging before the fsync shows: the nemesis sees a write acknowledged after a
/// fatal disk fault was armed, or a power cut loses an acknowledged write (it is missing from
/// the healed store, or its revision is reused or goes back).
const ACK_BEFORE_FSYNC_KINDS: &[FailureKind] = &[
    FailureKind::AckAfterDiskFault,
    FailureKind::Durability,
    FailureKind::Linearizability,
    FailureKind::RevisionBackwards,
];
/// What accepting a record whose crc fails shows: the member starts on a WAL with a flipped
/// bit and serves. (It also accepts torn tails and then refuses to start, a liveness failure
/// that does not say why, so it does not count.)
const SKIP_CRC_KINDS: &[FailureKind] = &[FailureKind::UndetectedCorruption];
/// What serving reads from an old store shows.
const STALE_READ_KINDS: &[FailureKind] =
    &[FailureKind::Linearizability, FailureKind::RevisionBackwards];

#[test]
fn ack_before_fsync_is_caught() {
    let caught = seeds_catching(Bug::AckBeforeFsync, ACK_BEFORE_FSYNC_KINDS);
    assert!(!caught.is_empty(), "ack-before-fsync went unnoticed");
    eprintln!("ack-before-fsync caught by seeds {caught:?}");
}

#[test]
fn skip_crc_is_caught() {
    let caught = seeds_catching(Bug::SkipCrc, SKIP_CRC_KINDS);
    assert!(!caught.is_empty(), "skip-crc went unnoticed");
    eprintln!("skip-crc caught by seeds {caught:?}");
}

#[test]
fn stale_read_is_caught() {
    let caught = seeds_catching(Bug::StaleRead, STALE_READ_KINDS);
    assert!(!caught.is_empty(), "stale-read went unnoticed");
    eprintln!("stale-read caught by seeds {caught:?}");
}

#[test]
fn watch_skip_compaction_boundary_is_caught_by_the_watch_checker() {
    let caught = seeds_catching_with(Bug::WatchSkipCompactionBoundary, 1, &[FailureKind::Watch]);
    assert!(
        !caught.is_empty(),
        "watch-skip-compaction-boundary went unnoticed"
    );
    eprintln!("watch-skip-compaction-boundary caught by seeds {caught:?}");
}

#[test]
fn lease_expire_on_follower_clock_is_caught_by_the_lease_check() {
    // Followers exist only with several members; the clean three-member sweep covers these
    // seeds.
    let caught = seeds_catching_with(
        Bug::LeaseExpireOnFollowerClock,
        3,
        &[FailureKind::LeaseGoneEarly],
    );
    assert!(
        !caught.is_empty(),
        "lease-expire-on-follower-clock went unnoticed"
    );
    eprintln!("lease-expire-on-follower-clock caught by seeds {caught:?}");
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    // Seed 5's swarm arms power cuts and fsync errors: crashes, tears and restarts included.
    let first = run_seed(&SimConfig::new(5));
    let second = run_seed(&SimConfig::new(5));
    assert!(
        first
            .trace_events
            .iter()
            .any(|e| e.contains("power-cycle") || e.contains("crash")),
        "seed 5 should crash a member"
    );
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.trace_events, second.trace_events);
    assert_eq!(first.history_jsonl, second.history_jsonl);
}
