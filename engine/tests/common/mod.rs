//! The engine test harness: members built from a [`TestConfig`], each on a perfect [`Disk`],
//! wired by an in-memory network that can cut members off. [`Cluster::handle`] is the one
//! place that knows every kind of [`Output`]; the settle loop panics on `Output::Fatal`.

#![allow(dead_code)] // every test binary includes this module and uses a part of it

mod config;
mod disk;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[allow(unused_imports)] // not every test binary needs every name
pub use config::{client_url, peer_url, TestConfig, CLUSTER_ID};
pub use disk::Disk;

use keel_engine::error::Error;
use keel_engine::membership::Member;
use keel_engine::node::{Input, Node, Output, Request, Response};
use keel_engine::raftpb::{Message, MessageType, Snapshot};
use keel_engine::watch::{WatchInput, WatchOutput};
use keel_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, WatchResponse};

/// Rounds (every member's outputs handled, every message delivered) before [`Cluster::settle`]
/// decides the outputs never stop.
const SETTLE_ROUNDS_MAX: usize = 100_000;
/// Tokens [`Cluster::request`] picks start here, clear of tokens tests choose themselves.
const AUTO_TOKEN_FIRST: u64 = 1 << 40;

/// A member's configuration by id: how the cluster starts, restarts and joins members.
pub type Template = Box<dyn Fn(u64) -> TestConfig>;

/// Members on perfect disks and a perfect network, except for members cut off.
pub struct Cluster {
    template: Template,
    /// The running members.
    pub nodes: BTreeMap<u64, Node>,
    /// Every member's disk, kept across restarts.
    pub disks: BTreeMap<u64, Disk>,
    /// Members cut off: messages from and to them are lost.
    pub isolated: BTreeSet<u64>,
    network: VecDeque<Message>,
    /// Replies in the order they came, by token.
    pub replies: Vec<(u64, Result<Response, Error>)>,
    /// Watch responses in the order they came, by stream (stream ids are cluster-wide here).
    pub watch_sent: Vec<(u64, WatchResponse)>,
    /// Watch streams ended, with the reason.
    pub watch_closed: Vec<(u64, &'static str)>,
    /// Member tables announced, by member, in order.
    pub member_tables: Vec<(u64, Vec<Member>)>,
    /// The index of the newest snapshot installed from the leader, by member.
    pub installed: BTreeMap<u64, u64>,
    /// Every output handled, as `member: output`, when a test asked for it.
    pub trace: Option<Vec<String>>,
    /// Snapshot saves still to fail, by member (each failed save is reported
    /// `Input::SnapshotFailed`, as the driver does once its backoff passed).
    pub failing_saves: BTreeMap<u64, usize>,
    /// The index of every snapshot job handed out, by member, in order.
    pub save_jobs: Vec<(u64, u64)>,
    /// Members whose disk is slow: their persisted batches are reported only when a test
    /// releases them ([`Cluster::release_persisted`]), oldest first.
    pub slow_disks: BTreeSet<u64>,
    /// Persisted batch numbers not yet reported, by member.
    held_persisted: BTreeMap<u64, VecDeque<u64>>,
    /// Decode each snapshot's store before delivering it and step it first
    /// (`Input::StoreDecoded`), as the server's peer service does off its driver loop.
    pub predecode: bool,
    /// A one-member cluster: any message to a peer or member table change is a failure.
    solo: bool,
    /// Whether a watch input was stepped: before that, watch output is a failure.
    watches_used: bool,
    next_token: u64,
}

impl Cluster {
    /// Starts `ids` (each from its disk, empty at first), configured by `template`. Nothing
    /// is handled yet.
    pub fn new(ids: &[u64], template: impl Fn(u64) -> TestConfig + 'static) -> Cluster {
        let mut c = Cluster {
            template: Box::new(template),
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            isolated: BTreeSet::new(),
            network: VecDeque::new(),
            replies: Vec::new(),
            watch_sent: Vec::new(),
            watch_closed: Vec::new(),
            member_tables: Vec::new(),
            installed: BTreeMap::new(),
            trace: None,
            failing_saves: BTreeMap::new(),
            save_jobs: Vec::new(),
            slow_disks: BTreeSet::new(),
            held_persisted: BTreeMap::new(),
            predecode: false,
            solo: false,
            watches_used: false,
            next_token: AUTO_TOKEN_FIRST,
        };
        for &id in ids {
            c.start(id);
        }
        c
    }

    /// A one-member cluster started from `disk` and settled: it leads itself at once, and
    /// never sends a message or changes its member table (the harness panics if it does).
    pub fn single_from(cfg: TestConfig, disk: Disk) -> Cluster {
        let id = cfg.member_id();
        let mut c = Cluster::new(&[], move |_| cfg.clone());
        c.solo = true;
        c.disks.insert(id, disk);
        c.start(id);
        c.settle();
        c
    }

    /// [`Cluster::single_from`] an empty disk.
    pub fn single(cfg: TestConfig) -> Cluster {
        Cluster::single_from(cfg, Disk::default())
    }

    /// Records every output handled from now on in [`Cluster::trace`].
    pub fn record_trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    /// (Re)starts member `id` from its disk.
    pub fn start(&mut self, id: u64) {
        let disk = self.disks.entry(id).or_default();
        let node = (self.template)(id)
            .start(disk.recovered())
            .expect("the member starts");
        self.nodes.insert(id, node);
    }

    /// Starts member `id`, added with MemberAdd, on an empty disk (etcd's
    /// `--initial-cluster-state existing`).
    pub fn join(&mut self, id: u64) {
        let node = (self.template)(id)
            .joining(true)
            .start(Disk::default().recovered())
            .expect("a joining member starts");
        self.disks.insert(id, Disk::default());
        self.nodes.insert(id, node);
    }

    /// Running member `id`.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("member {id:x} runs"))
    }

    /// Running member `id`, to step it or change it.
    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("member {id:x} runs"))
    }

    /// The first member (by id) that says it leads, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .map(Node::status)
            .find(|s| s.leader == s.member_id)
            .map(|s| s.member_id)
    }

    /// The one member that says it leads; panics unless exactly one does.
    pub fn the_leader(&self) -> u64 {
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.status().leader == **id)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
        leaders[0]
    }

    /// Handles outputs and delivers messages until everything is quiet.
    pub fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let mut busy = false;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                let outputs = self.nodes.get_mut(&id).map(Node::take_outputs);
                for out in outputs.unwrap_or_default() {
                    busy = true;
                    self.handle(id, out);
                }
            }
            while let Some(m) = self.network.pop_front() {
                busy = true;
                self.deliver(m);
            }
            if !busy {
                return;
            }
        }
        panic!("the cluster never settled");
    }

    /// Does what member `id`'s driver would do with one output: the one place that knows
    /// every kind of output. Persisted batches and saved snapshots are reported back at once;
    /// messages wait in the network until [`Cluster::settle`] delivers them.
    pub fn handle(&mut self, id: u64, out: Output) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{id:x}: {out:?}"));
        }
        match out {
            Output::Persist(batch) => {
                assert!(
                    !self.solo || batch.then_send.is_empty(),
                    "one member sends nothing, yet {:?}",
                    batch.then_send
                );
                self.disks.entry(id).or_default().write(&batch);
                if let Some(index) = batch.snapshot_index() {
                    self.installed.insert(id, index);
                }
                self.network.extend(batch.then_send);
                if let Some(installed) = batch.snapshot {
                    // The driver reads the saved file back and the node holds that copy.
                    let read_back = Snapshot {
                        data: installed.data.to_vec().into(),
                        ..installed
                    };
                    self.step(
                        id,
                        Input::InstalledSnapshotSaved {
                            snapshot: read_back,
                        },
                    );
                }
                if self.slow_disks.contains(&id) {
                    let held = self.held_persisted.entry(id).or_default();
                    held.push_back(batch.number);
                    return;
                }
                self.step(
                    id,
                    Input::Persisted {
                        number: batch.number,
                    },
                );
            }
            Output::Send(msgs) => {
                assert!(!self.solo, "a one-member cluster sent {msgs:?}");
                self.network.extend(msgs);
            }
            Output::Reply { token, result } => self.replies.push((token, result)),
            Output::Watch(outs) => {
                assert!(self.watches_used, "no watches here, yet {outs:?}");
                for o in outs {
                    match o {
                        WatchOutput::Send(s, r) => self.watch_sent.push((s, r)),
                        WatchOutput::Close(s, why) => self.watch_closed.push((s, why)),
                    }
                }
            }
            Output::SaveSnapshot(job) => {
                self.save_jobs.push((id, job.index()));
                if let Some(failing) = self.failing_saves.get_mut(&id).filter(|n| **n > 0) {
                    *failing -= 1;
                    self.step(id, Input::SnapshotFailed);
                    return;
                }
                let snapshot = job.into_snapshot();
                self.disks.entry(id).or_default().save(&snapshot);
                self.step(id, Input::SnapshotSaved { snapshot });
            }
            Output::Fatal(why) => panic!("member {id:x} stopped: {why}"),
            Output::Members { members, .. } => {
                assert!(!self.solo, "no member changes here, yet {members:?}");
                self.member_tables.push((id, members));
            }
            // Waiting v2 clients live in the server; the engine tests read the store.
            Output::V2Events(_) => {}
        }
    }

    /// Reports member `id`'s oldest held persisted batch; whether there was one.
    pub fn release_persisted(&mut self, id: u64) -> bool {
        let Some(number) = self
            .held_persisted
            .get_mut(&id)
            .and_then(VecDeque::pop_front)
        else {
            return false;
        };
        self.step(id, Input::Persisted { number });
        self.settle();
        true
    }

    /// Steps member `id` if it runs (a stopped member hears nothing).
    fn step(&mut self, id: u64, input: Input) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.step(input);
        }
    }

    /// Delivers a message unless its sender or receiver is cut off or stopped; the sender of
    /// a snapshot learns whether it arrived.
    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
        let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        let arrived = !cut && self.nodes.contains_key(&to);
        if arrived {
            if is_snapshot && self.predecode {
                let decoded = keel_engine::node::DecodedStore::decode(m.get_snapshot())
                    .expect("the leader's snapshot decodes");
                self.step(to, Input::StoreDecoded(Box::new(decoded)));
            }
            self.step(to, Input::Peer(Box::new(m)));
        }
        if is_snapshot {
            self.step(from, Input::SnapshotStatus { to, ok: arrived });
        }
    }

    /// One tick on every member, then settle.
    pub fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.step(Input::Tick);
        }
        self.settle();
    }

    /// `n` [`Cluster::tick`]s.
    pub fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Settles and checks `done`, then ticks, at most `ticks_max` times; panics if `done`
    /// never holds.
    pub fn tick_until(&mut self, ticks_max: usize, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..ticks_max {
            self.settle();
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("condition not reached in {ticks_max} ticks");
    }

    /// Whether a reply with `token` waits in [`Cluster::replies`].
    pub fn has_reply(&self, token: u64) -> bool {
        self.replies.iter().any(|(t, _)| *t == token)
    }

    /// Takes the reply with `token` out of [`Cluster::replies`].
    pub fn take_reply(&mut self, token: u64) -> Result<Response, Error> {
        let i = self
            .replies
            .iter()
            .position(|(t, _)| *t == token)
            .unwrap_or_else(|| panic!("a reply to request {token}"));
        self.replies.remove(i).1
    }

    /// Sends `request` with `token` to member `on` and returns its reply, which must come
    /// within `ticks_max` rounds of [`Cluster::tick_until`] (1: before any tick).
    pub fn request_with(
        &mut self,
        on: u64,
        token: u64,
        request: Request,
        ticks_max: usize,
    ) -> Result<Response, Error> {
        self.step(on, Input::Request { token, request });
        self.tick_until(ticks_max, |c| c.has_reply(token));
        self.take_reply(token)
    }

    /// [`Cluster::request_with`] a token of the harness's choosing.
    pub fn request(
        &mut self,
        on: u64,
        request: Request,
        ticks_max: usize,
    ) -> Result<Response, Error> {
        let token = self.next_token;
        self.next_token += 1;
        self.request_with(on, token, request, ticks_max)
    }

    /// Sends `request` to the leader; it must succeed within `ticks_max`.
    pub fn ok_on_leader(&mut self, request: Request, ticks_max: usize) -> Response {
        let leader = self.leader().expect("a leader");
        self.request(leader, request, ticks_max)
            .expect("the request succeeds")
    }

    /// Waits until every member of `ids` applied as far as the leader.
    pub fn caught_up(&mut self, ids: &[u64], ticks_max: usize) {
        let ids = ids.to_vec();
        self.tick_until(ticks_max, move |c| {
            let leader = c.leader().map(|l| c.node(l).status().raft_applied_index);
            ids.iter()
                .all(|&id| Some(c.node(id).status().raft_applied_index) == leader)
        });
    }

    /// Steps a watch input into member `on` and settles.
    pub fn watch_input(&mut self, on: u64, input: WatchInput) {
        self.watches_used = true;
        self.step(on, Input::Watch(input));
        self.settle();
    }

    /// Takes the watch responses sent on `stream` so far, in order.
    pub fn take_watch(&mut self, stream: u64) -> Vec<WatchResponse> {
        let (mine, rest) = std::mem::take(&mut self.watch_sent)
            .into_iter()
            .partition(|(s, _)| *s == stream);
        self.watch_sent = rest;
        mine.into_iter().map(|(_, r)| r).collect()
    }
}

/// A member's watch bookkeeping, as tests inspect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchCounts {
    /// Live watchers.
    pub watchers: usize,
    /// Watchers behind the current revision.
    pub unsynced: usize,
    /// Open streams.
    pub streams: usize,
}

/// Member `node`'s watch bookkeeping.
pub fn watch_counts(node: &Node) -> WatchCounts {
    let hub = node.watches();
    WatchCounts {
        watchers: hub.watcher_count(),
        unsynced: hub.unsynced_count(),
        streams: hub.stream_count(),
    }
}

/// Whether `out` sends a message to a peer, at once or once persisted.
pub fn sends_messages(out: &Output) -> bool {
    match out {
        Output::Send(msgs) => !msgs.is_empty(),
        Output::Persist(batch) => !batch.then_send.is_empty(),
        _ => false,
    }
}

/// A put of `value` at `key`.
pub fn put(key: &str, value: &str) -> Request {
    Request::Put(PutRequest {
        key: key.to_owned().into(),
        value: value.to_owned().into(),
        ..Default::default()
    })
}

/// A range over the one key `key`.
pub fn range(key: &str, serializable: bool) -> Request {
    Request::Range(RangeRequest {
        key: key.to_owned().into(),
        serializable,
        ..Default::default()
    })
}

/// A delete of the one key `key`.
pub fn delete(key: &str) -> Request {
    Request::DeleteRange(DeleteRangeRequest {
        key: key.to_owned().into(),
        ..Default::default()
    })
}

/// The value of the first key of a range response, `None` if it found nothing.
pub fn value(result: Result<Response, Error>) -> Option<Vec<u8>> {
    match result.expect("the range succeeds") {
        Response::Range(r) => r.kvs.first().map(|kv| kv.value.to_vec()),
        other => panic!("expected a range response, got {other:?}"),
    }
}
