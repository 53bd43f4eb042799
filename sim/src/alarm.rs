//! The operator's side of etcd's NOSPACE alarm: a member whose disk filled raises it (the
//! cluster then refuses every write that would grow the store), and it stays raised after the
//! disk has room again until someone disarms it. The liveness phase does what an operator
//! would (`etcdctl alarm disarm`): list the alarms and deactivate each one.

use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType};
use tonic::{Code, Status};

use crate::cluster::Cluster;
use crate::workload::{Ctx, OP_TIMEOUT};

/// etcd's text for a write refused because of the NOSPACE alarm (or a full disk).
pub const NO_SPACE_TEXT: &str = "etcdserver: mvcc: database space exceeded";

/// Whether `status` is etcd's "database space exceeded": keel refuses such a write before it
/// reaches the log (its member's disk is full, or the alarm is up when it is proposed) or
/// applies its entry as a no-op (the alarm was up by then), so it certainly took no effect.
pub fn is_no_space(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted && status.message() == NO_SPACE_TEXT
}

/// Whether a recorded outcome's text (`"{code:?}: {message}"`) is a NOSPACE refusal.
pub fn is_no_space_text(outcome: &str) -> bool {
    outcome.ends_with(NO_SPACE_TEXT)
}

/// Lists the cluster's alarms through member `i` and deactivates each (an operator's
/// `etcdctl alarm disarm`); records what it did as an event. Returns how many it disarmed,
/// or `None` if the member could not be asked or refused.
pub async fn disarm_alarms(cluster: &Cluster, ctx: &Ctx, i: usize) -> Option<usize> {
    let endpoint = cluster.endpoint(i);
    let task = cluster.client_node.spawn(async move {
        let timed_out = |what: &str| format!("{what}: timed out");
        let mut m = tokio::time::timeout(OP_TIMEOUT, MaintenanceClient::connect(endpoint))
            .await
            .map_err(|_| timed_out("connect"))?
            .map_err(|e| format!("connect: {e}"))?;
        let list = AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        };
        let listed = tokio::time::timeout(OP_TIMEOUT, m.alarm(list))
            .await
            .map_err(|_| timed_out("alarm list"))?
            .map_err(|e| format!("alarm list: {}", e.message()))?
            .into_inner()
            .alarms;
        let mut disarmed: Vec<AlarmMember> = Vec::new();
        for a in listed {
            let disarm = AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: a.member_id,
                alarm: a.alarm,
            };
            tokio::time::timeout(OP_TIMEOUT, m.alarm(disarm))
                .await
                .map_err(|_| timed_out("alarm disarm"))?
                .map_err(|e| format!("alarm disarm: {}", e.message()))?;
            disarmed.push(a);
        }
        Ok::<_, String>(disarmed)
    });
    let outcome = match task.await {
        Ok(result) => result,
        Err(e) => Err(format!("task: {e}")),
    };
    let what = match &outcome {
        Ok(list) => format!(
            "{} alarm(s) [{}]",
            list.len(),
            list.iter()
                .map(|a| format!(
                    "{:x}:{}",
                    a.member_id,
                    keel_engine::alarm::alarm_name(a.alarm)
                ))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Err(e) => format!("failed ({e})"),
    };
    ctx.event(format!("alarm disarm via n{}: {what}", i + 1));
    outcome.ok().map(|l| l.len())
}
