//! The keel node: one member's raft, its state machine and its watches, driven sans-I/O.
//!
//! The driver feeds [`Input`]s to [`Node::step`] and drains [`Output`]s with
//! [`Node::take_outputs`]. Nothing here touches a disk, a socket or a clock.
//!
//! # The parts
//! The node composes sub-machines that each own their state and meet only through narrow
//! methods:
//!
//! | part | file | owns |
//! |---|---|---|
//! | raft core | `raft_core.rs`, `persist.rs` | raft-rs's `RawNode` (the only code touching its internals), the persist tracker |
//! | read-index queue | `reads.rs` | ReadIndex rounds (next, in flight, confirmed), requests waiting for a leader |
//! | state machine | `state_machine.rs`, `state_machine/conf_apply.rs` | MVCC store, leases, member table, applied index, proposals |
//! | watches | [`crate::watch`] | every watch stream and watcher |
//! | snapshots | `snapshots.rs` | state snapshots made, saved, installed; in-memory log compaction |
//! | leader transfers | `transfers.rs` | MoveLeader requests waiting for their target |
//! | conf changes | `conf_change.rs` | proposing membership changes, publishing attributes |
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

use keel_proto::etcdserverpb::AlarmType;
use raft::eraftpb::Snapshot;

use std::collections::BTreeMap;

use crate::auth::AuthInfo;
use crate::bugs::{Bug, Bugs};
use crate::error::Error;
use crate::membership::Membership;
use crate::mvcc::Store;
pub use crate::request::{Request, Response};
use crate::watch::{HeaderInfo, WatchHub};

mod compactor;
mod conf_change;
mod log_bytes;
mod persist;
mod predecoded;
mod quota;
mod raft_core;
mod reads;
mod requests;
mod snapshots;
mod state_machine;
mod transfers;
mod types;

pub use compactor::{PERIODIC_INTERVAL_MAX_MS, PERIODIC_SAMPLES_PER_INTERVAL, REVISION_CHECK_MS};
pub use conf_change::{check_urls, PEER_URLS_MAX};
pub use predecoded::DecodedStore;
pub use quota::{exceeds_quota, quota_cost, quota_used, LEASE_COST_BYTES, QUOTA_BASE_BYTES};
pub use reads::WAITING_FOR_LEADER_MAX;
pub use snapshots::{
    SnapshotJob, LOG_ENTRIES_KEPT_MAX, RAFT_LOG_BYTES_MAX_DEFAULT, SNAPSHOT_COUNT_DEFAULT,
    SNAPSHOT_LOG_PERCENT_DEFAULT,
};
pub use state_machine::PROPOSALS_IN_FLIGHT_MAX;
pub use types::{
    AutoCompaction, CorruptCheck, Input, MaintenanceConfig, NodeConfig, NodeGauges, NodeStatus,
    Output, PersistBatch, RaftLogMemory, Recovered, StartError, WatchConfig,
    AUTH_TOKEN_TTL_MS_DEFAULT, QUOTA_BYTES_DEFAULT, QUOTA_BYTES_WARN,
};

use conf_change::ConfChanges;
use raft_core::RaftCore;
use reads::{LeaderWait, ReadQueue};
use snapshots::Snapshots;
use state_machine::StateMachine;
use transfers::Transfers;

/// The simulator's `stale-read` bug: linearizable ranges come from a copy of the store
/// refreshed every this many applied entries.
pub const STALE_READ_REFRESH_ENTRIES: u64 = 8;

/// The node's clock: ticks so far times the tick length, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Now, by the node's clock.
    pub now_ms: u64,
    tick_ms: u64,
    election_ticks: u64,
}

impl Clock {
    /// The time a lease grant, renewal or promotion counts from: the *end* of the current tick.
    ///
    /// The node's clock moves only on ticks, so something handled between two ticks happened
    /// at some time in `[now_ms, now_ms + tick_ms)`. Counting a lease's TTL from the end of that
    /// interval means it never expires before its TTL has elapsed by the leader's clock (it may
    /// live up to one tick longer, which etcd's contract allows).
    pub fn lease_stamp_ms(self) -> u64 {
        self.now_ms + self.tick_ms
    }

    /// One election timeout.
    pub fn election_timeout_ms(self) -> u64 {
        self.election_ticks * self.tick_ms
    }
}

/// Where the parts put their outputs; stamps reply headers.
#[derive(Debug)]
pub(crate) struct Outbox {
    cluster_id: u64,
    member_id: u64,
    outputs: Vec<Output>,
}

impl Outbox {
    /// Queues an output.
    fn push(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// Queues a reply, its header stamped with the term and (if it carries none) revision.
    fn reply(&mut self, token: u64, mut result: Result<Response, Error>, term: u64, revision: i64) {
        match &mut result {
            Ok(response) if response.has_header() => stamp(response, self, term, revision),
            _ => {} // an error, or etcd's headerless Alarm response
        }
        self.outputs.push(Output::Reply { token, result });
    }
}

/// Stamps a response header with the member, the term and (if it carries none) revision.
fn stamp(response: &mut Response, out: &Outbox, term: u64, revision: i64) {
    let has_revision = response.has_revision();
    let header = response.header_mut();
    header.cluster_id = out.cluster_id;
    header.member_id = out.member_id;
    header.raft_term = term;
    if header.revision == 0 && has_revision {
        header.revision = revision;
    }
}

/// This member wants its own `NOSPACE` alarm raised: its disk is full (the driver could not
/// write a persist batch for lack of space), or a write went over the quota.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoSpace {
    /// When (node clock) and in which term this member last proposed its `NOSPACE` alarm.
    proposed: Option<(u64, u64)>,
}

/// One member of a keel cluster, sans-I/O.
pub struct Node {
    cfg: NodeConfig,
    clock: Clock,
    out: Outbox,
    core: RaftCore,
    reads: ReadQueue,
    leader_wait: LeaderWait,
    sm: StateMachine,
    watches: WatchHub,
    snapshots: Snapshots,
    transfers: Transfers,
    conf: ConfChanges,
    /// Set while the driver reports this member's disk full ([`Input::DiskFull`]).
    no_space: Option<NoSpace>,
    /// Set while a write refused for the quota waits for this member's alarm to apply.
    quota_alarm: Option<NoSpace>,
    /// Writes refused for the quota, answered once the alarm is applied: (token, deadline).
    quota_refused: Vec<(u64, u64)>,
    /// Auto-compaction, if configured.
    compactor: Option<compactor::Compactor>,
    /// The simulator's bugs, armed once the node has started.
    bugs: Bugs,
    /// The caller of each client request in flight that came with one
    /// ([`Input::AuthRequest`]), until it is proposed (the caller goes into the entry),
    /// served or answered.
    callers: BTreeMap<u64, AuthInfo>,
    /// A leader's snapshot's store decoded off the loop ([`Input::StoreDecoded`]), for the
    /// install of the `MsgSnapshot` stepped next.
    predecoded: Option<Box<DecodedStore>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("member_id", &self.cfg.member_id)
            .field("applied_index", &self.sm.applied_index())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a member from its recovered WAL state (empty on first boot).
    pub fn new(cfg: NodeConfig, recovered: Recovered) -> Result<Node, StartError> {
        check_config(&cfg)?;
        let sm = StateMachine::new(&cfg)?;
        let (core, restored) = RaftCore::new(&cfg, &recovered)?;
        let mut watches = WatchHub::new();
        watches.set_fragment_bytes(cfg.watch.fragment_bytes);
        watches.set_stream_window(cfg.watch.stream_window);
        watches.set_progress_interval_ms(cfg.watch.progress_interval_ms);
        let mut node = Node {
            clock: Clock {
                now_ms: 0,
                tick_ms: cfg.tick_ms,
                election_ticks: cfg.election_ticks as u64,
            },
            out: Outbox {
                cluster_id: cfg.cluster_id,
                member_id: cfg.member_id,
                outputs: Vec::new(),
            },
            core,
            reads: ReadQueue::new(cfg.member_id, cfg.incarnation),
            leader_wait: LeaderWait::default(),
            sm,
            watches,
            snapshots: Snapshots::new(
                cfg.snapshot_count,
                cfg.snapshot_log_percent,
                cfg.raft_log_bytes_max,
            ),
            transfers: Transfers::default(),
            conf: ConfChanges::new(cfg.seed),
            no_space: None,
            quota_alarm: None,
            quota_refused: Vec::new(),
            compactor: None,
            bugs: Bugs::none(),
            callers: BTreeMap::new(),
            predecoded: None,
            cfg,
        };
        if let Some(snapshot) = &restored {
            node.restore_recovered(snapshot)?;
        }
        node.compactor = node
            .cfg
            .maintenance
            .auto_compaction
            .map(|mode| compactor::Compactor::new(mode, 0, node.sm.store().current_revision()));
        if node.cfg.voters.len() == 1 && !node.cfg.joining {
            // A one-member cluster need not wait an election timeout to lead itself.
            node.core.campaign()?;
        }
        node.core.enforce_election_timeout();
        node.drive();
        node.arm_bugs();
        Ok(node)
    }

    /// Turns on the simulator's bugs of the configuration (none outside simulation builds),
    /// once the node has started.
    fn arm_bugs(&mut self) {
        let bugs = self.cfg.bugs;
        if bugs.has(Bug::StaleRead) {
            self.sm.serve_stale_reads(STALE_READ_REFRESH_ENTRIES);
        }
        if bugs.has(Bug::WatchSkipCompactionBoundary) {
            self.watches.inject_skip_compaction_boundary();
        }
        if bugs.has(Bug::ReadIndexSkipHeartbeat) {
            self.core.skip_read_heartbeats();
        }
        if bugs.has(Bug::CommitWithoutQuorum) {
            self.sm.apply_ahead();
        }
        let first_voter = self.cfg.voters.iter().min() == Some(&self.cfg.member_id);
        if bugs.has(Bug::ApplyWrong) && first_voter {
            self.sm.apply_wrongly();
        }
        #[cfg(madsim)]
        if bugs.has(Bug::V2CasCreatedIndex) {
            self.sm.cas_on_created_index();
        }
        self.bugs = bugs;
    }

    /// Starts from a recovered snapshot (raft's log already holds it).
    fn restore_recovered(&mut self, snapshot: &Snapshot) -> Result<(), StartError> {
        let leading = self.leads_leases();
        self.sm
            .restore(
                snapshot,
                None,
                leading,
                self.clock,
                &mut self.watches,
                &mut self.out,
            )
            .map_err(|e| StartError::Config(format!("the newest snapshot does not load: {e}")))?;
        let index = snapshot.get_metadata().index;
        let waiting = self.sm.jump_to(index);
        assert!(waiting.is_empty(), "proposals before the node started");
        self.snapshots.recovered(snapshot);
        Ok(())
    }

    /// Feeds one input; outputs accumulate until [`Node::take_outputs`].
    pub fn step(&mut self, input: Input) {
        // A store decoded for a snapshot lives until that `MsgSnapshot` is stepped: installed
        // (in `drive`, via `settle`) or refused, it goes.
        let snapshot_stepped = matches!(&input, Input::Peer(m)
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot);
        self.feed(input);
        self.settle();
        if snapshot_stepped {
            self.predecoded = None;
        }
    }

    /// Takes one input in, without handling what raft makes of it yet (see `settle`).
    fn feed(&mut self, input: Input) {
        match input {
            Input::Tick => self.on_tick(),
            Input::Watch(w) => {
                let header = self.header_info();
                self.watches.input(w, self.sm.store(), header);
            }
            Input::Request { token, request } => self.on_route(token, request.route()),
            Input::AuthRequest {
                token,
                request,
                auth_token,
            } => self.on_auth_request(token, request, auth_token),
            Input::WatchCreate {
                stream,
                request,
                auth_token,
            } => self.on_watch_create(stream, request, auth_token),
            Input::Peer(msg) => self.core.step(*msg),
            Input::StoreDecoded(decoded) => self.predecoded = Some(decoded),
            Input::Persisted { number } => self.on_persisted(number),
            Input::SnapshotSaved { snapshot } => {
                let applied = self.sm.applied_index();
                self.snapshots.on_saved(snapshot, &mut self.core, applied);
            }
            Input::InstalledSnapshotSaved { snapshot } => self.core.replace_held_snapshot(snapshot),
            Input::SnapshotFailed => self.snapshots.on_failed(),
            Input::SnapshotStatus { to, ok } => self.core.report_snapshot(to, ok),
            Input::Unreachable { to } => self.core.report_unreachable(to),
            Input::DiskFull { full } => self.on_disk_full(full),
            Input::Defragment => self.snapshots.force(self.sm.applied_index()),
        }
    }

    /// After inputs are fed: starts a ReadIndex round for the reads they brought, handles
    /// every raft Ready, and what follows from it.
    fn settle(&mut self) {
        if self.reads.take_pushed() {
            self.start_read_round();
        }
        self.core.enforce_election_timeout();
        self.drive();
        if !self.transfers.is_empty() {
            let done = self
                .transfers
                .check(self.core.leader_id(), self.clock.now_ms);
            for (token, result) in done {
                self.reply(token, result);
            }
        }
        if let Some(job) = self.snapshots.maybe_make(&self.sm, &self.core) {
            self.out.push(Output::SaveSnapshot(job));
        }
        if self.watches.has_unsynced() {
            let header = self.header_info();
            self.watches.catch_up(self.sm.store(), header);
        }
        let watch = self.watches.take_outputs();
        if !watch.is_empty() {
            self.out.push(Output::Watch(watch));
        }
        #[cfg(madsim)]
        self.check_invariants();
    }

    /// The driver's disk filled up (`full`) or took a write again. While full, writes are
    /// refused with etcd's "database space exceeded" and the member raises its `NOSPACE`
    /// alarm; once it writes again the alarm stays until an operator disarms it, as in etcd.
    fn on_disk_full(&mut self, full: bool) {
        match (full, self.no_space.is_some()) {
            (true, false) => {
                tracing::warn!("disk full: refusing writes, serving reads");
                self.no_space = Some(NoSpace::default());
                self.raise_no_space_alarm();
            }
            (false, true) => {
                tracing::info!("disk writable again; writes resume once the alarm is disarmed");
                self.no_space = None;
            }
            _ => {}
        }
    }

    fn on_tick(&mut self) {
        self.clock.now_ms += self.cfg.tick_ms;
        self.core.tick();
        self.sm.expire_tokens(self.clock.now_ms);
        self.raise_no_space_alarm();
        self.raise_quota_alarm();
        self.auto_compact();
        self.propose_lease_work();
        self.publish_attributes();
        self.retry_stuck_read_round();
        let expired = self
            .leader_wait
            .expire(self.clock.now_ms, 2 * self.clock.election_timeout_ms());
        for token in expired {
            // Requests wait at most two election timeouts for a leader, then get etcd's "no
            // leader" (instead of taking effect long after their client gave up).
            self.reply(token, Err(Error::NoLeader));
        }
        let header = self.header_info();
        self.watches
            .tick(self.clock.now_ms, self.sm.store(), header);
    }

    /// What watch response headers carry besides the revision.
    fn header_info(&self) -> HeaderInfo {
        self.sm.header_info(&self.out, self.core.term())
    }

    /// This member's watches.
    pub fn watches(&self) -> &WatchHub {
        &self.watches
    }

    /// Drains the outputs produced so far, in order.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out.outputs)
    }

    /// This member's status.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            member_id: self.cfg.member_id,
            cluster_id: self.cfg.cluster_id,
            leader: self.core.leader_id(),
            raft_term: self.core.term(),
            raft_index: self.core.last_index(),
            raft_applied_index: self.sm.applied_index(),
            revision: self.sm.store().current_revision(),
            is_learner: self.sm.is_learner(),
            alarms: self.sm.alarms().get(AlarmType::None as i32),
            quota_bytes_used: quota::quota_used(self.sm.store()),
        }
    }

    /// Counts for the server's metrics, each O(1) to read.
    pub fn gauges(&self) -> NodeGauges {
        let (linearizable_reads, read_index_rounds) = self.reads.totals();
        NodeGauges {
            member_id: self.cfg.member_id,
            leader: self.core.leader_id(),
            committed_index: self.core.committed_index(),
            applied_index: self.sm.applied_index(),
            keys: self.sm.store().key_count() as u64,
            watchers: self.watches.watcher_count() as u64,
            leases: self.sm.leases().lessor().len() as u64,
            quota_bytes_used: quota::quota_used(self.sm.store()),
            linearizable_reads,
            read_index_rounds,
        }
    }

    /// The auth store as of the applied index.
    pub fn auth(&self) -> &crate::auth::AuthStore {
        self.sm.auth()
    }

    /// Whether a defragmentation ([`Input::Defragment`]) asked when the applied index was
    /// `applied` is done: a snapshot as of `applied` or later is durable, and none is being
    /// saved.
    pub fn defragmented_to(&self, applied: u64) -> bool {
        self.snapshots.covers(applied)
    }

    /// The alarm table as of the applied index.
    pub fn alarms(&self) -> &crate::alarm::Alarms {
        self.sm.alarms()
    }

    /// Whether the driver reports this member's disk full.
    pub fn disk_full(&self) -> bool {
        self.no_space.is_some()
    }

    /// The member table as of the applied index.
    pub fn members(&self) -> &Membership {
        self.sm.membership()
    }

    /// Whether this member has been removed from the cluster (it must stop).
    pub fn is_removed(&self) -> bool {
        self.sm.membership().is_removed(self.cfg.member_id)
    }

    /// The MVCC store as of the applied index (for local, serializable inspection).
    pub fn store(&self) -> &Store {
        self.sm.store()
    }

    /// A snapshot job of the state as of the applied index, for a backup
    /// (`Maintenance.Snapshot`): O(1) (copy-on-write views, as for the node's own snapshots,
    /// [`Snapshots`]), and without effect on the node: it is not one of the node's snapshots,
    /// raft never sees it, and the next snapshot of its own comes as it would have. `None` if
    /// raft knows no term for the applied index (it always does once the node started).
    pub fn backup_job(&self) -> Option<SnapshotJob> {
        let applied = self.sm.applied_index();
        let metadata = self.core.snapshot_metadata(applied)?;
        Some(SnapshotJob::new(metadata, self.sm.snapshot_parts()))
    }

    /// The index of the newest state snapshot made or installed (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshots.index()
    }

    /// What the in-memory raft log holds (for tests and metrics).
    pub fn raft_log_memory(&self) -> RaftLogMemory {
        let (first_index, applied_bytes) = self.core.log_memory();
        RaftLogMemory {
            first_index,
            applied_bytes,
        }
    }

    /// Checks what must always hold across the node's parts (the MVCC store, leases and
    /// watches walked whole); panics with a message if something does not. Simulation builds
    /// call it after every step.
    pub fn check_invariants(&self) {
        self.core.check_invariants();
        self.reads.check();
        self.sm.check_invariants();
        self.watches.check_invariants();
        self.snapshots.check();
        assert!(
            self.snapshots.index() <= self.sm.applied_index()
                || self.bugs.has(Bug::CommitWithoutQuorum),
            "snapshot {} beyond the applied index {}",
            self.snapshots.index(),
            self.sm.applied_index()
        );
    }

    /// Handles every pending raft Ready.
    ///
    /// The raft core takes each Ready apart and hands it back to raft first (nothing may call
    /// into raft in between); only then are its committed entries applied, its reads
    /// confirmed and a leader change acted on.
    fn drive(&mut self) {
        while let Some(ready) = self.core.next_ready() {
            if !ready.messages.is_empty() {
                self.out.push(Output::Send(ready.messages));
            }
            if let Some(snapshot) = &ready.batch.snapshot {
                self.install_snapshot(snapshot);
            }
            self.apply_committed(&ready.committed);
            for (index, ctx) in ready.read_states {
                if self.reads.on_read_state(index, &ctx) {
                    self.start_read_round();
                }
            }
            if let Some(batch) = self.core.emit(ready.batch) {
                self.out.push(Output::Persist(batch));
            }
            self.serve_confirmed_reads();
            if ready.role_changed {
                self.on_leader_change();
            }
        }
    }

    fn apply_committed(&mut self, entries: &[raft::eraftpb::Entry]) {
        if entries.is_empty() {
            return;
        }
        self.sm.apply_entries(
            entries,
            &mut self.core,
            self.clock,
            &mut self.watches,
            &mut self.out,
        );
        self.after_apply_quota();
        self.snapshots.note_applied(entries);
        self.core.count_applied(entries);
        self.snapshots
            .compact_log(&mut self.core, self.sm.applied_index());
    }

    /// A snapshot from the leader replaced the log (see `snapshots.rs`).
    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let index = snapshot.get_metadata().index;
        let leading = self.leads_leases();
        let decoded = self
            .predecoded
            .take()
            .and_then(|decoded| decoded.take_for(snapshot));
        if decoded.is_some() {
            tracing::debug!(index, "installing a store decoded off the loop");
        }
        let restored = self.sm.restore(
            snapshot,
            decoded,
            leading,
            self.clock,
            &mut self.watches,
            &mut self.out,
        );
        if let Err(e) = restored {
            let reason = format!("the leader's snapshot at index {index} does not load: {e}");
            tracing::error!("{reason}");
            self.out.push(Output::Fatal(reason));
            return;
        }
        tracing::info!(index, "installed the leader's snapshot");
        let waiting = self.sm.jump_to(index);
        self.snapshots.installed(snapshot);
        for token in waiting {
            self.reply(token, Err(Error::Timeout));
        }
    }

    /// The driver reports batches up to `number` durable.
    fn on_persisted(&mut self, number: u64) {
        self.core.on_persisted(number);
        self.snapshots.ack_installed(&mut self.core);
        if self.bugs.has(Bug::CommitWithoutQuorum) && self.core.is_leader() {
            self.apply_ahead_of_commit();
        }
    }

    /// The `commit-without-quorum` bug: apply what is durable here, committed or not.
    fn apply_ahead_of_commit(&mut self) {
        let entries = self.core.durable_entries_after(self.sm.applied_index());
        if entries.is_empty() {
            return;
        }
        let term = self.core.term();
        self.sm
            .apply_uncommitted(&entries, term, self.clock, &mut self.watches, &mut self.out);
        self.serve_confirmed_reads();
    }

    fn on_leader_change(&mut self) {
        // Only the leader decides lease expiry; a new leader extends every lease by one
        // election timeout, as etcd's promote does.
        let leading = self.leads_leases();
        if leading != self.sm.leases().lessor().is_primary() {
            let (stamp_ms, extend_ms) = (
                self.clock.lease_stamp_ms(),
                self.clock.election_timeout_ms(),
            );
            self.sm
                .leases_mut()
                .set_leader(leading, stamp_ms, extend_ms);
        }
        if !self.core.has_leader() {
            return;
        }
        for (token, route) in self.leader_wait.take_all() {
            self.on_route(token, route);
        }
        // A read round that raced with the leader change may never be answered: retry it.
        self.reads.requeue_in_flight();
        self.start_read_round();
    }

    fn reply(&mut self, token: u64, result: Result<Response, Error>) {
        self.callers.remove(&token);
        self.sm
            .reply(&mut self.out, self.core.term(), token, result);
    }

    /// Whether this member decides lease expiry: the leader (or, with the simulator's
    /// `lease-expire-on-follower-clock` bug, every member).
    fn leads_leases(&self) -> bool {
        self.core.is_leader() || self.bugs.has(Bug::LeaseExpireOnFollowerClock)
    }
}

/// Refuses configurations the node cannot start with.
fn check_config(cfg: &NodeConfig) -> Result<(), StartError> {
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
    Ok(())
}
