//! The etcd v3 gRPC services: what clients talk to.
//!
//! Implemented: KV (all five methods, [`kv`]), Watch ([`watch`]), Lease (all five, [`lease`]),
//! Maintenance.Status, HashKV, MoveLeader, Alarm listing and Snapshot, and grpc.health.v1.Health
//! ([`maintenance`], [`snapshot`]), Cluster (all five, through the engine's replicated member table,
//! [`cluster`]), Auth (all seventeen, [`auth`]), Lock ([`lock`]) and Election ([`election`]),
//! both etcd's server-side recipe over this member's own KV, Lease and Watch calls
//! ([`recipe`]). Every request goes to the node with the client's auth token (gRPC metadata
//! `token`), which checks it against the caller's permissions. Every other method of etcd's
//! API answers gRPC `Unimplemented` (the generated default), never a fake success.
//!
//! Validation that etcd does before raft (empty key, too many txn ops, duplicate keys in a txn,
//! request size) happens here, with etcd's codes and texts; everything else is the engine's.

pub mod auth;
#[cfg(not(madsim))]
pub mod authority;
pub mod cluster;
pub mod election;
#[cfg(not(madsim))]
pub mod h2conn;

pub mod kv;
pub mod lease;
#[cfg(not(madsim))]
pub mod listener;
pub mod lock;
pub mod maintenance;
pub mod recipe;
pub mod snapshot;
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
use crate::metrics::counted;
use crate::peer::forward::Forwarder;
#[cfg(madsim)]
use crate::status::serve_error;
use crate::status::to_status;
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
    /// The auth token of the client a Lock or Election call serves ([`Services::as_caller`]):
    /// the recipe's KV calls are checked with it, as etcd's are with the caller's context.
    caller: Option<String>,
    /// The v2 HTTP API (`--enable-v2`), served on the client port's HTTP/1 path.
    #[cfg(not(madsim))]
    v2: Option<Arc<crate::gateway::v2::V2Http>>,
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
            caller: None,
            #[cfg(not(madsim))]
            v2: None,
        }
    }

    /// These services with etcd's v2 HTTP API on the client port too.
    #[cfg(not(madsim))]
    pub fn with_v2(mut self, v2: Arc<crate::gateway::v2::V2Http>) -> Self {
        self.v2 = Some(v2);
        self
    }

    /// Serves every etcd v3 service on `addr` until the listener fails: gRPC, and in the
    /// tokio build the JSON gateway on the same port ([`listener`]).
    pub async fn serve(self, addr: SocketAddr) -> Result<(), ServerError> {
        #[cfg(not(madsim))]
        return self.serve_tls(addr, None).await;
        #[cfg(madsim)]
        return self.serve_with(addr).await;
    }

    /// [`Services::serve`] over TLS when `tls` is given (an `https://` client URL).
    #[cfg(not(madsim))]
    pub async fn serve_tls(
        self,
        addr: SocketAddr,
        tls: Option<Arc<crate::tls::ServerTls>>,
    ) -> Result<(), ServerError> {
        self.serve_with(addr, tls).await
    }

    async fn serve_with(
        self,
        addr: SocketAddr,
        #[cfg(not(madsim))] tls: Option<Arc<crate::tls::ServerTls>>,
    ) -> Result<(), ServerError> {
        // tonic refuses messages above this outright (with its own wording); messages between
        // the gRPC limit and this cap reach `check_message`, which answers with grpc-go's.
        let decode_cap = 4 * self.max_message_bytes();
        #[cfg(not(madsim))]
        let v2 = self.v2.clone();
        // Each service object once: the gRPC router and the JSON gateway call the same ones.
        let kv = Arc::new(self.clone());
        let watch = Arc::new(WatchService::new(self.handle.clone()));
        // Every service is counted for `grpc_server_*_total` (see crate::metrics::grpc).
        macro_rules! add_services {
            ($to:expr) => {
                $to.add_service(counted(
                    KvServer::from_arc(kv.clone()).max_decoding_message_size(decode_cap),
                ))
                .add_service(counted(MaintenanceServer::from_arc(kv.clone())))
                .add_service(counted(ClusterServer::from_arc(kv.clone())))
                .add_service(counted(HealthServer::from_arc(kv.clone())))
                .add_service(counted(WatchServer::from_arc(watch.clone())))
                .add_service(counted(LeaseServer::from_arc(kv.clone())))
                .add_service(counted(AuthServer::from_arc(kv.clone())))
                .add_service(counted(LockServer::from_arc(kv.clone())))
                .add_service(counted(ElectionServer::from_arc(kv.clone())))
            };
        }
        // The simulator's tonic clients send proper authorities (etcdctl 3.4 does not), and
        // speak no HTTP/1: under madsim the port serves gRPC alone, through tonic's server.
        #[cfg(madsim)]
        let served = {
            let router = add_services!(tonic::transport::Server::builder());
            let _ = (kv, watch);
            router.serve(addr).await.map_err(|e| serve_error(addr, e))
        };
        #[cfg(not(madsim))]
        let served = {
            // The tokio build serves each gRPC connection itself ([`h2conn`]).
            let grpc = add_services!(tonic::service::Routes::default());
            let apis = gateway_apis(kv, watch);
            // A JSON body carries bytes as base64 (4/3 of their size) plus field names: twice
            // the gRPC decode cap lets every message gRPC would decode reach the service, which
            // then answers as etcd does (too large for raft, or above gRPC's limit).
            let routes = crate::gateway::routes::table();
            let mut gateway = crate::gateway::Gateway::new(apis, routes, 2 * decode_cap);
            if let Some(v2) = v2 {
                gateway = gateway.with_v2(v2);
            }
            listener::serve(grpc, gateway, addr, tls).await
        };
        served
    }

    /// Serves etcd's `/metrics` and `/health` (HTTP/1.1) on `addr`, as etcd does on
    /// `--listen-metrics-urls`, until the listener fails.
    #[cfg(not(madsim))]
    pub async fn serve_metrics(self, addr: SocketAddr) -> Result<(), ServerError> {
        let watch = Arc::new(WatchService::new(self.handle.clone()));
        let apis = gateway_apis(Arc::new(self), watch);
        let routes = crate::gateway::routes::table()
            .into_iter()
            .filter(|(_, path, _)| matches!(*path, "/metrics" | "/health"))
            .collect();
        let gateway = crate::gateway::Gateway::new(apis, routes, 0);
        listener::serve_http(gateway, addr).await
    }

    /// These services acting for the client of `request` (its auth token kept for the Lock
    /// and Election recipes' calls), and the request's message.
    fn as_caller<T>(&self, request: GrpcRequest<T>) -> (Services, T) {
        let mut this = self.clone();
        this.caller = auth_token(&request);
        (this, request.into_inner())
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

/// The gateway's view of the service objects: `services` answers every service but Watch.
#[cfg(not(madsim))]
fn gateway_apis(services: Arc<Services>, watch: Arc<WatchService>) -> crate::gateway::Apis {
    crate::gateway::Apis {
        kv: services.clone(),
        watch,
        lease: services.clone(),
        cluster: services.clone(),
        maintenance: services.clone(),
        auth: services.clone(),
        lock: services.clone(),
        election: services,
    }
}
