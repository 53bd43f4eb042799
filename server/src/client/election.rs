//! etcd's Election service (`v3electionpb.Election`): etcd 3.4's `concurrency.Election`, run
//! by the server.
//!
//! A candidate's key is `name/<lease in hex>`, bound to its lease; the leader is the key
//! under `name/` with the oldest create revision, and that revision is its term's fencing
//! token (`LeaderKey.rev`). `Campaign` queues the key and waits until every older one is
//! gone; `Proclaim` rewrites the leader's value while its key still has that create revision
//! (else `election: not leader`); `Resign` deletes the key under the same condition; `Leader`
//! reads the oldest key (`election: no leader` when there is none); `Observe` streams the
//! leader's value, each new value, and each later leader as the previous one's key goes.
//!
//! etcd's quirks are kept: lease 0 in `Campaign`, `Proclaim` or `Resign` makes the server
//! grant a 60 s lease nobody keeps alive (a `Proclaim` with lease 0 moves the leader's key
//! onto it); a campaign whose caller goes away resigns, one that fails otherwise leaves its
//! key; `Observe` ends without an error when it can no longer follow (a failed read, a
//! compacted watch). etcd 3.4 has no `election: session expired` in its server (only
//! `etcdctl elect` prints `elect: session expired`), so keel never answers it.

use std::collections::VecDeque;

use bytes::Bytes;
use keel_proto::etcdserverpb::range_request::SortOrder;
use keel_proto::etcdserverpb::{RangeRequest, ResponseHeader, TxnRequest, WatchCreateRequest};
use keel_proto::mvccpb::event::EventType;
use keel_proto::mvccpb::KeyValue;
use keel_proto::v3electionpb::election_server::Election;
use keel_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use prost::Message as _;
use tonic::codegen::BoxStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::recipe::{
    by_create, created_at, first_kv, lease_key, name_prefix, prefix_end, put_op, range_op, Cleanup,
    KeyWatch, Undo,
};
use super::Services;

/// `Proclaim` or `Resign` of a key that is not (or no longer) the one elected.
pub const NOT_LEADER: &str = "election: not leader";
/// `Leader` of an election nobody holds.
pub const NO_LEADER: &str = "election: no leader";
/// `Proclaim` or `Resign` without a `leader`.
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

impl Services {
    /// `Election.Campaign` of etcd's concurrency package, for a session on `req.lease`.
    async fn campaign_as(&self, req: CampaignRequest) -> Result<CampaignResponse, Status> {
        let lease = self.session_lease(req.lease).await?;
        let prefix = name_prefix(&req.name);
        let key = lease_key(&prefix, lease);
        let txn = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![put_op(&key, req.value.clone(), lease)],
            failure: vec![range_op(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })],
        };
        let queued = self.recipe_txn(txn).await?;
        let mut rev = queued.header.as_ref().map_or(0, |h| h.revision);
        if !queued.succeeded {
            // This lease campaigns already: resume its key, proclaiming the new value.
            let kv = first_kv(&queued, 0)?;
            rev = kv.create_revision;
            if kv.value != req.value {
                if let Err(e) = self.proclaim_as(&key, rev, lease, req.value.clone()).await {
                    let _ = self.undo(Undo::Resign(key, rev)).await;
                    return Err(e);
                }
            }
        }
        // Only a campaign whose caller goes away resigns; a failed wait leaves the key.
        let cleanup = Cleanup::arm(self, Undo::Resign(key.clone(), rev));
        let waited = self.wait_deletes(&prefix, rev - 1).await;
        cleanup.disarm();
        waited?;
        Ok(CampaignResponse {
            header: queued.header,
            leader: Some(LeaderKey {
                name: req.name,
                key,
                rev,
                lease,
            }),
        })
    }

    /// Puts `value` at the leader's `key` bound to `lease` while its create revision is still
    /// `rev`.
    async fn proclaim_as(
        &self,
        key: &Bytes,
        rev: i64,
        lease: i64,
        value: Bytes,
    ) -> Result<Option<ResponseHeader>, Status> {
        let txn = TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![put_op(key, value, lease)],
            failure: Vec::new(),
        };
        let proclaimed = self.recipe_txn(txn).await?;
        if !proclaimed.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(proclaimed.header)
    }

    /// The oldest key under `prefix`, with the read's header.
    async fn leader_of(
        &self,
        prefix: &Bytes,
    ) -> Result<Option<(ResponseHeader, KeyValue)>, Status> {
        let found = self
            .recipe_range(by_create(prefix, SortOrder::Ascend, 0))
            .await?;
        let header = found.header.unwrap_or_default();
        Ok(found.kvs.into_iter().next().map(|kv| (header, kv)))
    }
}

#[tonic::async_trait]
impl Election for Services {
    async fn campaign(
        &self,
        request: GrpcRequest<CampaignRequest>,
    ) -> Result<GrpcResponse<CampaignResponse>, Status> {
        let (this, req) = self.as_caller(request);
        this.check_message(req.encoded_len())?;
        this.refuse_on_learner().await?;
        Ok(GrpcResponse::new(this.campaign_as(req).await?))
    }

    async fn proclaim(
        &self,
        request: GrpcRequest<ProclaimRequest>,
    ) -> Result<GrpcResponse<ProclaimResponse>, Status> {
        let (this, req) = self.as_caller(request);
        this.check_message(req.encoded_len())?;
        this.refuse_on_learner().await?;
        let leader = req
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let lease = this.session_lease(leader.lease).await?;
        let header = this
            .proclaim_as(&leader.key, leader.rev, lease, req.value)
            .await?;
        Ok(GrpcResponse::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        request: GrpcRequest<LeaderRequest>,
    ) -> Result<GrpcResponse<LeaderResponse>, Status> {
        let (this, req) = self.as_caller(request);
        this.check_message(req.encoded_len())?;
        this.refuse_on_learner().await?;
        let prefix = name_prefix(&req.name);
        let (header, kv) = this
            .leader_of(&prefix)
            .await?
            .ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(GrpcResponse::new(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }))
    }

    async fn observe(
        &self,
        request: GrpcRequest<LeaderRequest>,
    ) -> Result<GrpcResponse<BoxStream<LeaderResponse>>, Status> {
        let (this, req) = self.as_caller(request);
        this.check_message(req.encoded_len())?;
        this.refuse_on_learner().await?;
        let observer = Observer {
            services: this.clone(),
            prefix: name_prefix(&req.name),
            pending: VecDeque::new(),
            following: None,
            ended: false,
        };
        // The stream is the observer: when the client goes, tonic drops both, and the watch.
        let stream = futures::stream::unfold(observer, |mut observer| async move {
            let next = observer.next().await?;
            Some((Ok(next), observer))
        });
        Ok(GrpcResponse::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        request: GrpcRequest<ResignRequest>,
    ) -> Result<GrpcResponse<ResignResponse>, Status> {
        let (this, req) = self.as_caller(request);
        this.check_message(req.encoded_len())?;
        this.refuse_on_learner().await?;
        let leader = req
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        // etcd opens a session for the request's lease even though Resign never uses it.
        this.session_lease(leader.lease).await?;
        let header = this.undo(Undo::Resign(leader.key, leader.rev)).await?;
        Ok(GrpcResponse::new(ResignResponse { header }))
    }
}

/// One `Observe` stream: etcd's `Election.observe` loop, stepped as the client reads.
struct Observer {
    services: Services,
    prefix: Bytes,
    /// Answers found and not yet sent.
    pending: VecDeque<LeaderResponse>,
    /// The watch on the current leader's key, from just after the revision last sent.
    following: Option<KeyWatch>,
    /// Set when the loop can no longer follow: the stream ends (without an error, as etcd's).
    ended: bool,
}

impl Observer {
    async fn next(&mut self) -> Option<LeaderResponse> {
        loop {
            if let Some(response) = self.pending.pop_front() {
                return Some(response);
            }
            if self.ended {
                return None;
            }
            let step = match self.following.is_some() {
                false => self.find_leader().await,
                true => self.follow().await,
            };
            if let Err(e) = step {
                tracing::debug!(error = %e.message(), "an Observe stream ends");
                self.ended = true;
            }
        }
    }

    /// The current leader, or with none the first key put under the prefix from now on;
    /// queued, and its key watched from there.
    async fn find_leader(&mut self) -> Result<(), Status> {
        let found = self
            .services
            .recipe_range(by_create(&self.prefix, SortOrder::Ascend, 0))
            .await?;
        let header = found.header.unwrap_or_default();
        let (header, kv) = match found.kvs.into_iter().next() {
            Some(kv) => (header, kv),
            None => self.first_put(header.revision).await?,
        };
        let watch = WatchCreateRequest {
            key: kv.key.clone(),
            start_revision: header.revision + 1,
            ..Default::default()
        };
        self.following = Some(KeyWatch::open(&self.services.handle, watch).await?);
        self.pending.push_back(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        });
        Ok(())
    }

    /// Waits for the first put under the prefix after a read at revision `from` found none;
    /// its header says the put's revision, as etcd's does.
    async fn first_put(&self, from: i64) -> Result<(ResponseHeader, KeyValue), Status> {
        let watch = WatchCreateRequest {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            start_revision: from,
            ..Default::default()
        };
        let mut watch = KeyWatch::open(&self.services.handle, watch).await?;
        loop {
            let response = watch.next().await?;
            let put = response
                .events
                .into_iter()
                .find(|e| e.r#type == EventType::Put as i32)
                .and_then(|e| e.kv);
            if let Some(kv) = put {
                let mut header = response.header.unwrap_or_default();
                header.revision = kv.mod_revision;
                return Ok((header, kv));
            }
        }
    }

    /// Queues the leader key's next changes; a delete ends this leader's turn.
    async fn follow(&mut self) -> Result<(), Status> {
        let Some(watch) = self.following.as_mut() else {
            return Ok(());
        };
        let response = watch.next().await?;
        for event in response.events {
            if event.r#type == EventType::Delete as i32 {
                self.following = None;
                break;
            }
            self.pending.push_back(LeaderResponse {
                header: response.header,
                kv: event.kv,
            });
        }
        Ok(())
    }
}
