//! etcd's alarms (`etcdserver/api/v3alarm`): a replicated table of (member, alarm type).
//!
//! The table changes only when a `Maintenance.Alarm` ACTIVATE or DEACTIVATE entry is applied,
//! so every member agrees on it at every applied index; it goes into the state snapshot as the
//! optional `alrm` section. While a `NOSPACE` alarm is active, the state machine refuses what
//! would grow the store (etcd 3.4's capped applier): Put, a Txn with a put in either branch,
//! LeaseGrant — see [`refuses_when_capped`]. Range, DeleteRange, Compact, watches and lease
//! revokes and keepalives go on, so an operator can free space and then disarm.
//!
//! ```
//! use keel_engine::alarm::Alarms;
//! use keel_proto::etcdserverpb::AlarmType;
//! let mut alarms = Alarms::default();
//! let raised = alarms.activate(7, AlarmType::Nospace as i32);
//! assert_eq!((raised.member_id, raised.alarm), (7, AlarmType::Nospace as i32));
//! assert!(alarms.is_active(AlarmType::Nospace));
//! assert_eq!(alarms.deactivate(7, AlarmType::Nospace as i32), Some(raised));
//! assert_eq!(alarms.deactivate(7, AlarmType::Nospace as i32), None); // nothing to disarm
//! assert!(!alarms.is_active(AlarmType::Nospace));
//! ```

use std::collections::BTreeSet;

use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::{
    request_op, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, TxnRequest,
};
use keel_proto::keelpb::raft_request::Request as LogRequest;
use keel_proto::keelpb::AlarmTable;
use prost::Message as _;

/// Active alarms, at most; an alarm is one (member, type) pair, so a real cluster holds a
/// handful. ACTIVATE beyond this is refused at apply (deterministically, on every member).
pub const ALARMS_MAX: usize = 4096;

/// The alarm section of a state snapshot does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlarmSectionError {
    /// The protobuf body is malformed.
    #[error("alarm section: {0}")]
    Body(String),
    /// The table holds more alarms than [`ALARMS_MAX`].
    #[error("alarm section: {0} alarms, more than {ALARMS_MAX}")]
    TooMany(usize),
}

/// The replicated alarm table, ordered by (alarm type, member id) so that listing it is
/// deterministic (etcd lists in Go map order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    active: BTreeSet<(i32, u64)>,
}

impl Alarms {
    /// Raises `alarm` for `member_id` (etcd's `AlarmStore.Activate`); returns the alarm, which
    /// may have been active already. Any type is stored, as etcd stores any.
    pub fn activate(&mut self, member_id: u64, alarm: i32) -> AlarmMember {
        if self.active.insert((alarm, member_id)) {
            tracing::warn!(
                alarm = alarm_name(alarm),
                from = format!("{member_id:x}"),
                "alarm raised"
            );
        }
        AlarmMember { member_id, alarm }
    }

    /// Clears `alarm` of `member_id`; `None` if it was not active (etcd's `Deactivate`).
    pub fn deactivate(&mut self, member_id: u64, alarm: i32) -> Option<AlarmMember> {
        if !self.active.remove(&(alarm, member_id)) {
            return None;
        }
        tracing::warn!(
            alarm = alarm_name(alarm),
            from = format!("{member_id:x}"),
            "alarm disarmed"
        );
        Some(AlarmMember { member_id, alarm })
    }

    /// The alarms of type `alarm` (every alarm for `NONE`), as etcd's `AlarmStore.Get`.
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.active
            .iter()
            .filter(|&&(t, _)| alarm == AlarmType::None as i32 || t == alarm)
            .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether some member has an alarm of this type.
    pub fn is_active(&self, alarm: AlarmType) -> bool {
        let t = alarm as i32;
        self.active.range((t, 0)..=(t, u64::MAX)).next().is_some()
    }

    /// Whether `member_id` has an alarm of this type.
    pub fn has(&self, member_id: u64, alarm: AlarmType) -> bool {
        self.active.contains(&(alarm as i32, member_id))
    }

    /// Number of active alarms.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether no alarm is active.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Applies an ACTIVATE or DEACTIVATE entry, answering as etcd's applier does: the alarm
    /// raised (even if it was already active), the alarm cleared, or no alarm when there was
    /// nothing to clear. Other actions change nothing and answer the list (GET).
    pub fn apply(&mut self, r: &AlarmRequest) -> AlarmResponse {
        let alarms = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Activate) if self.len() >= ALARMS_MAX => {
                tracing::warn!(max = ALARMS_MAX, "alarm table full; activation ignored");
                Vec::new()
            }
            Ok(AlarmAction::Activate) => vec![self.activate(r.member_id, r.alarm)],
            Ok(AlarmAction::Deactivate) => {
                self.deactivate(r.member_id, r.alarm).into_iter().collect()
            }
            _ => self.get(r.alarm),
        };
        AlarmResponse {
            header: None,
            alarms,
        }
    }

    /// The table as a state snapshot section.
    pub fn encode_section(&self) -> Vec<u8> {
        AlarmTable {
            alarms: self.get(AlarmType::None as i32),
        }
        .encode_to_vec()
    }

    /// The table back from [`Alarms::encode_section`]'s bytes.
    pub fn decode_section(bytes: &[u8]) -> Result<Alarms, AlarmSectionError> {
        let table =
            AlarmTable::decode(bytes).map_err(|e| AlarmSectionError::Body(e.to_string()))?;
        if table.alarms.len() > ALARMS_MAX {
            return Err(AlarmSectionError::TooMany(table.alarms.len()));
        }
        let active = table
            .alarms
            .iter()
            .map(|a| (a.alarm, a.member_id))
            .collect();
        Ok(Alarms { active })
    }
}

/// Whether `body` is refused while a `NOSPACE` alarm is active (etcd 3.4's `applierV3Capped`):
/// a Put, a LeaseGrant, or a Txn with a put in either branch. Unlike etcd 3.4, whose quota
/// cost counts only a txn's top-level puts, a put inside a nested txn counts too (as in later
/// etcd): it would grow the store all the same.
pub fn refuses_when_capped(body: &LogRequest) -> bool {
    match body {
        LogRequest::Put(_) | LogRequest::LeaseGrant(_) => true,
        LogRequest::Txn(t) => txn_has_put(t),
        _ => false,
    }
}

fn txn_has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .filter_map(|op| op.request.as_ref())
        .any(|op| match op {
            request_op::Request::RequestPut(_) => true,
            request_op::Request::RequestTxn(inner) => txn_has_put(inner),
            _ => false,
        })
}

/// Whether `body` is refused while a `CORRUPT` alarm is active (etcd 3.4's
/// `applierV3Corrupt`): every write (Put, DeleteRange, Txn, Compaction, LeaseGrant,
/// LeaseRevoke) gets `etcdserver: corrupt cluster`, so a corrupt member's state is never
/// built on. Alarms (to disarm), checkpoints and membership entries go on.
pub fn refuses_when_corrupt(body: &LogRequest) -> bool {
    matches!(
        body,
        LogRequest::Put(_)
            | LogRequest::DeleteRange(_)
            | LogRequest::Txn(_)
            | LogRequest::Compaction(_)
            | LogRequest::LeaseGrant(_)
            | LogRequest::LeaseRevoke(_)
    )
}

/// etcd's name of an alarm type (`NOSPACE`, `CORRUPT`), for logs.
pub fn alarm_name(alarm: i32) -> String {
    match AlarmType::try_from(alarm) {
        Ok(t) => t.as_str_name().to_string(),
        Err(_) => alarm.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp};

    fn request(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    #[test]
    fn apply_answers_as_etcd() {
        let mut alarms = Alarms::default();
        let raise = request(AlarmAction::Activate, 2, AlarmType::Nospace);
        let member = AlarmMember {
            member_id: 2,
            alarm: AlarmType::Nospace as i32,
        };
        assert_eq!(alarms.apply(&raise).alarms, vec![member]);
        assert_eq!(alarms.apply(&raise).alarms, vec![member], "raised again");
        alarms.activate(1, AlarmType::Corrupt as i32);
        let get_all = request(AlarmAction::Get, 0, AlarmType::None);
        let listed: Vec<_> = alarms.apply(&get_all).alarms;
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0], member, "NOSPACE (1) sorts before CORRUPT (2)");
        let get_nospace = request(AlarmAction::Get, 0, AlarmType::Nospace);
        assert_eq!(alarms.apply(&get_nospace).alarms, vec![member]);
        let disarm = request(AlarmAction::Deactivate, 2, AlarmType::Nospace);
        assert_eq!(alarms.apply(&disarm).alarms, vec![member]);
        assert!(
            alarms.apply(&disarm).alarms.is_empty(),
            "nothing left to disarm"
        );
        assert!(!alarms.is_active(AlarmType::Nospace));
        assert!(alarms.is_active(AlarmType::Corrupt));
        assert!(
            alarms.apply(&disarm).header.is_none(),
            "etcd sends no header"
        );
    }

    #[test]
    fn section_round_trips_and_refuses_garbage() {
        let mut alarms = Alarms::default();
        alarms.activate(9, AlarmType::Nospace as i32);
        alarms.activate(3, AlarmType::Corrupt as i32);
        let bytes = alarms.encode_section();
        assert_eq!(Alarms::decode_section(&bytes), Ok(alarms));
        assert_eq!(Alarms::decode_section(&[]), Ok(Alarms::default()));
        assert!(Alarms::decode_section(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn capped_refuses_what_grows_the_store() {
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest::default())),
        };
        let range = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest::default())),
        };
        let reads = TxnRequest {
            success: vec![range.clone()],
            ..Default::default()
        };
        let put_on_failure = TxnRequest {
            success: vec![range],
            failure: vec![put],
            ..Default::default()
        };
        let nested = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(put_on_failure.clone())),
            }],
            ..Default::default()
        };
        assert!(refuses_when_capped(&LogRequest::Put(PutRequest::default())));
        assert!(refuses_when_capped(&LogRequest::Txn(put_on_failure)));
        assert!(refuses_when_capped(&LogRequest::Txn(nested)));
        assert!(!refuses_when_capped(&LogRequest::Txn(reads)));
        assert!(!refuses_when_capped(&LogRequest::DeleteRange(
            Default::default()
        )));
        assert!(!refuses_when_capped(&LogRequest::Compaction(
            Default::default()
        )));
        assert!(!refuses_when_capped(&LogRequest::LeaseRevoke(
            Default::default()
        )));
    }
}
