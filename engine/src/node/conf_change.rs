//! Membership changes through raft (etcd's `AddMember`, `RemoveMember`, `PromoteMember`,
//! `UpdateMember` and `publish`): the proposing side. Applying them is the state machine's
//! (`state_machine/conf_apply.rs`).
//!
//! ```text
//! MemberAdd{peer_urls, learner}
//!   → etcd's checks on this member's table (URLs, duplicates, learners, started quorum)
//!   → ConfChangeV2{AddLearnerNode|AddNode id, context: MemberChange{proposer, id, member}}
//! applied (every member, same index)
//!   → the checks again (the table may have changed since) → table.add
//!   → raft's apply_conf_change → ConfState into raft's storage
//!   → Reply{MemberAdd{member, members}} on the proposer
//! ```
//! Removal and promotion go the same way (RemoveNode; AddNode of a learner is a promotion).
//! MemberUpdate (new peer URLs) and a member's publish of its name and client URLs change no
//! raft configuration and travel as normal entries (`RaftRequest.member_update`, `.publish`).
//! A change the apply-time checks refuse changes nothing anywhere, and its proposer hears
//! etcd's error, as etcd's `applyConfChange` does.

use keel_proto::etcdserverpb::MemberAddRequest;
use keel_proto::keelpb::{raft_request, MemberAttributes, MemberChange};
use prost::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};

use super::Node;
use crate::error::Error;
use crate::membership::{Member, Membership, PROMOTE_READY_PERCENT};
use crate::rng::SplitMix64;

/// Peer URLs in one MemberAdd or MemberUpdate, at most.
pub const PEER_URLS_MAX: usize = 16;

/// What the proposing side of membership keeps: where new member ids come from, and when
/// this member last published its attributes.
#[derive(Debug)]
pub(super) struct ConfChanges {
    /// Draws the ids of members this member adds.
    member_ids: SplitMix64,
    /// When this member last proposed its attributes (node clock, ms).
    published_ms: Option<u64>,
}

impl ConfChanges {
    /// Member ids drawn from `seed`.
    pub(super) fn new(seed: u64) -> ConfChanges {
        ConfChanges {
            member_ids: SplitMix64::new(seed ^ 0x6d65_6d62_6572_7321),
            published_ms: None,
        }
    }

    /// A fresh member id: non-zero, not in the table, never removed.
    fn choose_member_id(&mut self, table: &Membership) -> u64 {
        loop {
            let id = self.member_ids.next_u64();
            if id != 0 && table.get(id).is_none() && !table.is_removed(id) {
                return id;
            }
        }
    }

    /// Whether to publish now (at most once per `retry_ms`); records the attempt.
    fn publish_due(&mut self, now_ms: u64, retry_ms: u64) -> bool {
        if self.published_ms.is_some_and(|at| now_ms < at + retry_ms) {
            return false;
        }
        self.published_ms = Some(now_ms);
        true
    }
}

impl Node {
    /// Cluster.MemberAdd: checks, then proposes the conf change.
    pub(super) fn member_add(&mut self, token: u64, r: MemberAddRequest) {
        let member = Member {
            id: self.conf.choose_member_id(self.sm.membership()),
            peer_urls: r.peer_ur_ls,
            is_learner: r.is_learner,
            ..Member::default()
        };
        let checked = check_urls(&member.peer_urls)
            .and_then(|()| self.sm.membership().check_add(&member))
            .and_then(|()| self.check_started_quorum(!member.is_learner));
        let change = if member.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        match checked {
            Ok(()) => self.propose_member_change(token, change, member),
            Err(e) => self.reply(token, Err(e)),
        }
    }

    /// Cluster.MemberRemove.
    pub(super) fn member_remove(&mut self, token: u64, id: u64) {
        let table = self.sm.membership();
        let checked = table.check_remove(id).and_then(|()| {
            let is_voter = table.get(id).is_some_and(|m| !m.is_learner);
            if is_voter && !table.ready_to_remove_voter(id) {
                return Err(Error::MemberNotEnoughStarted);
            }
            Ok(())
        });
        match (checked, table.get(id).cloned()) {
            (Ok(()), Some(m)) => self.propose_member_change(token, ConfChangeType::RemoveNode, m),
            (Err(e), _) => self.reply(token, Err(e)),
            (Ok(()), None) => self.reply(token, Err(Error::MemberNotFound)),
        }
    }

    /// Cluster.MemberPromote, on the leader only: a follower answers `NotLeader` and the
    /// server forwards the request to the leader, which alone can tell whether the learner is
    /// in sync (etcd forwards it the same way).
    pub(super) fn member_promote(&mut self, token: u64, id: u64) {
        if !self.core.is_leader() {
            self.reply(token, Err(Error::NotLeader));
            return;
        }
        let checked = self
            .sm
            .membership()
            .check_promote(id)
            .and_then(|()| self.check_learner_ready(id))
            .and_then(|()| self.check_started_quorum(true));
        match (checked, self.sm.membership().get(id).cloned()) {
            (Ok(()), Some(m)) => self.propose_member_change(token, ConfChangeType::AddNode, m),
            (Err(e), _) => self.reply(token, Err(e)),
            (Ok(()), None) => self.reply(token, Err(Error::MemberNotFound)),
        }
    }

    /// etcd's strict reconfiguration check: a new voter must not leave the started members
    /// short of a quorum.
    fn check_started_quorum(&self, adds_voter: bool) -> Result<(), Error> {
        if adds_voter && !self.sm.membership().ready_to_add_voter() {
            return Err(Error::MemberNotEnoughStarted);
        }
        Ok(())
    }

    /// etcd's `isLearnerReady` (leader only): the learner's log matches at least 90% of the
    /// leader's.
    fn check_learner_ready(&self, id: u64) -> Result<(), Error> {
        let leader = self.core.matched(self.cfg.member_id);
        let learner = self.core.matched(id);
        if learner * 100 < leader * PROMOTE_READY_PERCENT {
            return Err(Error::LearnerNotReady);
        }
        Ok(())
    }

    fn propose_member_change(&mut self, token: u64, change: ConfChangeType, member: Member) {
        if self.core.has_pending_conf() {
            // raft-rs would turn the proposal into an empty entry; etcd's client would wait
            // for its request timeout. Say so at once.
            self.reply(token, Err(Error::Timeout));
            return;
        }
        let id = self.sm.next_proposal_id();
        let context = MemberChange {
            proposer: self.cfg.member_id,
            id,
            member: Some(member.to_proto()),
        };
        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle {
            node_id: member.id,
            ..Default::default()
        };
        single.set_change_type(change);
        cc.set_changes(vec![single].into());
        cc.context = context.encode_to_vec().into();
        match self.core.propose_conf_change(cc) {
            Ok(()) => self.sm.track_proposal(id, token),
            Err(e) => {
                tracing::debug!(error = %e, "conf change proposal dropped");
                self.reply(token, Err(Error::NoLeader));
            }
        }
    }

    /// Once it knows a leader, a member proposes its name and client URLs until the table
    /// shows them (retrying every election timeout; a lost proposal is harmless).
    pub(super) fn publish_attributes(&mut self) {
        if !self.core.has_leader() || (self.cfg.name.is_empty() && self.cfg.client_urls.is_empty())
        {
            return;
        }
        let Some(me) = self.sm.membership().get(self.cfg.member_id) else {
            return; // a joining member not yet added, or a removed one
        };
        if me.name == self.cfg.name && me.client_urls == self.cfg.client_urls {
            return;
        }
        if !self
            .conf
            .publish_due(self.clock.now_ms, self.clock.election_timeout_ms())
        {
            return;
        }
        let attributes = MemberAttributes {
            member_id: self.cfg.member_id,
            name: self.cfg.name.clone(),
            client_urls: self.cfg.client_urls.clone(),
        };
        let _ = self.propose_entry(raft_request::Request::Publish(attributes));
    }
}

/// etcd's `types.NewURLs` rules: at least one URL, each `scheme://host:port` with scheme
/// http, https, unix or unixs and no path.
pub fn check_urls(urls: &[String]) -> Result<(), Error> {
    if urls.is_empty() || urls.len() > PEER_URLS_MAX {
        return Err(Error::MemberBadUrls);
    }
    for url in urls {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::MemberBadUrls);
        };
        let host_port = rest.strip_suffix('/').unwrap_or(rest);
        let has_port = host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        let scheme_ok = matches!(scheme, "http" | "https" | "unix" | "unixs");
        if !scheme_ok || !has_port || host_port.contains('/') {
            return Err(Error::MemberBadUrls);
        }
    }
    Ok(())
}
