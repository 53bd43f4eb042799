//! The etcd v3 gRPC services: what clients talk to.
//!
//! Implemented: KV (all five methods, [`kv`]), Watch ([`watch`]), Lease (all five, [`lease`]),
//! Maintenance.Status, HashKV, MoveLeader and Alarm listing, and grpc.health.v1.Health
//! ([`maintenance`]), Cluster (all five, through the engine's replicated member table,
//! [`cluster`]), Auth (all seventeen, [`auth`]). Every request goes to the node with the
//! client's auth token (gRPC metadata `token`), which checks it against the caller's
//! permissions. Every other method of etcd's API is registered and answers gRPC
//! `Unimplemented` (the generated default, [`not_yet`]), never a fake success.
//!
//! Validation that etcd does before raft (empty key, too many txn ops, duplicate keys in a txn,
//! request size) happens here, with etcd's codes and texts; everything else is the engine's.

pub mod auth;
#[cfg(not(madsim))]
pub mod authority;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod not_yet;
pub mod token;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use keel_engine::error::Error;
use keel_engine::request::Rpc;
use keel_proto::etcdserverpb::auth_server::AuthServer;
use keel_proto::etcdserverpb::cluster_server::ClusterServer;
use keel_proto::etcdserverpb::kv_server::KvServer;
use keel_proto::etcdserverpb::lease_server::LeaseServer;
use keel_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use keel_proto::etcdserverpb::watch_server::WatchServer;
use keel_proto::etcdserverpb::ResponseHeader;
use keel_proto::health::health_server::HealthServer;
use keel_proto::v3electionpb::election_server::ElectionServer;
use keel_proto::v3lockpb::lock_server::LockServer;
use tonic::{Request as GrpcRequest, Status};

use crate::bootstrap::Identity;
use crate::config::{Config, GRPC_OVERHEAD_BYTES};
use crate::driver::Handle;
use crate::error::ServerError;
use crate::peer::forward::Forwarder;
#[cfg(madsim)]
use crate::status::serve_error;
use crate::status::to_status;
use not_yet::NotYet;
pub(crate) use token::auth_token;
use watch::WatchService;

/// The client-facing services of one member.
#[derive(Clone)]
pub struct Services {
    handle: Handle,
    forwarder: Arc<Forwarder>,
    identity: Arc<Identity>,
    max_request_bytes: usize,
    max_txn_ops: usize,
    bcrypt_cost: u32,
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
            bcrypt_cost: config.bcrypt_cost,
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
            .add_service(AuthServer::new(self.clone()))
            .add_service(LockServer::new(NotYet))
            .add_service(ElectionServer::new(NotYet));
        // The simulator's tonic clients send proper authorities; etcdctl 3.4 does not.
        #[cfg(madsim)]
        let served = router.serve(addr).await.map_err(|e| serve_error(addr, e));
        #[cfg(not(madsim))]
        let served = authority::serve(router, addr).await;
        served
    }

    /// Sends a client's request, with its auth token, through the node.
    async fn call<R: Rpc>(&self, token: Option<String>, request: R) -> Result<R::Response, Status> {
        self.handle.call_as(token, request).await.map_err(to_status)
    }

    /// [`Services::call`] for a request as it came.
    async fn call_req<R: Rpc>(&self, request: GrpcRequest<R>) -> Result<R::Response, Status> {
        let token = auth_token(&request);
        self.call(token, request.into_inner()).await
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
