//! Snapshots in the simulator: a member frozen while the others apply hundreds of entries
//! (and compact their logs behind snapshots) catches up by installing the leader's snapshot
//! — streamed in chunks over the peer transport — and ends with the same state.
#![cfg(madsim)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest};
use keel_sim::cluster::{Cluster, SNAPSHOT_COUNT};
use keel_storage::{Disk, Wal, WalOptions};
use tonic::transport::Channel;

const WRITES: usize = 8 * SNAPSHOT_COUNT as usize;

async fn connect(endpoint: &str) -> KvClient<Channel> {
    for _ in 0..200 {
        if let Ok(c) = KvClient::connect(endpoint.to_owned()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{endpoint} never accepted a connection");
}

async fn put_retrying(kv: &mut KvClient<Channel>, key: String, value: String) {
    let req = PutRequest {
        key: key.clone().into(),
        value: value.into(),
        ..Default::default()
    };
    for _ in 0..50 {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), kv.put(req.clone())).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("put {key} never succeeded");
}

/// A linearizable count of every key, through `endpoint`.
async fn count(endpoint: &str) -> i64 {
    let mut kv = connect(endpoint).await;
    let req = RangeRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        count_only: true,
        ..Default::default()
    };
    for _ in 0..100 {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(3), kv.range(req.clone())).await
        {
            return r.into_inner().count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{endpoint} never answered a read");
}

async fn hash_kv(endpoint: &str) -> (u32, i64) {
    let mut m = MaintenanceClient::connect(endpoint.to_owned())
        .await
        .expect("connects");
    let r = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect("hash")
        .into_inner();
    (r.hash, r.header.map_or(0, |h| h.revision))
}

#[madsim::test]
async fn a_frozen_member_catches_up_by_installing_the_leaders_snapshot() {
    let cluster = Cluster::new(3, 11);
    let endpoints: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let e = endpoints.clone();
    cluster
        .client_node
        .spawn(async move { put_retrying(&mut connect(&e[0]).await, "first".into(), "x".into()).await })
        .await
        .expect("first write");

    // Member 2 freezes; the other two go on, snapshot and compact their logs.
    cluster.pause(2);
    let e = endpoints.clone();
    cluster
        .client_node
        .spawn(async move {
            let mut kv = connect(&e[0]).await;
            for i in 0..WRITES {
                put_retrying(&mut kv, format!("k{}", i % 97), format!("v{i}")).await;
            }
        })
        .await
        .expect("writes");
    cluster.resume(2);

    // It catches up: same keys, same hash as the others.
    let e = endpoints.clone();
    let (counts, hashes) = cluster
        .client_node
        .spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut counts = Vec::new();
            let mut hashes = Vec::new();
            for endpoint in &e {
                counts.push(count(endpoint).await);
                hashes.push(hash_kv(endpoint).await);
            }
            (counts, hashes)
        })
        .await
        .expect("catch-up");
    assert_eq!(counts, vec![98, 98, 98], "every member has every key");
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "every member has the same state: {hashes:?}"
    );

    // The proof that it went through a snapshot: its WAL was replaced by one (the WAL records
    // a snapshot mark only when a leader's snapshot replaces the log), and the snapshot file
    // it saved is there.
    cluster.kill(2);
    let disk: Arc<dyn Disk> = Arc::new(cluster.members[2].disk.clone());
    let (_, recovered) = Wal::open(
        Arc::clone(&disk),
        Path::new("/data/member/wal"),
        WalOptions::default(),
    )
    .expect("WAL opens");
    let mark = recovered.snapshot.expect("the member installed a snapshot");
    assert!(mark.index > SNAPSHOT_COUNT, "installed at {}", mark.index);
    let snaps = disk
        .list_dir(Path::new("/data/member/snap"))
        .expect("snap dir");
    assert!(
        snaps
            .iter()
            .any(|n| n.ends_with(&format!("{:016x}.snap", mark.index))),
        "{snaps:?}"
    );
}
