//! The byte bound on the in-memory raft log (`NodeConfig::raft_log_bytes_max`): past it the
//! oldest applied entries are freed even before a snapshot covers them (the disk keeps them),
//! and a follower that needs one catches up from a snapshot made for it.

mod common;

use common::{Cluster, TestConfig};
use keel_engine::node::{Request, Response};
use keel_proto::etcdserverpb::PutRequest;

const VOTERS: [u64; 3] = [1, 2, 3];
/// Ticks a request may take before the test gives up on it.
const TICKS_MAX: usize = 50;
/// Snapshots by count never come in these tests: only a follower's need makes one.
const SNAPSHOT_COUNT: u64 = 1_000_000;
/// The bound of the bounded tests: about 60 entries of the puts below.
const BOUND: u64 = 40 * 1024;
/// Puts while a follower is cut off: about 10 bounds' worth.
const PUTS: u64 = 600;
/// A value of 500 bytes: each put's entry holds a bit more than that.
const VALUE_BYTES: usize = 500;

fn cluster(bound: Option<u64>) -> Cluster {
    let mut c = Cluster::new(&VOTERS, move |id| {
        TestConfig::new(id, &VOTERS)
            .seed(id * 31)
            .snapshot_count(SNAPSHOT_COUNT)
            .raft_log_bytes_max(bound)
    });
    c.ticks(40);
    c
}

fn put(i: u64) -> Request {
    Request::Put(PutRequest {
        key: format!("k{:03}", i % 211).into(),
        value: format!("{i:0width$}", width = VALUE_BYTES).into(),
        ..Default::default()
    })
}

/// (hash of the store, revision, applied index) of member `id`.
fn hash(c: &Cluster, id: u64) -> (u32, i64, u64) {
    let node = c.node(id);
    let h = node.store().hash_kv(0).expect("hash");
    let s = node.status();
    (h.hash, s.revision, s.raft_applied_index)
}

/// Cuts a follower off and waits two election timeouts, so the leader stops hearing from it.
fn cut_off_a_follower(c: &mut Cluster) -> (u64, u64) {
    let leader = c.the_leader();
    let lagging = *VOTERS.iter().find(|&&id| id != leader).expect("a follower");
    c.isolated.insert(lagging);
    c.ticks(25);
    assert_eq!(c.the_leader(), leader, "two of three keep their leader");
    (leader, lagging)
}

/// The disk of `id` holds every entry after its snapshot (or from the first) up to its last
/// (none if the snapshot covers them all).
fn disk_is_contiguous(c: &Cluster, id: u64) {
    let disk = &c.disks[&id];
    let from = disk
        .snapshot
        .as_ref()
        .map_or(1, |s| s.get_metadata().index + 1);
    let indexes: Vec<u64> = disk.entries.iter().map(|e| e.index).collect();
    assert!(
        indexes.first().is_none_or(|&i| i == from),
        "the disk's log starts right after its snapshot: {:?}",
        indexes.first()
    );
    assert!(
        indexes.windows(2).all(|w| w[1] == w[0] + 1),
        "the disk's log has no gap"
    );
}

#[test]
fn past_the_bound_a_cut_off_follower_catches_up_from_a_snapshot_made_for_it() {
    let mut c = cluster(Some(BOUND));
    let (leader, lagging) = cut_off_a_follower(&mut c);
    for i in 0..PUTS {
        c.ok_on_leader(put(i), TICKS_MAX);
        let log = c.node(leader).raft_log_memory();
        assert!(
            log.applied_bytes <= BOUND,
            "after put {i} the leader's log holds {} bytes, over the bound {BOUND}",
            log.applied_bytes
        );
    }
    let log = c.node(leader).raft_log_memory();
    assert!(log.first_index > 400, "the log was freed: {log:?}");
    assert_eq!(
        c.node(leader).snapshot_index(),
        0,
        "no snapshot covers what was freed"
    );
    assert!(c.installed.is_empty(), "nobody needed a snapshot yet");
    // The disk keeps every entry until a snapshot covers it.
    disk_is_contiguous(&c, leader);
    assert_eq!(c.disks[&leader].entries.first().map(|e| e.index), Some(1));

    c.isolated.clear();
    c.caught_up(&VOTERS, 100);
    let made = c.node(leader).snapshot_index();
    assert!(
        made >= log.first_index,
        "the leader made a snapshot for the follower: {made}"
    );
    assert_eq!(
        c.installed.get(&lagging),
        Some(&made),
        "the follower installed it"
    );
    let want = hash(&c, leader);
    for id in VOTERS {
        assert_eq!(hash(&c, id), want, "member {id} agrees with the leader");
        assert!(c.node(id).raft_log_memory().applied_bytes <= BOUND);
        disk_is_contiguous(&c, id);
    }
    // The follower keeps applying after the install, and restarts from what it installed.
    c.ok_on_leader(put(PUTS), TICKS_MAX);
    c.caught_up(&VOTERS, 10);
    c.nodes.remove(&lagging);
    c.start(lagging);
    c.caught_up(&VOTERS, 20);
    assert_eq!(hash(&c, lagging), hash(&c, leader));
}

#[test]
fn without_a_byte_bound_the_log_stays_until_a_snapshot_covers_it() {
    let mut c = cluster(None);
    let (leader, lagging) = cut_off_a_follower(&mut c);
    for i in 0..PUTS {
        c.ok_on_leader(put(i), TICKS_MAX);
    }
    let log = c.node(leader).raft_log_memory();
    assert_eq!(
        log.first_index, 1,
        "nothing freed without a snapshot: {log:?}"
    );
    assert!(log.applied_bytes > PUTS * VALUE_BYTES as u64);
    c.isolated.clear();
    c.caught_up(&VOTERS, 100);
    assert!(
        !c.installed.contains_key(&lagging),
        "caught up from the log, no snapshot"
    );
    assert_eq!(hash(&c, lagging), hash(&c, leader));
}

#[test]
fn a_zero_bound_keeps_only_the_applied_entry() {
    let mut c = cluster(Some(0));
    for i in 0..50 {
        c.ok_on_leader(put(i), TICKS_MAX);
        c.caught_up(&VOTERS, 10);
        for id in VOTERS {
            let node = c.node(id);
            let applied = node.status().raft_applied_index;
            assert_eq!(
                node.raft_log_memory().first_index,
                applied,
                "member {id} keeps only its applied entry"
            );
        }
    }
    // A follower cut off for a moment needs a snapshot to come back.
    let (leader, lagging) = cut_off_a_follower(&mut c);
    for i in 0..3 {
        c.ok_on_leader(put(100 + i), TICKS_MAX);
    }
    c.isolated.clear();
    c.caught_up(&VOTERS, 100);
    assert!(
        c.installed.contains_key(&lagging),
        "caught up from a snapshot: {:?}",
        c.installed
    );
    assert_eq!(hash(&c, lagging), hash(&c, leader));
    match c.ok_on_leader(put(200), TICKS_MAX) {
        Response::Put(_) => {}
        other => panic!("expected a put response, got {other:?}"),
    }
}
