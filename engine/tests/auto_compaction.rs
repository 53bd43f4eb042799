//! Auto-compaction, driven sans-I/O by the node's clock: the leader proposes compactions on
//! etcd 3.4's schedule (periodic: to the revision sampled a retention ago; revision: keep the
//! last N, checked every 5 minutes), through the log, so every member compacts alike.

mod common;

use common::{put, Cluster, TestConfig};
use keel_engine::node::{AutoCompaction, MaintenanceConfig, REVISION_CHECK_MS};

const TICKS_MAX: usize = 60;
/// The harness's tick.
const TICK_MS: u64 = 100;

fn three(mode: AutoCompaction) -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3], move |id| {
        TestConfig::new(id, &[1, 2, 3])
            .seed(id * 13)
            .maintenance(MaintenanceConfig {
                auto_compaction: Some(mode),
                ..MaintenanceConfig::default()
            })
    });
    c.tick_until(TICKS_MAX, |c| c.leader().is_some());
    c
}

fn compacted(c: &Cluster) -> Vec<i64> {
    (1..=3)
        .map(|id| c.node(id).store().compact_revision())
        .collect()
}

/// One put, then one tick: the store's revision grows by one per tick of writes.
fn write_for(c: &mut Cluster, ticks: u64) {
    for i in 0..ticks {
        c.ok_on_leader(put("k", &i.to_string()), TICKS_MAX);
        c.tick();
    }
}

#[test]
fn periodic_mode_compacts_to_the_revision_of_a_retention_ago_on_every_member() {
    // Retention 10 s = 100 ticks: nothing before that, then a compaction every 10 s.
    let mut c = three(AutoCompaction::Periodic {
        retention_ms: 10_000,
    });
    write_for(&mut c, 50);
    assert_eq!(compacted(&c), [-1, -1, -1], "nothing before the retention");
    write_for(&mut c, 100);
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    // At 10 s: to the revision sampled at the start, that of the empty store.
    assert_eq!(compacted(&c), [1, 1, 1], "the first compaction, at 10 s");
    write_for(&mut c, 110);
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    let second = compacted(&c);
    assert!(second[0] > 1, "again 10 s later: {second:?}");
    assert!(second.iter().all(|&r| r == second[0]), "alike: {second:?}");
    let current = c.node(1).store().current_revision();
    // What is kept is at least a retention's worth of writes (one per tick).
    assert!(
        current - second[0] >= (10_000 / TICK_MS) as i64,
        "kept {current} - {}",
        second[0]
    );
}

#[test]
fn revision_mode_keeps_the_last_n_revisions() {
    let mut c = three(AutoCompaction::Revision { retention: 20 });
    write_for(&mut c, 30);
    // Idle until the 5-minute check.
    let ticks = REVISION_CHECK_MS / TICK_MS;
    c.ticks(ticks as usize);
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    let current = c.node(1).store().current_revision();
    assert_eq!(compacted(&c), vec![current - 20; 3]);
}
