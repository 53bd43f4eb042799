//! The `lease` workload: each client grants a lease (with an id it picks), puts two keys
//! `lease/<id>/<n>` attached to it, then keeps it alive and reads its keys for a while, and
//! either revokes it (reading the keys again) or lets it expire. Puts and reads go into the
//! history; grants, keepalives and revokes into `leases.jsonl` ([`LeaseRecord`]). Before each
//! grant the history gets an in-doubt delete of the lease's prefix, never completed: the
//! expiry or revoke that deletes its keys at a revision no client's response reports.
//! [`super::lease_check`] checks that no key disappears before its TTL and none outlives a
//! completed revoke.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use keel_rng::SplitMix64;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::client::leased_put;
use super::member::channel;
use super::recorder::{Done, Recorder};
use crate::history::{DeleteRequest, ProcessId, Request};

const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Process ids of the in-doubt deletions start here.
const DELETE_PROCESS: ProcessId = 2_000_000;

/// The prefix of lease `id`'s keys.
pub fn prefix(id: i64) -> String {
    format!("lease/{id:016x}/")
}

/// One grant, keepalive or revoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The client's process.
    pub process: ProcessId,
    /// `grant`, `keepalive` or `revoke`.
    pub op: String,
    /// The lease id.
    pub lease: i64,
    /// The TTL the server answered (grant, keepalive; 0 = gone), seconds.
    pub ttl: i64,
    /// Invocation, on the history's clock.
    pub invoke_ns: u64,
    /// Completion.
    pub complete_ns: u64,
    /// `ok`, `fail` (certainly not applied) or `info` (unknown).
    pub outcome: String,
}

/// The run's lease records.
#[derive(Clone, Default)]
pub struct LeaseLog(Arc<Mutex<Vec<LeaseRecord>>>);

impl LeaseLog {
    fn push(&self, r: LeaseRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
    /// The records so far.
    pub fn records(&self) -> Vec<LeaseRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct LeaseClientState {
    rec: Recorder,
    log: LeaseLog,
    rng: SplitMix64,
    id: u64,
    clients: u64,
    process: ProcessId,
    leases: u64,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
}

impl LeaseClientState {
    /// Times a lease call, records it; `Ok(ttl)` is an answer (`None` = refused).
    async fn lease_call(
        &mut self,
        op: &str,
        lease: i64,
        call: impl std::future::Future<Output = Result<i64, tonic::Status>>,
    ) -> Option<i64> {
        let invoke_ns = self.rec.now_ns();
        let result = tokio::time::timeout(OP_TIMEOUT, call).await;
        let (outcome, ttl) = match &result {
            Ok(Ok(ttl)) => ("ok", *ttl),
            Ok(Err(s)) if super::client::write_certainly_failed(s) => ("fail", 0),
            _ => ("info", 0),
        };
        self.log.push(LeaseRecord {
            process: self.process,
            op: op.to_string(),
            lease,
            ttl,
            invoke_ns,
            complete_ns: self.rec.now_ns(),
            outcome: outcome.to_string(),
        });
        (outcome == "ok").then_some(ttl)
    }

    async fn grant(&mut self, lease: i64, ttl: i64) -> Option<i64> {
        let mut c = self.lease.clone();
        let req = LeaseGrantRequest { ttl, id: lease };
        let call = async move { Ok(c.lease_grant(req).await?.into_inner().ttl) };
        self.lease_call("grant", lease, call).await
    }

    async fn keepalive(&mut self, lease: i64) -> Option<i64> {
        let mut c = self.lease.clone();
        let call = async move {
            let req = LeaseKeepAliveRequest { id: lease };
            let mut stream = c
                .lease_keep_alive(tokio_stream_once(req))
                .await?
                .into_inner();
            match stream.message().await? {
                Some(r) => Ok(r.ttl),
                None => Err(tonic::Status::unavailable("keepalive stream ended")),
            }
        };
        self.lease_call("keepalive", lease, call).await
    }

    async fn revoke(&mut self, lease: i64) -> Option<i64> {
        let mut c = self.lease.clone();
        let call = async move {
            c.lease_revoke(LeaseRevokeRequest { id: lease }).await?;
            Ok(0)
        };
        self.lease_call("revoke", lease, call).await
    }

    async fn put(&mut self, key: &str, value: &str, lease: i64) {
        let mut kv = self.kv.clone();
        let call = async move { leased_put(&mut kv, key, value, lease).await };
        let req = Request::put(key, value);
        let done = self.rec.op_with(self.process, true, req, OP_TIMEOUT, call);
        if matches!(done.await, Done::Info) {
            self.process += self.clients;
        }
    }

    async fn read(&mut self, key: &str) {
        let req = Request::get(key);
        let mut kv = self.kv.clone();
        let _ = self
            .rec
            .op(&mut kv, self.process, &req, req.clone(), OP_TIMEOUT)
            .await;
    }
}

fn tokio_stream_once(
    req: LeaseKeepAliveRequest,
) -> impl tonic::codegen::tokio_stream::Stream<Item = LeaseKeepAliveRequest> {
    tonic::codegen::tokio_stream::iter(vec![req])
}

impl LeaseClientState {
    /// One lease's life: grant, two keys, keepalives and reads, then a revoke or nothing.
    async fn one_lease(&mut self, until: Instant) {
        self.leases += 1;
        let lease = ((self.id as i64 + 1) << 32) | self.leases as i64;
        let p = prefix(lease);
        let delete = Request::Delete(DeleteRequest {
            key: p.clone(),
            range_end: Some(format!("{}0", &p[..p.len() - 1])),
            prev_kv: false,
        });
        let deleter = DELETE_PROCESS + self.id * 100_000 + self.leases;
        self.rec.in_doubt(deleter, delete);
        let ttl = 2 + self.rng.below(3) as i64;
        if self.grant(lease, ttl).await.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        let keys = [format!("{p}0"), format!("{p}1")];
        for k in &keys {
            self.put(k, &format!("v{lease:x}"), lease).await;
        }
        let life = Instant::now() + Duration::from_millis(self.rng.below(ttl as u64 * 2000));
        while Instant::now() < life.min(until) {
            tokio::time::sleep(Duration::from_millis(200 + self.rng.below(400))).await;
            if self.rng.below(2) == 0 {
                self.keepalive(lease).await;
            } else {
                let k = keys[self.rng.below(2) as usize].clone();
                self.read(&k).await;
            }
        }
        if self.rng.below(2) == 0 {
            self.revoke(lease).await;
            for k in &keys {
                self.read(k).await;
            }
        }
    }
}

/// Runs lease client `id` (on member `id % n`) until `until`.
pub async fn client(
    rec: Recorder,
    log: LeaseLog,
    id: u64,
    clients: u64,
    n: usize,
    seed: u64,
    until: Instant,
) {
    let Ok(ch) = channel(id as usize % n, OP_TIMEOUT) else {
        return;
    };
    let mut c = LeaseClientState {
        rec,
        log,
        rng: SplitMix64::for_stream(seed, 0x1EA5_0000 + id),
        id,
        clients,
        process: id,
        leases: 0,
        kv: KvClient::new(ch.clone()),
        lease: LeaseClient::new(ch),
    };
    while Instant::now() < until {
        c.one_lease(until).await;
    }
}
