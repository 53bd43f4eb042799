//! A three-member cluster in the simulator: writes through any member, linearizable reads
//! everywhere, a member's power cut during writes, and every acknowledged write on every member
//! afterwards.
#![cfg(madsim)]

use std::time::Duration;

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{PutRequest, RangeRequest};
use keel_sim::cluster::Cluster;
use tonic::transport::Channel;

async fn connect(endpoint: String) -> KvClient<Channel> {
    for _ in 0..200 {
        if let Ok(c) = KvClient::connect(endpoint.clone()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{endpoint} never accepted a connection");
}

/// Puts `key` through `kv`, retrying (bounded) while the cluster elects a leader.
async fn put_retrying(kv: &mut KvClient<Channel>, key: &str, value: &str) -> bool {
    for _ in 0..50 {
        let req = PutRequest {
            key: key.to_owned().into(),
            value: value.to_owned().into(),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(3), kv.put(req)).await {
            Ok(Ok(_)) => return true,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    false
}

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Option<Vec<u8>> {
    let req = RangeRequest {
        key: key.to_owned().into(),
        ..Default::default()
    };
    for _ in 0..50 {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(3), kv.range(req.clone())).await
        {
            return r.into_inner().kvs.first().map(|kv| kv.value.to_vec());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("member never answered a linearizable read of {key}");
}

#[madsim::test]
async fn three_members_replicate_and_survive_a_members_power_cut() {
    let cluster = Cluster::new(3, 3);
    let endpoints: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();

    // Phase 1: writes through every member, read back from every member.
    let e = endpoints.clone();
    let acked = cluster
        .client_node
        .spawn(async move {
            let mut acked = Vec::new();
            for i in 0..30 {
                let mut kv = connect(e[i % 3].clone()).await;
                let (key, value) = (format!("k{i}"), format!("v{i}"));
                assert!(
                    put_retrying(&mut kv, &key, &value).await,
                    "put {key} never succeeded"
                );
                acked.push((key, value));
            }
            for endpoint in &e {
                let mut kv = connect(endpoint.clone()).await;
                for (key, value) in &acked {
                    assert_eq!(get(&mut kv, key).await.as_deref(), Some(value.as_bytes()));
                }
            }
            acked
        })
        .await
        .expect("phase 1");

    // Phase 2: member 0 loses power (unsynced writes gone), the others keep serving.
    cluster.crash(0, 99);
    let e = endpoints.clone();
    let mut more = cluster
        .client_node
        .spawn(async move {
            let mut kv = connect(e[1].clone()).await;
            let mut acked = Vec::new();
            for i in 30..50 {
                let (key, value) = (format!("k{i}"), format!("v{i}"));
                if put_retrying(&mut kv, &key, &value).await {
                    acked.push((key, value));
                }
            }
            acked
        })
        .await
        .expect("phase 2");
    assert!(
        !more.is_empty(),
        "two of three members must keep accepting writes"
    );
    more.extend(acked);

    // Phase 3: the restarted member catches up; every acknowledged write is on every member.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let e = endpoints;
    cluster
        .client_node
        .spawn(async move {
            for endpoint in &e {
                let mut kv = connect(endpoint.clone()).await;
                for (key, value) in &more {
                    let got = get(&mut kv, key).await;
                    assert_eq!(
                        got.as_deref(),
                        Some(value.as_bytes()),
                        "{key} on {endpoint}"
                    );
                }
            }
        })
        .await
        .expect("phase 3");
}
