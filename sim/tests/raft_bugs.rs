//! Replication bugs the sweep must catch (issue 5): each is injected into every member of a
//! three-member cluster and must make some seed of a bounded range fail with the failure kind
//! that bug causes (a liveness failure or an unrelated check does not count); the clean
//! three-member sweep (`nemesis_sweep.rs`) passes a prefix of those seeds without it, and
//! forget-vote and read-index-skip-heartbeat check that the very seeds catching them pass
//! without them.
#![cfg(madsim)]

use std::ops::Range;

use keel_engine::bugs::Bug;
use keel_sim::check::FailureKind;
use keel_sim::run::{catches, run_seed, SimConfig};

/// The seeds searched for a catch.
const SEEDS: Range<u64> = 0..400;
/// read-index-skip-heartbeat needs safety phases long enough that an isolated old leader
/// still answers reads after the others elected a new leader and acknowledged writes (with
/// 3 s phases, 1 of 0..400 caught it; with 8 s, 10 of 0..100).
const READ_INDEX_SEEDS: Range<u64> = 0..100;
const READ_INDEX_DURATION_S: u64 = 8;
/// The search stops after this many catches.
const CATCHES_MAX: usize = 8;
/// What a stale read shows: the history is not linearizable, or a client saw the revision go
/// back.
const STALE_READ_KINDS: &[FailureKind] =
    &[FailureKind::Linearizability, FailureKind::RevisionBackwards];
/// What an entry committed without a quorum shows once a leader without it takes over: an
/// acknowledged write is lost, the members' stores diverge, or reads contradict the
/// acknowledgements.
const LOST_COMMIT_KINDS: &[FailureKind] = &[
    FailureKind::Durability,
    FailureKind::HashKvDisagree,
    FailureKind::Linearizability,
    FailureKind::RevisionBackwards,
];

/// The first seeds of `SEEDS` (at most `CATCHES_MAX`) on which a three-member run with `bug`
/// fails with a failure of one of `kinds`.
fn seeds_catching(bug: Bug, kinds: &[FailureKind]) -> Vec<u64> {
    seeds_catching_in(bug, kinds, SEEDS, SimConfig::new(0).duration_s)
}

fn seeds_catching_in(
    bug: Bug,
    kinds: &[FailureKind],
    seeds: Range<u64>,
    duration_s: u64,
) -> Vec<u64> {
    seeds
        .filter(|&seed| {
            let config = SimConfig {
                nodes: 3,
                bugs: vec![bug],
                duration_s,
                ..SimConfig::new(seed)
            };
            catches(&config, kinds)
        })
        .take(CATCHES_MAX)
        .collect()
}

#[test]
fn commit_without_quorum_is_caught() {
    // A leader acknowledges writes durable only on its own disk; a crash or partition then
    // loses them (lost writes, diverging HashKV, non-linearizable reads).
    let caught = seeds_catching(Bug::CommitWithoutQuorum, LOST_COMMIT_KINDS);
    assert!(!caught.is_empty(), "commit-without-quorum went unnoticed");
    eprintln!("commit-without-quorum caught by seeds {caught:?}");
}

#[test]
fn read_index_skip_heartbeat_is_caught() {
    // A leader serves linearizable reads without confirming it still leads: once cut off, it
    // answers from a store the new leader has moved past (stale reads).
    let caught = seeds_catching_in(
        Bug::ReadIndexSkipHeartbeat,
        STALE_READ_KINDS,
        READ_INDEX_SEEDS,
        READ_INDEX_DURATION_S,
    );
    assert!(
        !caught.is_empty(),
        "read-index-skip-heartbeat went unnoticed"
    );
    eprintln!("read-index-skip-heartbeat caught by seeds {caught:?}");
    for &seed in &caught {
        let clean = run_seed(&SimConfig {
            nodes: 3,
            duration_s: READ_INDEX_DURATION_S,
            ..SimConfig::new(seed)
        });
        assert!(clean.passed(), "seed {seed} fails without the bug too");
    }
}

#[test]
fn forget_vote_is_caught() {
    // A voter answers before its vote is durable and forgets it on restart. The
    // election-restart fault cuts its power at the vote's fsync during an election: it elects
    // the new term's candidate, then, restarted, the old leader in the same term. The nemesis
    // sees two members call themselves leader of one term (election safety, Raft §5.2).
    let caught = seeds_catching(Bug::ForgetVote, &[FailureKind::ElectionSafety]);
    assert!(!caught.is_empty(), "forget-vote went unnoticed");
    eprintln!("forget-vote caught by seeds {caught:?}");
    for &seed in &caught {
        let clean = run_seed(&SimConfig {
            nodes: 3,
            ..SimConfig::new(seed)
        });
        assert!(clean.passed(), "seed {seed} fails without the bug too");
    }
}
