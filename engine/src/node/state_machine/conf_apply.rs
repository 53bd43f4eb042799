//! Applying membership changes: committed ConfChangeV2 entries and MemberUpdate entries
//! (see [`super::super::conf_change`] for the proposing side).

use keel_proto::etcdserverpb::{
    MemberAddResponse, MemberPromoteResponse, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use keel_proto::keelpb::MemberChange;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry};

use super::StateMachine;
use crate::error::Error;
use crate::membership::Member;
use crate::node::raft_core::RaftCore;
use crate::node::Outbox;
use crate::request::Response;

impl StateMachine {
    /// Applies a committed ConfChangeV2 entry.
    pub(super) fn apply_conf_change(
        &mut self,
        entry: &Entry,
        core: &mut RaftCore,
        out: &mut Outbox,
    ) {
        let cc = match ConfChangeV2::parse_from_bytes(&entry.data) {
            Ok(cc) => cc,
            Err(e) => panic!("committed conf change {} does not decode: {e}", entry.index),
        };
        if cc.get_changes().is_empty() {
            // raft's own leave-joint (keel makes no joint changes); a refusal is logged.
            let _ = apply_raft_conf(core, &cc);
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
            result = apply_raft_conf(core, &cc);
        }
        let result = result.map(|()| self.change_member_table(kind, member, core));
        if change.proposer == self.member_id {
            if let Some(token) = self.proposals.remove(&change.id) {
                self.reply(out, core.term(), token, result);
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
    fn change_member_table(
        &mut self,
        kind: ConfChangeType,
        mut member: Member,
        core: &mut RaftCore,
    ) -> Response {
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
                if member.id == self.member_id {
                    tracing::warn!("the member has been permanently removed from the cluster");
                    core.hand_over_leadership();
                }
                Response::MemberRemove(MemberRemoveResponse {
                    header: None,
                    members: self.membership.to_proto(),
                })
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
}

/// Hands the change to raft, which keeps the resulting configuration in its storage.
fn apply_raft_conf(core: &mut RaftCore, cc: &ConfChangeV2) -> Result<(), Error> {
    core.apply_conf_change(cc).map_err(|e| {
        // The table's checks mirror raft's rules; raft refusing means they missed one
        // (e.g. removing the last voter). Every member refuses alike.
        tracing::error!(error = %e, "raft refused a conf change");
        Error::Unhealthy
    })
}
