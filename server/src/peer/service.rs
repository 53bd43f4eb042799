//! Inbound peer traffic: the `keelpb.Peer` service. It checks the cluster id, hands every
//! decoded raft message and received snapshot to the driver, and serves the requests
//! followers forward to the leader (lease keepalives and TTLs, MemberPromote) and the member
//! table a joining member asks for.

use keel_engine::raft_log::decode_message;
use keel_engine::raftpb::{Message, MessageType};
use keel_proto::etcdserverpb::{
    LeaseKeepAliveResponse, LeaseTimeToLiveResponse, MemberPromoteResponse,
};
use keel_proto::keelpb::peer_server::Peer;
use keel_proto::keelpb::{
    LeaseKeepAliveForward, LeaseTimeToLiveForward, MemberPromoteForward, MembersRequest,
    MembersResponse, MessageBatch, SendAck, SnapshotChunk,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::link::LocalIdentity;
use super::receive::receive_snapshot;
use super::stats::PeerStats;
use crate::driver::Handle;
use crate::metrics::metrics;
use crate::status::to_status;

/// Inbound raft traffic: the `keelpb.Peer` service.
#[derive(Clone)]
pub struct PeerService {
    local: LocalIdentity,
    inbound: mpsc::Sender<Message>,
    /// Serves lease requests forwarded by followers, and the member table.
    handle: Option<Handle>,
    /// Counts the appends received (etcd's v2 stats), when given.
    stats: Option<(
        std::sync::Arc<PeerStats>,
        std::sync::Arc<dyn crate::clock::Clock>,
    )>,
    /// Where received snapshots are written as they arrive (`None`: gathered in memory).
    snaps: Option<keel_storage::snap::SnapDir>,
    /// Where the store of a received snapshot goes once decoded (`None`: the node decodes it).
    decoded: Option<crate::driver::DecodedSlot>,
}

impl PeerService {
    /// A service that hands every received message to `inbound` (the driver) and serves
    /// forwarded lease requests through `handle` (`None`: it refuses them).
    pub fn new(
        local: LocalIdentity,
        inbound: mpsc::Sender<Message>,
        handle: Option<Handle>,
    ) -> Self {
        PeerService {
            local,
            inbound,
            handle,
            stats: None,
            snaps: None,
            decoded: None,
        }
    }

    /// This service decoding the store of each snapshot it receives off the driver loop, at
    /// background priority, and leaving it in `decoded` for the loop before it queues the
    /// `MsgSnapshot` (see `keel_engine::node::DecodedStore`).
    pub fn with_decoded(mut self, decoded: crate::driver::DecodedSlot) -> Self {
        self.decoded = Some(decoded);
        self
    }

    /// This service writing the snapshots it receives into `snaps` as they arrive (the
    /// member's snapshot directory, which the WAL writer then publishes them from).
    pub fn with_snapshots(mut self, snaps: keel_storage::snap::SnapDir) -> Self {
        self.snaps = Some(snaps);
        self
    }

    /// This service counting the appends it receives into `stats` (wall times by `clock`).
    pub fn with_stats(
        mut self,
        stats: std::sync::Arc<PeerStats>,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
    ) -> Self {
        self.stats = Some((stats, clock));
        self
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<&Handle, Status> {
        if cluster_id != self.local.cluster_id {
            return Err(Status::failed_precondition(format!(
                "keel: request from cluster {cluster_id:x} sent to a member of cluster {:x}",
                self.local.cluster_id
            )));
        }
        self.handle
            .as_ref()
            .ok_or_else(|| Status::unavailable("keel: member is not serving lease requests"))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = request.into_inner();
        let mut received = None;
        while let Some(batch) = stream.message().await? {
            let counter = received.get_or_insert_with(|| {
                metrics()
                    .peer_received
                    .with_label_values(&[format!("{:x}", batch.from).as_str()])
            });
            counter.inc_by(batch.messages.iter().map(|m| m.len() as u64).sum());
            if batch.cluster_id != self.local.cluster_id {
                return Err(Status::failed_precondition(format!(
                    "keel: member {:x} belongs to cluster {:x}, not {:x}",
                    batch.from, batch.cluster_id, self.local.cluster_id
                )));
            }
            for bytes in &batch.messages {
                let message = decode_message(bytes)
                    .map_err(|e| Status::invalid_argument(format!("keel: {e}")))?;
                if message.to != self.local.member_id {
                    return Err(Status::invalid_argument(format!(
                        "keel: message for member {:x} sent to member {:x}",
                        message.to, self.local.member_id
                    )));
                }
                if message.get_msg_type() == MessageType::MsgHeartbeatResponse {
                    metrics().heartbeat_answered(message.to, message.from);
                }
                if let (MessageType::MsgAppend, Some((stats, clock))) =
                    (message.get_msg_type(), &self.stats)
                {
                    let since = clock.wall().duration_since(std::time::UNIX_EPOCH);
                    let now = since.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
                    stats.append_received(message.from, bytes.len(), now);
                }
                if self.inbound.send(message).await.is_err() {
                    return Err(Status::unavailable("keel: member is stopping"));
                }
            }
        }
        Ok(Response::new(SendAck {}))
    }

    async fn send_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        let message =
            receive_snapshot(self.local, request.into_inner(), self.snaps.as_ref()).await?;
        if let Some(slot) = &self.decoded {
            decode_store(slot, &message).await;
        }
        if self.inbound.send(message).await.is_err() {
            return Err(Status::unavailable("keel: member is stopping"));
        }
        Ok(Response::new(SendAck {}))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseKeepAliveForward>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let forward = request.into_inner();
        let handle = self.check_cluster(forward.cluster_id)?;
        let keepalive = forward.request.unwrap_or_default();
        handle
            .call(keepalive)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let handle = self.check_cluster(self.local.cluster_id)?;
        let table = handle.members().await.map_err(to_status)?;
        Ok(Response::new(MembersResponse {
            cluster_id: self.local.cluster_id,
            table: Some(table.to_table()),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteForward>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let forward = request.into_inner();
        let handle = self.check_cluster(forward.cluster_id)?;
        let promote = forward.request.unwrap_or_default();
        handle
            .call(promote)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveForward>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let forward = request.into_inner();
        let handle = self.check_cluster(forward.cluster_id)?;
        let query = forward.request.unwrap_or_default();
        handle
            .call(query)
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}

/// Decodes the store of `message`'s snapshot on a thread at background priority and leaves it
/// in `slot`. A snapshot that does not decode is left to the node, whose install reports it.
async fn decode_store(slot: &crate::driver::DecodedSlot, message: &Message) {
    let snapshot = message.get_snapshot().clone();
    let index = snapshot.get_metadata().index;
    let decode = move || keel_engine::node::DecodedStore::decode(&snapshot);
    match crate::background::run("keel-snapdecode", decode).await {
        Some(Ok(store)) => slot.put(store),
        Some(Err(e)) => tracing::warn!(index, error = %e, "a received snapshot does not decode"),
        None => {}
    }
}
