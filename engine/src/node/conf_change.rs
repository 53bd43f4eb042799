//! Membership changes through raft (etcd's `AddMember`, `RemoveMember`, `PromoteMember`,
//! `UpdateMember` and `publish`).
//!
//! ```text
//! MemberAdd{peer_urls, learner}
//!   → etcd's checks on this member's table (URLs, duplicates, learners, started quorum)
//!   → ConfChangeV2{AddLearnerNode|AddNode id, context: MemberChange{proposer, id, member}}
//! applied (every member, same index)
//!   → the checks again (the table may have changed since) → table.add
//!   → raw.apply_conf_change → ConfState into raft's storage
//!   → Reply{MemberAdd{member, members}} on the proposer
//! ```
//! Removal and promotion go the same way (RemoveNode; AddNode of a learner is a promotion).
//! MemberUpdate (new peer URLs) and a member's publish of its name and client URLs change no
//! raft configuration and travel as normal entries (`RaftRequest.member_update`, `.publish`).
//! A change the apply-time checks refuse changes nothing anywhere, and its proposer hears
//! etcd's error, as etcd's `applyConfChange` does.

use keel_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberPromoteResponse, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use keel_proto::keelpb::{raft_request, MemberAttributes, MemberChange};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::ConfChangeSingle;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry};
use raft::StateRole;

use super::{Node, Response};
use crate::error::Error;
use crate::membership::{Member, PROMOTE_READY_PERCENT};

/// Peer URLs in one MemberAdd or MemberUpdate, at most.
pub const PEER_URLS_MAX: usize = 16;

impl Node {
    /// Cluster.MemberAdd: checks, then proposes the conf change.
    pub(super) fn member_add(&mut self, token: u64, r: MemberAddRequest) {
        let member = Member {
            id: self.choose_member_id(),
            peer_urls: r.peer_ur_ls,
            is_learner: r.is_learner,
            ..Member::default()
        };
        let checked = check_urls(&member.peer_urls)
            .and_then(|()| self.membership.check_add(&member))
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
        let checked = self.membership.check_remove(id).and_then(|()| {
            let is_voter = self.membership.get(id).is_some_and(|m| !m.is_learner);
            if is_voter && !self.membership.ready_to_remove_voter(id) {
                return Err(Error::MemberNotEnoughStarted);
            }
            Ok(())
        });
        match (checked, self.membership.get(id).cloned()) {
            (Ok(()), Some(m)) => self.propose_member_change(token, ConfChangeType::RemoveNode, m),
            (Err(e), _) => self.reply(token, Err(e)),
            (Ok(()), None) => self.reply(token, Err(Error::MemberNotFound)),
        }
    }

    /// Cluster.MemberPromote, on the leader only: a follower answers `NotLeader` and the
    /// server forwards the request to the leader, which alone can tell whether the learner is
    /// in sync (etcd forwards it the same way).
    pub(super) fn member_promote(&mut self, token: u64, id: u64) {
        if self.raw.raft.state != StateRole::Leader {
            self.reply(token, Err(Error::NotLeader));
            return;
        }
        let checked = self
            .membership
            .check_promote(id)
            .and_then(|()| self.check_learner_ready(id))
            .and_then(|()| self.check_started_quorum(true));
        match (checked, self.membership.get(id).cloned()) {
            (Ok(()), Some(m)) => self.propose_member_change(token, ConfChangeType::AddNode, m),
            (Err(e), _) => self.reply(token, Err(e)),
            (Ok(()), None) => self.reply(token, Err(Error::MemberNotFound)),
        }
    }

    /// etcd's strict reconfiguration check: a new voter must not leave the started members
    /// short of a quorum.
    fn check_started_quorum(&self, adds_voter: bool) -> Result<(), Error> {
        if adds_voter && !self.membership.ready_to_add_voter() {
            return Err(Error::MemberNotEnoughStarted);
        }
        Ok(())
    }

    /// etcd's `isLearnerReady` (leader only): the learner's log matches at least 90% of the
    /// leader's.
    fn check_learner_ready(&self, id: u64) -> Result<(), Error> {
        let prs = self.raw.raft.prs();
        let leader = prs.get(self.cfg.member_id).map_or(0, |p| p.matched);
        let learner = prs.get(id).map_or(0, |p| p.matched);
        if learner * 100 < leader * PROMOTE_READY_PERCENT {
            return Err(Error::LearnerNotReady);
        }
        Ok(())
    }

    fn choose_member_id(&mut self) -> u64 {
        loop {
            let id = self.member_ids.next_u64();
            if id != 0 && self.membership.get(id).is_none() && !self.membership.is_removed(id) {
                return id;
            }
        }
    }

    fn propose_member_change(&mut self, token: u64, change: ConfChangeType, member: Member) {
        if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
            // raft-rs would turn the proposal into an empty entry; etcd's client would wait
            // for its request timeout. Say so at once.
            self.reply(token, Err(Error::Timeout));
            return;
        }
        let id = self.next_proposal_id();
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
        match self.raw.propose_conf_change(vec![], cc) {
            Ok(()) => {
                let previous = self.proposals.insert(id, token);
                assert!(previous.is_none(), "proposal id {id:x} reused");
            }
            Err(e) => {
                tracing::debug!(error = %e, "conf change proposal dropped");
                self.reply(token, Err(Error::NoLeader));
            }
        }
    }

    /// Applies a committed ConfChangeV2 entry.
    pub(super) fn apply_conf_change(&mut self, entry: &Entry) {
        let cc = match ConfChangeV2::parse_from_bytes(&entry.data) {
            Ok(cc) => cc,
            Err(e) => panic!("committed conf change {} does not decode: {e}", entry.index),
        };
        if cc.get_changes().is_empty() {
            // raft's own leave-joint (keel makes no joint changes); a refusal is logged.
            let _ = self.apply_raft_conf(&cc);
            return;
        }
        assert!(
            cc.get_changes().len() == 1,
            "keel proposes one change at a time (entry {})",
            entry.index
        );
        let change = match MemberChange::decode(&cc.context[..]) {
            Ok(c) => c,
            Err(e) => panic!("conf change {} context does not decode: {e}", entry.index),
        };
        let Some(member) = change.member.as_ref().map(Member::from_proto) else {
            panic!("conf change {} names no member", entry.index);
        };
        let kind = cc.get_changes()[0].get_change_type();
        let mut result = self.check_member_change(kind, &member);
        if result.is_ok() {
            result = self.apply_raft_conf(&cc);
        }
        let result = result.map(|()| self.change_member_table(kind, member));
        if change.proposer == self.cfg.member_id {
            if let Some(token) = self.proposals.remove(&change.id) {
                self.reply(token, result);
            }
        }
    }

    /// The apply-time checks; AddNode of a learner is a promotion.
    fn check_member_change(&self, kind: ConfChangeType, member: &Member) -> Result<(), Error> {
        match kind {
            ConfChangeType::AddNode if self.is_promotion(member.id) => Ok(()),
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                self.membership.check_add(member)
            }
            ConfChangeType::RemoveNode => self.membership.check_remove(member.id),
        }
    }

    fn is_promotion(&self, id: u64) -> bool {
        self.membership.get(id).is_some_and(|m| m.is_learner)
    }

    /// Changes the table after raft accepted the change; returns etcd's response.
    fn change_member_table(&mut self, kind: ConfChangeType, mut member: Member) -> Response {
        self.members_changed = true;
        match kind {
            ConfChangeType::AddNode if self.is_promotion(member.id) => {
                self.membership.promote(member.id);
                Response::MemberPromote(MemberPromoteResponse {
                    header: None,
                    members: self.membership.to_proto(),
                })
            }
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                member.is_learner = kind == ConfChangeType::AddLearnerNode;
                member.name.clear();
                member.client_urls.clear();
                let added = member.to_proto();
                self.membership.add(member);
                Response::MemberAdd(MemberAddResponse {
                    header: None,
                    member: Some(added),
                    members: self.membership.to_proto(),
                })
            }
            ConfChangeType::RemoveNode => {
                self.membership.remove(member.id);
                if member.id == self.cfg.member_id {
                    tracing::warn!("the member has been permanently removed from the cluster");
                    self.hand_over_leadership();
                }
                Response::MemberRemove(MemberRemoveResponse {
                    header: None,
                    members: self.membership.to_proto(),
                })
            }
        }
    }

    /// A leader that removed itself stays leader in raft-rs until it stops, and proposals
    /// forwarded to it meanwhile are lost; it hands leadership to the most up-to-date voter
    /// (lowest id on a tie) so the others need not wait out an election timeout.
    fn hand_over_leadership(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let voters = self.raw.raft.prs().conf().voters().ids();
        let best = voters
            .iter()
            .filter(|&id| id != self.cfg.member_id)
            .filter_map(|id| self.raw.raft.prs().get(id).map(|p| (p.matched, id)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        if let Some((_, target)) = best {
            tracing::info!(
                target = format_args!("{target:x}"),
                "handing over leadership"
            );
            self.raw.transfer_leader(target);
        }
    }

    /// Hands the change to raft and keeps the resulting configuration in its storage.
    fn apply_raft_conf(&mut self, cc: &ConfChangeV2) -> Result<(), Error> {
        match self.raw.apply_conf_change(cc) {
            Ok(cs) => {
                self.raw.mut_store().set_conf_state(cs);
                Ok(())
            }
            Err(e) => {
                // The table's checks mirror raft's rules; raft refusing means they missed one
                // (e.g. removing the last voter). Every member refuses alike.
                tracing::error!(error = %e, "raft refused a conf change");
                Err(Error::Unhealthy)
            }
        }
    }

    /// Applies a MemberUpdate entry.
    pub(super) fn apply_member_update(
        &mut self,
        u: MemberUpdateRequest,
    ) -> Result<Response, Error> {
        self.membership.check_update(u.id, &u.peer_ur_ls)?;
        self.membership.update_peer_urls(u.id, u.peer_ur_ls);
        self.members_changed = true;
        Ok(Response::MemberUpdate(MemberUpdateResponse {
            header: None,
            members: self.membership.to_proto(),
        }))
    }

    /// Once it knows a leader, a member proposes its name and client URLs until the table
    /// shows them (retrying every election timeout; a lost proposal is harmless).
    pub(super) fn publish_attributes(&mut self) {
        if !self.has_leader() || (self.cfg.name.is_empty() && self.cfg.client_urls.is_empty()) {
            return;
        }
        let Some(me) = self.membership.get(self.cfg.member_id) else {
            return; // a joining member not yet added, or a removed one
        };
        if me.name == self.cfg.name && me.client_urls == self.cfg.client_urls {
            return;
        }
        let retry_ms = self.cfg.election_ticks as u64 * self.cfg.tick_ms;
        if self
            .published_ms
            .is_some_and(|at| self.now_ms < at + retry_ms)
        {
            return;
        }
        self.published_ms = Some(self.now_ms);
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
