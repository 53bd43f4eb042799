//! The keel node: one member's raft-rs `RawNode`, its MVCC store and the apply loop, driven
//! sans-I/O.
//!
//! The driver feeds [`Input`]s to [`Node::step`] and drains [`Output`]s with
//! [`Node::take_outputs`]. Nothing here touches a disk, a socket or a clock.
//!
//! # The path of a write
//! ```text
//! Input::Request{Put}  → propose (RaftRequest in a log entry)
//!                      → Output::Persist{entries, then_send}   driver appends to WAL, fsyncs
//! Input::Persisted{n}  → raft counts the local copy; with a quorum the entry commits
//!                      → apply to MVCC → Output::Reply{token, Put response}
//! ```
//! A client therefore hears "ok" only after its entry is durable on a quorum (DESIGN.md rule 4):
//! raft-rs counts the leader's own log only once `on_persist_ready` reports it written.
//!
//! # The path of a linearizable read (ReadIndex, batched)
//! Reads that arrive while a ReadIndex round is in flight wait for the next round, so many
//! reads share one round. When raft confirms the read index, the reads are served once the
//! applied index reaches it. Serializable reads are served at once from the applied state.
//!
//! # Persist before send, in the type
//! [`PersistBatch::then_send`] carries the messages raft-rs allows out only after the batch is
//! durable (votes, append acks); [`Output::Send`] carries the ones that may go at once.

use std::collections::{BTreeMap, VecDeque};

use keel_proto::etcdserverpb::{LeaseRevokeRequest, MemberListResponse, MoveLeaderResponse};
use keel_proto::keelpb::{raft_request, RaftRequest};
use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, Snapshot};
use raft::storage::MemStorage;
use raft::{RawNode, ReadOnlyOption, StateRole};

use crate::apply;
use crate::error::Error;
use crate::lease::Leases;
use crate::membership::{Member, Membership};
use crate::mvcc::Store;
use crate::raft_log;
use crate::raft_storage::RaftStorage;
use crate::request::{Admin, Read, Route};
pub use crate::request::{Request, Response};
use crate::rng::SplitMix64;
use crate::watch::{HeaderInfo, WatchHub, WatchInput, WatchOutput};
use keel_proto::mvccpb::Event;

mod conf_change;
pub use conf_change::{check_urls, PEER_URLS_MAX};

/// Requests waiting for a leader, at most.
pub const WAITING_FOR_LEADER_MAX: usize = 10_000;
/// Proposals in flight (proposed, not yet applied), at most; etcd bounds the same gap at 5000
/// entries between commit and apply.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 100_000;
/// Raft log entries kept in memory behind the applied index, for slow followers (etcd's
/// `SnapshotCatchUpEntries`); a follower further behind gets a snapshot.
pub const LOG_ENTRIES_KEPT_MAX: u64 = 5_000;
/// Applied entries between two state-machine snapshots, by default (etcd 3.6's
/// `--snapshot-count`).
pub const SNAPSHOT_COUNT_DEFAULT: u64 = 10_000;

mod snapshots;
pub use snapshots::SnapshotJob;

/// How a member starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's id (non-zero).
    pub member_id: u64,
    /// The cluster's id, reported in every response header.
    pub cluster_id: u64,
    /// The voting members at bootstrap (including this one).
    pub voters: Vec<u64>,
    /// Ticks without a leader before a follower campaigns (plus seeded jitter of up to as many).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// The length of one tick, in milliseconds: the node's clock (for lease expiry) advances by
    /// this much with every `Input::Tick`.
    pub tick_ms: u64,
    /// The seed every random choice of this member derives from.
    pub seed: u64,
    /// Distinguishes this run of the member from earlier ones, so proposal ids of an earlier run
    /// found in the log never match a live request.
    pub incarnation: u64,
    /// Applied entries between two snapshots of the state machine (at least 1).
    pub snapshot_count: u64,
    /// The bootstrap members with their names and peer URLs, ids as in `voters`. Empty: the
    /// `voters`, nameless and without URLs.
    pub initial_members: Vec<Member>,
    /// This member's name and client URLs, which it publishes through the log once it knows
    /// a leader (etcd's "publish").
    pub name: String,
    /// See `name`.
    pub client_urls: Vec<String>,
    /// Started with `--initial-cluster-state existing`: this member is not among `voters` (the
    /// bootstrap configuration it replays the log from) and learns its place from the log.
    pub joining: bool,
}

/// What the driver read back from the snapshot directory and the WAL at start.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The newest valid snapshot, if any (data: the state-machine encoding).
    pub snapshot: Option<Snapshot>,
    /// The newest persisted hard state, if any.
    pub hard_state: Option<HardState>,
    /// The persisted log, contiguous; it starts at index 1, or at or before the entry after
    /// the snapshot (entries the snapshot covers are skipped).
    pub entries: Vec<Entry>,
}

/// An input to the node.
#[derive(Debug)]
pub enum Input {
    /// One raft tick of the driver's monotonic clock has elapsed.
    Tick,
    /// A client request; the reply comes back as [`Output::Reply`] with the same token.
    Request {
        /// The driver's handle for the reply.
        token: u64,
        /// The request.
        request: Request,
    },
    /// A raft message from a peer.
    Peer(Box<Message>),
    /// Every [`PersistBatch`] numbered up to `number` is durable.
    Persisted {
        /// The batch number.
        number: u64,
    },
    /// Something happened on a Watch stream (served from this member's applied state).
    Watch(WatchInput),
    /// The snapshot of an [`Output::SaveSnapshot`] is durable; `snapshot` is the copy to serve
    /// to followers from now on (its data may be a mapping of the file).
    SnapshotSaved {
        /// The saved snapshot.
        snapshot: Snapshot,
    },
    /// The snapshot sent to peer `to` was received and stepped (`ok`), or its send failed.
    SnapshotStatus {
        /// The peer.
        to: u64,
        /// Whether it arrived.
        ok: bool,
    },
    /// Peer `to` could not be reached; raft slows down its replication to it.
    Unreachable {
        /// The peer.
        to: u64,
    },
}

/// Raft state the driver must make durable before it reports [`Input::Persisted`].
#[derive(Debug, Default)]
pub struct PersistBatch {
    /// Reported back in [`Input::Persisted`].
    pub number: u64,
    /// A new hard state to write, if it changed.
    pub hard_state: Option<HardState>,
    /// Log entries to append; an entry at an index already written replaces it and all after.
    pub entries: Vec<Entry>,
    /// Messages to send only once this batch is durable.
    pub then_send: Vec<Message>,
    /// A snapshot from the leader that replaces the log: save it to the snapshot directory
    /// (durably) before the WAL records its mark, then the entries and hard state.
    pub snapshot: Option<Snapshot>,
}

impl PersistBatch {
    fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.entries.is_empty()
            && self.then_send.is_empty()
            && self.snapshot.is_none()
    }
}

/// An output of the node.
#[derive(Debug)]
pub enum Output {
    /// Write this to the WAL, fsync, then send `then_send` and report `Input::Persisted`.
    Persist(PersistBatch),
    /// Messages that may be sent at once.
    Send(Vec<Message>),
    /// The answer to a request.
    Reply {
        /// The token the request came with.
        token: u64,
        /// The response, or etcd's error.
        result: Result<Response, Error>,
    },
    /// Watch responses to send (in order) and streams to end.
    Watch(Vec<WatchOutput>),
    /// Encode this snapshot of the state machine ([`SnapshotJob::into_snapshot`], off the
    /// driver loop) and save it durably, then report [`Input::SnapshotSaved`] (a failure to
    /// save is fatal, like a failed WAL write). WAL segments wholly before the previous
    /// snapshot may then be released.
    SaveSnapshot(SnapshotJob),
    /// The member cannot go on (a snapshot from the leader does not decode): stop it.
    Fatal(String),
    /// The member table changed (an applied conf change, update or publish): the transport
    /// should reach exactly these members. If this member was removed, it must stop
    /// ([`Node::is_removed`]).
    Members(Vec<Member>),
}

/// A member's raft and store status, for Maintenance.Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// The leader this member knows of (0 if none).
    pub leader: u64,
    /// Current raft term.
    pub raft_term: u64,
    /// Last index in the raft log.
    pub raft_index: u64,
    /// Last applied index.
    pub raft_applied_index: u64,
    /// Current store revision.
    pub revision: i64,
    /// Whether this member is a learner.
    pub is_learner: bool,
}

/// A batch of linearizable reads sharing one ReadIndex round.
#[derive(Debug, Default)]
struct ReadBatch {
    reads: Vec<(u64, Read)>,
}

/// A deliberately stale copy of the store: the simulator's `stale-read` bug (see
/// [`Node::inject_stale_reads`]).
struct StaleReads {
    /// The copy is refreshed every this many applied entries.
    every_applied: u64,
    applied_since_refresh: u64,
    copy: Store,
}

/// One member of a keel cluster, sans-I/O.
pub struct Node {
    cfg: NodeConfig,
    raw: RawNode<RaftStorage>,
    store: Store,
    applied_index: u64,
    outputs: Vec<Output>,
    next_proposal_seq: u64,
    /// proposal id → token, for proposals of this run not yet applied.
    proposals: BTreeMap<u64, u64>,
    /// Requests that arrived while no leader was known: (since when, token, request).
    waiting_for_leader: VecDeque<(u64, u64, Route)>,
    /// Reads waiting for the next ReadIndex round.
    reads_next: ReadBatch,
    /// The ReadIndex round in flight: its context id and reads.
    reads_in_flight: Option<(u64, ReadBatch)>,
    next_read_ctx: u64,
    /// When the ReadIndex round in flight started (node clock, ms).
    read_round_started_ms: u64,
    /// Confirmed read index → reads to serve once applied reaches it.
    reads_confirmed: VecDeque<(u64, ReadBatch)>,
    /// Only ever set by the simulator's `stale-read` bug.
    stale_reads: Option<StaleReads>,
    /// Leases and their keys.
    leases: Leases,
    /// The node's clock: ticks so far times the tick length, in milliseconds.
    now_ms: u64,
    /// The number of the newest persist batch emitted, and of the newest reported durable.
    persist_emitted: u64,
    persist_durable: u64,
    /// An empty Ready whose number waits for earlier batches to become durable.
    persist_deferred: Option<u64>,
    /// Every watch served by this member.
    watches: WatchHub,
    /// Events of the entries being applied, for the watches.
    watch_events: Vec<Event>,
    /// Only ever set by the simulator's `lease-expire-on-follower-clock` bug.
    lease_expiry_on_followers: bool,
    /// Only ever set by the simulator's `read-index-skip-heartbeat` bug.
    reads_without_quorum: bool,
    /// Only ever set by the simulator's `commit-without-quorum` bug.
    commit_without_quorum: bool,
    /// MoveLeader requests waiting for their target to lead: (token, target, deadline ms).
    transfers: Vec<(u64, u64, u64)>,
    /// The index of the newest snapshot made or installed (0: none).
    snapshot_index: u64,
    /// The index of the snapshot being saved, if one is.
    snapshot_saving: Option<u64>,
    /// An installed snapshot's index raft must count as applied once it is durable.
    snapshot_unacked: Option<u64>,
    /// The replicated member table.
    membership: Membership,
    /// Draws the ids of members this member adds.
    member_ids: SplitMix64,
    /// When this member last proposed its attributes (node clock, ms).
    published_ms: Option<u64>,
    /// The member table changed in the entries being applied.
    members_changed: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("member_id", &self.cfg.member_id)
            .field("applied_index", &self.applied_index)
            .finish_non_exhaustive()
    }
}

/// The node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// raft-rs rejected the configuration or the recovered state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The configuration is unusable.
    #[error("invalid node configuration: {0}")]
    Config(String),
}

impl Node {
    /// Starts a member from its recovered WAL state (empty on first boot).
    pub fn new(cfg: NodeConfig, recovered: Recovered) -> Result<Node, StartError> {
        if cfg.member_id == 0 || cfg.voters.contains(&cfg.member_id) == cfg.joining {
            return Err(StartError::Config(format!(
                "member {:x} must be non-zero and {} the voters {:x?}",
                cfg.member_id,
                if cfg.joining { "not one of" } else { "one of" },
                cfg.voters
            )));
        }
        if cfg.snapshot_count == 0 {
            return Err(StartError::Config(
                "snapshot count must be at least 1".into(),
            ));
        }
        let membership = Membership::bootstrap(initial_members(&cfg)?);
        let log = MemStorage::new_with_conf_state(ConfState::from((cfg.voters.clone(), vec![])));
        let mut storage = RaftStorage::new(log);
        let restored = snapshots::recover_log(&mut storage, &recovered)?;
        let raft_cfg = raft::Config {
            id: cfg.member_id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            // raft-rs draws from this range with rand 0.8's thread-local RNG; after every step
            // the node overwrites that draw with its own (see `enforce_election_timeout`).
            min_election_tick: cfg.election_ticks,
            max_election_tick: 2 * cfg.election_ticks,
            applied: restored.as_ref().map_or(0, |s| s.get_metadata().index),
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, storage, &raft_log::logger())?;
        let mut node = Node {
            raw,
            store: Store::new(),
            applied_index: 0,
            outputs: Vec::new(),
            next_proposal_seq: 0,
            proposals: BTreeMap::new(),
            waiting_for_leader: VecDeque::new(),
            reads_next: ReadBatch::default(),
            reads_in_flight: None,
            read_round_started_ms: 0,
            next_read_ctx: 1,
            reads_confirmed: VecDeque::new(),
            stale_reads: None,
            leases: Leases::new(min_lease_ttl_s(&cfg), cfg.seed),
            now_ms: 0,
            persist_emitted: 0,
            persist_durable: 0,
            persist_deferred: None,
            watches: WatchHub::new(),
            watch_events: Vec::new(),
            lease_expiry_on_followers: false,
            reads_without_quorum: false,
            commit_without_quorum: false,
            transfers: Vec::new(),
            snapshot_index: 0,
            snapshot_saving: None,
            snapshot_unacked: None,
            membership,
            member_ids: SplitMix64::new(cfg.seed ^ 0x6d65_6d62_6572_7321),
            published_ms: None,
            members_changed: false,
            cfg,
        };
        if let Some(snapshot) = &restored {
            node.restore_recovered(snapshot)?;
        }
        if node.cfg.voters.len() == 1 && !node.cfg.joining {
            // A one-member cluster need not wait an election timeout to lead itself.
            node.raw.campaign()?;
        }
        node.enforce_election_timeout();
        node.drive();
        Ok(node)
    }

    /// Feeds one input; outputs accumulate until [`Node::take_outputs`].
    pub fn step(&mut self, input: Input) {
        match input {
            Input::Tick => {
                self.now_ms += self.cfg.tick_ms;
                self.raw.tick();
                self.propose_lease_work();
                self.publish_attributes();
                self.retry_stuck_read_round();
                self.expire_waiting_for_leader();
                let header = self.header_info();
                self.watches.tick(self.now_ms, &self.store, header);
            }
            Input::Watch(w) => {
                let header = self.header_info();
                self.watches.input(w, &self.store, header);
            }
            Input::Request { token, request } => self.on_request(token, request),
            Input::Peer(msg) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "dropped a peer message");
                }
            }
            Input::Persisted { number } => self.on_persisted(number),
            Input::SnapshotSaved { snapshot } => self.on_snapshot_saved(snapshot),
            Input::SnapshotStatus { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Unreachable { to } => self.raw.report_unreachable(to),
        }
        self.enforce_election_timeout();
        self.drive();
        if !self.transfers.is_empty() {
            self.check_transfers();
        }
        self.maybe_snapshot();
        if self.watches.has_unsynced() {
            let header = self.header_info();
            self.watches.catch_up(&self.store, header);
        }
        let watch = self.watches.take_outputs();
        if !watch.is_empty() {
            self.outputs.push(Output::Watch(watch));
        }
    }

    /// The time a lease grant, renewal or promotion counts from: the *end* of the current tick.
    ///
    /// The node's clock moves only on ticks, so something handled between two ticks happened
    /// at some time in `[now_ms, now_ms + tick_ms)`. Counting a lease's TTL from the end of that
    /// interval means it never expires before its TTL has elapsed by the leader's clock (it may
    /// live up to one tick longer, which etcd's contract allows).
    fn lease_stamp_ms(&self) -> u64 {
        self.now_ms + self.cfg.tick_ms
    }

    /// What watch response headers carry besides the revision.
    fn header_info(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.cfg.cluster_id,
            member_id: self.cfg.member_id,
            raft_term: self.raw.raft.term,
        }
    }

    /// This member's watches (for inspection and the watch settings).
    pub fn watches_mut(&mut self) -> &mut WatchHub {
        &mut self.watches
    }

    /// This member's watches.
    pub fn watches(&self) -> &WatchHub {
        &self.watches
    }

    /// Drains the outputs produced so far, in order.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// This member's status.
    pub fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        NodeStatus {
            member_id: self.cfg.member_id,
            cluster_id: self.cfg.cluster_id,
            leader: raft.leader_id,
            raft_term: raft.term,
            raft_index: raft.raft_log.last_index(),
            raft_applied_index: self.applied_index,
            revision: self.store.current_revision(),
            is_learner: self.is_learner(),
        }
    }

    /// The member table as of the applied index.
    pub fn members(&self) -> &Membership {
        &self.membership
    }

    /// Whether this member has been removed from the cluster (it must stop).
    pub fn is_removed(&self) -> bool {
        self.membership.is_removed(self.cfg.member_id)
    }

    fn is_learner(&self) -> bool {
        self.membership
            .get(self.cfg.member_id)
            .is_some_and(|m| m.is_learner)
    }

    /// The MVCC store as of the applied index (for local, serializable inspection).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A deliberate bug for the simulator to catch, never enabled in production (only the
    /// server's simulation build calls this, when keel-sim runs with `--bug stale-read`):
    /// from now on linearizable ranges are answered from a copy of the store refreshed only
    /// every `every_applied` applied entries, so they may miss writes already acknowledged.
    #[doc(hidden)]
    pub fn inject_stale_reads(&mut self, every_applied: u64) {
        assert!(
            every_applied > 0,
            "stale copy refresh interval must be positive"
        );
        self.stale_reads = Some(StaleReads {
            every_applied,
            applied_since_refresh: 0,
            copy: self.store.clone(),
        });
    }

    /// A deliberate bug for the simulator to catch (keel-sim `--bug
    /// lease-expire-on-follower-clock`): every member, followers included, decides lease expiry
    /// from its own clock and proposes revokes, though keepalives renew leases only on the
    /// leader.
    #[doc(hidden)]
    pub fn inject_lease_expiry_on_followers(&mut self) {
        self.lease_expiry_on_followers = true;
    }

    /// A deliberate bug for the simulator to catch (keel-sim `--bug read-index-skip-heartbeat`):
    /// linearizable reads are served without confirming leadership — a leader answers from its
    /// own state at once, and followers' read-index requests are answered by the leader
    /// without a heartbeat round. A leader that never confirms its leadership has no reason to
    /// check for a quorum either, so check-quorum is off too: a leader cut off from the others
    /// goes on answering reads for as long as the partition lasts.
    #[doc(hidden)]
    pub fn inject_reads_without_quorum(&mut self) {
        self.reads_without_quorum = true;
        self.raw.raft.read_only.option = ReadOnlyOption::LeaseBased;
        self.raw.raft.set_check_quorum(false);
    }

    /// A deliberate bug for the simulator to catch (keel-sim `--bug commit-without-quorum`):
    /// a leader applies (and acknowledges) entries as soon as they are durable on its own disk,
    /// without waiting for a quorum to have them.
    #[doc(hidden)]
    pub fn inject_commit_without_quorum(&mut self) {
        self.commit_without_quorum = true;
    }

    /// Starts a leader transfer to `target`; the reply waits until `target` leads.
    fn move_leader(&mut self, token: u64, target: u64) {
        if self.raw.raft.state != StateRole::Leader {
            self.reply(token, Err(Error::NotLeader));
            return;
        }
        let is_voter = self.raw.raft.prs().conf().voters().contains(target);
        if !is_voter {
            self.reply(token, Err(Error::BadLeaderTransferee));
            return;
        }
        if target != self.cfg.member_id {
            self.raw.transfer_leader(target);
        }
        // etcd waits for the transfer up to its request timeout; three election timeouts is
        // ample for raft's own transfer timeout (one election timeout) to run out first.
        let deadline = self.now_ms + 3 * self.cfg.election_ticks as u64 * self.cfg.tick_ms;
        self.transfers.push((token, target, deadline));
    }

    /// Answers MoveLeader requests whose target now leads, or whose time ran out.
    fn check_transfers(&mut self) {
        let leader = self.raw.raft.leader_id;
        let now = self.now_ms;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transfers)
            .into_iter()
            .partition(|&(_, target, deadline)| target == leader || now >= deadline);
        self.transfers = waiting;
        for (token, target, _) in done {
            let result = if target == leader {
                Ok(Response::MoveLeader(MoveLeaderResponse::default()))
            } else {
                Err(Error::TimeoutLeaderTransfer)
            };
            self.reply(token, result);
        }
    }

    /// Makes raft's randomized election timeout a pure function of (seed, term, role), in
    /// `[election_ticks, 2 * election_ticks)`.
    ///
    /// raft-rs re-draws the timeout from rand 0.8's thread-local RNG whenever it resets (a
    /// change of term or role), which madsim cannot make deterministic. Raft only reads the
    /// timeout on a later tick, so overwriting it after every step makes its draw irrelevant.
    /// Our value depends on no generator state, so a reset we did not foresee cannot shift the
    /// values that follow. Different members (seeds) and terms get different timeouts, which
    /// is what breaks split votes.
    fn enforce_election_timeout(&mut self) {
        let base = self.cfg.election_ticks as u64;
        let role = match self.raw.raft.state {
            StateRole::Follower => 1u64,
            StateRole::PreCandidate => 2,
            StateRole::Candidate => 3,
            StateRole::Leader => 4,
        };
        let term = self.raw.raft.term;
        let mut mix = SplitMix64::new(self.cfg.seed ^ term.rotate_left(17) ^ (role << 61));
        let want = (base + mix.below(base)) as usize;
        if self.raw.raft.randomized_election_timeout() != want {
            self.raw.raft.set_randomized_election_timeout(want);
        }
    }

    fn has_leader(&self) -> bool {
        self.raw.raft.leader_id != raft::INVALID_ID
    }

    fn on_request(&mut self, token: u64, request: Request) {
        self.on_route(token, request.route());
    }

    fn on_route(&mut self, token: u64, route: Route) {
        let on_learner_ok = matches!(&route, Route::Read { read, linearizable } if read.serves_on_learner(*linearizable));
        if self.is_learner() && !on_learner_ok {
            self.reply(token, Err(Error::NotSupportedForLearner));
            return;
        }
        match route {
            Route::Admin(Admin::MoveLeader(m)) => self.move_leader(token, m.target_id),
            Route::Read {
                read,
                linearizable: false,
            } => self.serve_read(token, read),
            Route::Read { read, .. }
                if self.reads_without_quorum
                    && self.raw.raft.state == StateRole::Leader
                    && !matches!(read, Read::LeaseKeepAlive(_)) =>
            {
                // The `read-index-skip-heartbeat` bug: a leader answers linearizable reads
                // from its own state without confirming it still leads.
                self.serve_read(token, read)
            }
            route if !self.has_leader() => {
                if self.waiting_for_leader.len() >= WAITING_FOR_LEADER_MAX {
                    self.reply(token, Err(Error::NoLeader));
                } else {
                    self.waiting_for_leader
                        .push_back((self.now_ms, token, route));
                }
            }
            Route::Read { read, .. } => {
                self.reads_next.reads.push((token, read));
                self.start_read_round();
            }
            Route::Write(body) => self.propose(token, body),
            Route::Admin(Admin::MemberAdd(r)) => self.member_add(token, r),
            Route::Admin(Admin::MemberRemove(r)) => self.member_remove(token, r.id),
            Route::Admin(Admin::MemberPromote(r)) => self.member_promote(token, r.id),
        }
    }

    /// Makes room in the proposal table: proposals lost in a leader change are never applied
    /// and their clients timed out long ago, so the oldest is forgotten when it is full.
    fn make_room_for_proposal(&mut self) {
        if self.proposals.len() >= PROPOSALS_IN_FLIGHT_MAX {
            if let Some((_, oldest_token)) = self.proposals.pop_first() {
                self.reply(oldest_token, Err(Error::Timeout));
            }
        }
    }

    fn propose(&mut self, token: u64, mut body: raft_request::Request) {
        self.make_room_for_proposal();
        match &mut body {
            raft_request::Request::MemberUpdate(r) => {
                if let Err(e) = self.membership.check_update(r.id, &r.peer_ur_ls) {
                    return self.reply(token, Err(e));
                }
            }
            // The proposer picks the id, so every member applies the same grant.
            raft_request::Request::LeaseGrant(grant) if grant.id == 0 => {
                grant.id = self.leases.choose_id();
            }
            _ => {}
        }
        match self.propose_entry(body) {
            Some(id) => {
                let previous = self.proposals.insert(id, token);
                assert!(previous.is_none(), "proposal id {id:x} reused");
            }
            None => self.reply(token, Err(Error::NoLeader)),
        }
    }

    /// Proposes one log entry; returns its proposal id, or `None` if raft dropped it.
    fn propose_entry(&mut self, body: raft_request::Request) -> Option<u64> {
        let id = self.next_proposal_id();
        let entry = RaftRequest {
            member_id: self.cfg.member_id,
            id,
            request: Some(body),
        };
        match self.raw.propose(vec![], entry.encode_to_vec()) {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::debug!(error = %e, "proposal dropped");
                None
            }
        }
    }

    fn next_proposal_id(&mut self) -> u64 {
        self.next_proposal_seq += 1;
        (self.cfg.incarnation << 40).wrapping_add(self.next_proposal_seq)
    }

    /// Leader: proposes revokes of expired leases and remaining-TTL checkpoints. Expiry is
    /// decided here, from the leader's clock only, and carried out through the log.
    fn propose_lease_work(&mut self) {
        if self.raw.raft.state != StateRole::Leader && !self.lease_expiry_on_followers {
            return;
        }
        let work = self.leases.leader_work(self.now_ms);
        for id in work.revoke {
            let body = raft_request::Request::LeaseRevoke(LeaseRevokeRequest { id });
            if self.propose_entry(body).is_none() {
                self.leases.revoke_not_proposed(id);
            }
        }
        if let Some(checkpoints) = work.checkpoint {
            // A lost checkpoint is harmless: the next one comes an interval later.
            let _ = self.propose_entry(raft_request::Request::LeaseCheckpoint(checkpoints));
        }
    }

    /// Starts a ReadIndex round for the waiting reads, unless one is in flight.
    fn start_read_round(&mut self) {
        if self.reads_in_flight.is_some() || self.reads_next.reads.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let batch = std::mem::take(&mut self.reads_next);
        self.reads_in_flight = Some((ctx, batch));
        self.read_round_started_ms = self.now_ms;
        self.raw.read_index(self.read_context(ctx));
    }

    /// raft's context for read round `round`: this member's id, its incarnation and the round,
    /// so no two members' (or two runs') rounds share a context. The leader ignores a ReadIndex
    /// whose context is already pending, so a shared one would stall a round until its retry.
    fn read_context(&self, round: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.cfg.member_id.to_be_bytes());
        ctx.extend_from_slice(&self.cfg.incarnation.to_be_bytes());
        ctx.extend_from_slice(&round.to_be_bytes());
        ctx
    }

    /// Requests wait at most two election timeouts for a leader, then get etcd's "no leader"
    /// (instead of taking effect long after their client gave up).
    fn expire_waiting_for_leader(&mut self) {
        let wait_max_ms = 2 * self.cfg.election_ticks as u64 * self.cfg.tick_ms;
        while let Some((since, _, _)) = self.waiting_for_leader.front() {
            if self.now_ms < since + wait_max_ms {
                break;
            }
            if let Some((_, token, _)) = self.waiting_for_leader.pop_front() {
                self.reply(token, Err(Error::NoLeader));
            }
        }
    }

    /// A ReadIndex round can be lost (a follower forwards it to a leader that a partition or a
    /// crash then hides); after an election timeout its reads go into a fresh round, so one
    /// lost message never stalls every later linearizable read.
    fn retry_stuck_read_round(&mut self) {
        let timeout_ms = self.cfg.election_ticks as u64 * self.cfg.tick_ms;
        if self.reads_in_flight.is_none() || self.now_ms < self.read_round_started_ms + timeout_ms {
            return;
        }
        if let Some((ctx, batch)) = self.reads_in_flight.take() {
            tracing::debug!(
                ctx,
                reads = batch.reads.len(),
                "read index round timed out; retrying"
            );
            let mut reads = batch.reads;
            reads.append(&mut self.reads_next.reads);
            self.reads_next.reads = reads;
        }
        if self.has_leader() {
            self.start_read_round();
        }
    }

    fn serve_read(&mut self, token: u64, read: Read) {
        let result = match read {
            Read::Range(r) => apply::range(&self.store, &r).map(Response::Range),
            Read::HashKv(r) => apply::hash_kv(&self.store, &r).map(Response::HashKv),
            // A read-only txn: it writes nothing, so running it outside the log is safe.
            Read::Txn(t) => apply::txn(&mut self.store, &t, &self.leases).map(Response::Txn),
            Read::LeaseKeepAlive(k) if self.raw.raft.state == StateRole::Leader => self
                .leases
                .keep_alive(k.id, self.lease_stamp_ms())
                .map(Response::LeaseKeepAlive),
            Read::LeaseKeepAlive(_) => Err(Error::NotLeader),
            Read::LeaseTimeToLive(t) => Ok(Response::LeaseTimeToLive(
                self.leases.time_to_live(&t, self.now_ms),
            )),
            Read::LeaseLeases(_) => Ok(Response::LeaseLeases(self.leases.list())),
            Read::MemberList(_) => Ok(Response::MemberList(MemberListResponse {
                header: None,
                members: self.membership.to_proto(),
            })),
        };
        self.reply(token, result);
    }

    fn reply(&mut self, token: u64, mut result: Result<Response, Error>) {
        if let Ok(response) = &mut result {
            let has_revision = response.has_revision();
            let header = response.header_mut();
            header.cluster_id = self.cfg.cluster_id;
            header.member_id = self.cfg.member_id;
            header.raft_term = self.raw.raft.term;
            if header.revision == 0 && has_revision {
                header.revision = self.store.current_revision();
            }
        }
        self.outputs.push(Output::Reply { token, result });
    }

    /// Handles every pending raft Ready.
    ///
    /// Nothing may call into raft between `ready()` and `advance_append_async` (raft-rs's
    /// invariant: a proposal there corrupts its unstable log), so the Ready is taken apart
    /// first, handed back, and only then are its committed entries applied, its reads
    /// confirmed and a leader change acted on.
    fn drive(&mut self) {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            let role_changed = ready.ss().is_some();
            let messages = ready.take_messages();
            if !messages.is_empty() {
                self.outputs.push(Output::Send(messages));
            }
            let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
            let committed = ready.take_committed_entries();
            let read_states = ready.take_read_states();
            let batch = PersistBatch {
                number: ready.number(),
                hard_state: ready.hs().cloned(),
                entries: ready.take_entries(),
                then_send: ready.take_persisted_messages(),
                snapshot,
            };
            {
                let store = self.raw.mut_store();
                if let Some(snapshot) = &batch.snapshot {
                    if let Err(e) = store.apply_snapshot(snapshot.clone()) {
                        panic!("raft handed us a snapshot older than the log: {e}");
                    }
                }
                if let Err(e) = store.append(&batch.entries) {
                    panic!("raft handed us entries that do not extend the log: {e}");
                }
                if let Some(hs) = &batch.hard_state {
                    store.set_hard_state(hs.clone());
                }
            }
            self.raw.advance_append_async(ready);

            if let Some(snapshot) = &batch.snapshot {
                self.install_snapshot(snapshot);
            }
            self.apply_entries(&committed);
            for rs in read_states {
                self.on_read_state(rs.index, &rs.request_ctx);
            }
            if batch.is_empty() {
                self.on_nothing_to_persist(batch.number);
            } else {
                assert!(
                    batch.number > self.persist_emitted,
                    "persist batches out of order"
                );
                self.persist_emitted = batch.number;
                self.outputs.push(Output::Persist(batch));
            }
            self.serve_confirmed_reads();
            if role_changed {
                self.on_leader_change();
            }
        }
    }

    /// A Ready with nothing to persist. raft-rs's `on_persist_ready(n)` means "every Ready up
    /// to n is durable", so it may be said only once every earlier batch is: until then the
    /// number waits.
    fn on_nothing_to_persist(&mut self, number: u64) {
        if self.persist_durable >= self.persist_emitted {
            self.raw.on_persist_ready(number);
        } else {
            self.persist_deferred = Some(number);
        }
    }

    /// The driver reports batches up to `number` durable.
    fn on_persisted(&mut self, number: u64) {
        assert!(
            number <= self.persist_emitted,
            "batch {number} was never emitted"
        );
        self.persist_durable = self.persist_durable.max(number);
        self.raw.on_persist_ready(number);
        self.ack_installed_snapshot();
        if self.persist_durable >= self.persist_emitted {
            if let Some(deferred) = self.persist_deferred.take() {
                self.raw.on_persist_ready(deferred);
            }
        }
        if self.commit_without_quorum && self.raw.raft.state == StateRole::Leader {
            self.apply_ahead_of_commit();
        }
    }

    /// The `commit-without-quorum` bug: apply what is durable here, committed or not.
    fn apply_ahead_of_commit(&mut self) {
        let persisted = self.raw.raft.raft_log.persisted;
        if persisted <= self.applied_index {
            return;
        }
        let entries = match self.raw.raft.raft_log.slice(
            self.applied_index + 1,
            persisted + 1,
            None,
            raft::GetEntriesContext::empty(false),
        ) {
            Ok(e) => e,
            Err(_) => return,
        };
        for entry in &entries {
            if entry.entry_type == EntryType::EntryNormal {
                self.apply_normal(entry);
            }
            self.applied_index = entry.index;
        }
        self.serve_confirmed_reads();
    }

    fn on_leader_change(&mut self) {
        // Only the leader decides lease expiry; a new leader extends every lease by one
        // election timeout, as etcd's promote does.
        let leading = self.raw.raft.state == StateRole::Leader || self.lease_expiry_on_followers;
        if leading != self.leases.lessor().is_primary() {
            let extend_ms = self.cfg.election_ticks as u64 * self.cfg.tick_ms;
            self.leases
                .set_leader(leading, self.lease_stamp_ms(), extend_ms);
        }
        if !self.has_leader() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting_for_leader);
        for (_, token, route) in waiting {
            self.on_route(token, route);
        }
        // A read round that raced with the leader change may never be answered: retry it.
        if let Some((_, batch)) = self.reads_in_flight.take() {
            let mut reads = batch.reads;
            reads.append(&mut self.reads_next.reads);
            self.reads_next.reads = reads;
        }
        self.start_read_round();
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Some((in_flight, _)) = &self.reads_in_flight else {
            return;
        };
        if ctx != self.read_context(*in_flight) {
            return;
        }
        if let Some((_, batch)) = self.reads_in_flight.take() {
            self.reads_confirmed.push_back((index, batch));
        }
        self.start_read_round();
    }

    fn serve_confirmed_reads(&mut self) {
        while let Some((index, _)) = self.reads_confirmed.front() {
            if *index > self.applied_index {
                break;
            }
            if let Some((_, batch)) = self.reads_confirmed.pop_front() {
                for (token, request) in batch.reads {
                    match (&self.stale_reads, request) {
                        (Some(stale), Read::Range(r)) => {
                            let result = apply::range(&stale.copy, &r).map(Response::Range);
                            self.reply(token, result);
                        }
                        (_, request) => self.serve_read(token, request),
                    }
                }
            }
        }
    }

    fn apply_entries(&mut self, entries: &[Entry]) {
        let Some(last) = entries.last() else {
            return;
        };
        for entry in entries {
            if self.commit_without_quorum && entry.index <= self.applied_index {
                continue; // applied ahead of its commit by the bug
            }
            assert!(
                entry.index == self.applied_index + 1,
                "applied index must advance by one: applied {}, entry {}",
                self.applied_index,
                entry.index
            );
            match entry.entry_type {
                EntryType::EntryNormal => self.apply_normal(entry),
                EntryType::EntryConfChangeV2 => self.apply_conf_change(entry),
                EntryType::EntryConfChange => {
                    // keel proposes only ConfChangeV2 (and raft-rs proposes no v1 of its own).
                    tracing::warn!(index = entry.index, "ignoring a v1 conf change entry");
                }
            }
            self.applied_index = entry.index;
            if let Some(stale) = &mut self.stale_reads {
                stale.applied_since_refresh += 1;
                if stale.applied_since_refresh >= stale.every_applied {
                    stale.applied_since_refresh = 0;
                    stale.copy = self.store.clone();
                }
            }
        }
        self.raw.advance_apply_to(last.index);
        if std::mem::take(&mut self.members_changed) {
            self.outputs
                .push(Output::Members(self.membership.members()));
        }
        self.compact_log();
        if !self.watch_events.is_empty() {
            let events = std::mem::take(&mut self.watch_events);
            let header = self.header_info();
            self.watches.notify(&events, &self.store, header);
        }
    }

    fn apply_normal(&mut self, entry: &Entry) {
        if entry.data.is_empty() {
            return; // a new leader's empty entry
        }
        let request = match RaftRequest::decode(entry.data.clone()) {
            Ok(r) => r,
            Err(e) => panic!("committed entry {} does not decode: {e}", entry.index),
        };
        let result = match request.request {
            Some(raft_request::Request::Put(p)) => {
                apply::put(&mut self.store, &p, &self.leases).map(Response::Put)
            }
            Some(raft_request::Request::DeleteRange(d)) => {
                apply::delete_range(&mut self.store, &d).map(Response::DeleteRange)
            }
            Some(raft_request::Request::Txn(t)) => {
                apply::txn(&mut self.store, &t, &self.leases).map(Response::Txn)
            }
            Some(raft_request::Request::LeaseGrant(g)) => self
                .leases
                .apply_grant(&g, self.lease_stamp_ms())
                .map(Response::LeaseGrant),
            Some(raft_request::Request::LeaseRevoke(r)) => self
                .leases
                .apply_revoke(&mut self.store, r.id)
                .map(Response::LeaseRevoke),
            Some(raft_request::Request::LeaseCheckpoint(c)) => {
                self.leases.apply_checkpoint(&c);
                return;
            }
            Some(raft_request::Request::Compaction(c)) => {
                apply::compact(&mut self.store, &c).map(Response::Compaction)
            }
            Some(raft_request::Request::MemberUpdate(u)) => self.apply_member_update(u),
            Some(raft_request::Request::Publish(p)) => {
                self.membership.publish(p.member_id, &p.name, p.client_urls);
                self.members_changed = true;
                return;
            }
            None => panic!("committed entry {} carries no request", entry.index),
        };
        // Keys written or deleted by this entry move between leases.
        let mut events = self.store.take_events();
        self.leases.observe(&events);
        if self.watches.watcher_count() > 0 {
            if self.watches.wants_prev_kv() {
                for event in &mut events {
                    event.prev_kv = crate::watch::prev_kv(&self.store, event);
                }
            }
            self.watch_events.append(&mut events);
        }
        if request.member_id == self.cfg.member_id {
            if let Some(token) = self.proposals.remove(&request.id) {
                self.reply(token, result);
            }
        }
    }
}

/// etcd's minimum lease TTL: ⌈1.5 × election timeout⌉ in seconds (2 s at the defaults).
fn min_lease_ttl_s(cfg: &NodeConfig) -> i64 {
    let election_ms = cfg.election_ticks as u64 * cfg.tick_ms;
    (3 * election_ms).div_ceil(2 * 1000).max(1) as i64
}

/// The bootstrap member table's contents: `initial_members`, or the bare `voters`.
fn initial_members(cfg: &NodeConfig) -> Result<Vec<Member>, StartError> {
    if cfg.initial_members.is_empty() {
        return Ok(cfg
            .voters
            .iter()
            .map(|&id| Member {
                id,
                ..Member::default()
            })
            .collect());
    }
    let mut ids: Vec<u64> = cfg.initial_members.iter().map(|m| m.id).collect();
    let mut voters = cfg.voters.clone();
    ids.sort_unstable();
    voters.sort_unstable();
    if ids != voters || cfg.initial_members.iter().any(|m| m.is_learner) {
        return Err(StartError::Config(format!(
            "initial members {ids:x?} are not the voters {voters:x?}"
        )));
    }
    Ok(cfg.initial_members.clone())
}
