//! The `member` nemesis's calls: find a member's id, remove it through another member, add
//! it back (same name and peer URL, a fresh data directory) through another member. Each call
//! is retried against every other member until one answers or the bound passes.
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::{MemberAddRequest, MemberListRequest, MemberRemoveRequest};

use super::member::{channel, peer_url};

/// How long the nemesis keeps trying one membership change.
pub const BOUND: Duration = Duration::from_secs(20);
const CALL: Duration = Duration::from_secs(2);

async fn cluster(j: usize) -> Option<ClusterClient<tonic::transport::Channel>> {
    Some(ClusterClient::new(channel(j, CALL).ok()?))
}

/// The id of the member whose peer URL is member `i`'s, as any member other than `i` lists it.
pub async fn member_id(n: usize, i: usize) -> Option<u64> {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        for j in (0..n).filter(|j| *j != i) {
            let Some(mut c) = cluster(j).await else {
                continue;
            };
            let call = c.member_list(MemberListRequest::default());
            if let Ok(Ok(r)) = tokio::time::timeout(CALL, call).await {
                let url = peer_url(i);
                let found = r
                    .into_inner()
                    .members
                    .into_iter()
                    .find(|m| m.peer_ur_ls.contains(&url));
                return found.map(|m| m.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Removes member `id` through a member other than `i`; true once one accepted it.
pub async fn remove(n: usize, i: usize, id: u64) -> bool {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        for j in (0..n).filter(|j| *j != i) {
            let Some(mut c) = cluster(j).await else {
                continue;
            };
            let call = c.member_remove(MemberRemoveRequest { id });
            match tokio::time::timeout(CALL, call).await {
                Ok(Ok(_)) => return true,
                Ok(Err(s)) if s.message().contains("member not found") => return true,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Adds member `i`'s peer URL back through another member; true once one accepted it (or it
/// is already a member).
pub async fn add(n: usize, i: usize) -> bool {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        for j in (0..n).filter(|j| *j != i) {
            let Some(mut c) = cluster(j).await else {
                continue;
            };
            let call = c.member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url(i)],
                is_learner: false,
            });
            match tokio::time::timeout(CALL, call).await {
                Ok(Ok(_)) => return true,
                Ok(Err(s)) if s.message().contains("Peer URLs already exists") => return true,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
