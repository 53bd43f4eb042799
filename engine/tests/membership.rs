//! Membership changes through raft, on a cluster of engine nodes wired together in memory:
//! learners join and catch up by log replay, get promoted, voters are removed, every bad
//! request gets etcd's error, and every member ends with the same member table.

mod common;

use std::collections::BTreeMap;

use common::{client_url, peer_url, Cluster, TestConfig};
use keel_engine::error::Error;
use keel_engine::node::{Input, Request, Response};
use keel_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest,
};

/// Ticks a request may take before the test gives up on it.
const TICKS_MAX: usize = 400;

/// Named members `ids`, started and settled: a leader is elected and every member published
/// its name and client URLs.
fn start(ids: &[u64]) -> Cluster {
    let bootstrap = ids.to_vec();
    let mut c = Cluster::new(ids, move |id| {
        TestConfig::new(id, &bootstrap)
            .seed(id.wrapping_mul(0x9e37_79b9) ^ 5)
            // Small, so that members joining late catch up through the leader's snapshot.
            .snapshot_count(25)
            .named()
    });
    c.tick_until(TICKS_MAX, |c| c.leader().is_some());
    // Every member publishes its name and client URLs once it knows the leader.
    c.tick_until(TICKS_MAX, |c| {
        c.node(c.leader().unwrap_or(0))
            .members()
            .members()
            .iter()
            .all(|m| !m.client_urls.is_empty())
    });
    c
}

fn request(c: &mut Cluster, on: u64, request: Request) -> Result<Response, Error> {
    c.request(on, request, TICKS_MAX)
}

fn on_leader(c: &mut Cluster, request: Request) -> Result<Response, Error> {
    let leader = c.leader().expect("a leader");
    c.request(leader, request, TICKS_MAX)
}

fn put(c: &mut Cluster, key: &str) {
    c.ok_on_leader(common::put(key, "v"), TICKS_MAX);
}

/// Every member's table as bytes, by member.
fn tables(c: &Cluster) -> BTreeMap<u64, Vec<u8>> {
    c.nodes
        .iter()
        .map(|(id, n)| (*id, n.members().encode()))
        .collect()
}

/// Waits until every live member applied as far as the leader.
fn caught_up(c: &mut Cluster, ids: &[u64]) {
    c.caught_up(ids, TICKS_MAX);
}

fn add(peer: &str, is_learner: bool) -> Request {
    Request::MemberAdd(MemberAddRequest {
        peer_ur_ls: vec![peer.to_string()],
        is_learner,
    })
}

/// Hands `request` to member `on` as request `token` and lets the cluster settle.
fn propose(c: &mut Cluster, on: u64, token: u64, request: Request) {
    c.node_mut(on).step(Input::Request { token, request });
    c.settle();
}

/// Every member's table is the same as `reference`'s.
fn assert_tables_agree(c: &Cluster, reference: u64) {
    let tables = tables(c);
    assert!(
        tables.values().all(|t| *t == tables[&reference]),
        "tables differ"
    );
}

fn added_id(response: Result<Response, Error>) -> u64 {
    match response.expect("member added") {
        Response::MemberAdd(r) => r.member.expect("the new member").id,
        other => panic!("expected MemberAdd, got {other:?}"),
    }
}

#[test]
fn a_learner_joins_catches_up_is_promoted_and_a_voter_is_removed() {
    let mut c = start(&[1, 2, 3]);
    for i in 0..20 {
        put(&mut c, &format!("k{i}"));
    }
    let new = added_id(on_leader(&mut c, add("http://n4:2380", true)));
    let listed = match request(&mut c, 2, Request::MemberList(MemberListRequest::default())) {
        Ok(Response::MemberList(l)) => l.members,
        other => panic!("member list: {other:?}"),
    };
    let learner = listed.iter().find(|m| m.id == new).expect("listed");
    assert!(learner.is_learner && learner.name.is_empty() && learner.client_ur_ls.is_empty());

    c.join(new);
    caught_up(&mut c, &[1, 2, 3, new]);
    assert!(c.nodes[&new].status().is_learner);
    assert_eq!(
        c.nodes[&new].store().hash_kv(0),
        c.nodes[&1].store().hash_kv(0)
    );
    // A learner serves serializable reads only (etcd's `isRPCSupportedForLearner`).
    assert!(request(&mut c, new, common::range("k1", true)).is_ok());
    assert_eq!(
        request(&mut c, new, common::range("k1", false)),
        Err(Error::NotSupportedForLearner)
    );
    // The new member published its name and client URLs; every member knows them.
    c.tick_until(TICKS_MAX, |c| {
        c.nodes.values().all(|n| {
            n.members()
                .get(new)
                .is_some_and(|m| m.name == format!("n{new}"))
        })
    });

    let promoted = on_leader(
        &mut c,
        Request::MemberPromote(MemberPromoteRequest { id: new }),
    );
    assert!(
        matches!(promoted, Ok(Response::MemberPromote(_))),
        "{promoted:?}"
    );
    caught_up(&mut c, &[1, 2, 3, new]);
    assert!(!c.nodes[&new].status().is_learner);

    let removed = on_leader(&mut c, Request::MemberRemove(MemberRemoveRequest { id: 3 }));
    match removed {
        Ok(Response::MemberRemove(r)) => assert_eq!(r.members.len(), 3),
        other => panic!("member remove: {other:?}"),
    }
    caught_up(&mut c, &[1, 2, new]);
    assert!(c.nodes[&3].is_removed());
    c.nodes.remove(&3);
    put(&mut c, "after-remove");
    caught_up(&mut c, &[1, 2, new]);
    assert_tables_agree(&c, 1);
    let ids: Vec<u64> = c.nodes[&1]
        .members()
        .members()
        .iter()
        .map(|m| m.id)
        .collect();
    let mut want = vec![1, 2, new];
    want.sort_unstable();
    assert_eq!(ids, want);
}

#[test]
fn bad_membership_requests_get_etcds_errors() {
    let mut c = start(&[1, 2, 3]);
    assert_eq!(
        on_leader(&mut c, add(&peer_url(2), false)),
        Err(Error::PeerUrlExist)
    );
    assert_eq!(
        on_leader(&mut c, add("notaurl", false)),
        Err(Error::MemberBadUrls)
    );
    assert_eq!(
        on_leader(&mut c, add("http://n9", false)),
        Err(Error::MemberBadUrls)
    );
    let learner = added_id(on_leader(&mut c, add("http://n4:2380", true)));
    assert_eq!(
        on_leader(&mut c, add("http://n5:2380", true)),
        Err(Error::TooManyLearners)
    );
    // The learner never started, so it is not in sync with the leader.
    let promote = |id| Request::MemberPromote(MemberPromoteRequest { id });
    assert_eq!(
        on_leader(&mut c, promote(learner)),
        Err(Error::LearnerNotReady)
    );
    assert_eq!(on_leader(&mut c, promote(2)), Err(Error::MemberNotLearner));
    assert_eq!(on_leader(&mut c, promote(0x99)), Err(Error::MemberNotFound));
    let remove = |id| Request::MemberRemove(MemberRemoveRequest { id });
    assert_eq!(on_leader(&mut c, remove(0x99)), Err(Error::MemberNotFound));
    let update = |id, url: &str| {
        Request::MemberUpdate(MemberUpdateRequest {
            id,
            peer_ur_ls: vec![url.to_string()],
        })
    };
    assert_eq!(
        on_leader(&mut c, update(0x99, "http://x:1")),
        Err(Error::MemberNotFound)
    );
    assert_eq!(
        on_leader(&mut c, update(1, &peer_url(2))),
        Err(Error::PeerUrlExist)
    );
    // Two voters that never start: five voters, three started, still a quorum; a sixth would
    // leave three started of six (etcd's strict reconfiguration check).
    on_leader(&mut c, remove(learner)).expect("learner removed");
    added_id(on_leader(&mut c, add("http://n6:2380", false)));
    added_id(on_leader(&mut c, add("http://n7:2380", false)));
    assert_eq!(
        on_leader(&mut c, add("http://n8:2380", false)),
        Err(Error::MemberNotEnoughStarted)
    );
    // A removed member's id never comes back.
    assert_eq!(
        on_leader(&mut c, remove(learner)),
        Err(Error::MemberNotFound)
    );
    assert_tables_agree(&c, 1);
}

#[test]
fn member_update_changes_peer_urls_everywhere() {
    let mut c = start(&[1, 2, 3]);
    let updated = on_leader(
        &mut c,
        Request::MemberUpdate(MemberUpdateRequest {
            id: 2,
            peer_ur_ls: vec!["http://n2-new:2380".into()],
        }),
    );
    match updated {
        Ok(Response::MemberUpdate(r)) => {
            let m = r.members.iter().find(|m| m.id == 2).expect("listed");
            assert_eq!(m.peer_ur_ls, vec!["http://n2-new:2380".to_string()]);
            assert_eq!(m.client_ur_ls, vec![client_url(2)]);
        }
        other => panic!("member update: {other:?}"),
    }
    caught_up(&mut c, &[1, 2, 3]);
    assert_tables_agree(&c, 1);
}

#[test]
fn a_restarted_member_rebuilds_its_table_from_the_log() {
    // Replaying the log (as after a restart) yields the same table: it is a function of the
    // applied entries only.
    let mut c = start(&[1, 2, 3]);
    added_id(on_leader(&mut c, add("http://n4:2380", true)));
    caught_up(&mut c, &[1, 2, 3]);
    let a = c.nodes[&1].members().clone();
    let b = c.nodes[&3].members().clone();
    assert_eq!(a, b);
    assert_eq!(a.len(), 4);
    assert_eq!(
        keel_engine::membership::Membership::decode(&a.encode()).expect("decodes"),
        a
    );
}

#[test]
fn a_leader_that_removes_itself_hands_over_leadership() {
    let mut c = start(&[1, 2, 3]);
    let leader = c.leader().expect("a leader");
    let removed = on_leader(
        &mut c,
        Request::MemberRemove(MemberRemoveRequest { id: leader }),
    );
    assert!(
        matches!(removed, Ok(Response::MemberRemove(_))),
        "{removed:?}"
    );
    assert!(c.nodes[&leader].is_removed());
    // The removed member stops (the driver's part); it handed leadership over before, so a
    // new leader is there without an election timeout.
    c.settle();
    c.nodes.remove(&leader);
    assert!(
        c.leader().is_some_and(|l| l != leader),
        "no new leader at once"
    );
    put(&mut c, "after-leader-removed");
    let left: Vec<u64> = c.nodes.keys().copied().collect();
    caught_up(&mut c, &left);
    assert_tables_agree(&c, left[0]);
}

// raft-rs restores only a snapshot whose configuration names the member; the leader's newest
// snapshot taken before a MemberAdd does not, so the new member is sent one taken after it —
// once, not the old one again and again.
#[test]
fn a_member_added_after_the_newest_snapshot_is_sent_one_that_names_it() {
    let mut c = start(&[1, 2, 3]);
    for i in 0..100 {
        put(&mut c, &format!("k{i}"));
    }
    let leader = c.leader().expect("a leader");
    let before = c.node(leader).snapshot_index();
    assert!(before > 75, "snapshots were made: {before}");
    let new = added_id(on_leader(&mut c, add("http://n4:2380", true)));
    let added_at = c.node(leader).status().raft_applied_index;
    c.record_trace();
    c.join(new);
    caught_up(&mut c, &[1, 2, 3, new]);
    let sent = c
        .trace
        .take()
        .unwrap_or_default()
        .iter()
        .filter(|line| line.contains("msg_type: MsgSnapshot"))
        .count();
    assert_eq!(sent, 1, "one snapshot sent to the new member");
    let installed = c.installed.get(&new).copied().unwrap_or(0);
    assert!(
        installed >= added_at,
        "it installed a snapshot taken after its addition at {added_at}: {installed}"
    );
    assert_eq!(
        c.nodes[&new].store().hash_kv(0),
        c.nodes[&1].store().hash_kv(0)
    );
}

// A leader's own log counts once its disk reports it durable, and raft-rs unwraps the
// leader's own progress when it does. A leader whose removal is applied while later batches
// of its log are still being written must not panic when they are reported (the
// real-cluster harness's `member` nemesis hit it: raft.rs `on_persist_entries`).
#[test]
fn a_leader_removed_before_its_disk_catches_up_does_not_panic() {
    let mut c = start(&[1, 2, 3]);
    let leader = c.the_leader();
    c.slow_disks.insert(leader);
    let remove = Request::MemberRemove(MemberRemoveRequest { id: leader });
    propose(&mut c, leader, 9001, remove);
    for (token, key) in [(9002, "during-1"), (9003, "during-2")] {
        propose(&mut c, leader, token, common::put(key, "v"));
    }
    // The followers make the removal and the puts a quorum on their own; the leader applies
    // each as its disk reports it, cut off meanwhile, so that it is still leader (its
    // hand-over cannot reach anyone) when the batches after its removal are reported.
    c.isolated.insert(leader);
    let mut released = 0;
    while c.release_persisted(leader) {
        released += 1;
    }
    c.isolated.remove(&leader);
    assert!(released >= 3, "the leader wrote its batches ({released})");
    assert!(
        matches!(c.take_reply(9001), Ok(Response::MemberRemove(_))),
        "the removal is answered"
    );
    assert!(c.nodes[&leader].is_removed(), "the leader is removed");
    c.nodes.remove(&leader);
    c.tick_until(TICKS_MAX, |c| c.leader().is_some());
    put(&mut c, "after");
}

// A leader that applied its own removal is no voter any more, yet raft-rs keeps it leader
// while it hands over: an append response that then moves the quorum of the remaining voters
// makes raft-rs commit and unwrap the leader's own (removed) progress, a panic (raft.rs
// `maybe_commit`; the real-cluster harness's `member` nemesis hit it, seed 21). Here the
// leader's log has a put after its removal, the hand-over target has it, the other voter is
// cut off; when that voter comes back and acknowledges the put, the put commits.
#[test]
fn a_removed_leader_does_not_panic_when_a_later_entry_commits() {
    let mut c = start(&[1, 2, 3]);
    let leader = c.the_leader();
    let others: Vec<u64> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    let (target, cut) = (others[0], others[1]);
    c.isolated.insert(cut);
    c.slow_disks.insert(leader);
    let remove = Request::MemberRemove(MemberRemoveRequest { id: leader });
    propose(&mut c, leader, 9001, remove);
    propose(&mut c, leader, 9002, common::put("after-removal", "v"));
    // The leader's disk reports its batches: its own log counts, the removal commits with
    // the target's acknowledgement and is applied; the put waits for a second voter.
    while c.release_persisted(leader) {}
    assert!(
        c.nodes[&leader].is_removed(),
        "the leader applied its removal"
    );
    // The target got the leader's TimeoutNow and campaigns at a higher term; cut off now, so
    // that the leader is still leader when the other voter, back, acknowledges the put.
    c.isolated.insert(target);
    c.isolated.remove(&cut);
    for _ in 0..TICKS_MAX {
        c.tick();
        if c.has_reply(9002) || c.leader().is_some_and(|l| l != leader) {
            break;
        }
    }
    c.nodes.remove(&leader);
    c.isolated.remove(&target);
    c.tick_until(TICKS_MAX, |c| c.leader().is_some());
    assert_ne!(c.the_leader(), leader, "a remaining voter leads");
    put(&mut c, "after");
    caught_up(&mut c, &[target, cut]);
}
