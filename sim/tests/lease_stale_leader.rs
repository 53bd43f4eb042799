//! A deposed leader must not renew a lease the new leader has already expired (etcd 3.5 checks
//! its leadership before renewing, etcd issue #15247). Three members; a client keeps a lease
//! alive over one keepalive stream to the leader only; the leader is paused (a long GC or VM
//! stall) long enough for the others to elect a new leader and expire the lease; the client's
//! keepalives queue up meanwhile. When the old leader resumes it must not answer any of them
//! with a positive TTL once the lease's key is gone. (A keepalive sent just before the pause
//! may have been renewed before it, legitimately; its answer can still arrive late, so only
//! keepalives sent during the pause count.) (keel passes: in this run the queued
//! keepalives, answered after the resume, all say TTL 0.)
#![cfg(madsim)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, StatusRequest,
};
use keel_sim::cluster::Cluster;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

const TTL_S: i64 = 2;
const LEASE: i64 = 77;
const KEY: &str = "lease/stale";
const PAUSE_MS: u64 = 6_000;
const KEEPALIVE_EVERY_MS: u64 = 300;

async fn leader(endpoints: &[String]) -> usize {
    for _ in 0..100 {
        for (i, e) in endpoints.iter().enumerate() {
            let Ok(mut m) = MaintenanceClient::connect(e.clone()).await else {
                continue;
            };
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(300), m.status(StatusRequest {})).await
            {
                let s = s.into_inner();
                if s.leader != 0 && Some(s.leader) == s.header.map(|h| h.member_id) {
                    return i;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader");
}

#[madsim::test]
async fn a_paused_leader_does_not_renew_a_lease_expired_meanwhile() {
    let cluster = Cluster::new(3, 7);
    let endpoints: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let e = endpoints.clone();
    let l = cluster
        .client_node
        .spawn(async move { leader(&e).await })
        .await
        .expect("leader");
    let other = (l + 1) % 3;
    // (sent, answered, ttl) of every keepalive answer; when the key was first seen gone.
    let answers: Arc<Mutex<Vec<(Duration, Duration, i64)>>> = Arc::default();
    let gone: Arc<Mutex<Option<Duration>>> = Arc::default();
    let (e, a, g) = (endpoints.clone(), Arc::clone(&answers), Arc::clone(&gone));
    let start = tokio::time::Instant::now();
    let client = cluster.client_node.spawn(async move {
        let mut lease = LeaseClient::connect(e[l].clone()).await.expect("lease");
        let mut kv = KvClient::connect(e[l].clone()).await.expect("kv");
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: TTL_S,
                id: LEASE,
            })
            .await
            .expect("grant");
        let put = PutRequest {
            key: KEY.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            lease: LEASE,
            ..Default::default()
        };
        kv.put(put).await.expect("put");
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut responses = lease
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .expect("keepalive stream")
            .into_inner();
        let sent: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let sent2 = Arc::clone(&sent);
        tokio::spawn(async move {
            loop {
                sent2.lock().expect("lock").push(start.elapsed());
                if tx.send(LeaseKeepAliveRequest { id: LEASE }).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(KEEPALIVE_EVERY_MS)).await;
            }
        });
        let reader = tokio::spawn({
            let e = e[other].clone();
            let g = Arc::clone(&g);
            async move {
                let mut kv = KvClient::connect(e).await.expect("kv");
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let req = RangeRequest {
                        key: KEY.as_bytes().to_vec().into(),
                        ..Default::default()
                    };
                    let at = start.elapsed();
                    if let Ok(Ok(r)) =
                        tokio::time::timeout(Duration::from_millis(500), kv.range(req)).await
                    {
                        if r.into_inner().kvs.is_empty() {
                            *g.lock().expect("lock") = Some(at);
                            return;
                        }
                    }
                }
            }
        });
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(PAUSE_MS + 6_000) {
            let bound = Duration::from_millis(PAUSE_MS + 6_000).saturating_sub(start.elapsed());
            match tokio::time::timeout(bound, responses.message()).await {
                Ok(Ok(Some(r))) => {
                    let sent_at = sent
                        .lock()
                        .expect("lock")
                        .get(n)
                        .copied()
                        .unwrap_or_default();
                    a.lock()
                        .expect("lock")
                        .push((sent_at, start.elapsed(), r.ttl));
                    n += 1;
                }
                _ => break,
            }
        }
        reader.abort();
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let paused_at = start.elapsed();
    cluster.pause(l);
    tokio::time::sleep(Duration::from_millis(PAUSE_MS)).await;
    cluster.resume(l);
    let _ = client.await;
    let gone = gone
        .lock()
        .expect("lock")
        .expect("the lease expired during the pause");
    let answers = answers.lock().expect("lock").clone();
    assert!(
        answers.iter().any(|(_, answered, _)| *answered > gone),
        "the scenario did not happen: no keepalive was answered after the key was gone"
    );
    let late: Vec<String> = answers
        .iter()
        // A keepalive sent before the pause may have been renewed before it, legitimately
        // (its reply then waits out the pause in the paused member); one sent during the
        // pause can only have been served after it.
        .filter(|(sent, answered, ttl)| *ttl > 0 && *answered > gone && *sent >= paused_at)
        .map(|(sent, answered, ttl)| {
            format!("keepalive sent at {sent:?} answered at {answered:?} with ttl {ttl}")
        })
        .collect();
    assert!(
        late.is_empty(),
        "the key was gone by {gone:?}, yet the old leader n{} renewed the lease: {late:#?}",
        l + 1
    );
}
