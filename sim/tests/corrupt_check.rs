//! Corruption checks under the simulator: with the `apply-wrong` bug one member applies a put
//! wrongly, and the leader's periodic HashKV comparison (`--experimental-corrupt-check-time`)
//! raises that member's `CORRUPT` alarm, after which every write is refused cluster-wide with
//! etcd's "corrupt cluster"; without the bug the same run raises nothing. Also: a seed run
//! with periodic auto-compaction on (`--auto-compaction`) passes every check.
#![cfg(madsim)]

use std::time::Duration;

use keel_engine::bugs::{Bug, Bugs};
use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType, PutRequest};
use keel_sim::cluster::Cluster;
use keel_sim::run::{run_seed, SimConfig};
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

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.to_owned().into(),
        value: "v".into(),
        ..Default::default()
    }
}

/// Writes 20 keys, waits `wait_s` simulated seconds, then returns the alarm list and the
/// error text of one more put (`None`: it succeeded).
async fn write_then_check(endpoint: String, wait_s: u64) -> (Vec<AlarmMember>, Option<String>) {
    let mut kv = connect(endpoint.clone()).await;
    for i in 0..20 {
        let mut done = false;
        for _ in 0..50 {
            let r = tokio::time::timeout(Duration::from_secs(3), kv.put(put(&format!("k{i}"))));
            if let Ok(Ok(_)) = r.await {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(done, "put k{i} never succeeded");
    }
    tokio::time::sleep(Duration::from_secs(wait_s)).await;
    let mut m = MaintenanceClient::connect(endpoint)
        .await
        .expect("maintenance client");
    let list = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    };
    let alarms = m.alarm(list).await.expect("alarm list").into_inner().alarms;
    let refused = kv
        .put(put("after"))
        .await
        .err()
        .map(|e| e.message().to_string());
    (alarms, refused)
}

fn checked_cluster(seed: u64, bugs: Bugs) -> Cluster {
    let flags = vec!["--experimental-corrupt-check-time=2s".to_string()];
    Cluster::with_flags(3, seed, bugs, flags)
}

#[madsim::test]
async fn the_periodic_check_catches_a_member_that_applied_wrongly() {
    let cluster = checked_cluster(5, Bugs::of(&[Bug::ApplyWrong]));
    let endpoint = cluster.endpoint(1);
    let (alarms, refused) = cluster
        .client_node
        .spawn(write_then_check(endpoint, 6))
        .await
        .expect("client task");
    let corrupt: Vec<&AlarmMember> = alarms
        .iter()
        .filter(|a| a.alarm == AlarmType::Corrupt as i32)
        .collect();
    assert_eq!(corrupt.len(), 1, "one member raised CORRUPT: {alarms:?}");
    assert_eq!(
        refused.as_deref(),
        Some("etcdserver: corrupt cluster"),
        "writes stop cluster-wide"
    );
}

#[madsim::test]
async fn without_the_bug_the_check_raises_nothing() {
    let cluster = checked_cluster(5, Bugs::none());
    let endpoint = cluster.endpoint(1);
    let (alarms, refused) = cluster
        .client_node
        .spawn(write_then_check(endpoint, 6))
        .await
        .expect("client task");
    assert!(alarms.is_empty(), "no alarm: {alarms:?}");
    assert_eq!(refused, None);
}

#[test]
fn seeds_with_auto_compaction_pass_every_check() {
    for seed in 0..4 {
        let report = run_seed(&SimConfig {
            nodes: 3,
            auto_compaction: Some("1s".to_string()),
            ..SimConfig::new(seed)
        });
        assert!(report.passed(), "{}", report.describe());
    }
}
