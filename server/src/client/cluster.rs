//! etcd's Cluster service, through the engine's replicated member table.

use keel_engine::error::Error;
use keel_proto::etcdserverpb::cluster_server::Cluster;
use keel_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::Services;
use crate::status::to_status;

#[tonic::async_trait]
impl Cluster for Services {
    async fn member_add(
        &self,
        request: GrpcRequest<MemberAddRequest>,
    ) -> Result<GrpcResponse<MemberAddResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn member_remove(
        &self,
        request: GrpcRequest<MemberRemoveRequest>,
    ) -> Result<GrpcResponse<MemberRemoveResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn member_update(
        &self,
        request: GrpcRequest<MemberUpdateRequest>,
    ) -> Result<GrpcResponse<MemberUpdateResponse>, Status> {
        let token = super::auth_token(&request);
        let r = request.into_inner();
        keel_engine::node::check_urls(&r.peer_ur_ls).map_err(to_status)?;
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }

    async fn member_promote(
        &self,
        request: GrpcRequest<MemberPromoteRequest>,
    ) -> Result<GrpcResponse<MemberPromoteResponse>, Status> {
        let token = super::auth_token(&request);
        let promote = request.into_inner();
        match self.handle.call_as(token, promote).await {
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
        let mut resp = self.call_req(request).await?;
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
