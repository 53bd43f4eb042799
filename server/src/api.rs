//! The etcd v3 gRPC services.
//!
//! Implemented: KV (all five methods), Watch (see [`crate::watch`]), Lease (all five),
//! Maintenance.Status, HashKV, MoveLeader and Alarm listing, Cluster (all five, through the
//! engine's replicated member table) and grpc.health.v1.Health. Every other method of etcd's
//! API is registered and answers gRPC `Unimplemented` (the generated default), never a fake
//! success.
//!
//! Validation that etcd does before raft (empty key, too many txn ops, duplicate keys in a txn,
//! request size) happens here, with etcd's codes and texts; everything else is the engine's.

use std::net::SocketAddr;
use std::sync::Arc;

use keel_engine::apply;
use keel_engine::error::Error;
use keel_engine::request::Rpc;
use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::auth_server::{Auth, AuthServer};
use keel_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use keel_proto::etcdserverpb::kv_server::{Kv, KvServer};
use keel_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use keel_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use keel_proto::etcdserverpb::watch_server::WatchServer;
use keel_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, HashKvRequest, HashKvResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusRequest, StatusResponse,
    TxnRequest, TxnResponse,
};
use keel_proto::health::health_check_response::ServingStatus;
use keel_proto::health::health_server::{Health, HealthServer};
use keel_proto::health::{HealthCheckRequest, HealthCheckResponse};
use keel_proto::v3electionpb::election_server::{Election, ElectionServer};
use keel_proto::v3lockpb::lock_server::{Lock, LockServer};
use prost::Message as _;
use tonic::codegen::BoxStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

use crate::config::{Config, GRPC_OVERHEAD_BYTES};
use crate::driver::Handle;
use crate::forward::Forwarder;
use crate::watch::WatchService;
use crate::{Identity, ServerError};

/// Keepalive answers queued towards one client stream, at most.
pub const KEEPALIVE_REPLIES_MAX: usize = 64;

/// The etcd server version keel reports in Maintenance.Status: the etcd API level its wire
/// behaviour is tested against (etcd 3.4.23).
pub const ETCD_VERSION: &str = "3.4.23";

/// The client-facing services of one member.
#[derive(Clone)]
pub struct Services {
    handle: Handle,
    forwarder: Arc<Forwarder>,
    identity: Arc<Identity>,
    max_request_bytes: usize,
    max_txn_ops: usize,
}

impl Services {
    /// Services answering through `handle`.
    pub fn new(handle: Handle, identity: Identity, config: &Config, forwarder: Forwarder) -> Self {
        Self {
            handle,
            forwarder: Arc::new(forwarder),
            identity: Arc::new(identity),
            max_request_bytes: config.max_request_bytes as usize,
            max_txn_ops: config.max_txn_ops as usize,
        }
    }

    /// Serves every etcd v3 service on `addr` until the listener fails.
    pub async fn serve(self, addr: SocketAddr) -> Result<(), ServerError> {
        // tonic refuses messages above this outright (with its own wording); messages between
        // the gRPC limit and this cap reach `check_message`, which answers with grpc-go's.
        let decode_cap = 4 * self.max_message_bytes();
        let router = tonic::transport::Server::builder()
            .add_service(KvServer::new(self.clone()).max_decoding_message_size(decode_cap))
            .add_service(MaintenanceServer::new(self.clone()))
            .add_service(ClusterServer::new(self.clone()))
            .add_service(HealthServer::new(self.clone()))
            .add_service(WatchServer::new(WatchService::new(self.handle.clone())))
            .add_service(LeaseServer::new(self.clone()))
            .add_service(AuthServer::new(NotYet))
            .add_service(LockServer::new(NotYet))
            .add_service(ElectionServer::new(NotYet));
        // The simulator's tonic clients send proper authorities; etcdctl 3.4 does not.
        #[cfg(madsim)]
        let served = router.serve(addr).await.map_err(|e| serve_error(addr, e));
        #[cfg(not(madsim))]
        let served = crate::authority::serve(router, addr).await;
        served
    }

    async fn call<R: Rpc>(&self, request: R) -> Result<R::Response, Status> {
        self.handle.call(request).await.map_err(to_status)
    }

    /// etcd's gRPC receive limit: `--max-request-bytes` plus framing allowance.
    fn max_message_bytes(&self) -> usize {
        self.max_request_bytes + GRPC_OVERHEAD_BYTES
    }

    /// A message over the gRPC receive limit, refused as grpc-go (and so etcd) words it.
    fn check_message(&self, encoded_len: usize) -> Result<(), Status> {
        let max = self.max_message_bytes();
        if encoded_len > max {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({encoded_len} vs. {max})"
            )));
        }
        Ok(())
    }

    /// A request that fits gRPC but not a raft entry: etcd's "request is too large".
    fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        self.check_message(encoded_len)?;
        if encoded_len > self.max_request_bytes {
            return Err(to_status(Error::RequestTooLarge));
        }
        Ok(())
    }

    /// One keepalive: served by the leader, forwarded to it by a follower.
    async fn keep_alive(
        &self,
        keepalive: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        match self.handle.call(keepalive).await {
            Ok(r) => Ok(r),
            Err(Error::NotLeader) => {
                let status = self.handle.status().await.map_err(to_status)?;
                if status.leader == 0 || status.leader == status.member_id {
                    return Err(to_status(Error::NoLeader));
                }
                let mut resp = self.forwarder.keep_alive(status.leader, keepalive).await?;
                self.local_header(&mut resp.header);
                Ok(resp)
            }
            Err(e) => Err(to_status(e)),
        }
    }

    /// A forwarded answer carries this member's identity in its header, as etcd's does.
    fn local_header(&self, header: &mut Option<ResponseHeader>) {
        let h = header.get_or_insert_with(ResponseHeader::default);
        h.member_id = self.identity.member_id;
        h.cluster_id = self.identity.cluster_id;
    }

    fn header(&self, revision: i64, raft_term: u64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term,
        }
    }
}

/// A listener failure on `addr`.
pub(crate) fn serve_error(addr: SocketAddr, e: impl std::fmt::Display) -> ServerError {
    ServerError::Serve {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// etcd's error → gRPC status, with etcd's code and text (`Code` carries gRPC's numbers).
pub fn to_status(e: Error) -> Status {
    Status::new(tonic::Code::from_i32(e.code() as i32), e.to_string())
}

#[tonic::async_trait]
impl Kv for Services {
    async fn range(
        &self,
        request: GrpcRequest<RangeRequest>,
    ) -> Result<GrpcResponse<RangeResponse>, Status> {
        let r = request.into_inner();
        self.check_message(r.encoded_len())?;
        apply::check_range(&r).map_err(to_status)?;
        Ok(GrpcResponse::new(self.call(r).await?))
    }

    async fn put(
        &self,
        request: GrpcRequest<PutRequest>,
    ) -> Result<GrpcResponse<PutResponse>, Status> {
        let r = request.into_inner();
        apply::check_put(&r).map_err(to_status)?;
        self.check_size(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(r).await?))
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        apply::check_delete_range(&r).map_err(to_status)?;
        self.check_size(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(r).await?))
    }

    async fn txn(
        &self,
        request: GrpcRequest<TxnRequest>,
    ) -> Result<GrpcResponse<TxnResponse>, Status> {
        let r = request.into_inner();
        apply::check_txn(&r, self.max_txn_ops).map_err(to_status)?;
        self.check_size(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(r).await?))
    }

    async fn compact(
        &self,
        request: GrpcRequest<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        let r = request.into_inner();
        self.check_message(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(r).await?))
    }
}

#[tonic::async_trait]
impl Lease for Services {
    async fn lease_grant(
        &self,
        request: GrpcRequest<LeaseGrantRequest>,
    ) -> Result<GrpcResponse<LeaseGrantResponse>, Status> {
        Ok(GrpcResponse::new(self.call(request.into_inner()).await?))
    }

    async fn lease_revoke(
        &self,
        request: GrpcRequest<LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<LeaseRevokeResponse>, Status> {
        Ok(GrpcResponse::new(self.call(request.into_inner()).await?))
    }

    async fn lease_keep_alive(
        &self,
        request: GrpcRequest<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<BoxStream<LeaseKeepAliveResponse>>, Status> {
        let mut keepalives = request.into_inner();
        let (replies, stream) = tokio::sync::mpsc::channel(KEEPALIVE_REPLIES_MAX);
        let services = self.clone();
        tokio::spawn(async move {
            loop {
                let keepalive = match keepalives.message().await {
                    Ok(Some(k)) => k,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = replies.send(Err(status)).await;
                        return;
                    }
                };
                let reply = services.keep_alive(keepalive).await;
                let failed = reply.is_err();
                if replies.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(stream);
        Ok(GrpcResponse::new(Box::pin(stream)))
    }

    async fn lease_time_to_live(
        &self,
        request: GrpcRequest<LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        // Only the leader knows how long a lease has left: a follower asks it.
        let status = self.handle.status().await.map_err(to_status)?;
        if status.leader != 0 && status.leader != status.member_id {
            let mut resp = self.forwarder.time_to_live(status.leader, request).await?;
            self.local_header(&mut resp.header);
            return Ok(GrpcResponse::new(resp));
        }
        Ok(GrpcResponse::new(self.call(request).await?))
    }

    async fn lease_leases(
        &self,
        request: GrpcRequest<LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<LeaseLeasesResponse>, Status> {
        Ok(GrpcResponse::new(self.call(request.into_inner()).await?))
    }
}

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

    /// etcd 3.4's fields, from the node's [`NodeStatus`]. keel has no bolt file: `dbSize` is
    /// the bytes of the member's WAL on disk (what it stores durably), and `dbSizeInUse`
    /// the same figure, since a WAL has no free pages. Both grow with the log until
    /// snapshots compact it; neither is comparable to an etcd member's number.
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
impl Cluster for Services {
    async fn member_add(
        &self,
        request: GrpcRequest<MemberAddRequest>,
    ) -> Result<GrpcResponse<MemberAddResponse>, Status> {
        Ok(GrpcResponse::new(self.call(request.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        request: GrpcRequest<MemberRemoveRequest>,
    ) -> Result<GrpcResponse<MemberRemoveResponse>, Status> {
        Ok(GrpcResponse::new(self.call(request.into_inner()).await?))
    }

    async fn member_update(
        &self,
        request: GrpcRequest<MemberUpdateRequest>,
    ) -> Result<GrpcResponse<MemberUpdateResponse>, Status> {
        let r = request.into_inner();
        keel_engine::node::check_urls(&r.peer_ur_ls).map_err(to_status)?;
        Ok(GrpcResponse::new(self.call(r).await?))
    }

    async fn member_promote(
        &self,
        request: GrpcRequest<MemberPromoteRequest>,
    ) -> Result<GrpcResponse<MemberPromoteResponse>, Status> {
        let promote = request.into_inner();
        match self.handle.call(promote).await {
            Ok(resp) => Ok(GrpcResponse::new(resp)),
            Err(Error::NotLeader) => {
                // Only the leader knows whether the learner is in sync: ask it.
                let status = self.handle.status().await.map_err(to_status)?;
                if status.leader == 0 || status.leader == status.member_id {
                    return Err(to_status(Error::NoLeader));
                }
                let mut resp = self
                    .forwarder
                    .member_promote(status.leader, promote)
                    .await?;
                self.local_header(&mut resp.header);
                Ok(GrpcResponse::new(resp))
            }
            Err(e) => Err(to_status(e)),
        }
    }

    async fn member_list(
        &self,
        request: GrpcRequest<MemberListRequest>,
    ) -> Result<GrpcResponse<MemberListResponse>, Status> {
        let mut resp = self.call(request.into_inner()).await?;
        self.show_own_attributes(&mut resp.members);
        Ok(GrpcResponse::new(resp))
    }
}

impl Services {
    /// etcd serves clients only after its publish is applied, so its own entry always shows
    /// its name and client URLs; keel serves at once, so it fills them in until then.
    fn show_own_attributes(&self, members: &mut [Member]) {
        let me = &self.identity;
        if let Some(m) = members.iter_mut().find(|m| m.id == me.member_id) {
            if m.name.is_empty() {
                m.name = me.name.clone();
                m.client_ur_ls = me.client_urls.clone();
            }
        }
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

/// Services whose etcd methods keel does not implement yet: every method answers gRPC
/// `Unimplemented` through the generated defaults.
#[derive(Debug, Clone, Copy)]
pub struct NotYet;

#[tonic::async_trait]
#[tonic::async_trait]
impl Auth for NotYet {}
#[tonic::async_trait]
impl Lock for NotYet {}
#[tonic::async_trait]
impl Election for NotYet {}
