//! The apply path: the replicated state machine (MVCC store, leases, member table, alarms) and the
//! table of this member's proposals waiting to be applied.
//!
//! Committed entries come in order; each is applied by [`crate::apply`] (etcd's appliers),
//! the lessor or the member table, and the proposer (if it is this member) hears the result.
//! Events of the applied entries go to the watches once the whole batch is applied.

use std::collections::BTreeMap;

use keel_proto::etcdserverpb::{AlarmType, MemberListResponse};
use keel_proto::keelpb::{raft_request, RaftRequest};
use keel_proto::mvccpb::Event;
use prost::Message as _;
use raft::eraftpb::{Entry, EntryType, Snapshot};

use super::raft_core::RaftCore;
use super::types::{NodeConfig, Output, StartError};
use super::{Clock, Outbox};
use crate::alarm::{self, Alarms};
use crate::apply;
use crate::auth::{AuthInfo, AuthStore, SimpleTokens};
use crate::error::Error;
use crate::lease::{LeaseSection, Leases};
use crate::membership::{Member, Membership};
use crate::mvcc::Store;
use crate::request::{Read, Response};
use crate::state_snapshot::{
    self, StateSnapshotError, SECTION_ALARMS, SECTION_AUTH, SECTION_LEASES, SECTION_MEMBERS,
    SECTION_MVCC, SECTION_V2,
};
use crate::v2::V2Store;
use crate::watch::{HeaderInfo, WatchHub};
use bug_flags::BugFlags;

mod auth_apply;
mod bug_flags;
mod conf_apply;
mod v2_apply;

/// Proposals in flight (proposed, not yet applied), at most; etcd bounds the same gap at 5000
/// entries between commit and apply.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 100_000;

/// The replicated state as of the applied index, and the proposals waiting for it.
pub(super) struct StateMachine {
    member_id: u64,
    incarnation: u64,
    store: Store,
    leases: Leases,
    membership: Membership,
    alarms: Alarms,
    auth: AuthStore,
    /// The v2 keys API's store (engine/src/v2), separate from the v3 keyspace.
    v2: V2Store,
    /// This member's simple tokens (soft state: not in snapshots, as in etcd).
    tokens: SimpleTokens,
    applied_index: u64,
    /// proposal id → token, for proposals of this run not yet applied.
    proposals: BTreeMap<u64, u64>,
    next_proposal_seq: u64,
    /// Events of the entries being applied, for the watches.
    watch_events: Vec<Event>,
    /// The member table changed in the entries being applied.
    members_changed: bool,
    /// The quota (`NodeConfig::maintenance`), checked again at apply.
    quota_bytes: Option<u64>,
    /// An entry applied since the last [`StateMachine::take_refused_by_quota`] was refused
    /// for the quota.
    refused_by_quota: bool,
    /// The simulator's bugs of the apply path (all off outside simulation builds).
    bugs: BugFlags,
}

impl StateMachine {
    /// The bootstrap state: an empty store, no leases, the bootstrap member table.
    pub(super) fn new(cfg: &NodeConfig) -> Result<StateMachine, StartError> {
        Ok(StateMachine {
            member_id: cfg.member_id,
            incarnation: cfg.incarnation,
            store: Store::new(),
            leases: Leases::new(min_lease_ttl_s(cfg), cfg.seed),
            membership: Membership::bootstrap(initial_members(cfg)?),
            alarms: Alarms::default(),
            auth: AuthStore::default(),
            v2: V2Store::default(),
            tokens: SimpleTokens::new(cfg.auth_token_ttl_ms),
            applied_index: 0,
            proposals: BTreeMap::new(),
            next_proposal_seq: 0,
            watch_events: Vec::new(),
            members_changed: false,
            quota_bytes: cfg.maintenance.quota_bytes,
            refused_by_quota: false,
            bugs: BugFlags::new(cfg.bugs),
        })
    }

    /// The MVCC store.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// Leases and their keys.
    pub(super) fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Leases and their keys, for the leader's lease work.
    pub(super) fn leases_mut(&mut self) -> &mut Leases {
        &mut self.leases
    }

    /// The member table.
    pub(super) fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The alarm table.
    pub(super) fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    /// The index of the newest applied entry (or installed snapshot).
    pub(super) fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// This member is a learner.
    pub(super) fn is_learner(&self) -> bool {
        self.membership
            .get(self.member_id)
            .is_some_and(|m| m.is_learner)
    }

    /// Whether an entry was refused for the quota since the last call.
    pub(super) fn take_refused_by_quota(&mut self) -> bool {
        std::mem::take(&mut self.refused_by_quota)
    }

    /// A fresh proposal id: never one used before by this run (or, through the incarnation,
    /// by an earlier run).
    pub(super) fn next_proposal_id(&mut self) -> u64 {
        self.next_proposal_seq += 1;
        assert!(
            self.next_proposal_seq < 1 << 40,
            "proposal sequence overflows into the incarnation"
        );
        (self.incarnation << 40).wrapping_add(self.next_proposal_seq)
    }

    /// Remembers that proposal `id` answers `token` once applied.
    pub(super) fn track_proposal(&mut self, id: u64, token: u64) {
        let previous = self.proposals.insert(id, token);
        assert!(previous.is_none(), "proposal id {id:x} reused");
    }

    /// Makes room in the proposal table: proposals lost in a leader change are never applied
    /// and their clients timed out long ago, so the oldest is forgotten when it is full.
    /// Returns its token.
    pub(super) fn make_room_for_proposal(&mut self) -> Option<u64> {
        if self.proposals.len() < PROPOSALS_IN_FLIGHT_MAX {
            return None;
        }
        self.proposals.pop_first().map(|(_, token)| token)
    }

    /// Answers (through `out`) a request, stamping its header.
    pub(super) fn reply(
        &self,
        out: &mut Outbox,
        term: u64,
        token: u64,
        result: Result<Response, Error>,
    ) {
        out.reply(token, result, term, self.store.current_revision());
    }

    /// Serves a read from the applied state.
    pub(super) fn serve_read(
        &mut self,
        clock: Clock,
        leading: bool,
        read: Read,
    ) -> Result<Response, Error> {
        match read {
            Read::Range(r) => apply::range(&self.store, &r).map(Response::Range),
            Read::HashKv(r) => apply::hash_kv(&self.store, &r).map(Response::HashKv),
            // A read-only txn: it writes nothing, so running it outside the log is safe.
            Read::Txn(t) => apply::txn(&mut self.store, &t, &self.leases).map(Response::Txn),
            Read::LeaseKeepAlive(k) if leading => self
                .leases
                .keep_alive(k.id, clock.lease_stamp_ms())
                .map(Response::LeaseKeepAlive),
            Read::LeaseKeepAlive(_) => Err(Error::NotLeader),
            Read::LeaseTimeToLive(t) => Ok(Response::LeaseTimeToLive(
                self.leases.time_to_live(&t, clock.lease_stamp_ms()),
            )),
            Read::LeaseLeases(_) => Ok(Response::LeaseLeases(self.leases.list())),
            Read::MemberList(_) => Ok(Response::MemberList(MemberListResponse {
                header: None,
                members: self.membership.to_proto(),
            })),
            Read::Alarm(a) => Ok(Response::Alarm(self.alarms.apply(&a))),
            Read::V2(r) => Ok(self.serve_v2(&r)),
            read => self.serve_auth_read(&read),
        }
    }

    /// Serves a read a ReadIndex round confirmed (the `stale-read` bug answers ranges from
    /// its stale copy).
    pub(super) fn serve_confirmed_read(
        &mut self,
        clock: Clock,
        leading: bool,
        read: Read,
    ) -> Result<Response, Error> {
        match (self.bugs.stale_copy(), read) {
            (Some(copy), Read::Range(r)) => apply::range(copy, &r).map(Response::Range),
            (_, read) => self.serve_read(clock, leading, read),
        }
    }

    /// Applies committed entries in order, then tells raft, the transport (if the member
    /// table changed) and the watches.
    pub(super) fn apply_entries(
        &mut self,
        entries: &[Entry],
        core: &mut RaftCore,
        clock: Clock,
        watches: &mut WatchHub,
        out: &mut Outbox,
    ) {
        let Some(last) = entries.last() else {
            return;
        };
        for entry in entries {
            if self.bugs.applies_ahead && entry.index <= self.applied_index {
                continue; // applied ahead of its commit by the bug
            }
            assert!(
                entry.index == self.applied_index + 1,
                "applied index must advance by one: applied {}, entry {}",
                self.applied_index,
                entry.index
            );
            match entry.entry_type {
                EntryType::EntryNormal => {
                    self.apply_normal(entry, core.term(), clock, watches, out)
                }
                EntryType::EntryConfChangeV2 => self.apply_conf_change(entry, core, out),
                EntryType::EntryConfChange => {
                    // keel proposes only ConfChangeV2 (and raft-rs proposes no v1 of its own).
                    tracing::warn!(index = entry.index, "ignoring a v1 conf change entry");
                }
            }
            self.set_applied(entry.index);
        }
        core.advance_apply_to(last.index);
        if std::mem::take(&mut self.members_changed) {
            out.push(self.members_output());
        }
        let v2_events = self.v2.take_events();
        if !v2_events.is_empty() {
            out.push(Output::V2Events(v2_events));
        }
        if !self.watch_events.is_empty() {
            let events = std::mem::take(&mut self.watch_events);
            let header = self.header_info(out, core.term());
            watches.notify(&events, &self.store, header);
        }
    }

    fn set_applied(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "applied index went back from {} to {index}",
            self.applied_index
        );
        self.applied_index = index;
        self.bugs.on_applied(&self.store);
    }

    /// What watch response headers carry besides the revision.
    pub(super) fn header_info(&self, out: &Outbox, term: u64) -> HeaderInfo {
        HeaderInfo {
            cluster_id: out.cluster_id,
            member_id: out.member_id,
            raft_term: term,
        }
    }

    fn members_output(&self) -> Output {
        Output::Members {
            members: self.membership.members(),
            removed: self.membership.is_removed(self.member_id),
        }
    }

    fn apply_normal(
        &mut self,
        entry: &Entry,
        term: u64,
        clock: Clock,
        watches: &WatchHub,
        out: &mut Outbox,
    ) {
        if entry.data.is_empty() {
            return; // a new leader's empty entry
        }
        let request = match RaftRequest::decode(entry.data.clone()) {
            Ok(r) => r,
            Err(e) => panic!("committed entry {} does not decode: {e}", entry.index),
        };
        let Some(body) = request.request else {
            panic!("committed entry {} carries no request", entry.index);
        };
        let caller = request.auth.as_ref().map(AuthInfo::from_header);
        let Some(result) = self.apply_request(body, caller.as_ref(), entry.index, clock) else {
            return;
        };
        // Keys written or deleted by this entry move between leases.
        let mut events = self.store.take_events();
        self.leases.observe(&events);
        if watches.watcher_count() > 0 {
            if watches.wants_prev_kv() {
                for event in &mut events {
                    event.prev_kv = crate::watch::prev_kv(&self.store, event);
                }
            }
            self.watch_events.append(&mut events);
        }
        if request.member_id == self.member_id {
            if let Some(token) = self.proposals.remove(&request.id) {
                self.reply(out, term, token, result);
            }
        }
    }

    /// Applies one request; `None` for the ones nobody waits for (checkpoints, publish).
    fn apply_request(
        &mut self,
        body: raft_request::Request,
        caller: Option<&AuthInfo>,
        index: u64,
        clock: Clock,
    ) -> Option<Result<Response, Error>> {
        use raft_request::Request as R;
        if self.alarms.is_active(AlarmType::Corrupt) && alarm::refuses_when_corrupt(&body) {
            // etcd 3.4's corrupt applier: nothing is built on a corrupt member's state.
            return Some(Err(Error::Corrupt));
        }
        if self.alarms.is_active(AlarmType::Nospace) && alarm::refuses_when_capped(&body) {
            // etcd 3.4's capped applier: the entry is in the log, but it grows nothing.
            return Some(Err(Error::NoSpace));
        }
        // Checked again at apply, against the auth store of this index: a permission revoked
        // since the request was proposed is honoured (etcd's authApplierV3).
        let checked = match self.bugs.skips_auth_check(&body) {
            false => self.check_write(caller, &body),
            true => Ok(()),
        };
        if let Err(e) = checked {
            return Some(Err(e));
        }
        // etcd's quota applier: an entry over this member's quota is applied all the same
        // (members may have different quotas, and every member must build the same state),
        // and its client is told the space is exceeded; this member then raises NOSPACE.
        let used = super::quota::quota_used(&self.store);
        let over_quota = crate::node::exceeds_quota(self.quota_bytes, used, &body);
        let result = match body {
            R::Put(mut p) => {
                let revision = self.store.current_revision();
                self.bugs.maybe_apply_wrongly(revision, &mut p);
                apply::put(&mut self.store, &p, &self.leases).map(Response::Put)
            }
            R::DeleteRange(d) => {
                apply::delete_range(&mut self.store, &d).map(Response::DeleteRange)
            }
            R::Txn(t) => apply::txn(&mut self.store, &t, &self.leases).map(Response::Txn),
            R::LeaseGrant(g) => self
                .leases
                .apply_grant(&g, clock.lease_stamp_ms())
                .map(Response::LeaseGrant),
            R::LeaseRevoke(r) => self
                .leases
                .apply_revoke(&mut self.store, r.id)
                .map(Response::LeaseRevoke),
            R::LeaseCheckpoint(c) => {
                self.leases.apply_checkpoint(&c);
                return None;
            }
            R::Compaction(c) => apply::compact(&mut self.store, &c).map(Response::Compaction),
            R::MemberUpdate(u) => self.apply_member_update(u),
            R::Publish(p) => {
                self.membership.publish(p.member_id, &p.name, p.client_urls);
                self.members_changed = true;
                return None;
            }
            R::Alarm(a) => Ok(Response::Alarm(self.alarms.apply(&a))),
            // Auth entries change no keys: applied whatever the quota.
            auth @ (R::AuthEnable(_)
            | R::AuthDisable(_)
            | R::Authenticate(_)
            | R::UserAdd(_)
            | R::UserDelete(_)
            | R::UserChangePassword(_)
            | R::UserGrantRole(_)
            | R::UserRevokeRole(_)
            | R::RoleAdd(_)
            | R::RoleDelete(_)
            | R::RoleGrantPermission(_)
            | R::RoleRevokePermission(_)) => {
                return Some(self.apply_auth(&auth, index, clock.now_ms));
            }
            R::V2(r) => Ok(self.apply_v2(&r, index)),
        };
        let result = match result {
            Ok(_) if over_quota => {
                self.refused_by_quota = true;
                Err(Error::NoSpace)
            }
            other => other,
        };
        Some(result)
    }

    /// Replaces the store, leases and member table by a state snapshot's; `leading`: this
    /// member decides lease expiry. Emits the member table if it changed.
    pub(super) fn restore(
        &mut self,
        snapshot: &Snapshot,
        decoded: Option<Store>,
        leading: bool,
        clock: Clock,
        watches: &mut WatchHub,
        out: &mut Outbox,
    ) -> Result<(), StateSnapshotError> {
        let sections = state_snapshot::decode_known(&snapshot.data)?;
        // The store decoded off the loop from this very snapshot, if the driver had it.
        let store = match decoded {
            Some(store) => store,
            None => Store::decode_section(sections[&SECTION_MVCC])?,
        };
        let membership = Membership::decode(sections[&SECTION_MEMBERS])?;
        // Optional: a snapshot from before alarms existed holds none.
        let alarms = match sections.get(&SECTION_ALARMS) {
            Some(bytes) => Alarms::decode_section(bytes)?,
            None => Alarms::default(),
        };
        let v2 = v2_apply::decode_v2(sections.get(&SECTION_V2))?;
        // Optional: a snapshot from before auth existed holds an empty store.
        let auth = match sections.get(&SECTION_AUTH) {
            Some(bytes) => AuthStore::decode_section(bytes)?,
            None => AuthStore::default(),
        };
        self.leases.restore_section(sections[&SECTION_LEASES])?;
        self.alarms = alarms;
        #[cfg(madsim)]
        let v2 = V2Store {
            cas_on_created: self.v2.cas_on_created,
            ..v2
        };
        self.v2 = v2;
        if auth.is_enabled() {
            self.tokens.enable();
        } else {
            self.tokens.disable();
        }
        self.auth = auth;
        if membership != self.membership {
            self.membership = membership;
            out.push(self.members_output());
        }
        let old_revision = self.store.current_revision();
        self.store = store;
        watches.desync_all(old_revision + 1);
        self.bugs.on_store_replaced(&self.store);
        if leading {
            self.leases
                .set_leader(true, clock.lease_stamp_ms(), clock.election_timeout_ms());
        }
        Ok(())
    }

    /// The state now stands at a snapshot's `index`: recovered at start (`proposals` is
    /// empty) or installed from the leader. Returns the tokens of every proposal waiting,
    /// which will never be applied here.
    pub(super) fn jump_to(&mut self, index: u64) -> Vec<u64> {
        assert!(
            index >= self.applied_index || self.bugs.applies_ahead,
            "a snapshot at {index} would take applied back from {}",
            self.applied_index
        );
        self.applied_index = index;
        std::mem::take(&mut self.proposals).into_values().collect()
    }

    /// The parts of a state snapshot as of the applied index, not yet encoded.
    pub(super) fn snapshot_parts(&self) -> SnapshotParts {
        // O(1) copy-on-write views of the store and the leases, not encodings: the saver
        // encodes them on its own thread while writes go on.
        SnapshotParts {
            store: self.store.view(),
            leases: self.leases.section(),
            members: self.membership.encode(),
            alarms: self.alarms.encode_section(),
            auth: self.auth.encode_section(),
            v2: self.v2.encode_section(),
        }
    }

    /// What must always hold.
    pub(super) fn check_invariants(&self) {
        self.store.check_invariants();
        self.leases.check_invariants();
        self.tokens.check_invariants();
        self.auth.check_invariants();
        self.v2.check_invariants();
        assert!(
            self.proposals.len() <= PROPOSALS_IN_FLIGHT_MAX,
            "{} proposals in flight",
            self.proposals.len()
        );
        let newest = (self.incarnation << 40).wrapping_add(self.next_proposal_seq);
        if let Some((&id, _)) = self.proposals.last_key_value() {
            assert!(id <= newest, "proposal {id:x} was never handed out");
        }
    }
}

/// The parts of a state snapshot as of the applied index, not yet encoded.
pub(super) struct SnapshotParts {
    pub store: Store,
    pub leases: LeaseSection,
    pub members: Vec<u8>,
    pub alarms: Vec<u8>,
    pub auth: Vec<u8>,
    pub v2: Vec<u8>,
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
