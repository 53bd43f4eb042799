//! The membership nemesis (`keel-sim --membership`): during the safety phase, at seeded times,
//! a learner is added through a random member, the spare member starts and joins with
//! `--initial-cluster-state existing`, and the learner is promoted to a voter — all while the
//! seed's other faults (partitions, crashes, pauses, clock trouble) go on.
//!
//! Membership requests are not idempotent and may time out after taking effect, so every
//! attempt is followed by a `MemberList` that decides whether it did.

use std::time::Duration;

use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::{Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::nemesis::SeedRng;
use crate::workload::{Ctx, OP_TIMEOUT};

/// The seed stream of the membership nemesis.
const STREAM: u64 = 0x4d45_4d42_4552;
/// Pause between two attempts of one membership request.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// `MemberList` through `endpoint`, from the client node.
pub async fn member_list(cluster: &Cluster, endpoint: String) -> Option<Vec<Member>> {
    let task = cluster.client_node.spawn(async move {
        let mut c = ClusterClient::connect(endpoint).await.ok()?;
        let call = c.member_list(MemberListRequest::default());
        let r = tokio::time::timeout(OP_TIMEOUT, call).await.ok()?.ok()?;
        Some(r.into_inner().members)
    });
    task.await.ok().flatten()
}

fn describe<T>(result: &Option<Result<T, tonic::Status>>) -> String {
    match result {
        Some(Ok(_)) => "ok".to_string(),
        Some(Err(status)) => status.message().to_string(),
        None => "no answer".to_string(),
    }
}

/// Adds a learner at `peer_url` through the members `via(attempt)` names, until a member
/// lists it or `until`; returns its id.
pub async fn add_learner(
    cluster: &Cluster,
    ctx: &Ctx,
    via: &mut dyn FnMut() -> usize,
    peer_url: &str,
    until: Instant,
) -> Option<u64> {
    while Instant::now() < until {
        let endpoint = cluster.endpoint(via());
        let (url, call_endpoint) = (peer_url.to_string(), endpoint.clone());
        let task = cluster.client_node.spawn(async move {
            let mut c = ClusterClient::connect(call_endpoint).await.ok()?;
            let add = c.member_add(MemberAddRequest {
                peer_ur_ls: vec![url],
                is_learner: true,
            });
            tokio::time::timeout(OP_TIMEOUT, add).await.ok()
        });
        let result = task.await.ok().flatten();
        ctx.event(format!("member add (learner): {}", describe(&result)));
        let listed = member_list(cluster, endpoint).await.unwrap_or_default();
        if let Some(m) = listed
            .iter()
            .find(|m| m.peer_ur_ls.iter().any(|u| u == peer_url))
        {
            return Some(m.id);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    None
}

/// Promotes learner `id` through the members `via()` names, until a member lists it as a
/// voter or `until`.
pub async fn promote(
    cluster: &Cluster,
    ctx: &Ctx,
    via: &mut dyn FnMut() -> usize,
    id: u64,
    until: Instant,
) -> bool {
    while Instant::now() < until {
        let endpoint = cluster.endpoint(via());
        let call_endpoint = endpoint.clone();
        let task = cluster.client_node.spawn(async move {
            let mut c = ClusterClient::connect(call_endpoint).await.ok()?;
            let call = c.member_promote(MemberPromoteRequest { id });
            tokio::time::timeout(OP_TIMEOUT, call).await.ok()
        });
        let result = task.await.ok().flatten();
        ctx.event(format!("member promote: {}", describe(&result)));
        let listed = member_list(cluster, endpoint).await.unwrap_or_default();
        if listed.iter().any(|m| m.id == id && !m.is_learner) {
            return true;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    false
}

/// The membership nemesis of one run: add the spare as a learner, start it, promote it.
/// Returns whether the spare ended a voter (then it must agree with the others at the end).
pub async fn add_and_promote_spare(
    cluster: &Cluster,
    ctx: &Ctx,
    seed: u64,
    until: Instant,
) -> bool {
    let mut rng = SeedRng::new(seed, STREAM);
    let members = cluster.members.len();
    let left_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(rng.between(0, left_ms / 3))).await;
    let mut pick = SeedRng::new(seed, STREAM + 1);
    let mut via = move || pick.index(members);
    let peer_url = Cluster::peer_url(members);
    let Some(id) = add_learner(cluster, ctx, &mut via, &peer_url, until).await else {
        ctx.event("membership: the learner was not added before the faults ended".into());
        return false;
    };
    cluster.start_spare();
    ctx.event(format!(
        "membership: n{} starts and joins as learner {id:x}",
        members + 1
    ));
    let left_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(rng.between(0, left_ms / 2))).await;
    let promoted = promote(cluster, ctx, &mut via, id, until).await;
    if !promoted {
        ctx.event("membership: the learner was not promoted before the faults ended".into());
    }
    promoted
}
