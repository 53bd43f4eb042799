//! Replication bugs the sweep must catch (issue 5): each is injected into every member of a
//! three-member cluster and must make some seed of a bounded range fail; the clean three-member
//! sweep (`nemesis_sweep.rs`) passes the same seeds without it.
#![cfg(madsim)]

use std::ops::Range;

use keel_sim::run::{run_seed, SimConfig};
use keel_storage::bugs::Bug;

/// The seeds searched for a catch.
const SEEDS: Range<u64> = 0..200;

/// The seeds of `SEEDS` on which a three-member run with `bug` fails.
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
