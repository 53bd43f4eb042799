//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact.

use keel_engine::apply;
use keel_proto::etcdserverpb::kv_server::Kv;
use keel_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use prost::Message as _;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::Services;
use crate::status::to_status;

#[tonic::async_trait]
impl Kv for Services {
    async fn range(
        &self,
        request: GrpcRequest<RangeRequest>,
    ) -> Result<GrpcResponse<RangeResponse>, Status> {
        let token = super::auth_token(&request);
        let r = request.into_inner();
        self.check_message(r.encoded_len())?;
        apply::check_range(&r).map_err(to_status)?;
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }

    async fn put(
        &self,
        request: GrpcRequest<PutRequest>,
    ) -> Result<GrpcResponse<PutResponse>, Status> {
        let token = super::auth_token(&request);
        let r = request.into_inner();
        apply::check_put(&r).map_err(to_status)?;
        self.check_size(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        let token = super::auth_token(&request);
        let r = request.into_inner();
        apply::check_delete_range(&r).map_err(to_status)?;
        self.check_size(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }

    async fn txn(
        &self,
        request: GrpcRequest<TxnRequest>,
    ) -> Result<GrpcResponse<TxnResponse>, Status> {
        let token = super::auth_token(&request);
        let r = request.into_inner();
        apply::check_txn(&r, self.max_txn_ops).map_err(to_status)?;
        self.check_size(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }

    async fn compact(
        &self,
        request: GrpcRequest<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        let token = super::auth_token(&request);
        let r = request.into_inner();
        self.check_message(r.encoded_len())?;
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }
}
