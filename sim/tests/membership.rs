//! Membership under faults, in the simulator: while clients run the recorded KV workload on a
//! three-member cluster, a learner is added (with one member cut off), joins with
//! `--initial-cluster-state existing`, catches up and is promoted (with another member cut
//! off). The history must be linearizable, every member must end with the same four-member
//! table (client URLs published) and the same HashKV, and the same seed must give the same run.
#![cfg(madsim)]

use std::time::Duration;

use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{HashKvRequest, Member};
use keel_sim::cluster::Cluster;
use keel_sim::history::Entry;
use keel_sim::linearizable::check_history;
use keel_sim::membership::{add_learner, member_list, promote};
use keel_sim::run::{run_seed, SimConfig};
use keel_sim::trace::Trace;
use keel_sim::workload::{probe_serves, spawn_clients, Ctx, OP_TIMEOUT};
use madsim::runtime::Runtime;

const SEED: u64 = 11;
const CLIENTS: usize = 4;
const WORKLOAD_S: u64 = 8;
/// How long one membership change may take under the faults.
const CHANGE_BOUND: Duration = Duration::from_secs(20);

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
    let bound = tokio::time::Instant::now() + CHANGE_BOUND;
    let learner = add_learner(&cluster, &ctx, &mut || 0, &Cluster::peer_url(3), bound)
        .await
        .expect("the learner was added");
    tokio::time::sleep(Duration::from_millis(700)).await;
    isolate(&cluster, &ctx, 2, false);
    let n4 = cluster.add_member();
    ctx.event(format!("n{} starts and joins", n4 + 1));
    assert!(
        probe_serves(&cluster, n4, 10_000).await,
        "the learner never served"
    );

    isolate(&cluster, &ctx, 1, true);
    let bound = tokio::time::Instant::now() + CHANGE_BOUND;
    assert!(
        promote(&cluster, &ctx, &mut || 0, learner, bound).await,
        "never promoted"
    );
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
        let listed = member_list(&cluster, cluster.endpoint(i)).await;
        tables.push(listed.unwrap_or_default());
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

/// The membership nemesis (`keel-sim --membership`) on three-member clusters: every seed's
/// faults plus a learner added, joined and promoted; every check of a run must pass, and a
/// seed replays exactly.
#[test]
fn the_membership_nemesis_passes_a_sweep_of_seeds() {
    let config = |seed| SimConfig {
        nodes: 3,
        duration_s: 6,
        membership: true,
        ..SimConfig::new(seed)
    };
    let mut promoted = 0;
    for seed in 0..SWEEP_SEEDS {
        let report = run_seed(&config(seed));
        assert!(
            report.passed(),
            "seed {seed} failed: {:#?}\nreplay: {}",
            report.failures,
            report.config.replay_command()
        );
        let events: Vec<&String> = report.events.iter().map(|(_, e)| e).collect();
        if events.iter().any(|e| e.starts_with("member promote: ok")) {
            promoted += 1;
        }
    }
    assert!(promoted > 0, "no seed promoted its learner");
    let again = run_seed(&config(1));
    assert_eq!(again.trace_hash, run_seed(&config(1)).trace_hash);
}

/// Seeds of the sweep.
const SWEEP_SEEDS: u64 = 8;
