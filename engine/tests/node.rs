//! The raft node, driven sans-I/O: inputs in, exact outputs checked.
//!
//! A tiny in-test "disk" keeps what `Output::Persist` asks for, so recovery can be replayed.

use keel_engine::bugs::Bugs;
use keel_engine::node::{
    Input, Node, NodeConfig, Output, PersistBatch, Recovered, Request, Response, WatchConfig,
};
use keel_proto::etcdserverpb::{PutRequest, RangeRequest};
use raft::eraftpb::{Entry, HardState};

const MEMBER: u64 = 0x11;

fn config(seed: u64) -> NodeConfig {
    NodeConfig {
        member_id: MEMBER,
        cluster_id: 0xc1,
        voters: vec![MEMBER],
        election_ticks: 10,
        heartbeat_ticks: 1,
        tick_ms: 100,
        seed,
        incarnation: 1,
        snapshot_count: keel_engine::node::SNAPSHOT_COUNT_DEFAULT,
        initial_members: Vec::new(),
        name: String::new(),
        client_urls: Vec::new(),
        joining: false,
        watch: WatchConfig::default(),
        bugs: Bugs::none(),
    }
}

/// What a perfect disk would hold: the log with raft's overwrite rule, and the hard state.
#[derive(Default, Clone)]
struct Disk {
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
}

impl Disk {
    fn write(&mut self, batch: &PersistBatch) {
        for e in &batch.entries {
            self.entries.truncate((e.index - 1) as usize);
            self.entries.push(e.clone());
        }
        if let Some(hs) = &batch.hard_state {
            self.hard_state = Some(hs.clone());
        }
    }

    fn recovered(&self) -> Recovered {
        Recovered {
            snapshot: None,
            hard_state: self.hard_state.clone(),
            entries: self.entries.clone(),
        }
    }
}

/// Runs a node against a perfect disk: every Persist is written and acknowledged at once.
struct Harness {
    node: Node,
    disk: Disk,
    replies: Vec<(u64, Result<Response, keel_engine::error::Error>)>,
}

impl Harness {
    fn start(seed: u64, disk: Disk) -> Harness {
        let node = Node::new(config(seed), disk.recovered()).expect("node starts");
        let mut h = Harness {
            node,
            disk,
            replies: Vec::new(),
        };
        h.settle();
        h
    }

    /// Handles outputs until none are left, acknowledging every persist batch.
    fn settle(&mut self) {
        for _ in 0..100 {
            let outputs = self.node.take_outputs();
            if outputs.is_empty() {
                return;
            }
            for out in outputs {
                match out {
                    Output::Persist(batch) => {
                        self.disk.write(&batch);
                        assert!(batch.then_send.is_empty(), "one member sends nothing");
                        self.node.step(Input::Persisted {
                            number: batch.number,
                        });
                    }
                    Output::Send(msgs) => panic!("a one-member cluster sent {msgs:?}"),
                    Output::Reply { token, result } => self.replies.push((token, result)),
                    Output::Watch(w) => panic!("no watches here, yet {w:?}"),
                    Output::SaveSnapshot(_) | Output::Fatal(_) => {}
                    Output::Members { members: m, .. } => {
                        panic!("no member changes here, yet {m:?}")
                    }
                }
            }
        }
        panic!("outputs never settled");
    }

    fn request(
        &mut self,
        token: u64,
        request: Request,
    ) -> Result<Response, keel_engine::error::Error> {
        self.node.step(Input::Request { token, request });
        self.settle();
        let i = self
            .replies
            .iter()
            .position(|(t, _)| *t == token)
            .expect("a reply");
        self.replies.remove(i).1
    }
}

fn put(key: &str, value: &str) -> Request {
    Request::Put(PutRequest {
        key: key.to_owned().into(),
        value: value.to_owned().into(),
        ..Default::default()
    })
}

fn get(key: &str, serializable: bool) -> Request {
    Request::Range(RangeRequest {
        key: key.to_owned().into(),
        serializable,
        ..Default::default()
    })
}

fn value(result: Result<Response, keel_engine::error::Error>) -> Option<Vec<u8>> {
    match result.expect("ok") {
        Response::Range(r) => r.kvs.first().map(|kv| kv.value.to_vec()),
        other => panic!("expected a range response, got {other:?}"),
    }
}

// Reference: Raft §5.3 — an entry is committed once stored on a majority (here: this member's
// disk), and only committed entries are applied and answered.
#[test]
fn a_put_is_answered_only_after_its_entry_is_persisted() {
    let mut h = Harness::start(1, Disk::default());
    assert_eq!(
        h.node.status().leader,
        MEMBER,
        "a one-member cluster leads itself at once"
    );

    h.node.step(Input::Request {
        token: 7,
        request: put("a", "1"),
    });
    let outputs = h.node.take_outputs();
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
    h.node.step(Input::Tick);
    assert!(
        h.node
            .take_outputs()
            .iter()
            .all(|o| !matches!(o, Output::Reply { .. })),
        "no reply before the entry is durable"
    );

    h.disk.write(batch);
    h.node.step(Input::Persisted {
        number: batch.number,
    });
    let outputs = h.node.take_outputs();
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
        (2, MEMBER, 0xc1)
    );
    assert!(header.raft_term >= 1);
}

// Reference: Raft §8 — a linearizable read waits for the leader to confirm its read index and
// for the state machine to reach it; a serializable read is answered from local state at once.
#[test]
fn linearizable_reads_go_through_read_index_and_serializable_reads_do_not() {
    let mut h = Harness::start(2, Disk::default());
    assert!(h.request(1, put("k", "v")).is_ok());

    h.node.step(Input::Request {
        token: 2,
        request: get("k", true),
    });
    let outputs = h.node.take_outputs();
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

    assert_eq!(value(h.request(3, get("k", false))), Some(b"v".to_vec()));
    assert_eq!(value(h.request(4, get("missing", false))), None);
}

#[test]
fn many_reads_share_a_read_index_round_and_all_are_answered() {
    let mut h = Harness::start(3, Disk::default());
    assert!(h.request(1, put("k", "v")).is_ok());
    for token in 10..60 {
        h.node.step(Input::Request {
            token,
            request: get("k", false),
        });
    }
    h.settle();
    let answered: Vec<u64> = h.replies.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        answered,
        (10..60).collect::<Vec<_>>(),
        "every read answered, in order"
    );
}

#[test]
fn a_restarted_member_recovers_every_acknowledged_write_from_its_log() {
    let mut h = Harness::start(4, Disk::default());
    for i in 0..50 {
        assert!(h
            .request(i, put(&format!("k{}", i % 7), &format!("v{i}")))
            .is_ok());
    }
    let revision = h.node.status().revision;
    let disk = h.disk.clone();

    let mut again = Harness::start(5, disk);
    assert_eq!(
        again.node.status().revision,
        revision,
        "same revision after replay"
    );
    for k in 0..7 {
        let last = (0..50).filter(|i| i % 7 == k).max().expect("some write");
        let got = value(again.request(100 + k, get(&format!("k{k}"), false)));
        assert_eq!(got, Some(format!("v{last}").into_bytes()));
    }
    // A new write continues the revision sequence.
    match again.request(200, put("new", "x")) {
        Ok(Response::Put(p)) => assert_eq!(p.header.expect("header").revision, revision + 1),
        other => panic!("expected a put response, got {other:?}"),
    }
}

#[test]
fn same_seed_and_inputs_give_identical_outputs() {
    let run = |seed: u64| {
        let mut h = Harness::start(seed, Disk::default());
        let mut trace = Vec::new();
        for i in 0..30u64 {
            h.node.step(Input::Tick);
            trace.push(format!(
                "{:?}",
                h.request(i, put(&format!("k{}", i % 3), "v"))
            ));
            trace.push(format!("{:?}", h.node.status()));
        }
        trace
    };
    assert_eq!(run(9), run(9));
}

#[test]
fn election_timeout_is_drawn_from_the_seed_not_from_raft() {
    // Followers of a (would-be) three-member cluster: they never hear a leader, so each
    // campaigns after its own seeded timeout, in [election_ticks, 2 * election_ticks).
    let ticks_until_campaign = |seed: u64| {
        let cfg = NodeConfig {
            voters: vec![MEMBER, 0x22, 0x33],
            ..config(seed)
        };
        let mut node = Node::new(cfg, Recovered::default()).expect("starts");
        for tick in 1..=100u64 {
            node.step(Input::Tick);
            let campaigned = node.take_outputs().into_iter().any(|o| match o {
                Output::Send(msgs) => !msgs.is_empty(),
                Output::Persist(b) => !b.then_send.is_empty(),
                Output::Reply { .. }
                | Output::Watch(_)
                | Output::Members { .. }
                | Output::SaveSnapshot(_)
                | Output::Fatal(_) => false,
            });
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
    let mut h = Harness::start(6, Disk::default());
    // TTL 1 s asks for less than etcd's minimum (1.5 × 1 s election timeout → 2 s).
    let id = match h.request(1, Request::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 0 })) {
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
    assert!(h.request(2, Request::Put(leased)).is_ok());
    let revision = h.node.status().revision;

    for _ in 0..19 {
        h.node.step(Input::Tick); // 100 ms each
        h.settle();
    }
    assert_eq!(
        value(h.request(3, get("eph", false))),
        Some(b"x".to_vec()),
        "1.9 s: alive"
    );
    for _ in 0..2 {
        h.node.step(Input::Tick);
        h.settle();
    }
    assert_eq!(
        value(h.request(4, get("eph", false))),
        None,
        "2.1 s: revoked, key deleted"
    );
    assert_eq!(
        h.node.status().revision,
        revision + 1,
        "one revision for the revoke"
    );
    let ttl = LeaseTimeToLiveRequest { id, keys: true };
    match h.request(5, Request::LeaseTimeToLive(ttl)) {
        Ok(Response::LeaseTimeToLive(t)) => assert_eq!(t.ttl, -1, "gone"),
        other => panic!("expected time-to-live, got {other:?}"),
    }

    // The revoke is in the log: a restarted member agrees, without waiting for any clock.
    let again = Harness::start(7, h.disk.clone());
    assert_eq!(again.node.status().revision, revision + 1);
}

// Regression (found by keel-sim): a Ready with nothing to persist must not mark earlier,
// still-unwritten batches durable. raft-rs's `on_persist_ready(n)` means "every Ready up to n".
#[test]
fn a_read_behind_an_unwritten_put_does_not_make_the_put_durable() {
    let mut h = Harness::start(8, Disk::default());
    h.node.step(Input::Request {
        token: 1,
        request: put("a", "1"),
    });
    let outputs = h.node.take_outputs();
    let Some(Output::Persist(put_batch)) = outputs.into_iter().next() else {
        panic!("expected the put's persist batch");
    };
    // The WAL has not written the put. A linearizable read arrives: its ReadIndex round makes
    // Readies that persist nothing.
    h.node.step(Input::Request {
        token: 2,
        request: get("a", false),
    });
    for _ in 0..3 {
        h.node.step(Input::Tick);
    }
    let early: Vec<Output> = h.node.take_outputs();
    assert!(
        !early
            .iter()
            .any(|o| matches!(o, Output::Reply { token: 1, .. })),
        "the put was answered before its entry was written: {early:?}"
    );
    // Once the disk reports the put durable, it is answered. The read ran concurrently with
    // the unacknowledged put, so either answer is linearizable; it must be answered.
    for out in early {
        match out {
            Output::Persist(b) => {
                h.disk.write(&b);
                h.node.step(Input::Persisted { number: b.number });
            }
            Output::Reply { token, result } => h.replies.push((token, result)),
            Output::Send(m) => panic!("one member sends nothing: {m:?}"),
            Output::Watch(w) => panic!("no watches here, yet {w:?}"),
            Output::SaveSnapshot(_) | Output::Fatal(_) => {}
            Output::Members { members: m, .. } => panic!("no member changes here, yet {m:?}"),
        }
    }
    h.disk.write(&put_batch);
    h.node.step(Input::Persisted {
        number: put_batch.number,
    });
    h.settle();
    let tokens: Vec<u64> = h.replies.iter().map(|(t, _)| *t).collect();
    assert!(
        tokens.contains(&1) && tokens.contains(&2),
        "both answered: {tokens:?}"
    );
    assert_eq!(
        value(h.request(3, get("a", false))),
        Some(b"1".to_vec()),
        "after the ack"
    );
}
