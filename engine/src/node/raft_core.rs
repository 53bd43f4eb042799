//! The raft core: the one adapter around raft-rs's `RawNode`.
//!
//! Nothing else in keel reads or writes raft-rs internals (`raw.raft.*`, its log, its
//! progress tracker, its storage). The rest of the node asks narrow questions (who leads,
//! which term, is this id a voter) and hands over narrow commands (propose, read index,
//! transfer leadership, apply a conf change). The persist tracker lives here too, because
//! only raft cares which Ready numbers are durable.

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, Message, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{ProgressState, RawNode, ReadOnlyOption, StateRole, Storage as _};

use super::log_bytes::LogBytes;
use super::persist::PersistTracker;
use super::types::{NodeConfig, PersistBatch, Recovered, StartError};
use crate::raft_log;
use crate::raft_storage::RaftStorage;
use crate::rng::SplitMix64;

/// One Ready taken apart: what the node acts on after raft has its Ready back.
pub(super) struct ReadyParts {
    /// The role (or leader) changed.
    pub role_changed: bool,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Committed entries to apply.
    pub committed: Vec<Entry>,
    /// Confirmed read indexes: (index, context).
    pub read_states: Vec<(u64, Vec<u8>)>,
    /// What to make durable (maybe nothing).
    pub batch: PersistBatch,
}

/// raft-rs's `RawNode` with keel's storage, and the persist tracker.
pub(super) struct RaftCore {
    raw: RawNode<RaftStorage>,
    persist: PersistTracker,
    member_id: u64,
    seed: u64,
    election_ticks: usize,
    /// The highest commit index seen: it never decreases.
    committed_seen: u64,
    /// The bytes of the applied entries in the in-memory log.
    log_bytes: LogBytes,
}

/// How the in-memory log is compacted (see [`RaftCore::compact_log`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Compaction {
    /// Entries always kept behind the applied index; compaction goes in steps of this many.
    pub kept: u64,
    /// The bytes of applied entries the log may hold (`None`: no byte bound).
    pub bytes_max: Option<u64>,
    /// The index of the snapshot being saved, if one is.
    pub saving: Option<u64>,
}

impl RaftCore {
    /// Starts raft from the recovered snapshot and log. Returns the snapshot the node must
    /// restore its state from, if any.
    pub(super) fn new(
        cfg: &NodeConfig,
        recovered: &Recovered,
    ) -> Result<(RaftCore, Option<Snapshot>), StartError> {
        let log = MemStorage::new_with_conf_state(ConfState::from((cfg.voters.clone(), vec![])));
        let mut storage = RaftStorage::new(log);
        let restored = recover_log(&mut storage, recovered)?;
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
        let committed_seen = raw.raft.raft_log.committed;
        let log_bytes = LogBytes::new(raw.raft.raft_log.applied + 1);
        let core = RaftCore {
            raw,
            persist: PersistTracker::default(),
            member_id: cfg.member_id,
            seed: cfg.seed,
            election_ticks: cfg.election_ticks,
            committed_seen,
            log_bytes,
        };
        Ok((core, restored))
    }

    /// Campaigns at once (a one-member cluster need not wait an election timeout).
    pub(super) fn campaign(&mut self) -> Result<(), raft::Error> {
        self.raw.campaign()
    }

    /// One raft tick.
    pub(super) fn tick(&mut self) {
        self.raw.tick();
    }

    /// Steps a peer's message (a message raft refuses is dropped).
    pub(super) fn step(&mut self, msg: Message) {
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(error = %e, "dropped a peer message");
        }
    }

    /// Reports whether the snapshot sent to `to` arrived.
    pub(super) fn report_snapshot(&mut self, to: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// Reports that peer `to` could not be reached.
    pub(super) fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Whether this member leads.
    pub(super) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this member knows of (0: none).
    pub(super) fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// Whether this member knows a leader.
    pub(super) fn has_leader(&self) -> bool {
        self.raw.raft.leader_id != raft::INVALID_ID
    }

    /// The current term.
    pub(super) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The highest index known committed.
    pub(super) fn committed_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The last index in the log.
    pub(super) fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Whether `id` is a voter in raft's configuration.
    pub(super) fn is_voter(&self, id: u64) -> bool {
        self.raw.raft.prs().conf().voters().contains(id)
    }

    /// How far `id`'s log matches the leader's (leader only; 0 if unknown).
    pub(super) fn matched(&self, id: u64) -> u64 {
        self.raw.raft.prs().get(id).map_or(0, |p| p.matched)
    }

    /// Whether a leader has a conf change in its log not yet applied.
    pub(super) fn has_pending_conf(&self) -> bool {
        self.is_leader() && self.raw.raft.has_pending_conf()
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
    pub(super) fn enforce_election_timeout(&mut self) {
        let base = self.election_ticks as u64;
        let role = match self.raw.raft.state {
            StateRole::Follower => 1u64,
            StateRole::PreCandidate => 2,
            StateRole::Candidate => 3,
            StateRole::Leader => 4,
        };
        let term = self.raw.raft.term;
        let mut mix = SplitMix64::new(self.seed ^ term.rotate_left(17) ^ (role << 61));
        let want = (base + mix.below(base)) as usize;
        if self.raw.raft.randomized_election_timeout() != want {
            self.raw.raft.set_randomized_election_timeout(want);
        }
        assert!(
            (base..2 * base).contains(&(self.raw.raft.randomized_election_timeout() as u64)),
            "election timeout outside [{base}, {})",
            2 * base
        );
    }

    /// Proposes a normal entry.
    pub(super) fn propose(&mut self, data: Vec<u8>) -> Result<(), raft::Error> {
        self.raw.propose(vec![], data)
    }

    /// Proposes a conf change.
    pub(super) fn propose_conf_change(&mut self, cc: ConfChangeV2) -> Result<(), raft::Error> {
        self.raw.propose_conf_change(vec![], cc)
    }

    /// Starts a ReadIndex round with context `ctx`.
    pub(super) fn read_index(&mut self, ctx: Vec<u8>) {
        self.raw.read_index(ctx);
    }

    /// Starts a leader transfer to `target`.
    pub(super) fn transfer_leader(&mut self, target: u64) {
        self.raw.transfer_leader(target);
    }

    /// A leader that applied its own removal sends TimeoutNow to the most up-to-date voter
    /// (lowest id on a tie; raft's vote rules keep that election safe) and steps down: kept
    /// leader, it panics in raft-rs (`maybe_commit` unwraps its own, removed, progress) once
    /// an append response moves the remaining voters' quorum (the harness's `member` nemesis).
    pub(super) fn hand_over_leadership(&mut self) {
        if !self.is_leader() {
            return;
        }
        let raft = &self.raw.raft;
        let voters = raft.prs().conf().voters().ids();
        let best = voters
            .iter()
            .filter(|&id| id != self.member_id)
            .filter_map(|id| raft.prs().get(id).map(|p| (p.matched, id)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let term = raft.term;
        if let Some((matched, target)) = best {
            tracing::info!(
                target = format_args!("{target:x}"),
                matched,
                "removed leader: handing over leadership"
            );
            self.raw.raft.send_timeout_now(target);
        }
        self.raw.raft.become_follower(term, raft::INVALID_ID);
    }

    /// Hands a committed conf change to raft and keeps the resulting configuration in its
    /// storage.
    pub(super) fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<(), raft::Error> {
        let cs = self.raw.apply_conf_change(cc)?;
        self.raw.mut_store().set_conf_state(cs);
        Ok(())
    }

    /// Takes the next Ready apart, writes its snapshot, entries and hard state into raft's
    /// in-memory storage and hands it back (`advance_append_async`). `None`: nothing ready.
    ///
    /// Nothing may call into raft between `ready()` and `advance_append_async` (raft-rs's
    /// invariant: a proposal there corrupts its unstable log), which is why this is one step.
    pub(super) fn next_ready(&mut self) -> Option<ReadyParts> {
        if !self.raw.has_ready() {
            return None;
        }
        let mut ready = self.raw.ready();
        let role_changed = ready.ss().is_some();
        let messages = ready.take_messages();
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        let committed = ready.take_committed_entries();
        let read_states = ready
            .take_read_states()
            .into_iter()
            .map(|rs| (rs.index, rs.request_ctx))
            .collect();
        let batch = PersistBatch {
            number: ready.number(),
            hard_state: ready.hs().cloned(),
            entries: ready.take_entries(),
            then_send: ready.take_persisted_messages(),
            snapshot,
        };
        self.store_batch(&batch);
        self.raw.advance_append_async(ready);
        self.check_commit();
        Some(ReadyParts {
            role_changed,
            messages,
            committed,
            read_states,
            batch,
        })
    }

    fn store_batch(&mut self, batch: &PersistBatch) {
        let store = self.raw.mut_store();
        if let Some(snapshot) = &batch.snapshot {
            if let Err(e) = store.apply_snapshot(snapshot.clone()) {
                panic!("raft handed us a snapshot older than the log: {e}");
            }
            self.log_bytes.reset(snapshot.get_metadata().index + 1);
        }
        if let Err(e) = store.append(&batch.entries) {
            panic!("raft handed us entries that do not extend the log: {e}");
        }
        if let Some(hs) = &batch.hard_state {
            store.set_hard_state(hs.clone());
        }
    }

    /// A Ready's batch: returns it if it holds something to persist (it goes to the driver),
    /// or acknowledges it to raft when the tracker allows.
    pub(super) fn emit(&mut self, batch: PersistBatch) -> Option<PersistBatch> {
        if batch.is_empty() {
            if self.persist.nothing_to_persist(batch.number) {
                self.persist_ready(batch.number);
            }
            return None;
        }
        self.persist.emit(batch.number);
        Some(batch)
    }

    /// The driver reports batches up to `number` durable.
    pub(super) fn on_persisted(&mut self, number: u64) {
        let deferred = self.persist.durable(number);
        self.persist_ready(number);
        if let Some(deferred) = deferred {
            self.persist_ready(deferred);
        }
    }

    /// raft-rs's `on_persist_ready`, except on a leader that has applied its own removal:
    /// raft-rs looks up the leader's own progress there and unwraps it, which would panic
    /// (the real-cluster harness's `member` nemesis hit it). Such a member is handing its
    /// leadership over and stopping, and its own log no longer counts toward any quorum; a
    /// later Ready's acknowledgement covers the skipped ones if it steps down first.
    fn persist_ready(&mut self, number: u64) {
        let raft = &self.raw.raft;
        if raft.state == raft::StateRole::Leader && raft.prs().get(raft.id).is_none() {
            tracing::debug!(
                number,
                "removed leader: its persisted Ready is not reported"
            );
            return;
        }
        self.raw.on_persist_ready(number);
    }

    /// Tells raft the entries up to `index` are applied.
    pub(super) fn advance_apply_to(&mut self, index: u64) {
        self.raw.advance_apply_to(index);
    }

    /// Once an installed snapshot at `index` is durable and committed, raft counts it as
    /// applied. Returns whether that happened.
    pub(super) fn ack_installed_snapshot(&mut self, index: u64) -> bool {
        let log = &self.raw.raft.raft_log;
        if log.persisted < index || log.committed < index {
            return false;
        }
        if log.applied < index {
            self.raw.advance_apply_to(index);
        }
        true
    }

    /// The `commit-without-quorum` bug: the entries after `applied` that are durable here,
    /// committed or not.
    pub(super) fn durable_entries_after(&self, applied: u64) -> Vec<Entry> {
        let persisted = self.raw.raft.raft_log.persisted;
        if persisted <= applied {
            return Vec::new();
        }
        self.raw
            .raft
            .raft_log
            .slice(
                applied + 1,
                persisted + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap_or_default()
    }

    /// The metadata of a state snapshot at `index` (applied), or `None` if the log no longer
    /// knows that index's term.
    pub(super) fn snapshot_metadata(&self, index: u64) -> Option<SnapshotMetadata> {
        let term = match self.raw.raft.raft_log.term(index) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(index, error = %e, "no term to snapshot at");
                return None;
            }
        };
        let mut metadata = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        Some(metadata)
    }

    /// Whether raft asked for a newer snapshot for a follower since the last call.
    pub(super) fn take_snapshot_wanted(&self) -> bool {
        self.raw.store().take_wanted() != 0
    }

    /// The durable snapshot raft sends to followers behind the log from now on.
    pub(super) fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.raw.mut_store().set_snapshot(snapshot);
    }

    /// The installed snapshot held, read back from its file: hold that copy instead (ignored
    /// unless it is the same snapshot).
    pub(super) fn replace_held_snapshot(&mut self, snapshot: Snapshot) {
        if !self.raw.mut_store().replace_held(snapshot) {
            tracing::debug!("an installed snapshot read back is no longer the one held");
        }
    }

    /// Entries were applied: their bytes now count towards the byte bound.
    pub(super) fn count_applied(&mut self, entries: &[Entry]) {
        self.log_bytes.applied(entries);
    }

    /// The in-memory log: (first index, bytes of its applied entries).
    pub(super) fn log_memory(&self) -> (u64, u64) {
        (self.first_index(), self.log_bytes.bytes())
    }

    fn first_index(&self) -> u64 {
        match self.raw.store().first_index() {
            Ok(i) => i,
            Err(e) => panic!("in-memory raft log has no first index: {e}"),
        }
    }

    fn held_index(&self) -> u64 {
        self.raw.store().snapshot_held().get_metadata().index
    }

    /// Frees in-memory log entries behind `applied` by two rules; whichever frees more wins.
    ///
    /// * Entries (etcd's): `rule.kept` entries stay behind the applied index; older ones go,
    ///   in steps of `rule.kept`, but with peers never past the durable snapshot raft holds
    ///   for followers.
    /// * Bytes: once the applied entries hold more than `rule.bytes_max`, the oldest go,
    ///   down to half the bound (so this runs once per half-bound of writes), past the
    ///   durable snapshot if need be: a follower that needs a freed entry gets a snapshot,
    ///   made anew if the held one is too old (`RaftStorage::snapshot`). Never past the
    ///   applied entry itself, nor past a catch-up in progress ([`RaftCore::catch_up_pin`]).
    pub(super) fn compact_log(&mut self, applied: u64, rule: Compaction) {
        let first = self.first_index();
        let by_entries = self.entry_limit(first, applied, rule.kept);
        let by_bytes = rule
            .bytes_max
            .map_or(first, |max| self.byte_limit(first, max, rule.saving));
        let limit = by_entries.max(by_bytes);
        if limit <= first {
            return;
        }
        if let Err(e) = self.raw.mut_store().compact(limit) {
            panic!("compacting the in-memory raft log to {limit}: {e}");
        }
        self.log_bytes.compacted(limit);
    }

    /// The entry rule's new first index (`first`: nothing to free).
    fn entry_limit(&self, first: u64, applied: u64, kept: u64) -> u64 {
        let Some(mut limit) = applied.checked_sub(kept) else {
            return first; // fewer than `kept` entries applied: nothing to free
        };
        if self.raw.raft.prs().iter().count() > 1 {
            limit = limit.min(self.held_index());
        }
        if limit < first + kept {
            return first;
        }
        limit
    }

    /// The byte rule's new first index (`first`: nothing to free).
    fn byte_limit(&self, first: u64, max: u64, saving: Option<u64>) -> u64 {
        if self.log_bytes.bytes() <= max {
            return first;
        }
        let applied = self.raw.raft.raft_log.applied;
        let mut limit = self.log_bytes.first_fitting(max / 2).min(applied);
        if let Some(pin) = self.catch_up_pin(saving) {
            limit = limit.min(pin);
        }
        limit.max(first)
    }

    /// The lowest entry a follower's catch-up in progress still needs (leader only), which
    /// the byte rule must keep; without it a follower could be sent one snapshot after
    /// another while the log runs ahead of each. Per peer:
    ///
    /// * being sent a snapshot: the snapshot's index (it continues from there);
    /// * recently heard from, probing from an entry still in memory: that entry;
    /// * recently heard from and needing a snapshot: the newest one, saved or being saved;
    /// * replicating from memory, or silent (down, cut off): nothing — the bound holds, and
    ///   such a follower gets a snapshot if it needs a freed entry later.
    fn catch_up_pin(&self, saving: Option<u64>) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let first = self.first_index();
        let newest = self.held_index().max(saving.unwrap_or(0));
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.member_id)
            .filter_map(|(_, pr)| match pr.state {
                ProgressState::Snapshot => Some(pr.pending_snapshot),
                _ if !pr.recent_active => None,
                _ if pr.next_idx <= first => Some(newest),
                ProgressState::Probe => Some(pr.next_idx - 1),
                ProgressState::Replicate => None,
            })
            .min()
    }

    /// The `read-index-skip-heartbeat` bug: reads are confirmed without a heartbeat round,
    /// and a leader no longer checks that it still has a quorum.
    pub(super) fn skip_read_heartbeats(&mut self) {
        self.raw.raft.read_only.option = ReadOnlyOption::LeaseBased;
        self.raw.raft.set_check_quorum(false);
    }

    fn check_commit(&mut self) {
        let committed = self.raw.raft.raft_log.committed;
        assert!(
            committed >= self.committed_seen,
            "commit index went back from {} to {committed}",
            self.committed_seen
        );
        self.committed_seen = committed;
    }

    /// What must always hold.
    pub(super) fn check_invariants(&self) {
        let log = &self.raw.raft.raft_log;
        assert!(
            log.committed >= self.committed_seen,
            "commit index went back from {} to {}",
            self.committed_seen,
            log.committed
        );
        assert!(
            log.applied <= log.committed,
            "raft applied {} beyond commit {}",
            log.applied,
            log.committed
        );
        self.persist.check();
    }
}

/// Loads the recovered snapshot and log into raft's storage. Returns the snapshot the node
/// must restore its state from, if any.
fn recover_log(
    storage: &mut RaftStorage,
    recovered: &Recovered,
) -> Result<Option<Snapshot>, StartError> {
    let snap_index = recovered
        .snapshot
        .as_ref()
        .map_or(0, |s| s.get_metadata().index);
    if let Some(snapshot) = &recovered.snapshot {
        storage.apply_snapshot(snapshot.clone())?;
    }
    let entries: Vec<Entry> = recovered
        .entries
        .iter()
        .filter(|e| e.index > snap_index)
        .cloned()
        .collect();
    if let Some(first) = entries.first() {
        if first.index != snap_index + 1 {
            return Err(StartError::Config(format!(
                "the WAL continues at entry {} but the newest valid snapshot ends at entry \
                 {snap_index}: entries in between are lost (was a newer snapshot removed?)",
                first.index
            )));
        }
    }
    storage.append(&entries)?;
    if let Some(mut hs) = recovered.hard_state.clone() {
        // A snapshot may be of entries applied before the hard state recording their commit
        // was written; they were committed all the same.
        hs.commit = hs.commit.max(snap_index);
        storage.set_hard_state(hs);
    }
    Ok(recovered.snapshot.clone())
}
