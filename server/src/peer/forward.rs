//! Forwarding lease keepalives and TTL queries from a follower to the leader.
//!
//! Only the leader knows when leases expire, so only the leader can renew one. etcd's
//! followers forward these two requests to the leader; keel does the same over the peer port
//! (`keelpb.Peer/LeaseKeepAlive`, `/LeaseTimeToLive`), so clients may keep leases alive through
//! any member.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberPromoteRequest, MemberPromoteResponse,
};
use keel_proto::keelpb::peer_client::PeerClient;
use keel_proto::keelpb::{LeaseKeepAliveForward, LeaseTimeToLiveForward, MemberPromoteForward};
use tonic::transport::Channel;
use tonic::Status;

use super::link::CONNECT_TIMEOUT;
use super::transport::Transport;

/// Connections to the other members' peer ports, made on first use.
pub struct Forwarder {
    cluster_id: u64,
    /// A forwarded call gives up after this long and drops its connection, so a connection
    /// to a leader's previous incarnation cannot hang keepalives.
    timeout: Duration,
    /// Knows every member's peer URL.
    transport: Arc<Transport>,
    clients: Mutex<BTreeMap<u64, PeerClient<Channel>>>,
}

impl Forwarder {
    /// A forwarder to the peers `transport` knows.
    /// Each forwarded call is bounded by `timeout`.
    pub fn new(cluster_id: u64, transport: Arc<Transport>, timeout: Duration) -> Forwarder {
        Forwarder {
            cluster_id,
            timeout,
            transport,
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    async fn client(&self, member: u64) -> Result<PeerClient<Channel>, Status> {
        if let Some(c) = self.lock().get(&member) {
            return Ok(c.clone());
        }
        let url = self.transport.peer_url(member).ok_or_else(|| {
            Status::unavailable(format!("keel: leader {member:x} is not a known peer"))
        })?;
        let channel = self
            .transport
            .dialer()
            .connect(&url, Some(CONNECT_TIMEOUT))
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

    /// Runs a forwarded call for at most the timeout.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<tonic::Response<T>, Status> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Status::unavailable(format!(
                "keel: the leader did not answer a forwarded lease request within {:?}",
                self.timeout
            ))),
        }
    }

    /// The answer of a forwarded call; a connection that failed or timed out is forgotten, so
    /// the next call reconnects.
    fn settle<T>(
        &self,
        member: u64,
        result: Result<tonic::Response<T>, Status>,
    ) -> Result<T, Status> {
        match result {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                ) {
                    self.lock().remove(&member);
                }
                Err(status)
            }
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
        let result = self.bounded(client.lease_keep_alive(forward)).await;
        self.settle(leader, result)
    }

    /// Asks the leader to promote a learner.
    pub async fn member_promote(
        &self,
        leader: u64,
        request: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, Status> {
        let mut client = self.client(leader).await?;
        let forward = MemberPromoteForward {
            cluster_id: self.cluster_id,
            request: Some(request),
        };
        let result = self.bounded(client.member_promote(forward)).await;
        self.settle(leader, result)
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
        let result = self.bounded(client.lease_time_to_live(forward)).await;
        self.settle(leader, result)
    }
}
