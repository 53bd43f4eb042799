//! The snapshot saver's bug the sweep must catch: `release-wal-early` releases the WAL a new
//! snapshot covers when its save starts, not once the snapshot is durable. The nemesis's power
//! cut at a snapshot save lands after the release and before the snapshot file is durable:
//! the member restarts on its previous snapshot and a WAL that continues past a gap, refuses
//! to start ("entries in between are lost"), and never serves again. The seeds that catch it
//! pass without the bug.
#![cfg(madsim)]

use std::ops::Range;

use keel_engine::bugs::Bug;
use keel_sim::check::FailureKind;
use keel_sim::run::{catches, run_seed, SimConfig};

/// The seeds searched for a catch (one member: 15 of 0..300 catch it, the first at 54).
const SEEDS: Range<u64> = 0..120;
/// The search stops after this many catches.
const CATCHES_MAX: usize = 3;

#[test]
fn release_wal_early_is_caught() {
    let caught: Vec<u64> = SEEDS
        .filter(|&seed| {
            let config = SimConfig {
                bugs: vec![Bug::ReleaseWalEarly],
                ..SimConfig::new(seed)
            };
            // The member cannot recover from its own disk: it never serves again.
            catches(&config, &[FailureKind::Liveness])
        })
        .take(CATCHES_MAX)
        .collect();
    assert!(!caught.is_empty(), "release-wal-early went unnoticed");
    eprintln!("release-wal-early caught by seeds {caught:?}");
    for &seed in &caught {
        let clean = run_seed(&SimConfig::new(seed));
        assert!(clean.passed(), "seed {seed} fails without the bug too");
    }
}
