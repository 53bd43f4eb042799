//! etcd's v2 keys API under the seeded nemesis: v2 clients speak HTTP to the members'
//! `/v2/keys` (sets, quorum and plain reads, compare-and-swap on `prevIndex` and
//! `prevValue`, compare-and-delete, creates, deletes) while members crash, partition, pause
//! and fill their disks, and the v2 history must be linearizable (`keel_sim::v2_check`).
//! The `v2-quorum-read-local` bug (quorum reads without a ReadIndex round) and the
//! `v2-cas-created-index` bug (CAS compares `prevIndex` with the wrong index) must be caught.
#![cfg(madsim)]

use keel_engine::bugs::Bug;
use keel_sim::check::FailureKind;
use keel_sim::run::{run_seed, Report, SimConfig};
use keel_sim::v2_check::check_v2;
use keel_sim::v2_history::{NodeState, V2Op, V2Outcome};

fn with_v2(seed: u64, nodes: usize, v2_clients: usize) -> SimConfig {
    SimConfig {
        nodes,
        v2_clients,
        ..SimConfig::new(seed)
    }
}

fn in_doubt(r: &Report) -> usize {
    r.v2_entries
        .iter()
        .filter(|e| matches!(e.outcome, V2Outcome::InDoubt(_)))
        .count()
}

#[test]
fn v2_histories_are_linearizable_under_faults() {
    let configs = (0..16u64)
        .map(|seed| with_v2(seed, 1, 4))
        .chain((0..10u64).map(|seed| with_v2(seed, 3, 4)))
        .chain((0..3u64).map(|seed| with_v2(seed, 5, 4)));
    let (mut failed, mut ops, mut doubted, mut runs) = (Vec::new(), 0, 0, 0);
    for config in configs {
        let r = run_seed(&config);
        runs += 1;
        ops += r.v2_entries.len();
        doubted += in_doubt(&r);
        if !r.passed() {
            failed.push(r.describe());
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    eprintln!("{runs} runs: {ops} v2 operations, {doubted} in doubt");
    assert!(ops >= 40 * runs, "only {ops} v2 operations in {runs} runs");
    assert!(
        doubted > 0,
        "no v2 write was ever in doubt: the faults never reached v2"
    );
}

#[test]
fn stale_v2_quorum_reads_are_caught() {
    let mut caught = Vec::new();
    for seed in 0..40u64 {
        let config = SimConfig {
            bugs: vec![Bug::V2QuorumReadLocal],
            ..with_v2(seed, 3, 6)
        };
        if run_seed(&config).failed_with(FailureKind::V2Linearizability) {
            caught.push(seed);
            if caught.len() == 3 {
                break;
            }
        }
    }
    eprintln!("v2-quorum-read-local caught by seeds {caught:?}");
    assert!(
        caught.len() >= 2,
        "the v2 checker caught v2-quorum-read-local in {caught:?} of seeds 0..40"
    );
    for &seed in &caught {
        let clean = run_seed(&with_v2(seed, 3, 6));
        assert!(clean.passed(), "{}", clean.describe());
    }
}

#[test]
fn a_cas_on_the_wrong_index_is_caught() {
    let mut caught = Vec::new();
    for seed in 0..20u64 {
        let config = SimConfig {
            bugs: vec![Bug::V2CasCreatedIndex],
            ..with_v2(seed, 1, 4)
        };
        if run_seed(&config).failed_with(FailureKind::V2Linearizability) {
            caught.push(seed);
            if caught.len() == 3 {
                break;
            }
        }
    }
    eprintln!("v2-cas-created-index caught by seeds {caught:?}");
    assert_eq!(
        caught.len(),
        3,
        "the v2 checker caught v2-cas-created-index in {caught:?} of seeds 0..20"
    );
    for &seed in &caught {
        let clean = run_seed(&with_v2(seed, 1, 4));
        assert!(clean.passed(), "{}", clean.describe());
    }
}

#[test]
fn a_tampered_v2_history_is_rejected() {
    let r = run_seed(&with_v2(3, 3, 4));
    assert!(r.passed(), "{}", r.describe());
    assert_eq!(check_v2(&r.v2_entries), None, "the recorded history passes");
    // A quorum read that saw a value, made to show one nobody wrote.
    let mut tampered = r.v2_entries.clone();
    let read = tampered
        .iter_mut()
        .find(|e| {
            matches!(e.op, V2Op::Get { quorum: true, .. })
                && matches!(e.outcome, V2Outcome::Ok { node: Some(_), .. })
        })
        .expect("some quorum read saw a value");
    if let V2Outcome::Ok {
        node: Some(NodeState { value, .. }),
        ..
    } = &mut read.outcome
    {
        *value = "nobody-wrote-this".to_string();
    }
    let f = check_v2(&tampered).expect("a read of a value nobody wrote");
    assert_eq!(f.kind, FailureKind::V2Linearizability);
    // An acknowledged write dropped from the history leaves its index unexplained.
    let mut dropped = r.v2_entries.clone();
    let at = dropped
        .iter()
        .position(|e| e.op.is_write() && matches!(e.outcome, V2Outcome::Ok { .. }))
        .expect("some acknowledged write");
    dropped.remove(at);
    assert!(check_v2(&dropped).is_some(), "an index nobody made");
}

#[test]
fn a_seed_with_v2_clients_replays() {
    let a = run_seed(&with_v2(7, 3, 4));
    let b = run_seed(&with_v2(7, 3, 4));
    assert_eq!(a.trace_hash, b.trace_hash, "same seed, same trace");
    assert_eq!(a.v2_entries, b.v2_entries, "same seed, same v2 history");
    assert!(!a.v2_entries.is_empty(), "the v2 clients ran");
}
