//! Snapshots and log compaction, driven sans-I/O: a member makes snapshots every
//! `snapshot_count` entries, compacts its log, restarts from snapshot + log, and a follower
//! cut off while the log moved on catches up by installing the leader's snapshot.

mod common;

use common::{Cluster, TestConfig};
use keel_engine::node::{Node, Request, Response};
use keel_proto::etcdserverpb::{LeaseGrantRequest, PutRequest};

/// Ticks a request may take before the test gives up on it.
const TICKS_MAX: usize = 50;

fn config(id: u64, voters: &[u64], snapshot_count: u64) -> TestConfig {
    TestConfig::new(id, voters)
        .seed(id * 31)
        .snapshot_count(snapshot_count)
}

/// Members `voters` on empty disks, making a snapshot every `snapshot_count` entries.
fn cluster(voters: &[u64], snapshot_count: u64) -> Cluster {
    let voters_all = voters.to_vec();
    Cluster::new(voters, move |id| config(id, &voters_all, snapshot_count))
}

/// Sends `request` with `token` to member `at`; it must succeed.
fn request(c: &mut Cluster, at: u64, token: u64, request: Request) -> Response {
    c.request_with(at, token, request, TICKS_MAX)
        .expect("request succeeds")
}

/// (hash of the store, revision, applied index) of member `id`.
fn hash(c: &Cluster, id: u64) -> (u32, i64, u64) {
    let node = c.node(id);
    let h = node.store().hash_kv(0).expect("hash");
    (
        h.hash,
        node.status().revision,
        node.status().raft_applied_index,
    )
}

fn put(key: String, value: String, lease: i64) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    })
}

#[test]
fn a_single_member_snapshots_compacts_and_restarts_from_the_snapshot() {
    let mut c = cluster(&[1], 40);
    c.ticks(2);
    let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 600, id: 77 });
    assert!(matches!(
        request(&mut c, 1, 1, grant),
        Response::LeaseGrant(_)
    ));
    for i in 0..300u64 {
        let lease = if i % 10 == 0 { 77 } else { 0 };
        request(
            &mut c,
            1,
            10 + i,
            put(format!("k{}", i % 37), format!("v{i}"), lease),
        );
    }
    let before = hash(&c, 1);
    let snap_index = c.nodes[&1].snapshot_index();
    assert!(snap_index >= 280, "snapshots follow the log: {snap_index}");
    let disk = &c.disks[&1];
    let first = disk.entries.first().map_or(0, |e| e.index);
    assert!(
        first > snap_index,
        "the log before the snapshot is gone: {first}"
    );

    c.nodes.clear();
    c.start(1);
    c.settle();
    let after = hash(&c, 1);
    assert_eq!(
        (after.0, after.1),
        (before.0, before.1),
        "restart from snapshot + log gives the same state"
    );
    assert_eq!(after.2, before.2 + 1, "plus the new term's empty entry");
    // The leases came back with the snapshot: the lease's keys are still attached to it.
    let ttl = keel_proto::etcdserverpb::LeaseTimeToLiveRequest { id: 77, keys: true };
    c.ticks(12);
    match request(&mut c, 1, 9999, Request::LeaseTimeToLive(ttl)) {
        Response::LeaseTimeToLive(t) => {
            assert_eq!(t.granted_ttl, 600);
            assert!(!t.keys.is_empty(), "keys attached after restore");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_follower_cut_off_while_the_log_was_compacted_catches_up_by_snapshot() {
    catches_up_by_snapshot(false);
}

/// The same, with each snapshot's store decoded before it is delivered (as the server's peer
/// service does off its driver loop): the install takes it and ends in the same state.
#[test]
fn a_follower_installs_a_store_decoded_off_the_loop() {
    catches_up_by_snapshot(true);
}

fn catches_up_by_snapshot(predecode: bool) {
    const VOTERS: [u64; 3] = [1, 2, 3];
    let mut c = cluster(&VOTERS, 30);
    c.predecode = predecode;
    c.ticks(40);
    let leader = c.the_leader();
    let lagging = *VOTERS.iter().find(|&&id| id != leader).expect("a follower");
    c.isolated.insert(lagging);
    for i in 0..400u64 {
        request(
            &mut c,
            leader,
            100 + i,
            put(format!("k{}", i % 53), format!("v{i}"), 0),
        );
    }
    assert!(c.nodes[&leader].snapshot_index() > 300);
    assert!(c.installed.is_empty(), "nobody needed a snapshot yet");
    c.isolated.clear();
    c.ticks(30);
    assert!(
        c.installed.get(&lagging).copied().unwrap_or(0) > 300,
        "the lagging member installed the leader's snapshot: {:?}",
        c.installed
    );
    let want = hash(&c, leader);
    for id in VOTERS {
        assert_eq!(hash(&c, id), want, "member {id} agrees with the leader");
    }
    // The follower serves and keeps applying after the install.
    request(&mut c, leader, 9000, put("after".into(), "x".into(), 0));
    c.ticks(3);
    let want = hash(&c, leader);
    assert_eq!(hash(&c, lagging), want);

    // And it restarts from what it installed.
    c.nodes.remove(&lagging);
    c.start(lagging);
    c.ticks(5);
    assert_eq!(hash(&c, lagging).0, hash(&c, leader).0);
}

#[test]
fn a_wal_that_does_not_continue_the_snapshot_refuses_to_start() {
    let mut c = cluster(&[1], 20);
    c.ticks(2);
    for i in 0..95u64 {
        request(&mut c, 1, i + 1, put(format!("k{i}"), "v".into(), 0));
    }
    let mut disk = c.disks[&1].clone();
    // Lose the entries right after the snapshot: a gap between it and the log.
    let snap_index = disk
        .snapshot
        .as_ref()
        .expect("snapshot")
        .get_metadata()
        .index;
    disk.entries.retain(|e| e.index != snap_index + 1);
    assert!(!disk.entries.is_empty());
    let err = Node::new(config(1, &[1], 20).node_config(), disk.recovered())
        .expect_err("a gap is refused");
    assert!(
        err.to_string().contains("entries in between are lost"),
        "{err}"
    );

    // A damaged snapshot is refused too, with the reason.
    let mut disk = c.disks[&1].clone();
    if let Some(s) = &mut disk.snapshot {
        let mut data = s.data.to_vec();
        data[20] ^= 1;
        s.data = data.into();
    }
    let err = Node::new(config(1, &[1], 20).node_config(), disk.recovered()).expect_err("corrupt");
    assert!(err.to_string().contains("does not load"), "{err}");
}

// The harness fails a test whose member stops: a leader's snapshot that does not load is
// fatal, and the settle loop panics on it rather than dropping it.
#[test]
#[should_panic(expected = "stopped: the leader's snapshot at index 1000 does not load")]
fn a_member_that_cannot_load_the_leaders_snapshot_fails_the_test() {
    use keel_engine::node::Input;
    use keel_engine::raftpb::{Message, MessageType, Snapshot};
    const VOTERS: [u64; 3] = [1, 2, 3];
    let mut c = cluster(&VOTERS, 30);
    c.ticks(40);
    let leader = c.the_leader();
    let follower = *VOTERS.iter().find(|&&id| id != leader).expect("a follower");
    let term = c.node(leader).status().raft_term;
    let mut snapshot = Snapshot {
        data: b"not a snapshot".to_vec().into(),
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = 1000;
    meta.term = term;
    meta.mut_conf_state().voters = VOTERS.to_vec();
    let mut m = Message {
        from: leader,
        to: follower,
        term,
        ..Default::default()
    };
    m.set_msg_type(MessageType::MsgSnapshot);
    m.set_snapshot(snapshot);
    c.node_mut(follower).step(Input::Peer(Box::new(m)));
    c.settle();
}

/// Loads `puts` distinct keys of 1000-byte values into a single member that snapshots every
/// 10 entries at least, with the given log percentage; returns (index, bytes) of its saves.
fn saves_while_loading(log_percent: u64, puts: u64) -> Vec<(u64, usize)> {
    let cfg = TestConfig::new(1, &[1])
        .seed(3)
        .snapshot_count(10)
        .snapshot_log_percent(log_percent);
    let mut c = Cluster::new(&[1], move |_| cfg.clone());
    c.ticks(2);
    for i in 0..puts {
        request(
            &mut c,
            1,
            10 + i,
            put(format!("k{i:04}"), "v".repeat(1000), 0),
        );
    }
    c.disks[&1].saved.clone()
}

#[test]
fn snapshots_wait_for_log_as_large_as_the_last_snapshot() {
    // Reference: Redis sizes AOF rewrites against the last rewrite (auto-aof-rewrite-percentage).
    let every_ten = saves_while_loading(0, 200);
    assert!(
        every_ten.len() >= 19,
        "the entry count alone: a save every 10 entries, {every_ten:?}"
    );
    let amortized = saves_while_loading(100, 200);
    assert!(
        amortized.len() >= 3 && amortized.len() <= 8,
        "the store doubles between saves: {amortized:?}"
    );
    for pair in amortized.windows(2) {
        let ((i0, b0), (i1, _)) = (pair[0], pair[1]);
        let entries = i1 - i0;
        // Each put's entry holds at least its 5-byte key and 1000-byte value; the next save
        // waits for at least the previous snapshot's bytes of log (one entry of slack: a save
        // covers what was applied when it was taken).
        assert!(
            (entries + 1) * 1005 >= b0 as u64,
            "save at {i1} came after {entries} entries, before {b0} bytes of log: {amortized:?}"
        );
        assert!(
            entries >= 10,
            "never more often than the entry count: {amortized:?}"
        );
    }
    let total: usize = amortized.iter().map(|&(_, b)| b).sum();
    let log_bytes = 200 * 1000;
    assert!(
        total <= 3 * log_bytes,
        "snapshot bytes written stay within a small multiple of the log: {total} for {log_bytes}"
    );
}

#[test]
fn a_failed_snapshot_save_is_offered_again_and_writes_go_on_meanwhile() {
    let mut c = cluster(&[1], 40);
    c.ticks(2);
    // The first three saves fail: each time the node takes a fresh job (nothing is fatal),
    // and the fourth lands.
    c.failing_saves.insert(1, 3);
    for i in 0..60u64 {
        request(&mut c, 1, 10 + i, put(format!("k{i}"), "v".into(), 0));
    }
    let jobs: Vec<u64> = c.save_jobs.iter().map(|&(_, index)| index).collect();
    assert!(jobs.len() >= 4, "three failures, then a save: {jobs:?}");
    assert!(
        jobs.windows(2).all(|w| w[0] <= w[1]),
        "each job is as of the applied index when it is made: {jobs:?}"
    );
    assert_eq!(c.failing_saves[&1], 0);
    let snap_index = c.nodes[&1].snapshot_index();
    assert_eq!(snap_index, jobs[3], "the fourth job is the snapshot");
    // Later saves succeed and follow the log.
    for i in 60..200u64 {
        request(&mut c, 1, 10 + i, put(format!("k{i}"), "v".into(), 0));
    }
    assert!(c.nodes[&1].snapshot_index() >= 160);
}
