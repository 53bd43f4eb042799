//! Snapshots and log compaction, driven sans-I/O: a member makes snapshots every
//! `snapshot_count` entries, compacts its log, restarts from snapshot + log, and a follower
//! cut off while the log moved on catches up by installing the leader's snapshot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use keel_engine::bugs::Bugs;
use keel_engine::node::{
    Input, Node, NodeConfig, Output, PersistBatch, Recovered, Request, Response, WatchConfig,
};
use keel_proto::etcdserverpb::{LeaseGrantRequest, PutRequest};
use raft::eraftpb::{Entry, HardState, Message, MessageType, Snapshot};

/// What a perfect disk holds: the newest snapshot, the log after it and the hard state.
#[derive(Default, Clone)]
struct Disk {
    snapshot: Option<Snapshot>,
    /// (index, entry), contiguous.
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
}

impl Disk {
    fn write(&mut self, batch: &PersistBatch) {
        if let Some(s) = &batch.snapshot {
            self.snapshot = Some(s.clone());
            self.entries.clear(); // the WAL's snapshot mark replaces the log
        }
        for e in &batch.entries {
            self.entries.retain(|x| x.index < e.index);
            self.entries.push(e.clone());
        }
        if let Some(hs) = &batch.hard_state {
            self.hard_state = Some(hs.clone());
        }
    }

    /// The node's own snapshot is durable; the log before it may go (as the WAL releases
    /// segments), which proves a restart does not need it.
    fn save(&mut self, s: &Snapshot) {
        let index = s.get_metadata().index;
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(s.clone());
    }

    fn recovered(&self) -> Recovered {
        Recovered {
            snapshot: self.snapshot.clone(),
            hard_state: self.hard_state.clone(),
            entries: self.entries.clone(),
        }
    }
}

fn config(id: u64, voters: &[u64], snapshot_count: u64) -> NodeConfig {
    NodeConfig {
        member_id: id,
        cluster_id: 0xc1,
        voters: voters.to_vec(),
        election_ticks: 10,
        heartbeat_ticks: 1,
        tick_ms: 100,
        seed: id * 31,
        incarnation: 1,
        snapshot_count,
        initial_members: Vec::new(),
        name: String::new(),
        client_urls: Vec::new(),
        joining: false,
        watch: WatchConfig::default(),
        bugs: Bugs::none(),
    }
}

/// Members on a perfect disk and network, except for members cut off.
struct Cluster {
    voters: Vec<u64>,
    snapshot_count: u64,
    nodes: BTreeMap<u64, Node>,
    disks: BTreeMap<u64, Disk>,
    isolated: BTreeSet<u64>,
    network: VecDeque<Message>,
    replies: BTreeMap<u64, Result<Response, keel_engine::error::Error>>,
    /// Snapshots installed, per member.
    installed: BTreeMap<u64, u64>,
}

impl Cluster {
    fn new(voters: &[u64], snapshot_count: u64) -> Cluster {
        let mut c = Cluster {
            voters: voters.to_vec(),
            snapshot_count,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            isolated: BTreeSet::new(),
            network: VecDeque::new(),
            replies: BTreeMap::new(),
            installed: BTreeMap::new(),
        };
        for &id in voters {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let disk = self.disks.entry(id).or_default().clone();
        let cfg = config(id, &self.voters, self.snapshot_count);
        let node = Node::new(cfg, disk.recovered()).expect("starts");
        self.nodes.insert(id, node);
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut busy = false;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                busy |= self.handle_outputs(id);
            }
            while let Some(m) = self.network.pop_front() {
                busy = true;
                self.deliver(m);
            }
            if !busy {
                return;
            }
        }
        panic!("never settled");
    }

    fn handle_outputs(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let outputs = node.take_outputs();
        let busy = !outputs.is_empty();
        for out in outputs {
            match out {
                Output::Persist(batch) => {
                    let disk = self.disks.entry(id).or_default();
                    disk.write(&batch);
                    if let Some(index) = batch.snapshot_index() {
                        self.installed.insert(id, index);
                    }
                    self.network.extend(batch.then_send.iter().cloned());
                    let node = self.nodes.get_mut(&id).expect("node");
                    node.step(Input::Persisted {
                        number: batch.number,
                    });
                }
                Output::Send(msgs) => self.network.extend(msgs),
                Output::Reply { token, result } => {
                    self.replies.insert(token, result);
                }
                Output::Watch(_) | Output::Members { .. } => {}
                Output::SaveSnapshot(job) => {
                    let snapshot = job.into_snapshot();
                    self.disks.entry(id).or_default().save(&snapshot);
                    let node = self.nodes.get_mut(&id).expect("node");
                    node.step(Input::SnapshotSaved { snapshot });
                }
                Output::Fatal(why) => panic!("member {id:x} stopped: {why}"),
            }
        }
        busy
    }

    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
        let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        if !cut {
            if let Some(node) = self.nodes.get_mut(&to) {
                node.step(Input::Peer(Box::new(m)));
            }
        }
        if is_snapshot {
            if let Some(sender) = self.nodes.get_mut(&from) {
                sender.step(Input::SnapshotStatus { to, ok: !cut });
            }
        }
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for node in self.nodes.values_mut() {
                node.step(Input::Tick);
            }
            self.settle();
        }
    }

    fn leader(&self) -> u64 {
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.status().leader == **id)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
        leaders[0]
    }

    fn request(&mut self, at: u64, token: u64, request: Request) -> Response {
        let node = self.nodes.get_mut(&at).expect("member");
        node.step(Input::Request { token, request });
        self.settle();
        for _ in 0..50 {
            if let Some(result) = self.replies.remove(&token) {
                return result.expect("request succeeds");
            }
            self.tick(1);
        }
        panic!("request {token} never answered");
    }

    fn hash(&self, id: u64) -> (u32, i64, u64) {
        let node = &self.nodes[&id];
        let h = node.store().hash_kv(0).expect("hash");
        (
            h.hash,
            node.status().revision,
            node.status().raft_applied_index,
        )
    }
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
    let mut c = Cluster::new(&[1], 40);
    c.tick(2);
    let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 600, id: 77 });
    assert!(matches!(c.request(1, 1, grant), Response::LeaseGrant(_)));
    for i in 0..300u64 {
        let lease = if i % 10 == 0 { 77 } else { 0 };
        c.request(
            1,
            10 + i,
            put(format!("k{}", i % 37), format!("v{i}"), lease),
        );
    }
    let before = c.hash(1);
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
    let after = c.hash(1);
    assert_eq!(
        (after.0, after.1),
        (before.0, before.1),
        "restart from snapshot + log gives the same state"
    );
    assert_eq!(after.2, before.2 + 1, "plus the new term's empty entry");
    // The leases came back with the snapshot: the lease's keys are still attached to it.
    let ttl = keel_proto::etcdserverpb::LeaseTimeToLiveRequest { id: 77, keys: true };
    c.tick(12);
    match c.request(1, 9999, Request::LeaseTimeToLive(ttl)) {
        Response::LeaseTimeToLive(t) => {
            assert_eq!(t.granted_ttl, 600);
            assert!(!t.keys.is_empty(), "keys attached after restore");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_follower_cut_off_while_the_log_was_compacted_catches_up_by_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], 30);
    c.tick(40);
    let leader = c.leader();
    let lagging = *c
        .voters
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    c.isolated.insert(lagging);
    for i in 0..400u64 {
        c.request(
            leader,
            100 + i,
            put(format!("k{}", i % 53), format!("v{i}"), 0),
        );
    }
    assert!(c.nodes[&leader].snapshot_index() > 300);
    assert!(c.installed.is_empty(), "nobody needed a snapshot yet");
    c.isolated.clear();
    c.tick(30);
    assert!(
        c.installed.get(&lagging).copied().unwrap_or(0) > 300,
        "the lagging member installed the leader's snapshot: {:?}",
        c.installed
    );
    let want = c.hash(leader);
    for &id in &c.voters.clone() {
        assert_eq!(c.hash(id), want, "member {id} agrees with the leader");
    }
    // The follower serves and keeps applying after the install.
    c.request(leader, 9000, put("after".into(), "x".into(), 0));
    c.tick(3);
    let want = c.hash(leader);
    assert_eq!(c.hash(lagging), want);

    // And it restarts from what it installed.
    c.nodes.remove(&lagging);
    c.start(lagging);
    c.tick(5);
    assert_eq!(c.hash(lagging).0, c.hash(leader).0);
}

#[test]
fn a_wal_that_does_not_continue_the_snapshot_refuses_to_start() {
    let mut c = Cluster::new(&[1], 20);
    c.tick(2);
    for i in 0..95u64 {
        c.request(1, i + 1, put(format!("k{i}"), "v".into(), 0));
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
    let err = Node::new(config(1, &[1], 20), disk.recovered()).expect_err("a gap is refused");
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
    let err = Node::new(config(1, &[1], 20), disk.recovered()).expect_err("corrupt");
    assert!(err.to_string().contains("does not load"), "{err}");
}
