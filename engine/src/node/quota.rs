//! The space quota (`--quota-backend-bytes`) and this member's own `NOSPACE` alarm.
//!
//! What counts ([`quota_used`]) is the MVCC store with its uncompacted history,
//! [`crate::mvcc::Store::quota_bytes`] (every stored revision's key, value and a fixed
//! overhead, kept up to date by each write and compaction), plus a fixed
//! [`QUOTA_BASE_BYTES`] for the rest of the member's state. It is the same on every member at
//! the same applied index, so the check below is deterministic.
//!
//! As in etcd 3.4 a write that would grow the store (Put, a Txn with a put, LeaseGrant) costs
//! [`quota_cost`], and is refused with `etcdserver: mvcc: database space exceeded` when
//! `quota_bytes + cost ≥ quota`:
//! * on the proposer, before the log (etcd's `quotaKVServer`), which also raises this
//!   member's `NOSPACE` alarm;
//! * at apply, on every member alike (etcd's `quotaApplierV3`), for entries proposed before the
//!   store grew; each member then raises its own alarm, as etcd's `applyEntryNormal` does.
//!   Unlike etcd, whose quota applier writes the entry and only answers the error, keel's
//!   refused entry changes nothing: an error always means "not written".
//!
//! Raising goes through the log (`Maintenance.Alarm` ACTIVATE), retried until the applied
//! table shows it, as for a full disk. Once active, the capped applier refuses every such
//! write until `alarm disarm`; after a disarm, the next write still over the quota raises it
//! again (etcd: compact, defragment, then disarm).

use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::{request_op, AlarmRequest, AlarmType, TxnRequest};
use keel_proto::keelpb::raft_request::Request as LogRequest;

use super::{NoSpace, Node};
use crate::error::Error;
use crate::mvcc::revision_bytes;

/// What a lease costs towards the quota check, as etcd's `leaseOverhead`.
pub const LEASE_COST_BYTES: u64 = 64;
/// What a member counts towards the quota besides the store's revisions: its state outside
/// the MVCC history (member table, alarms, lease bookkeeping), a fixed 4 KiB. etcd's empty
/// backend likewise uses some 16–20 KiB of its quota (bbolt's meta and bucket pages), so an
/// empty member's `dbSizeInUse` is not zero on either.
pub const QUOTA_BASE_BYTES: u64 = 4096;

/// The bytes a member with this store counts towards the quota: [`QUOTA_BASE_BYTES`] plus
/// [`crate::mvcc::Store::quota_bytes`]. Status reports it as `dbSizeInUse`.
pub fn quota_used(store: &crate::mvcc::Store) -> u64 {
    QUOTA_BASE_BYTES + store.quota_bytes()
}

/// The bytes `body` would add to the store, for the quota check (0: it adds nothing, and is
/// never refused): a put's [`revision_bytes`]; a txn's puts of its costlier branch (nested
/// txns included, unlike etcd 3.4, which counts only top-level puts); a lease grant
/// [`LEASE_COST_BYTES`].
pub fn quota_cost(body: &LogRequest) -> u64 {
    match body {
        LogRequest::Put(p) => revision_bytes(p.key.len(), p.value.len()),
        LogRequest::Txn(t) => txn_cost(t),
        LogRequest::LeaseGrant(_) => LEASE_COST_BYTES,
        _ => 0,
    }
}

fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[keel_proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .filter_map(|op| op.request.as_ref())
            .map(|op| match op {
                request_op::Request::RequestPut(p) => revision_bytes(p.key.len(), p.value.len()),
                request_op::Request::RequestTxn(inner) => txn_cost(inner),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// Whether writing `body` to a store holding `used` quota bytes would reach `quota`.
pub fn exceeds_quota(quota: Option<u64>, used: u64, body: &LogRequest) -> bool {
    let Some(quota) = quota else {
        return false;
    };
    let cost = quota_cost(body);
    cost > 0 && used.saturating_add(cost) >= quota
}

impl Node {
    /// Whether the proposer refuses `body` for the quota; if so, this member raises its
    /// `NOSPACE` alarm, and `token` hears etcd's "database space exceeded" once the alarm is
    /// applied here (etcd's quota check raises the alarm before it answers, so an `alarm
    /// list` after a refused write shows it), or after two election timeouts at most.
    pub(super) fn refused_by_quota(&mut self, token: u64, body: &LogRequest) -> bool {
        let used = quota_used(self.sm.store());
        if !exceeds_quota(self.cfg.maintenance.quota_bytes, used, body) {
            return false;
        }
        self.want_quota_alarm();
        if self.quota_alarm.is_none() {
            self.reply(token, Err(Error::NoSpace)); // raised already
        } else {
            let deadline = self.clock.now_ms + 2 * self.clock.election_timeout_ms();
            self.quota_refused.push((token, deadline));
        }
        true
    }

    /// Answers the writes refused for the quota once the alarm is applied (`raised`) or their
    /// wait ran out.
    pub(super) fn answer_quota_refused(&mut self, raised: bool) {
        if self.quota_refused.is_empty() {
            return;
        }
        let now_ms = self.clock.now_ms;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.quota_refused)
            .into_iter()
            .partition(|&(_, deadline)| raised || now_ms >= deadline);
        self.quota_refused = waiting;
        for (token, _) in done {
            self.reply(token, Err(Error::NoSpace));
        }
    }

    /// Starts raising this member's `NOSPACE` alarm for the quota, unless it is active.
    pub(super) fn want_quota_alarm(&mut self) {
        if self.sm.alarms().has(self.cfg.member_id, AlarmType::Nospace) {
            return;
        }
        if self.quota_alarm.is_none() {
            tracing::warn!(
                used = quota_used(self.sm.store()),
                quota = self.cfg.maintenance.quota_bytes,
                "message exceeded backend quota; raising alarm"
            );
            self.quota_alarm = Some(NoSpace::default());
        }
        self.raise_quota_alarm();
    }

    /// After applying: the alarm wanted is forgotten once applied; entries refused for the quota at apply make this member raise its
    /// alarm (every member refuses alike, so every member raises its own).
    pub(super) fn after_apply_quota(&mut self) {
        if self.sm.alarms().has(self.cfg.member_id, AlarmType::Nospace) {
            self.quota_alarm = None; // raised
            self.answer_quota_refused(true);
        }
        if self.sm.take_refused_by_quota() && !self.sm.alarms().is_active(AlarmType::Nospace) {
            self.want_quota_alarm();
        }
    }

    /// While the quota alarm is wanted: proposes it until the applied table shows it (a
    /// leader once per term, a follower every two election timeouts).
    pub(super) fn raise_quota_alarm(&mut self) {
        self.answer_quota_refused(false);
        let Some(state) = self.quota_alarm else {
            return;
        };
        if self.sm.alarms().has(self.cfg.member_id, AlarmType::Nospace) {
            self.quota_alarm = None;
            return;
        }
        if let Some(proposed) = self.propose_own_nospace(state) {
            self.quota_alarm = Some(proposed);
        }
    }

    /// Proposes this member's `NOSPACE` alarm if `state` says one is due; returns the state
    /// after a proposal, `None` if none was made.
    pub(super) fn propose_own_nospace(&mut self, state: NoSpace) -> Option<NoSpace> {
        if !self.core.has_leader() {
            return None;
        }
        let (now_ms, term) = (self.clock.now_ms, self.core.term());
        let due = match state.proposed {
            None => true,
            Some((_, t)) if self.core.is_leader() && t == term => false,
            Some((at_ms, _)) => now_ms >= at_ms + 2 * self.clock.election_timeout_ms(),
        };
        if !due {
            return None;
        }
        let body = LogRequest::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.cfg.member_id,
            alarm: AlarmType::Nospace as i32,
        });
        self.propose_entry(body).map(|_| NoSpace {
            proposed: Some((now_ms, term)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::{PutRequest, RequestOp};

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn costs_count_what_would_be_stored() {
        let p = put("k", "12345");
        assert_eq!(
            quota_cost(&LogRequest::Put(p.clone())),
            revision_bytes(1, 5)
        );
        let op = |p: PutRequest| RequestOp {
            request: Some(request_op::Request::RequestPut(p)),
        };
        let txn = TxnRequest {
            success: vec![op(put("a", "1"))],
            failure: vec![op(put("a", "1")), op(put("bb", "22"))],
            ..Default::default()
        };
        assert_eq!(
            quota_cost(&LogRequest::Txn(txn)),
            revision_bytes(1, 1) + revision_bytes(2, 2),
            "the costlier branch"
        );
        assert_eq!(quota_cost(&LogRequest::LeaseGrant(Default::default())), 64);
        assert_eq!(quota_cost(&LogRequest::DeleteRange(Default::default())), 0);
        let body = LogRequest::Put(p);
        let cost = quota_cost(&body);
        assert!(!exceeds_quota(Some(1000), 999 - cost, &body));
        assert_eq!(quota_used(&crate::mvcc::Store::new()), QUOTA_BASE_BYTES);
        assert!(
            exceeds_quota(Some(1000), 1000 - cost, &body),
            "etcd: size + cost < quota"
        );
        assert!(!exceeds_quota(None, u64::MAX, &body), "no quota");
        let delete = LogRequest::DeleteRange(Default::default());
        assert!(!exceeds_quota(Some(1), 5, &delete), "costs nothing");
    }
}
