//! Forwarding lease keepalives and TTL queries from a follower to the leader.
//!
//! Only the leader knows when leases expire, so only the leader can renew one. etcd's
//! followers forward these two requests to the leader; keel does the same over the peer port
//! (`keelpb.Peer/LeaseKeepAlive`, `/LeaseTimeToLive`), so clients may keep leases alive through
//! any member.

use std::collections::BTreeMap;
use std::sync::Mutex;

use keel_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_proto::keelpb::peer_client::PeerClient;
use keel_proto::keelpb::{LeaseKeepAliveForward, LeaseTimeToLiveForward};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::transport::CONNECT_TIMEOUT;

/// Connections to the other members' peer ports, made on first use.
pub struct Forwarder {
    cluster_id: u64,
    /// member id → peer URL.
    peers: BTreeMap<u64, String>,
    clients: Mutex<BTreeMap<u64, PeerClient<Channel>>>,
}

impl Forwarder {
    /// A forwarder to `peers` (member id → peer URL).
    pub fn new(cluster_id: u64, peers: BTreeMap<u64, String>) -> Forwarder {
        Forwarder {
            cluster_id,
            peers,
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    async fn client(&self, member: u64) -> Result<PeerClient<Channel>, Status> {
        if let Some(c) = self.lock().get(&member) {
            return Ok(c.clone());
        }
        let url = self.peers.get(&member).ok_or_else(|| {
            Status::unavailable(format!("keel: leader {member:x} is not a known peer"))
        })?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Status::unavailable(format!("keel: peer URL {url}: {e}")))?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("keel: reaching leader at {url}: {e}")))?;
        let client = PeerClient::new(channel);
        self.lock().insert(member, client.clone());
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, PeerClient<Channel>>> {
        // A panic while holding this lock leaves only a cache behind: keep using it.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a connection that failed, so the next call reconnects.
    fn failed(&self, member: u64, status: &Status) {
        if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::Unknown {
            self.lock().remove(&member);
        }
    }

    /// Renews a lease on the leader.
    pub async fn keep_alive(
        &self,
        leader: u64,
        request: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let mut client = self.client(leader).await?;
        let forward = LeaseKeepAliveForward {
            cluster_id: self.cluster_id,
            request: Some(request),
        };
        match client.lease_keep_alive(forward).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                self.failed(leader, &status);
                Err(status)
            }
        }
    }

    /// Asks the leader for a lease's remaining time to live.
    pub async fn time_to_live(
        &self,
        leader: u64,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        let mut client = self.client(leader).await?;
        let forward = LeaseTimeToLiveForward {
            cluster_id: self.cluster_id,
            request: Some(request),
        };
        match client.lease_time_to_live(forward).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                self.failed(leader, &status);
                Err(status)
            }
        }
    }
}
