//! Replication bugs the sweep must catch (issue 5): each is injected into every member of a
//! three-member cluster and must make some seed of a bounded range fail; the clean three-member
//! sweep (`nemesis_sweep.rs`) passes a prefix of those seeds without it, and forget-vote checks
//! that the very seeds catching it pass without it.
#![cfg(madsim)]

use std::ops::Range;

use keel_sim::run::{run_seed, SimConfig};
use keel_storage::bugs::Bug;

/// The seeds searched for a catch. (read-index-skip-heartbeat is the rarest: 3 of 0..600 at
/// the commit adding election-restart, 203 the first.)
const SEEDS: Range<u64> = 0..400;
/// The search stops after this many catches.
const CATCHES_MAX: usize = 8;

/// The first seeds of `SEEDS` (at most `CATCHES_MAX`) on which a three-member run with `bug`
/// fails.
fn seeds_catching(bug: Bug) -> Vec<u64> {
    SEEDS
        .filter(|&seed| {
            let config = SimConfig {
                nodes: 3,
                bugs: vec![bug],
                ..SimConfig::new(seed)
            };
            !run_seed(&config).passed()
        })
        .take(CATCHES_MAX)
        .collect()
}

#[test]
fn commit_without_quorum_is_caught() {
    // A leader acknowledges writes durable only on its own disk; a crash or partition then
    // loses them (lost writes, diverging HashKV, non-linearizable reads).
    let caught = seeds_catching(Bug::CommitWithoutQuorum);
    assert!(!caught.is_empty(), "commit-without-quorum went unnoticed");
    eprintln!("commit-without-quorum caught by seeds {caught:?}");
}

#[test]
fn read_index_skip_heartbeat_is_caught() {
    // A leader serves linearizable reads without confirming it still leads: once cut off, it
    // answers from a store the new leader has moved past (stale reads).
    let caught = seeds_catching(Bug::ReadIndexSkipHeartbeat);
    assert!(
        !caught.is_empty(),
        "read-index-skip-heartbeat went unnoticed"
    );
    eprintln!("read-index-skip-heartbeat caught by seeds {caught:?}");
}

#[test]
fn forget_vote_is_caught() {
    // A voter answers before its vote is durable and forgets it on restart. The
    // election-restart fault cuts its power at the vote's fsync during an election: it elects
    // the new term's candidate, then, restarted, the old leader in the same term. The nemesis
    // sees two members call themselves leader of one term (election safety, Raft §5.2).
    let caught = seeds_catching(Bug::ForgetVote);
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
