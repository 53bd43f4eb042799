//! The v2 store replicated: writes, TTL expiry through a SYNC entry, and a follower cut off
//! while the log was compacted catching up by the leader's snapshot (the `v2st` section),
//! then restarting from it. Every member ends with the same v2 tree and history.

mod common;

use common::{Cluster, TestConfig};
use keel_engine::node::{Request, Response};
use keel_proto::keelpb::{V2Request, V2Response};

const TICKS_MAX: usize = 50;
const NOW: i64 = 1_800_000_000 * 1_000_000_000;
const SEC: i64 = 1_000_000_000;

fn v2(method: &str, path: &str, val: &str) -> V2Request {
    V2Request {
        method: method.into(),
        path: path.into(),
        val: val.into(),
        time: NOW,
        ..V2Request::default()
    }
}

fn call(c: &mut Cluster, at: u64, r: V2Request) -> V2Response {
    match c.request(at, Request::V2(r), TICKS_MAX) {
        Ok(Response::V2(resp)) => resp,
        other => panic!("a v2 answer, not {other:?}"),
    }
}

/// What member `id` serves for the whole tree, and a wait from index 1.
fn view(c: &mut Cluster, id: u64) -> (V2Response, V2Response) {
    let tree = V2Request {
        recursive: true,
        sorted: true,
        ..v2("GET", "/", "")
    };
    let history = V2Request {
        wait: true,
        recursive: true,
        since: 1,
        ..v2("GET", "/", "")
    };
    let mut a = call(c, id, tree);
    let mut b = call(c, id, history);
    a.header = None;
    b.header = None;
    a.raft_index = 0;
    b.raft_index = 0;
    (a, b)
}

#[test]
fn members_agree_on_the_v2_store_through_expiry_and_snapshots() {
    const VOTERS: [u64; 3] = [1, 2, 3];
    let voters = VOTERS.to_vec();
    let mut c = Cluster::new(&VOTERS, move |id| {
        TestConfig::new(id, &voters).seed(id * 7).snapshot_count(30)
    });
    c.ticks(40);
    let leader = c.the_leader();
    let lagging = *VOTERS.iter().find(|&&id| id != leader).expect("a follower");
    c.isolated.insert(lagging);
    let ttl = V2Request {
        expiration: NOW + 2 * SEC,
        ..v2("PUT", "/svc/ttl", "hb")
    };
    assert!(call(&mut c, leader, ttl).event.is_some(), "a TTL key");
    for i in 0..200u64 {
        let r = match i % 3 {
            0 => v2("POST", "/queue", &format!("job{i}")),
            1 => v2("PUT", &format!("/dir/k{}", i % 17), &format!("v{i}")),
            _ => V2Request {
                prev_exist: Some(false),
                ..v2("PUT", &format!("/once/k{}", i % 5), "x")
            },
        };
        call(&mut c, leader, r);
    }
    let sync = V2Request {
        time: NOW + 3 * SEC,
        ..v2("SYNC", "", "")
    };
    call(&mut c, leader, sync);
    let gone = call(&mut c, leader, v2("GET", "/svc/ttl", ""));
    assert_eq!(
        gone.error.map(|e| e.code),
        Some(100),
        "expired through the log"
    );
    assert!(
        c.nodes[&leader].snapshot_index() > 150,
        "snapshots were made"
    );
    c.isolated.clear();
    c.ticks(30);
    assert!(
        c.installed.get(&lagging).copied().unwrap_or(0) > 150,
        "the lagging member installed the leader's snapshot: {:?}",
        c.installed
    );
    c.caught_up(&VOTERS, TICKS_MAX);
    let want = view(&mut c, leader);
    for id in VOTERS {
        assert_eq!(view(&mut c, id), want, "member {id} agrees with the leader");
    }
    c.nodes.remove(&lagging);
    c.start(lagging);
    c.ticks(10);
    c.caught_up(&VOTERS, TICKS_MAX);
    assert_eq!(
        view(&mut c, lagging),
        want,
        "and after a restart from the snapshot"
    );
}
