//! Deterministic simulation tests of a single keel member (the foundation issue's floor):
//! KV operations through gRPC, crash recovery from a lossy disk, and same seed ⇒ same trace.
#![cfg(madsim)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::request_op::Request as Op;
use keel_proto::etcdserverpb::response_op::Response as OpResp;
use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_sim::cluster::Cluster;
use keel_sim::trace::{fnv1a, Trace};
use madsim::runtime::Runtime;
use tonic::transport::Channel;

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.to_owned().into(),
        value: value.to_owned().into(),
        ..Default::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.to_owned().into(),
        ..Default::default()
    }
}

async fn value_of(kv: &mut KvClient<Channel>, key: &str) -> Option<String> {
    let resp = kv.range(get(key)).await.expect("range").into_inner();
    resp.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Put, get, txn (both branches), delete, compact, historical reads: each answer checked.
async fn kv_workload(mut kv: KvClient<Channel>, trace: Trace) {
    let r = kv.put(put("a", "1")).await.expect("put a").into_inner();
    assert_eq!(
        r.header.expect("header").revision,
        2,
        "first write of an empty store is rev 2"
    );
    kv.put(put("b", "2")).await.expect("put b");
    let r = kv
        .put(PutRequest {
            prev_kv: true,
            ..put("a", "3")
        })
        .await
        .expect("put")
        .into_inner();
    assert_eq!(r.prev_kv.expect("prev kv").value.as_ref(), b"1");
    assert_eq!(value_of(&mut kv, "a").await.as_deref(), Some("3"));
    trace.record("put/get ok");

    // Txn: compare a's value, then swap in one revision.
    let cas = |expect: &str, new: &str| TxnRequest {
        compare: vec![Compare {
            key: "a".to_owned().into(),
            target: CompareTarget::Value as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Value(expect.to_owned().into())),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestPut(put("a", new))),
        }],
        failure: vec![RequestOp {
            request: Some(Op::RequestRange(get("a"))),
        }],
    };
    let t = kv.txn(cas("3", "4")).await.expect("txn").into_inner();
    assert!(t.succeeded);
    let rev_after_cas = t.header.expect("header").revision;
    let t = kv.txn(cas("3", "5")).await.expect("txn").into_inner();
    assert!(!t.succeeded, "the compare must fail once a is 4");
    match t.responses[0].response.as_ref() {
        Some(OpResp::ResponseRange(r)) => assert_eq!(r.kvs[0].value.as_ref(), b"4"),
        other => panic!("expected a range response, got {other:?}"),
    }
    trace.record(format!("txn ok rev={rev_after_cas}"));

    let d = kv
        .delete_range(DeleteRangeRequest {
            key: "b".to_owned().into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(d.deleted, 1);
    assert_eq!(value_of(&mut kv, "b").await, None);

    // Historical read, compaction, and etcd's errors on both sides of it.
    let old = kv
        .range(RangeRequest {
            revision: 2,
            ..get("a")
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(old.kvs[0].value.as_ref(), b"1");
    kv.compact(CompactionRequest {
        revision: rev_after_cas,
        physical: true,
    })
    .await
    .expect("compact");
    let err = kv
        .range(RangeRequest {
            revision: 2,
            ..get("a")
        })
        .await
        .expect_err("compacted");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let err = kv
        .range(RangeRequest {
            revision: 1000,
            ..get("a")
        })
        .await
        .expect_err("future");
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    let err = kv.put(put("", "x")).await.expect_err("empty key");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");
    trace.record("delete/compact ok");
}

#[madsim::test]
async fn single_member_serves_put_get_txn_delete_compact() {
    let cluster = Cluster::new(1, 1);
    let trace = Trace::new();
    let endpoint = cluster.endpoint(0);
    cluster
        .client_node
        .spawn(async move {
            let kv = connect(endpoint).await;
            kv_workload(kv, trace).await;
        })
        .await
        .expect("client task");
}

async fn connect(endpoint: String) -> KvClient<Channel> {
    for _ in 0..100 {
        if let Ok(c) = KvClient::connect(endpoint.clone()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{endpoint} never accepted a connection");
}

/// Puts per writer per round, at most.
const PUTS_PER_WRITER_MAX: usize = 400;
/// A client gives up on one request after this long (outcome unknown).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Writers put unique keys until the member dies (or a bound); returns what was acknowledged.
async fn writers(
    endpoint: String,
    writers: usize,
    round: u64,
    trace: Trace,
) -> Vec<(String, String)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (endpoint, acked, trace) = (endpoint.clone(), Arc::clone(&acked), trace.clone());
        tasks.push(tokio::spawn(async move {
            let mut kv = connect(endpoint).await;
            for i in 0..PUTS_PER_WRITER_MAX {
                let (key, value) = (format!("r{round}-w{w}-{i}"), format!("v{w}-{i}"));
                match tokio::time::timeout(REQUEST_TIMEOUT, kv.put(put(&key, &value))).await {
                    Ok(Ok(r)) => {
                        let rev = r.into_inner().header.map_or(0, |h| h.revision);
                        trace.record(format!("ack {key} rev={rev}"));
                        acked.lock().expect("lock").push((key, value));
                    }
                    Ok(Err(e)) => {
                        trace.record(format!("fail {key} {:?}", e.code()));
                        return;
                    }
                    Err(_) => {
                        trace.record(format!("timeout {key}"));
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();
    acked
}

/// Writes under load, a power cut at a seeded moment, restart, and every acknowledged write
/// must be back. Three rounds; returns the trace hash.
async fn crash_scenario(seed: u64) -> u64 {
    let cluster = Cluster::new(1, seed);
    let trace = Trace::new();
    let mut all_acked: Vec<(String, String)> = Vec::new();
    for round in 0..3u64 {
        let endpoint = cluster.endpoint(0);
        let load = cluster
            .client_node
            .spawn(writers(endpoint, 4, round, trace.clone()));
        let delay_ms = 300 + fnv1a(seed.to_le_bytes().into_iter().chain([round as u8])) % 700;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        trace.record(format!("crash round={round} after={delay_ms}ms"));
        cluster.crash(0, seed.wrapping_add(round));
        let acked = load.await.expect("writers");
        assert!(
            !acked.is_empty(),
            "round {round}: some writes should be acknowledged"
        );
        all_acked.extend(acked);

        let endpoint = cluster.endpoint(0);
        let expected = all_acked.clone();
        let trace2 = trace.clone();
        cluster
            .client_node
            .spawn(async move {
                let mut kv = connect(endpoint).await;
                for (key, value) in &expected {
                    let got = value_of(&mut kv, key).await;
                    assert_eq!(
                        got.as_deref(),
                        Some(value.as_str()),
                        "acknowledged {key} lost"
                    );
                }
                trace2.record(format!("verified {} acknowledged writes", expected.len()));
            })
            .await
            .expect("verifier");
    }
    if std::env::var_os("KEEL_SIM_DUMP").is_some() {
        for e in trace.events().iter().filter(|e| !e.contains(" ack ")) {
            eprintln!("{e}");
        }
    }
    trace.hash()
}

#[madsim::test]
async fn crash_with_lossy_disk_keeps_every_acknowledged_write() {
    crash_scenario(7).await;
}

#[test]
fn same_seed_same_trace() {
    let run = |seed: u64| {
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(crash_scenario(seed))
    };
    let first = run(11);
    let second = run(11);
    assert_eq!(first, second, "seed 11 gave two different traces");
}
