//! The raft node, driven sans-I/O: inputs in, exact outputs checked.
//!
//! The harness's perfect disk keeps what `Output::Persist` asks for, so recovery can be
//! replayed.

mod common;

use common::{put, range as get, sends_messages, value, Cluster, Disk, TestConfig, CLUSTER_ID};
use keel_engine::node::{Input, Output, Recovered, Request, Response};
use keel_proto::etcdserverpb::PutRequest;

const MEMBER: u64 = 0x11;

/// A request in a one-member cluster is answered before any tick.
const SOLO_TICKS: usize = 1;

fn config(seed: u64) -> TestConfig {
    TestConfig::new(MEMBER, &[MEMBER]).seed(seed)
}

/// A one-member cluster on `disk`, settled.
fn start(seed: u64, disk: Disk) -> Cluster {
    Cluster::single_from(config(seed), disk)
}

/// Sends `request` with `token` and returns the reply, which comes without a tick.
fn request(
    c: &mut Cluster,
    token: u64,
    request: Request,
) -> Result<Response, keel_engine::error::Error> {
    c.request_with(MEMBER, token, request, SOLO_TICKS)
}

// Reference: Raft §5.3 — an entry is committed once stored on a majority (here: this member's
// disk), and only committed entries are applied and answered.
#[test]
fn a_put_is_answered_only_after_its_entry_is_persisted() {
    let mut c = start(1, Disk::default());
    assert_eq!(
        c.node(MEMBER).status().leader,
        MEMBER,
        "a one-member cluster leads itself at once"
    );

    c.node_mut(MEMBER).step(Input::Request {
        token: 7,
        request: put("a", "1"),
    });
    let outputs = c.node_mut(MEMBER).take_outputs();
    assert_eq!(
        outputs.len(),
        1,
        "only a persist request before the disk answers: {outputs:?}"
    );
    let Output::Persist(batch) = &outputs[0] else {
        panic!("expected Persist, got {outputs:?}")
    };
    assert_eq!(batch.entries.len(), 1);
    assert!(
        !batch.entries[0].data.is_empty(),
        "the entry carries the put"
    );

    // The disk has not answered: no reply however long we wait.
    c.node_mut(MEMBER).step(Input::Tick);
    assert!(
        c.node_mut(MEMBER)
            .take_outputs()
            .iter()
            .all(|o| !matches!(o, Output::Reply { .. })),
        "no reply before the entry is durable"
    );

    c.disks.entry(MEMBER).or_default().write(batch);
    c.node_mut(MEMBER).step(Input::Persisted {
        number: batch.number,
    });
    let outputs = c.node_mut(MEMBER).take_outputs();
    let reply = outputs.iter().find_map(|o| match o {
        Output::Reply {
            token: 7,
            result: Ok(Response::Put(p)),
        } => Some(p.clone()),
        _ => None,
    });
    let header = reply
        .expect("the put is answered once durable")
        .header
        .expect("header");
    assert_eq!(
        (header.revision, header.member_id, header.cluster_id),
        (2, MEMBER, CLUSTER_ID)
    );
    assert!(header.raft_term >= 1);
}

// Reference: Raft §8 — a linearizable read waits for the leader to confirm its read index and
// for the state machine to reach it; a serializable read is answered from local state at once.
#[test]
fn linearizable_reads_go_through_read_index_and_serializable_reads_do_not() {
    let mut c = start(2, Disk::default());
    assert!(request(&mut c, 1, put("k", "v")).is_ok());

    c.node_mut(MEMBER).step(Input::Request {
        token: 2,
        request: get("k", true),
    });
    let outputs = c.node_mut(MEMBER).take_outputs();
    assert!(
        matches!(
            outputs.as_slice(),
            [Output::Reply {
                token: 2,
                result: Ok(_)
            }]
        ),
        "serializable: answered in the same step, {outputs:?}"
    );

    assert_eq!(
        value(request(&mut c, 3, get("k", false))),
        Some(b"v".to_vec())
    );
    assert_eq!(value(request(&mut c, 4, get("missing", false))), None);
}

#[test]
fn many_reads_share_a_read_index_round_and_all_are_answered() {
    let mut c = start(3, Disk::default());
    assert!(request(&mut c, 1, put("k", "v")).is_ok());
    for token in 10..60 {
        c.node_mut(MEMBER).step(Input::Request {
            token,
            request: get("k", false),
        });
    }
    c.settle();
    let answered: Vec<u64> = c.replies.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        answered,
        (10..60).collect::<Vec<_>>(),
        "every read answered, in order"
    );
}

// The driver steps the requests of one loop turn together: their linearizable reads share
// one ReadIndex round, even on one member (whose leader confirms a round at once), and each
// is answered as if stepped alone.
#[test]
fn requests_stepped_together_share_one_read_index_round() {
    let mut c = start(6, Disk::default());
    assert!(request(&mut c, 1, put("k", "v")).is_ok());
    let before = c.node(MEMBER).gauges();
    let reads: Vec<Input> = (10..15)
        .map(|token| Input::Request {
            token,
            request: get("k", false),
        })
        .collect();
    c.node_mut(MEMBER).step_requests(reads);
    let outputs = c.node_mut(MEMBER).take_outputs();
    let answered: Vec<u64> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Reply {
                token,
                result: Ok(r),
            } if value(Ok(r.clone())) == Some(b"v".to_vec()) => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(
        answered,
        (10..15).collect::<Vec<_>>(),
        "every read answered with the value, in order, in the same step: {outputs:?}"
    );
    let after = c.node(MEMBER).gauges();
    assert_eq!(
        (
            after.linearizable_reads - before.linearizable_reads,
            after.read_index_rounds - before.read_index_rounds
        ),
        (5, 1),
        "five reads, one round"
    );
}

#[test]
fn a_restarted_member_recovers_every_acknowledged_write_from_its_log() {
    let mut c = start(4, Disk::default());
    for i in 0..50 {
        assert!(request(&mut c, i, put(&format!("k{}", i % 7), &format!("v{i}"))).is_ok());
    }
    let revision = c.node(MEMBER).status().revision;
    let disk = c.disks[&MEMBER].clone();

    let mut again = start(5, disk);
    assert_eq!(
        again.node(MEMBER).status().revision,
        revision,
        "same revision after replay"
    );
    for k in 0..7 {
        let last = (0..50).filter(|i| i % 7 == k).max().expect("some write");
        let got = value(request(&mut again, 100 + k, get(&format!("k{k}"), false)));
        assert_eq!(got, Some(format!("v{last}").into_bytes()));
    }
    // A new write continues the revision sequence.
    match request(&mut again, 200, put("new", "x")) {
        Ok(Response::Put(p)) => assert_eq!(p.header.expect("header").revision, revision + 1),
        other => panic!("expected a put response, got {other:?}"),
    }
}

/// Ticks a request or an election in the three-member cluster may take.
const CLUSTER_TICKS: usize = 400;

/// What a three-member run produced: every output of every member in order, and the random
/// choices that reached the clients.
struct Run {
    trace: Vec<String>,
    lease_id: i64,
    member_id: u64,
}

/// Three members whose seeds derive from `seed` elect a leader (seeded election timeouts),
/// grant a lease (the leader picks its id), write with it on the leader, read linearizably
/// on a follower (ReadIndex), add a learner (the leader picks its id), and tick on until
/// the lease expires. Every output is recorded.
fn three_member_run(seed: u64) -> Run {
    use keel_proto::etcdserverpb::{LeaseGrantRequest, MemberAddRequest};
    const IDS: [u64; 3] = [1, 2, 3];
    let mut c = Cluster::new(&IDS, move |id| {
        TestConfig::new(id, &IDS).seed(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    });
    c.record_trace();
    c.tick_until(CLUSTER_TICKS, |c| c.leader().is_some());
    let leader = c.the_leader();
    let follower = *IDS.iter().find(|&&id| id != leader).expect("a follower");
    let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 3, id: 0 });
    let lease_id = match c.request(leader, grant, CLUSTER_TICKS) {
        Ok(Response::LeaseGrant(g)) => g.id,
        other => panic!("expected a grant, got {other:?}"),
    };
    for i in 0..10 {
        let leased = Request::Put(PutRequest {
            key: format!("k{}", i % 4).into(),
            value: format!("v{i}").into(),
            lease: if i % 2 == 0 { lease_id } else { 0 },
            ..Default::default()
        });
        c.request(leader, leased, CLUSTER_TICKS).expect("put");
        let read = c.request(follower, get(&format!("k{}", i % 4), false), CLUSTER_TICKS);
        assert_eq!(value(read), Some(format!("v{i}").into_bytes()), "read {i}");
    }
    let add = Request::MemberAdd(MemberAddRequest {
        peer_ur_ls: vec![common::peer_url(4)],
        is_learner: true,
    });
    let member_id = match c.request(leader, add, CLUSTER_TICKS) {
        Ok(Response::MemberAdd(r)) => r.member.expect("the new member").id,
        other => panic!("expected MemberAdd, got {other:?}"),
    };
    c.ticks(40);
    let mut trace = c.trace.take().expect("recorded");
    trace.extend(c.nodes.values().map(|n| format!("{:?}", n.status())));
    Run {
        trace,
        lease_id,
        member_id,
    }
}

/// The first line at which two traces differ, if they do.
fn first_difference(a: &[String], b: &[String]) -> Option<(usize, String, String)> {
    let at = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))?;
    let line = |t: &[String]| t.get(at).cloned().unwrap_or_else(|| "<end>".into());
    Some((at, line(a), line(b)))
}

#[test]
fn same_seed_and_inputs_give_identical_outputs() {
    let first = three_member_run(9);
    assert!(
        first.trace.len() > 100,
        "the run did something: {} outputs",
        first.trace.len()
    );
    let again = three_member_run(9);
    assert_eq!(
        first_difference(&first.trace, &again.trace),
        None,
        "same seed, same inputs: the traces differ"
    );
    assert_eq!(
        (first.lease_id, first.member_id),
        (again.lease_id, again.member_id)
    );
    // The test can fail: the seed reaches the outputs.
    let other = three_member_run(10);
    assert_ne!(
        first.lease_id, other.lease_id,
        "the leader picks lease ids from its seed"
    );
    assert_ne!(
        first.member_id, other.member_id,
        "the leader picks member ids from its seed"
    );
    assert!(
        first_difference(&first.trace, &other.trace).is_some(),
        "another seed, yet the same trace"
    );
}

#[test]
fn election_timeout_is_drawn_from_the_seed_not_from_raft() {
    // Followers of a (would-be) three-member cluster: they never hear a leader, so each
    // campaigns after its own seeded timeout, in [election_ticks, 2 * election_ticks).
    let ticks_until_campaign = |seed: u64| {
        let mut node = TestConfig::new(MEMBER, &[MEMBER, 0x22, 0x33])
            .seed(seed)
            .start(Recovered::default())
            .expect("starts");
        for tick in 1..=100u64 {
            node.step(Input::Tick);
            let campaigned = node.take_outputs().iter().any(sends_messages);
            if campaigned {
                return tick;
            }
        }
        panic!("seed {seed}: never campaigned");
    };
    let timeouts: Vec<u64> = (0..40).map(ticks_until_campaign).collect();
    for (seed, t) in timeouts.iter().enumerate() {
        assert!(
            (10..=20).contains(t),
            "seed {seed}: campaigned after {t} ticks"
        );
        assert_eq!(
            *t,
            ticks_until_campaign(seed as u64),
            "seed {seed}: not deterministic"
        );
    }
    let distinct: std::collections::BTreeSet<_> = timeouts.iter().collect();
    assert!(
        distinct.len() >= 5,
        "timeouts should spread over the range: {timeouts:?}"
    );
}

#[test]
fn the_leader_expires_a_lease_through_the_log_after_its_ttl_and_not_before() {
    use keel_proto::etcdserverpb::{LeaseGrantRequest, LeaseTimeToLiveRequest};
    let mut h = start(6, Disk::default());
    // TTL 1 s asks for less than etcd's minimum (1.5 × 1 s election timeout → 2 s).
    let id = match request(
        &mut h,
        1,
        Request::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 0 }),
    ) {
        Ok(Response::LeaseGrant(g)) => {
            assert_eq!(g.ttl, 2, "granted the minimum TTL");
            g.id
        }
        other => panic!("expected a grant, got {other:?}"),
    };
    let leased = PutRequest {
        key: "eph".into(),
        value: "x".into(),
        lease: id,
        ..Default::default()
    };
    assert!(request(&mut h, 2, Request::Put(leased)).is_ok());
    let revision = h.node(MEMBER).status().revision;

    for _ in 0..19 {
        h.tick(); // 100 ms each
    }
    assert_eq!(
        value(request(&mut h, 3, get("eph", false))),
        Some(b"x".to_vec()),
        "1.9 s: alive"
    );
    for _ in 0..2 {
        h.tick();
    }
    assert_eq!(
        value(request(&mut h, 4, get("eph", false))),
        None,
        "2.1 s: revoked, key deleted"
    );
    assert_eq!(
        h.node(MEMBER).status().revision,
        revision + 1,
        "one revision for the revoke"
    );
    let ttl = LeaseTimeToLiveRequest { id, keys: true };
    match request(&mut h, 5, Request::LeaseTimeToLive(ttl)) {
        Ok(Response::LeaseTimeToLive(t)) => assert_eq!(t.ttl, -1, "gone"),
        other => panic!("expected time-to-live, got {other:?}"),
    }

    // The revoke is in the log: a restarted member agrees, without waiting for any clock.
    let again = start(7, h.disks[&MEMBER].clone());
    assert_eq!(again.node(MEMBER).status().revision, revision + 1);
}

// Regression (found by keel-sim): a Ready with nothing to persist must not mark earlier,
// still-unwritten batches durable. raft-rs's `on_persist_ready(n)` means "every Ready up to n".
#[test]
fn a_read_behind_an_unwritten_put_does_not_make_the_put_durable() {
    let mut h = start(8, Disk::default());
    h.node_mut(MEMBER).step(Input::Request {
        token: 1,
        request: put("a", "1"),
    });
    let outputs = h.node_mut(MEMBER).take_outputs();
    let Some(Output::Persist(put_batch)) = outputs.into_iter().next() else {
        panic!("expected the put's persist batch");
    };
    // The WAL has not written the put. A linearizable read arrives: its ReadIndex round makes
    // Readies that persist nothing.
    h.node_mut(MEMBER).step(Input::Request {
        token: 2,
        request: get("a", false),
    });
    for _ in 0..3 {
        h.node_mut(MEMBER).step(Input::Tick);
    }
    let early: Vec<Output> = h.node_mut(MEMBER).take_outputs();
    assert!(
        !early
            .iter()
            .any(|o| matches!(o, Output::Reply { token: 1, .. })),
        "the put was answered before its entry was written: {early:?}"
    );
    // Once the disk reports the put durable, it is answered. The read ran concurrently with
    // the unacknowledged put, so either answer is linearizable; it must be answered.
    for out in early {
        h.handle(MEMBER, out);
    }
    h.disks.entry(MEMBER).or_default().write(&put_batch);
    h.node_mut(MEMBER).step(Input::Persisted {
        number: put_batch.number,
    });
    h.settle();
    let tokens: Vec<u64> = h.replies.iter().map(|(t, _)| *t).collect();
    assert!(
        tokens.contains(&1) && tokens.contains(&2),
        "both answered: {tokens:?}"
    );
    assert_eq!(
        value(request(&mut h, 3, get("a", false))),
        Some(b"1".to_vec()),
        "after the ack"
    );
}
