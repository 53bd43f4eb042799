//! The disk-full fault (`SimConfig::disk_full`, `--disk-full`) under every check: bounded
//! sweeps on one, three and five members (and with membership changes) pass, the fault really
//! bites (members refuse writes with NOSPACE, the alarm is raised and disarmed), and a seed
//! with it replays to the same trace hash.
#![cfg(madsim)]

use keel_sim::alarm::is_no_space_text;
use keel_sim::history::Outcome;
use keel_sim::run::{run_seed, Report, SimConfig};

/// Three-member seeds (below 100) whose disk-full windows meet enough writes to raise the
/// alarm; most three-member seeds fill a disk while little is written.
const BITING_THREE_MEMBER_SEEDS: [u64; 4] = [43, 55, 61, 81];

fn config(seed: u64, nodes: usize) -> SimConfig {
    SimConfig {
        nodes,
        disk_full: true,
        ..SimConfig::new(seed)
    }
}

/// How many operations of the run were refused with NOSPACE (each recorded as a certain
/// failure, never as in doubt).
fn no_space_refusals(r: &Report) -> usize {
    r.entries
        .iter()
        .filter(|e| match &e.outcome {
            Outcome::Fail(why) => is_no_space_text(why),
            Outcome::Info(why) => {
                assert!(
                    !is_no_space_text(why),
                    "seed {}: a NOSPACE refusal recorded as in doubt: {e}",
                    r.config.seed
                );
                false
            }
            Outcome::Ok(_) => false,
        })
        .count()
}

/// Whether an operator's disarm found a NOSPACE alarm raised.
fn disarmed_no_space(r: &Report) -> bool {
    r.events
        .iter()
        .any(|(_, e)| e.starts_with("alarm disarm") && e.contains("NOSPACE"))
}

/// Runs `configs`; fails on any failed seed; returns (seeds with refusals, seeds that
/// disarmed a NOSPACE alarm).
fn sweep(configs: impl Iterator<Item = SimConfig>) -> (usize, usize) {
    let reports: Vec<Report> = configs.map(|c| run_seed(&c)).collect();
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(Report::describe)
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let refused = reports.iter().filter(|r| no_space_refusals(r) > 0).count();
    let disarmed = reports.iter().filter(|r| disarmed_no_space(r)).count();
    (refused, disarmed)
}

#[test]
fn one_member_sweep_with_disk_full_passes_and_the_fault_bites() {
    let (refused, disarmed) = sweep((0..40).map(|seed| config(seed, 1)));
    assert!(
        refused >= 5 && disarmed >= 5,
        "the disk-full fault should make several one-member seeds refuse writes and raise \
         NOSPACE: {refused} refused, {disarmed} disarmed"
    );
}

#[test]
fn three_and_five_member_sweeps_with_disk_full_pass_and_the_fault_bites() {
    let three = (0..20)
        .chain(BITING_THREE_MEMBER_SEEDS)
        .map(|s| config(s, 3));
    let five = (0..10).map(|s| config(s, 5));
    let (refused, disarmed) = sweep(three.chain(five));
    assert!(
        refused >= BITING_THREE_MEMBER_SEEDS.len() && disarmed >= BITING_THREE_MEMBER_SEEDS.len(),
        "the biting three-member seeds should refuse writes and raise NOSPACE: {refused} \
         refused, {disarmed} disarmed"
    );
}

#[test]
fn membership_changes_with_disk_full_pass() {
    sweep((0..10).map(|seed| SimConfig {
        membership: true,
        ..config(seed, 3)
    }));
}

#[test]
fn a_disk_full_seed_replays_to_the_same_trace() {
    for (seed, nodes) in [(8, 1), (43, 3)] {
        let first = run_seed(&config(seed, nodes));
        let second = run_seed(&config(seed, nodes));
        assert!(
            no_space_refusals(&first) > 0,
            "seed {seed} ({nodes} members) should refuse writes with NOSPACE"
        );
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} ({nodes} members) with disk-full replayed to a different trace"
        );
        assert_eq!(
            first.trace_events, second.trace_events,
            "seed {seed}: traces differ"
        );
    }
}
