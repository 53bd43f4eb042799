//! etcd's Maintenance service (Status, HashKV, MoveLeader, Alarm listing) and
//! grpc.health.v1.Health.

use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::maintenance_server::Maintenance;
use keel_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, HashKvRequest, HashKvResponse, MoveLeaderRequest,
    MoveLeaderResponse, StatusRequest, StatusResponse,
};
use keel_proto::health::health_check_response::ServingStatus;
use keel_proto::health::health_server::Health;
use keel_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::Services;
use crate::status::to_status;

/// The etcd server version keel reports in Maintenance.Status: the etcd API level its wire
/// behaviour is tested against (etcd 3.4.23).
pub const ETCD_VERSION: &str = "3.4.23";

#[tonic::async_trait]
impl Maintenance for Services {
    async fn alarm(
        &self,
        request: GrpcRequest<AlarmRequest>,
    ) -> Result<GrpcResponse<AlarmResponse>, Status> {
        let r = request.into_inner();
        if r.action != AlarmAction::Get as i32 {
            // Alarms are raised by the space quota and corruption checks, which keel does not
            // have yet; nothing can be activated or deactivated.
            return Err(Status::unimplemented(
                "keel: alarm activation is not supported yet",
            ));
        }
        let s = self.handle.status().await.map_err(to_status)?;
        Ok(GrpcResponse::new(AlarmResponse {
            header: Some(self.header(s.revision, s.raft_term)),
            alarms: Vec::new(),
        }))
    }

    /// etcd 3.4's fields, from the node's [`NodeStatus`](keel_engine::node::NodeStatus). keel
    /// has no bolt file: `dbSize` is the bytes of the member's WAL on disk (what it stores
    /// durably), and `dbSizeInUse` the same figure, since a WAL has no free pages. Both grow
    /// with the log until snapshots compact it; neither is comparable to an etcd member's
    /// number.
    async fn status(
        &self,
        _request: GrpcRequest<StatusRequest>,
    ) -> Result<GrpcResponse<StatusResponse>, Status> {
        let s = self.handle.status().await.map_err(to_status)?;
        let db_size = self.handle.wal_bytes() as i64;
        Ok(GrpcResponse::new(StatusResponse {
            header: Some(self.header(s.revision, s.raft_term)),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: s.is_learner,
            ..Default::default()
        }))
    }

    async fn hash_kv(
        &self,
        request: GrpcRequest<HashKvRequest>,
    ) -> Result<GrpcResponse<HashKvResponse>, Status> {
        Ok(GrpcResponse::new(self.call(request.into_inner()).await?))
    }

    async fn move_leader(
        &self,
        request: GrpcRequest<MoveLeaderRequest>,
    ) -> Result<GrpcResponse<MoveLeaderResponse>, Status> {
        Ok(GrpcResponse::new(self.call(request.into_inner()).await?))
    }
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
