//! Talks to a real etcd 3.4 through our generated clients. Each check is chosen so that a wrong
//! field number in our `.proto` files would change the answer (a flag read as another flag, a
//! sort order ignored, a filter dropped). Fails, saying what to install, when `etcd` is not on
//! PATH: a run that never reached etcd has checked nothing.

#![cfg(all(feature = "grpc", not(madsim)))]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, watch_request, AlarmRequest,
    CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberListRequest, PutRequest, RangeRequest,
    RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest,
};
use keel_proto::health::health_check_response::ServingStatus;
use keel_proto::health::health_client::HealthClient;
use keel_proto::health::HealthCheckRequest;
use keel_proto::mvccpb::event::EventType;
use keel_proto::v3electionpb::election_client::ElectionClient;
use keel_proto::v3electionpb::{CampaignRequest, LeaderRequest, ResignRequest};
use keel_proto::v3lockpb::lock_client::LockClient;
use keel_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

/// A single-member etcd in a temporary directory, killed on drop.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    client_url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Looks `program` up on `PATH`, like a shell would.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Starts etcd; a missing etcd fails the test, like the differential tests in server/tests.
fn start_etcd() -> Etcd {
    let program = find_on_path("etcd").unwrap_or_else(|| {
        panic!(
            "`etcd` is not on PATH; this test needs etcd 3.4.x installed (CI installs it with \
             scripts/install-deps; locally e.g. unpack etcd-v3.4.23-linux-amd64.tar.gz into \
             /usr/local/bin)"
        )
    });
    let (client, peer) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("keel-proto-etcd-{}-{client}", std::process::id()));
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(&program)
        .args(["--name", "wire", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("wire={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Etcd {
        child,
        dir,
        client_url,
    }
}

async fn connect(url: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(url.to_string())
            .expect("url")
            .connect()
            .await
        {
            let mut kv = KvClient::new(channel.clone());
            let probe = RangeRequest {
                key: b("probe"),
                serializable: true,
                ..Default::default()
            };
            if kv.range(probe).await.is_ok() {
                return channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {url} did not come up");
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

#[tokio::test]
async fn generated_clients_speak_to_etcd() {
    let etcd = start_etcd();
    let channel = connect(&etcd.client_url).await;
    kv_checks(KvClient::new(channel.clone())).await;
    txn_checks(KvClient::new(channel.clone())).await;
    lease_checks(
        LeaseClient::new(channel.clone()),
        KvClient::new(channel.clone()),
    )
    .await;
    watch_checks(
        WatchClient::new(channel.clone()),
        KvClient::new(channel.clone()),
    )
    .await;
    lock_and_election_checks(channel.clone()).await;
    health_check(channel.clone()).await;
    maintenance_checks(channel).await;
}

async fn kv_checks(mut kv: KvClient<Channel>) {
    let first = kv.put(put("k/a", "1")).await.expect("put").into_inner();
    let first_rev = first.header.expect("header").revision;
    assert!(first_rev > 1);
    kv.put(put("k/b", "22")).await.expect("put");
    let again = PutRequest {
        prev_kv: true,
        ..put("k/a", "333")
    };
    let prev = kv
        .put(again)
        .await
        .expect("put")
        .into_inner()
        .prev_kv
        .expect("prev_kv");
    assert_eq!((prev.key, prev.value), (b("k/a"), b("1")));
    assert_eq!(
        (prev.create_revision, prev.mod_revision, prev.version),
        (first_rev, first_rev, 1)
    );

    let all = RangeRequest {
        key: b("k/"),
        range_end: b("k0"),
        ..Default::default()
    };
    let sorted = RangeRequest {
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Key as i32,
        limit: 1,
        ..all.clone()
    };
    let response = kv.range(sorted).await.expect("range").into_inner();
    assert_eq!(
        (response.kvs.len(), response.more, response.count),
        (1, true, 2)
    );
    assert_eq!(response.kvs[0].key, b("k/b"));
    assert_eq!(response.kvs[0].version, 1);

    let keys_only = RangeRequest {
        keys_only: true,
        serializable: true,
        ..all.clone()
    };
    let response = kv.range(keys_only).await.expect("range").into_inner();
    assert!(response
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && !kv.key.is_empty()));
    let count_only = RangeRequest {
        count_only: true,
        ..all.clone()
    };
    let response = kv.range(count_only).await.expect("range").into_inner();
    assert_eq!((response.kvs.len(), response.count), (0, 2));
    // Only k/a was modified after its creation: its mod revision is the newest.
    let recent = RangeRequest {
        min_mod_revision: first_rev + 2,
        ..all.clone()
    };
    let response = kv.range(recent).await.expect("range").into_inner();
    assert_eq!(
        response
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        [b("k/a")]
    );
    let old = RangeRequest {
        max_create_revision: first_rev,
        ..all.clone()
    };
    let response = kv.range(old).await.expect("range").into_inner();
    assert_eq!(
        response
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        [b("k/a")]
    );
    let past = RangeRequest {
        revision: first_rev,
        ..all.clone()
    };
    let response = kv.range(past).await.expect("range").into_inner();
    assert_eq!(
        (response.kvs.len(), response.kvs[0].value.clone()),
        (1, b("1"))
    );

    let delete = DeleteRangeRequest {
        key: b("k/b"),
        prev_kv: true,
        ..Default::default()
    };
    let response = kv.delete_range(delete).await.expect("delete").into_inner();
    assert_eq!(
        (response.deleted, response.prev_kvs[0].value.clone()),
        (1, b("22"))
    );
}

async fn txn_checks(mut kv: KvClient<Channel>) {
    kv.put(put("t/1", "x")).await.expect("put");
    kv.put(put("t/2", "x")).await.expect("put");
    // Compare over a range (range_end = 64): every key in [t/, t0) has value "x".
    let all_x = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: b("t/"),
        range_end: b("t0"),
        target_union: Some(compare::TargetUnion::Value(b("x"))),
    };
    let get = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: b("t/1"),
            ..Default::default()
        })),
    };
    let set = RequestOp {
        request: Some(request_op::Request::RequestPut(put("t/2", "y"))),
    };
    let txn = TxnRequest {
        compare: vec![all_x.clone()],
        success: vec![set],
        failure: vec![get],
    };
    let response = kv.txn(txn.clone()).await.expect("txn").into_inner();
    assert!(response.succeeded);
    assert!(matches!(
        response.responses[0].response,
        Some(response_op::Response::ResponsePut(_))
    ));
    // Now t/2 holds "y": the same range compare fails and the failure branch reads t/1.
    let response = kv.txn(txn).await.expect("txn").into_inner();
    assert!(!response.succeeded);
    let Some(response_op::Response::ResponseRange(range)) = &response.responses[0].response else {
        panic!("failure branch should answer with a range response");
    };
    assert_eq!(range.kvs[0].value, b("x"));
    // A version compare on a missing key (version 0).
    let absent = Compare {
        key: b("t/missing"),
        target: compare::CompareTarget::Version as i32,
        target_union: Some(compare::TargetUnion::Version(0)),
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![absent],
        ..Default::default()
    };
    assert!(kv.txn(txn).await.expect("txn").into_inner().succeeded);
}

async fn lease_checks(mut lease: LeaseClient<Channel>, mut kv: KvClient<Channel>) {
    let grant = LeaseGrantRequest {
        ttl: 60,
        id: 0x1234,
    };
    let granted = lease.lease_grant(grant).await.expect("grant").into_inner();
    assert_eq!((granted.id, granted.ttl), (0x1234, 60));
    let attached = PutRequest {
        lease: granted.id,
        ..put("l/key", "v")
    };
    kv.put(attached).await.expect("put");
    let ask = LeaseTimeToLiveRequest {
        id: granted.id,
        keys: true,
    };
    let ttl = lease
        .lease_time_to_live(ask)
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys.clone()), (60, vec![b("l/key")]));
    assert!(ttl.ttl > 0 && ttl.ttl <= 60);
    let range = RangeRequest {
        key: b("l/key"),
        ..Default::default()
    };
    let stored = kv.range(range.clone()).await.expect("range").into_inner();
    assert_eq!(stored.kvs[0].lease, granted.id);
    lease
        .lease_revoke(LeaseRevokeRequest { id: granted.id })
        .await
        .expect("revoke");
    assert!(kv
        .range(range)
        .await
        .expect("range")
        .into_inner()
        .kvs
        .is_empty());
}

async fn watch_checks(mut watch: WatchClient<Channel>, mut kv: KvClient<Channel>) {
    let start = kv.put(put("w/a", "1")).await.expect("put").into_inner();
    let start_rev = start.header.expect("header").revision;
    kv.delete_range(DeleteRangeRequest {
        key: b("w/a"),
        ..Default::default()
    })
    .await
    .expect("delete");
    let create = WatchCreateRequest {
        key: b("w/"),
        range_end: b("w0"),
        start_revision: start_rev,
        prev_kv: true,
        watch_id: 7,
        ..Default::default()
    };
    let request = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    };
    let mut stream = watch
        .watch(tokio_stream::iter([request]))
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    while events.len() < 2 {
        let response = stream
            .message()
            .await
            .expect("watch stream")
            .expect("not closed");
        assert_eq!(response.watch_id, 7);
        events.extend(response.events);
    }
    assert_eq!(events[0].r#type, EventType::Put as i32);
    assert_eq!(events[0].kv.as_ref().expect("kv").value, b("1"));
    assert_eq!(events[1].r#type, EventType::Delete as i32);
    assert_eq!(events[1].prev_kv.as_ref().expect("prev_kv").value, b("1"));
}

async fn maintenance_checks(channel: Channel) {
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut cluster = ClusterClient::new(channel.clone());
    let status = maintenance
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let header = status.header.expect("header");
    assert!(status.version.starts_with("3."));
    assert_eq!(status.leader, header.member_id);
    assert!(status.raft_index > 0 && status.raft_term > 0 && status.db_size > 0);
    let members = cluster
        .member_list(MemberListRequest::default())
        .await
        .expect("members");
    let members = members.into_inner().members;
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].id, members[0].name.as_str()),
        (header.member_id, "wire")
    );
    assert_eq!(members[0].client_ur_ls.len(), 1);
    let alarms = maintenance
        .alarm(AlarmRequest::default())
        .await
        .expect("alarm")
        .into_inner();
    assert!(alarms.alarms.is_empty());
    let compact = CompactionRequest {
        revision: header.revision,
        physical: true,
    };
    let mut kv = KvClient::new(channel);
    kv.compact(compact).await.expect("compact");
    let hash = maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect("hash")
        .into_inner();
    assert_eq!(hash.compact_revision, header.revision);
    assert_ne!(hash.hash, 0);
}

async fn lock_and_election_checks(channel: Channel) {
    let mut lease = LeaseClient::new(channel.clone());
    let grant = LeaseGrantRequest { ttl: 60, id: 0 };
    let lease_id = lease
        .lease_grant(grant)
        .await
        .expect("grant")
        .into_inner()
        .id;

    let mut lock = LockClient::new(channel.clone());
    let request = LockRequest {
        name: b("mutex"),
        lease: lease_id,
    };
    let held = lock.lock(request).await.expect("lock").into_inner();
    assert!(held.key.starts_with(b"mutex/"), "lock key {:?}", held.key);
    lock.unlock(UnlockRequest { key: held.key })
        .await
        .expect("unlock");

    let mut election = ElectionClient::new(channel);
    let campaign = CampaignRequest {
        name: b("vote"),
        lease: lease_id,
        value: b("me"),
    };
    let leader = election
        .campaign(campaign)
        .await
        .expect("campaign")
        .into_inner();
    let leader = leader.leader.expect("leader key");
    assert_eq!((leader.name.clone(), leader.lease), (b("vote"), lease_id));
    let current = election
        .leader(LeaderRequest { name: b("vote") })
        .await
        .expect("leader");
    let kv = current.into_inner().kv.expect("leader kv");
    assert_eq!((kv.key, kv.value), (leader.key.clone(), b("me")));
    election
        .resign(ResignRequest {
            leader: Some(leader),
        })
        .await
        .expect("resign");
}

async fn health_check(channel: Channel) {
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = health.check(request).await.expect("health").into_inner();
    assert_eq!(response.status, ServingStatus::Serving as i32);
}
