//! etcd's Maintenance service (Status, HashKV, MoveLeader, Alarm, Snapshot, Defragment) and
//! grpc.health.v1.Health.

use std::time::Duration;

use keel_proto::etcdserverpb::maintenance_server::Maintenance;
use keel_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use keel_proto::health::health_check_response::ServingStatus;
use keel_proto::health::health_server::Health;
use keel_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tonic::codegen::BoxStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::Services;
use crate::status::to_status;

pub use crate::version::ETCD_VERSION;

/// How long a Defragment waits for its snapshot to be durable (etcd's defrag has no server
/// limit either; the client's command timeout usually ends the wait first).
pub const DEFRAGMENT_TIMEOUT: Duration = Duration::from_secs(600);

#[tonic::async_trait]
impl Maintenance for Services {
    /// ACTIVATE and DEACTIVATE go through the log (the replicated alarm table); GET is a
    /// linearizable read. Like etcd 3.4, the response carries no header.
    async fn alarm(
        &self,
        request: GrpcRequest<AlarmRequest>,
    ) -> Result<GrpcResponse<AlarmResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    /// etcd 3.4's fields, from the node's [`NodeStatus`](keel_engine::node::NodeStatus). keel
    /// has no bolt file, so the two sizes count what keel has:
    /// * `dbSize`: the bytes of the member's storage on disk, the WAL's segments plus the
    ///   snapshot files (as of the last sync, save or release). It grows with the log between
    ///   snapshots; `defrag` takes a snapshot now so the WAL and the snapshot files it makes
    ///   redundant are released.
    /// * `dbSizeInUse`: the bytes the space quota counts (`keel_engine::node::quota_used`):
    ///   the MVCC store with its uncompacted history (`Store::quota_bytes`: each stored
    ///   revision's key, value and a fixed overhead) plus a fixed 4 KiB for the rest of the
    ///   member's state. Compaction lowers it at once. It is an in-memory figure, so unlike etcd's
    ///   it is not bounded by `dbSize`.
    async fn status(
        &self,
        _request: GrpcRequest<StatusRequest>,
    ) -> Result<GrpcResponse<StatusResponse>, Status> {
        let s = self.handle.status().await.map_err(to_status)?;
        let db_size = self.handle.wal_bytes() + self.handle.snapshot_bytes();
        Ok(GrpcResponse::new(StatusResponse {
            header: Some(self.header(s.revision, s.raft_term)),
            version: ETCD_VERSION.to_string(),
            db_size: db_size as i64,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: s.alarms.iter().map(alarm_text).collect(),
            db_size_in_use: s.quota_bytes_used as i64,
            is_learner: s.is_learner,
            ..Default::default()
        }))
    }

    /// Reclaims what keel's storage leaves reclaimable: a snapshot as of the applied index is
    /// taken now (off the driver loop), after which the WAL before the snapshot kept as
    /// fallback and the snapshot files beyond those kept are removed. Reads and writes go on
    /// meanwhile (etcd's defrag blocks its member). Compacted history is freed by the
    /// compaction itself (`dbSizeInUse` drops then); defrag shrinks `dbSize`. Answers as
    /// etcd 3.4 does: an empty response, no header.
    /// Admin only while auth is enabled (checked against this member's auth store, no log
    /// entry), with etcd 3.4's unconverted auth errors.
    async fn defragment(
        &self,
        request: GrpcRequest<DefragmentRequest>,
    ) -> Result<GrpcResponse<DefragmentResponse>, Status> {
        self.check_admin(&request).await?;
        self.handle
            .defragment(DEFRAGMENT_TIMEOUT)
            .await
            .map_err(to_status)?;
        Ok(GrpcResponse::new(DefragmentResponse { header: None }))
    }

    /// Admin only while auth is enabled; etcd 3.4 sends its auth store's error unconverted
    /// (code Unknown, `auth: permission denied`).
    async fn hash_kv(
        &self,
        request: GrpcRequest<HashKvRequest>,
    ) -> Result<GrpcResponse<HashKvResponse>, Status> {
        let token = super::auth_token(&request);
        let answer = self.handle.call_as(token, request.into_inner()).await;
        answer.map(GrpcResponse::new).map_err(auth_store_status)
    }

    /// A backup of the member's state as of its applied index, streamed while it goes on
    /// serving ([`super::snapshot`]). Admin only while auth is enabled, as Defragment.
    async fn snapshot(
        &self,
        request: GrpcRequest<SnapshotRequest>,
    ) -> Result<GrpcResponse<BoxStream<SnapshotResponse>>, Status> {
        self.check_admin(&request).await?;
        Ok(GrpcResponse::new(
            super::snapshot::stream(&self.handle).await?,
        ))
    }

    async fn move_leader(
        &self,
        request: GrpcRequest<MoveLeaderRequest>,
    ) -> Result<GrpcResponse<MoveLeaderResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }
}

/// etcd 3.4's Maintenance service sends its auth store's errors unconverted: code Unknown,
/// `auth: permission denied`, `auth: invalid auth token`…
fn auth_store_status(e: keel_engine::error::Error) -> Status {
    match e.auth_store_text() {
        Some(text) => Status::unknown(text),
        None => to_status(e),
    }
}

impl Services {
    /// etcd's `authMaintenanceServer.isAuthenticated`: the caller must be an admin.
    async fn check_admin<T>(&self, request: &GrpcRequest<T>) -> Result<(), Status> {
        let token = super::auth_token(request);
        self.handle
            .check_admin(token)
            .await
            .map_err(auth_store_status)
    }
}

/// An alarm as etcd's Status lists it in `errors`: gogo-protobuf's text form of the
/// `AlarmMember`, fields set to zero left out, each followed by a space
/// (`memberID:10276657743932975437 alarm:NOSPACE `).
fn alarm_text(a: &AlarmMember) -> String {
    let mut text = String::new();
    if a.member_id != 0 {
        text.push_str(&format!("memberID:{} ", a.member_id));
    }
    if a.alarm != 0 {
        match AlarmType::try_from(a.alarm) {
            Ok(t) => text.push_str(&format!("alarm:{} ", t.as_str_name())),
            Err(_) => text.push_str(&format!("alarm:{} ", a.alarm)),
        }
    }
    text
}

#[tonic::async_trait]
impl Health for Services {
    async fn check(
        &self,
        _request: GrpcRequest<HealthCheckRequest>,
    ) -> Result<GrpcResponse<HealthCheckResponse>, Status> {
        let status = match self.handle.status().await {
            Ok(s) if s.leader != 0 => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        };
        Ok(GrpcResponse::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_read_as_etcd_lists_them() {
        let nospace = AlarmMember {
            member_id: 10276657743932975437,
            alarm: AlarmType::Nospace as i32,
        };
        assert_eq!(
            alarm_text(&nospace),
            "memberID:10276657743932975437 alarm:NOSPACE "
        );
        let corrupt_of_none = AlarmMember {
            member_id: 0,
            alarm: AlarmType::Corrupt as i32,
        };
        assert_eq!(alarm_text(&corrupt_of_none), "alarm:CORRUPT ");
    }
}
