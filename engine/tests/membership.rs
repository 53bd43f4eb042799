//! Membership changes through raft, on a cluster of engine nodes wired together in memory:
//! learners join and catch up by log replay, get promoted, voters are removed, every bad
//! request gets etcd's error, and every member ends with the same member table.

use std::collections::{BTreeMap, VecDeque};

use keel_engine::bugs::Bugs;
use keel_engine::error::Error;
use keel_engine::membership::Member;
use keel_engine::node::{
    Input, Node, NodeConfig, Output, Recovered, Request, Response, WatchConfig,
};
use keel_engine::raftpb::Message;
use keel_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, PutRequest, RangeRequest,
};

/// Ticks a request may take before the test gives up on it.
const TICKS_MAX: usize = 400;

fn peer_url(id: u64) -> String {
    format!("http://n{id}:2380")
}

fn client_url(id: u64) -> String {
    format!("http://n{id}:2379")
}

fn initial(ids: &[u64]) -> Vec<Member> {
    ids.iter()
        .map(|&id| Member {
            id,
            name: format!("n{id}"),
            peer_urls: vec![peer_url(id)],
            ..Member::default()
        })
        .collect()
}

fn config(id: u64, voters: &[u64], joining: bool) -> NodeConfig {
    NodeConfig {
        member_id: id,
        cluster_id: 0xc1,
        voters: voters.to_vec(),
        election_ticks: 10,
        heartbeat_ticks: 1,
        tick_ms: 100,
        seed: id.wrapping_mul(0x9e37_79b9) ^ 5,
        incarnation: 1,
        // Small, so that members joining late catch up through the leader's snapshot.
        snapshot_count: 25,
        initial_members: initial(voters),
        name: format!("n{id}"),
        client_urls: vec![client_url(id)],
        joining,
        watch: WatchConfig::default(),
        bugs: Bugs::none(),
    }
}

/// Members wired by a perfect network and perfect disks; `down` members hear nothing.
struct Cluster {
    bootstrap: Vec<u64>,
    nodes: BTreeMap<u64, Node>,
    messages: VecDeque<Message>,
    replies: BTreeMap<u64, Result<Response, Error>>,
    next_token: u64,
}

impl Cluster {
    fn start(ids: &[u64]) -> Cluster {
        let mut c = Cluster {
            bootstrap: ids.to_vec(),
            nodes: BTreeMap::new(),
            messages: VecDeque::new(),
            replies: BTreeMap::new(),
            next_token: 1,
        };
        for &id in ids {
            let node = Node::new(config(id, ids, false), Recovered::default()).expect("starts");
            c.nodes.insert(id, node);
        }
        c.tick_until(|c| c.leader().is_some());
        // Every member publishes its name and client URLs once it knows the leader.
        c.tick_until(|c| {
            c.nodes[&c.leader().unwrap_or(0)]
                .members()
                .members()
                .iter()
                .all(|m| !m.client_urls.is_empty())
        });
        c
    }

    /// A member added with MemberAdd starts (etcd's `--initial-cluster-state existing`).
    fn join(&mut self, id: u64) {
        let node = Node::new(config(id, &self.bootstrap, true), Recovered::default())
            .expect("a joining member starts");
        self.nodes.insert(id, node);
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .map(|n| n.status())
            .find(|s| s.leader == s.member_id)
            .map(|s| s.member_id)
    }

    /// Handles outputs and delivers messages until everything is quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut quiet = true;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                let outputs = self.nodes.get_mut(&id).map(Node::take_outputs);
                for out in outputs.unwrap_or_default() {
                    quiet = false;
                    self.handle(id, out);
                }
            }
            while let Some(m) = self.messages.pop_front() {
                quiet = false;
                if let Some(node) = self.nodes.get_mut(&m.to) {
                    node.step(Input::Peer(Box::new(m)));
                }
            }
            if quiet {
                return;
            }
        }
        panic!("the cluster never settled");
    }

    fn handle(&mut self, id: u64, out: Output) {
        match out {
            Output::Persist(batch) => {
                self.messages.extend(batch.then_send);
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.step(Input::Persisted {
                        number: batch.number,
                    });
                }
            }
            Output::Send(msgs) => self.messages.extend(msgs),
            Output::Reply { token, result } => {
                self.replies.insert(token, result);
            }
            Output::Watch(_) | Output::Members { .. } => {}
            Output::SaveSnapshot(job) => {
                let snapshot = job.into_snapshot();
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.step(Input::SnapshotSaved { snapshot });
                }
            }
            Output::Fatal(why) => panic!("member {id:x} stopped: {why}"),
        }
    }

    fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.step(Input::Tick);
        }
        self.settle();
    }

    fn tick_until(&mut self, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..TICKS_MAX {
            self.settle();
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("condition not reached in {TICKS_MAX} ticks");
    }

    fn request(&mut self, on: u64, request: Request) -> Result<Response, Error> {
        let token = self.next_token;
        self.next_token += 1;
        if let Some(node) = self.nodes.get_mut(&on) {
            node.step(Input::Request { token, request });
        }
        self.tick_until(|c| c.replies.contains_key(&token));
        self.replies.remove(&token).expect("a reply")
    }

    fn on_leader(&mut self, request: Request) -> Result<Response, Error> {
        let leader = self.leader().expect("a leader");
        self.request(leader, request)
    }

    fn put(&mut self, key: &str) {
        let put = Request::Put(PutRequest {
            key: key.to_owned().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        });
        self.on_leader(put).expect("put");
    }

    /// Every member's table as bytes, by member.
    fn tables(&self) -> BTreeMap<u64, Vec<u8>> {
        self.nodes
            .iter()
            .map(|(id, n)| (*id, n.members().encode()))
            .collect()
    }

    /// Waits until every live member applied as far as the leader.
    fn caught_up(&mut self, ids: &[u64]) {
        let ids = ids.to_vec();
        self.tick_until(move |c| {
            let leader = c.leader().map(|l| c.nodes[&l].status().raft_applied_index);
            ids.iter()
                .all(|id| Some(c.nodes[id].status().raft_applied_index) == leader)
        });
    }
}

fn add(peer: &str, is_learner: bool) -> Request {
    Request::MemberAdd(MemberAddRequest {
        peer_ur_ls: vec![peer.to_string()],
        is_learner,
    })
}

fn added_id(response: Result<Response, Error>) -> u64 {
    match response.expect("member added") {
        Response::MemberAdd(r) => r.member.expect("the new member").id,
        other => panic!("expected MemberAdd, got {other:?}"),
    }
}

fn range(key: &str, serializable: bool) -> Request {
    Request::Range(RangeRequest {
        key: key.to_owned().into(),
        serializable,
        ..Default::default()
    })
}

#[test]
fn a_learner_joins_catches_up_is_promoted_and_a_voter_is_removed() {
    let mut c = Cluster::start(&[1, 2, 3]);
    for i in 0..20 {
        c.put(&format!("k{i}"));
    }
    let new = added_id(c.on_leader(add("http://n4:2380", true)));
    let listed = match c.request(2, Request::MemberList(MemberListRequest::default())) {
        Ok(Response::MemberList(l)) => l.members,
        other => panic!("member list: {other:?}"),
    };
    let learner = listed.iter().find(|m| m.id == new).expect("listed");
    assert!(learner.is_learner && learner.name.is_empty() && learner.client_ur_ls.is_empty());

    c.join(new);
    c.caught_up(&[1, 2, 3, new]);
    assert!(c.nodes[&new].status().is_learner);
    assert_eq!(
        c.nodes[&new].store().hash_kv(0),
        c.nodes[&1].store().hash_kv(0)
    );
    // A learner serves serializable reads only (etcd's `isRPCSupportedForLearner`).
    assert!(c.request(new, range("k1", true)).is_ok());
    assert_eq!(
        c.request(new, range("k1", false)),
        Err(Error::NotSupportedForLearner)
    );
    // The new member published its name and client URLs; every member knows them.
    c.tick_until(|c| {
        c.nodes.values().all(|n| {
            n.members()
                .get(new)
                .is_some_and(|m| m.name == format!("n{new}"))
        })
    });

    let promoted = c.on_leader(Request::MemberPromote(MemberPromoteRequest { id: new }));
    assert!(
        matches!(promoted, Ok(Response::MemberPromote(_))),
        "{promoted:?}"
    );
    c.caught_up(&[1, 2, 3, new]);
    assert!(!c.nodes[&new].status().is_learner);

    let removed = c.on_leader(Request::MemberRemove(MemberRemoveRequest { id: 3 }));
    match removed {
        Ok(Response::MemberRemove(r)) => assert_eq!(r.members.len(), 3),
        other => panic!("member remove: {other:?}"),
    }
    c.caught_up(&[1, 2, new]);
    assert!(c.nodes[&3].is_removed());
    c.nodes.remove(&3);
    c.put("after-remove");
    c.caught_up(&[1, 2, new]);
    let tables = c.tables();
    assert!(tables.values().all(|t| *t == tables[&1]), "tables differ");
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
    let mut c = Cluster::start(&[1, 2, 3]);
    assert_eq!(
        c.on_leader(add(&peer_url(2), false)),
        Err(Error::PeerUrlExist)
    );
    assert_eq!(
        c.on_leader(add("notaurl", false)),
        Err(Error::MemberBadUrls)
    );
    assert_eq!(
        c.on_leader(add("http://n9", false)),
        Err(Error::MemberBadUrls)
    );
    let learner = added_id(c.on_leader(add("http://n4:2380", true)));
    assert_eq!(
        c.on_leader(add("http://n5:2380", true)),
        Err(Error::TooManyLearners)
    );
    // The learner never started, so it is not in sync with the leader.
    let promote = |id| Request::MemberPromote(MemberPromoteRequest { id });
    assert_eq!(c.on_leader(promote(learner)), Err(Error::LearnerNotReady));
    assert_eq!(c.on_leader(promote(2)), Err(Error::MemberNotLearner));
    assert_eq!(c.on_leader(promote(0x99)), Err(Error::MemberNotFound));
    let remove = |id| Request::MemberRemove(MemberRemoveRequest { id });
    assert_eq!(c.on_leader(remove(0x99)), Err(Error::MemberNotFound));
    let update = |id, url: &str| {
        Request::MemberUpdate(MemberUpdateRequest {
            id,
            peer_ur_ls: vec![url.to_string()],
        })
    };
    assert_eq!(
        c.on_leader(update(0x99, "http://x:1")),
        Err(Error::MemberNotFound)
    );
    assert_eq!(
        c.on_leader(update(1, &peer_url(2))),
        Err(Error::PeerUrlExist)
    );
    // Two voters that never start: five voters, three started, still a quorum; a sixth would
    // leave three started of six (etcd's strict reconfiguration check).
    c.on_leader(remove(learner)).expect("learner removed");
    added_id(c.on_leader(add("http://n6:2380", false)));
    added_id(c.on_leader(add("http://n7:2380", false)));
    assert_eq!(
        c.on_leader(add("http://n8:2380", false)),
        Err(Error::MemberNotEnoughStarted)
    );
    // A removed member's id never comes back.
    assert_eq!(c.on_leader(remove(learner)), Err(Error::MemberNotFound));
    let tables = c.tables();
    assert!(tables.values().all(|t| *t == tables[&1]), "tables differ");
}

#[test]
fn member_update_changes_peer_urls_everywhere() {
    let mut c = Cluster::start(&[1, 2, 3]);
    let updated = c.on_leader(Request::MemberUpdate(MemberUpdateRequest {
        id: 2,
        peer_ur_ls: vec!["http://n2-new:2380".into()],
    }));
    match updated {
        Ok(Response::MemberUpdate(r)) => {
            let m = r.members.iter().find(|m| m.id == 2).expect("listed");
            assert_eq!(m.peer_ur_ls, vec!["http://n2-new:2380".to_string()]);
            assert_eq!(m.client_ur_ls, vec![client_url(2)]);
        }
        other => panic!("member update: {other:?}"),
    }
    c.caught_up(&[1, 2, 3]);
    let tables = c.tables();
    assert!(tables.values().all(|t| *t == tables[&1]), "tables differ");
}

#[test]
fn a_restarted_member_rebuilds_its_table_from_the_log() {
    // Replaying the log (as after a restart) yields the same table: it is a function of the
    // applied entries only.
    let mut c = Cluster::start(&[1, 2, 3]);
    added_id(c.on_leader(add("http://n4:2380", true)));
    c.caught_up(&[1, 2, 3]);
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
    let mut c = Cluster::start(&[1, 2, 3]);
    let leader = c.leader().expect("a leader");
    let removed = c.on_leader(Request::MemberRemove(MemberRemoveRequest { id: leader }));
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
    c.put("after-leader-removed");
    let left: Vec<u64> = c.nodes.keys().copied().collect();
    c.caught_up(&left);
    let tables = c.tables();
    assert!(
        tables.values().all(|t| *t == tables[&left[0]]),
        "tables differ"
    );
}
