//! Membership under faults, in the simulator: while clients run the recorded KV workload on a
//! three-member cluster, a learner is added (with one member cut off), joins with
//! `--initial-cluster-state existing`, catches up and is promoted (with another member cut
//! off). The history must be linearizable, every member must end with the same four-member
//! table (client URLs published) and the same HashKV, and the same seed must give the same run.
#![cfg(madsim)]

use std::time::Duration;

use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{
    HashKvRequest, Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest,
};
use keel_sim::cluster::Cluster;
use keel_sim::history::Entry;
use keel_sim::linearizable::check_history;
use keel_sim::trace::Trace;
use keel_sim::workload::{probe_serves, spawn_clients, Ctx, OP_TIMEOUT};
use madsim::runtime::Runtime;

const SEED: u64 = 11;
const CLIENTS: usize = 4;
const WORKLOAD_S: u64 = 8;
/// Attempts of one membership request (each bounded by [`OP_TIMEOUT`] plus a pause).
const ATTEMPTS_MAX: usize = 60;

/// What one run leaves behind for the checks outside the runtime.
struct Outcome {
    trace_hash: u64,
    entries: Vec<Entry>,
    events: Vec<(u64, String)>,
    tables: Vec<Vec<Member>>,
    hashes: Vec<Option<u32>>,
}

/// Cuts member `i` off from every other member (both directions), or heals that cut.
fn isolate(cluster: &Cluster, ctx: &Ctx, i: usize, cut: bool) {
    let net = cluster.net();
    let nodes = cluster.net_nodes();
    for (j, &other) in nodes.iter().enumerate().take(cluster.members.len()) {
        if j == i {
            continue;
        }
        if cut {
            net.clog_link(nodes[i], other);
            net.clog_link(other, nodes[i]);
        } else {
            net.unclog_link(nodes[i], other);
            net.unclog_link(other, nodes[i]);
        }
    }
    ctx.event(format!(
        "{} n{}",
        if cut { "isolate" } else { "heal" },
        i + 1
    ));
}

async fn member_list(cluster: &Cluster, i: usize) -> Option<Vec<Member>> {
    let endpoint = cluster.endpoint(i);
    let task = cluster.client_node.spawn(async move {
        let mut c = ClusterClient::connect(endpoint).await.ok()?;
        let call = c.member_list(MemberListRequest::default());
        let r = tokio::time::timeout(OP_TIMEOUT, call).await.ok()?.ok()?;
        Some(r.into_inner().members)
    });
    task.await.ok().flatten()
}

/// Adds a learner at `peer_url` through member `via`, retrying; a retry that finds the URL
/// taken means an earlier attempt went through.
async fn add_learner(cluster: &Cluster, ctx: &Ctx, via: usize, peer_url: String) -> u64 {
    for _ in 0..ATTEMPTS_MAX {
        let endpoint = cluster.endpoint(via);
        let url = peer_url.clone();
        let task = cluster.client_node.spawn(async move {
            let mut c = ClusterClient::connect(endpoint).await.ok()?;
            let add = c.member_add(MemberAddRequest {
                peer_ur_ls: vec![url],
                is_learner: true,
            });
            tokio::time::timeout(OP_TIMEOUT, add).await.ok()
        });
        let result = task.await.ok().flatten();
        ctx.event(format!("member add (learner): {}", describe(&result)));
        let listed = member_list(cluster, via).await.unwrap_or_default();
        if let Some(m) = listed.iter().find(|m| m.peer_ur_ls.contains(&peer_url)) {
            return m.id;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the learner was never added");
}

/// Promotes `id` through member `via`, retrying until the table shows a voter.
async fn promote(cluster: &Cluster, ctx: &Ctx, via: usize, id: u64) {
    for _ in 0..ATTEMPTS_MAX {
        let endpoint = cluster.endpoint(via);
        let task = cluster.client_node.spawn(async move {
            let mut c = ClusterClient::connect(endpoint).await.ok()?;
            let call = c.member_promote(MemberPromoteRequest { id });
            tokio::time::timeout(OP_TIMEOUT, call).await.ok()
        });
        let result = task.await.ok().flatten();
        ctx.event(format!("member promote: {}", describe(&result)));
        let listed = member_list(cluster, via).await.unwrap_or_default();
        if listed.iter().any(|m| m.id == id && !m.is_learner) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the learner was never promoted");
}

fn describe<T>(result: &Option<Result<T, tonic::Status>>) -> String {
    match result {
        Some(Ok(_)) => "ok".to_string(),
        Some(Err(status)) => status.message().to_string(),
        None => "no answer".to_string(),
    }
}

async fn hash_kv(cluster: &Cluster, i: usize) -> Option<u32> {
    let endpoint = cluster.endpoint(i);
    let task = cluster.client_node.spawn(async move {
        let mut m = MaintenanceClient::connect(endpoint).await.ok()?;
        let call = m.hash_kv(HashKvRequest { revision: 0 });
        Some(
            tokio::time::timeout(OP_TIMEOUT, call)
                .await
                .ok()?
                .ok()?
                .into_inner()
                .hash,
        )
    });
    task.await.ok().flatten()
}

async fn scenario() -> Outcome {
    let trace = Trace::new();
    let ctx = Ctx::new(trace.clone());
    let mut cluster = Cluster::new(3, SEED);
    for i in 0..3 {
        assert!(
            probe_serves(&cluster, i, 10_000).await,
            "n{} never served",
            i + 1
        );
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(WORKLOAD_S);
    let clients = spawn_clients(&cluster, &ctx, CLIENTS, SEED, until);
    tokio::time::sleep(Duration::from_millis(500)).await;

    isolate(&cluster, &ctx, 2, true);
    let learner = add_learner(&cluster, &ctx, 0, Cluster::peer_url(3)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    isolate(&cluster, &ctx, 2, false);
    let n4 = cluster.add_member();
    ctx.event(format!("n{} starts and joins", n4 + 1));
    assert!(
        probe_serves(&cluster, n4, 10_000).await,
        "the learner never served"
    );

    isolate(&cluster, &ctx, 1, true);
    promote(&cluster, &ctx, 0, learner).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    isolate(&cluster, &ctx, 1, false);
    for c in clients {
        let _ = c.await;
    }

    // Settled: every member shows the same table and (with writes stopped) the same data.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut tables = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..cluster.members.len() {
        tables.push(member_list(&cluster, i).await.unwrap_or_default());
        hashes.push(hash_kv(&cluster, i).await);
    }
    Outcome {
        trace_hash: trace.hash(),
        entries: ctx.history.entries(),
        events: ctx.events(),
        tables,
        hashes,
    }
}

fn run(seed: u64) -> Outcome {
    let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.set_time_limit(Duration::from_secs(180));
    rt.block_on(scenario())
}

#[test]
fn a_learner_added_and_promoted_under_partitions_keeps_the_history_linearizable() {
    let outcome = run(SEED);
    eprintln!(
        "{} operations; events: {:#?}",
        outcome.entries.len(),
        outcome.events
    );
    assert!(
        outcome.entries.len() > 50,
        "too few operations: {}",
        outcome.entries.len()
    );
    if let Some(f) = check_history(&outcome.entries, &outcome.events) {
        panic!("not linearizable: {} {:#?}", f.what, f.evidence);
    }
    let first = &outcome.tables[0];
    assert_eq!(first.len(), 4, "{first:?}");
    assert!(
        first
            .iter()
            .all(|m| !m.is_learner && !m.client_ur_ls.is_empty()),
        "{first:?}"
    );
    assert!(
        outcome.tables.iter().all(|t| t == first),
        "{:?}",
        outcome.tables
    );
    assert!(outcome.hashes[0].is_some());
    assert!(
        outcome.hashes.iter().all(|h| *h == outcome.hashes[0]),
        "{:?}",
        outcome.hashes
    );

    // Same seed, same run.
    let again = run(SEED);
    assert_eq!(
        again.trace_hash, outcome.trace_hash,
        "the same seed gave another run"
    );
    assert_eq!(again.events, outcome.events);
}
