//! etcd's Lease service; keepalives and TTL queries on a follower go to the leader.

use keel_engine::error::Error;
use keel_proto::etcdserverpb::lease_server::Lease;
use keel_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tonic::codegen::BoxStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

use super::Services;
use crate::status::to_status;

/// Keepalive answers queued towards one client stream, at most.
pub const KEEPALIVE_REPLIES_MAX: usize = 64;
/// How long a keepalive waits for a leader to be known before it fails.
pub const KEEPALIVE_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The pause between tries while no other leader is known.
const KEEPALIVE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

impl Services {
    /// One keepalive: served by the leader, forwarded to it by a follower. A member that
    /// still believes it leads but could not confirm it recently (it was paused, or cut off)
    /// answers not-leader; as etcd's `LeaseRenew` waits for a leader, the keepalive is tried
    /// again until a leader is known (this member, confirmed afresh, or another one, which is
    /// asked), for at most [`KEEPALIVE_LEADER_WAIT`].
    async fn keep_alive(
        &self,
        keepalive: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let give_up = tokio::time::Instant::now() + KEEPALIVE_LEADER_WAIT;
        loop {
            match self.handle.call(keepalive).await {
                Ok(r) => return Ok(r),
                Err(Error::NotLeader) => {}
                Err(e) => return Err(to_status(e)),
            }
            let status = self.handle.status().await.map_err(to_status)?;
            if status.leader != 0 && status.leader != status.member_id {
                let mut resp = self.forwarder.keep_alive(status.leader, keepalive).await?;
                self.local_header(&mut resp.header);
                return Ok(resp);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(to_status(Error::NoLeader));
            }
            tokio::time::sleep(KEEPALIVE_RETRY).await;
        }
    }
}

#[tonic::async_trait]
impl Lease for Services {
    async fn lease_grant(
        &self,
        request: GrpcRequest<LeaseGrantRequest>,
    ) -> Result<GrpcResponse<LeaseGrantResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn lease_revoke(
        &self,
        request: GrpcRequest<LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<LeaseRevokeResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
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
        let token = super::auth_token(&request);
        let request = request.into_inner();
        // Only the leader knows how long a lease has left: a follower asks it.
        let status = self.handle.status().await.map_err(to_status)?;
        if status.leader != 0 && status.leader != status.member_id {
            let mut resp = self.forwarder.time_to_live(status.leader, request).await?;
            self.local_header(&mut resp.header);
            return Ok(GrpcResponse::new(resp));
        }
        Ok(GrpcResponse::new(self.call(token, request).await?))
    }

    async fn lease_leases(
        &self,
        request: GrpcRequest<LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<LeaseLeasesResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }
}
