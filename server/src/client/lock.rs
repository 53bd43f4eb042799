//! etcd's Lock service (`v3lockpb.Lock`): etcd 3.4's `concurrency.Mutex`, run by the server.
//!
//! `Lock(name, lease)` puts `name/<lease in hex>` bound to the lease unless that key exists
//! already, then waits until every key under `name/` created before it is gone; the key's
//! create revision is then the oldest under the prefix, and it is the holder's fencing token.
//! A lease that expires or is revoked deletes its key, which releases the lock or leaves the
//! queue. `Unlock(key)` deletes the key.
//!
//! etcd's quirks are kept: lease 0 makes the server grant a 60 s lease that nobody keeps
//! alive; a wait that fails or whose caller goes away deletes the waiter's key; and, as in
//! etcd 3.4 (3.5 checks it), a waiter whose own key vanished while it waited (its lease ran
//! out) is still told it holds the lock once the keys ahead of it are gone.

use keel_proto::etcdserverpb::range_request::SortOrder;
use keel_proto::etcdserverpb::TxnRequest;
use keel_proto::v3lockpb::lock_server::Lock;
use keel_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use prost::Message as _;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::recipe::{
    by_create, created_at, first_kv, lease_key, name_prefix, put_op, range_answer, range_op,
    Cleanup, Undo,
};
use super::Services;

impl Services {
    /// `Mutex.Lock` of etcd's concurrency package, for a session on `req.lease`.
    async fn lock_mutex(&self, req: LockRequest) -> Result<LockResponse, Status> {
        let lease = self.session_lease(req.lease).await?;
        let prefix = name_prefix(&req.name);
        let key = lease_key(&prefix, lease);
        let owner = by_create(&prefix, SortOrder::Ascend, 0);
        // Join the queue, or find the key this lease already queued (reused, as etcd does).
        let txn = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![
                put_op(&key, bytes::Bytes::new(), lease),
                range_op(owner.clone()),
            ],
            failure: vec![range_op(by_key(&key)), range_op(owner)],
        };
        let queued = self.recipe_txn(txn).await?;
        let mut my_revision = queued.header.as_ref().map_or(0, |h| h.revision);
        if !queued.succeeded {
            my_revision = first_kv(&queued, 0)?.create_revision;
        }
        let oldest = range_answer(&queued, 1).and_then(|r| r.kvs.first());
        if oldest.is_none_or(|kv| kv.create_revision == my_revision) {
            return Ok(LockResponse {
                header: queued.header,
                key,
            });
        }
        let cleanup = Cleanup::arm(self, Undo::Delete(key.clone()));
        let waited = self.wait_deletes(&prefix, my_revision - 1).await;
        if waited.is_err() {
            // etcd's Mutex gives its place up when the wait fails.
            let _ = self.undo(Undo::Delete(key.clone())).await;
        }
        cleanup.disarm();
        Ok(LockResponse {
            header: waited?,
            key,
        })
    }
}

/// A range over `key` alone.
fn by_key(key: &bytes::Bytes) -> keel_proto::etcdserverpb::RangeRequest {
    keel_proto::etcdserverpb::RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Lock for Services {
    async fn lock(
        &self,
        request: GrpcRequest<LockRequest>,
    ) -> Result<GrpcResponse<LockResponse>, Status> {
        let (this, req) = self.as_caller(request);
        this.check_message(req.encoded_len())?;
        this.refuse_on_learner().await?;
        Ok(GrpcResponse::new(this.lock_mutex(req).await?))
    }

    async fn unlock(
        &self,
        request: GrpcRequest<UnlockRequest>,
    ) -> Result<GrpcResponse<UnlockResponse>, Status> {
        let (this, req) = self.as_caller(request);
        this.check_message(req.encoded_len())?;
        this.refuse_on_learner().await?;
        let deleted = this.recipe_delete(req.key).await?;
        Ok(GrpcResponse::new(UnlockResponse {
            header: deleted.header,
        }))
    }
}
