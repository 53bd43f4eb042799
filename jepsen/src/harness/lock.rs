//! The `lock` workload: each client grants a lease (TTL 2 s) kept alive every 500 ms, takes the
//! lock `jlock` through the Lock service (etcd's v3lock recipe, served by the member), reads
//! its lock key's create revision as its fence, holds the lock a moment, writes the guarded
//! key with its fence (`txn: value(jfence) < fence ? put jfence=fence, jowner=me`), unlocks
//! and revokes. Every step goes to `locks.jsonl` ([`LockRecord`]); the Lock service's own
//! writes and the lease expiries make revisions no client reports, so this workload is judged
//! by [`super::lock_check::check_locks`], not by the linearizability checker.
//!
//! A holder believes it holds the lock until it unlocks: its fenced write waits up to
//! [`WRITE_WAIT`] (longer than any pause), as a worker blocked on a slow or paused member
//! would. A lease can expire under it meanwhile (Jepsen's 2020 etcd finding).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::request_op::Request as ReqOp;
use keel_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use keel_proto::v3lockpb::lock_client::LockClient;
use keel_proto::v3lockpb::{LockRequest, UnlockRequest};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::member::{channel, channel_with};
use super::recorder::Recorder;

const CALL: Duration = Duration::from_millis(1500);
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a holder's fenced write waits: longer than the nemesis's longest pause, so a holder
/// whose member was paused writes when it wakes, as Jepsen's clients did.
pub const WRITE_WAIT: Duration = Duration::from_secs(15);

/// One step of a lock client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The client.
    pub client: u64,
    /// `acquire`, `write` or `release`.
    pub op: String,
    /// The holder's fence (its lock key's create revision; 0 if unknown).
    pub fence: i64,
    /// Invocation, on the history's clock.
    pub invoke_ns: u64,
    /// Completion.
    pub complete_ns: u64,
    /// `ok`, `fail` or `info`.
    pub outcome: String,
    /// For a write: whether the fence guard held (the write applied).
    pub applied: bool,
    /// For a write: its header revision; for an acquire: the Lock response's header revision
    /// (no older lock key existed at it: the holder owned the lock there).
    pub revision: i64,
}

/// The run's lock records.
#[derive(Clone, Default)]
pub struct LockLog(Arc<Mutex<Vec<LockRecord>>>);

impl LockLog {
    pub(super) fn push(&self, r: LockRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
    /// The records so far.
    pub fn records(&self) -> Vec<LockRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The client that acquired the lock last and has not invoked its unlock yet (the one
    /// that believes it holds the lock now), if any.
    pub fn holder(&self) -> Option<u64> {
        let records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let last = records
            .iter()
            .rev()
            .find(|r| r.op == "acquire" && r.outcome == "ok")?;
        let released = records.iter().any(|r| {
            r.client == last.client && r.op == "release" && r.invoke_ns >= last.complete_ns
        });
        (!released).then_some(last.client)
    }
}

fn pad(fence: i64) -> String {
    format!("{fence:020}")
}

fn put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(ReqOp::RequestPut(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

struct Locker {
    rec: Recorder,
    log: LockLog,
    client: u64,
    ch: Channel,
}

impl Locker {
    fn record(&self, op: &str, fence: i64, invoke_ns: u64, outcome: &str, write: (bool, i64)) {
        self.log.push(LockRecord {
            client: self.client,
            op: op.to_string(),
            fence,
            invoke_ns,
            complete_ns: self.rec.now_ns(),
            outcome: outcome.to_string(),
            applied: write.0,
            revision: write.1,
        });
    }

    async fn lease(&self) -> Option<(i64, tokio::task::JoinHandle<()>)> {
        kept_lease(&self.ch).await
    }

    async fn fence_of(&self, key: &[u8]) -> i64 {
        let mut kv = KvClient::new(self.ch.clone());
        let req = RangeRequest {
            key: key.to_vec().into(),
            ..Default::default()
        };
        match tokio::time::timeout(CALL, kv.range(req)).await {
            Ok(Ok(r)) => r
                .into_inner()
                .kvs
                .first()
                .map_or(0, |kv| kv.create_revision),
            _ => 0,
        }
    }

    async fn fenced_write(&self, fence: i64) {
        let mut kv = KvClient::new(self.ch.clone());
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"jfence".to_vec().into(),
                target: CompareTarget::Value as i32,
                result: CompareResult::Less as i32,
                target_union: Some(TargetUnion::Value(pad(fence).into_bytes().into())),
                ..Default::default()
            }],
            success: vec![
                put("jfence", &pad(fence)),
                put("jowner", &self.client.to_string()),
            ],
            failure: vec![],
        };
        let invoke = self.rec.now_ns();
        match tokio::time::timeout(WRITE_WAIT, kv.txn(txn)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let rev = r.header.map_or(0, |h| h.revision);
                self.record("write", fence, invoke, "ok", (r.succeeded, rev));
            }
            _ => self.record("write", fence, invoke, "info", (false, 0)),
        }
    }

    /// One round: lease, lock, fence, hold, fenced write, unlock, revoke.
    async fn round(&self, hold: Duration) {
        let Some((lease, keeper)) = self.lease().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        };
        let mut lock = LockClient::new(self.ch.clone());
        let invoke = self.rec.now_ns();
        let call = lock.lock(LockRequest {
            name: b"jlock".to_vec().into(),
            lease,
        });
        let key = match tokio::time::timeout(LOCK_WAIT, call).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let granted = r.header.map_or(0, |h| h.revision);
                let key = r.key.to_vec();
                let fence = self.fence_of(&key).await;
                self.record("acquire", fence, invoke, "ok", (false, granted));
                tokio::time::sleep(hold).await;
                self.fenced_write(fence).await;
                Some((key, fence))
            }
            _ => {
                self.record("acquire", 0, invoke, "fail", (false, 0));
                None
            }
        };
        if let Some((key, fence)) = key {
            let invoke = self.rec.now_ns();
            let call = lock.unlock(UnlockRequest { key: key.into() });
            let ok = matches!(tokio::time::timeout(CALL, call).await, Ok(Ok(_)));
            self.record(
                "release",
                fence,
                invoke,
                if ok { "ok" } else { "info" },
                (false, 0),
            );
        }
        keeper.abort();
        revoke(&self.ch, lease).await;
    }
}

/// A lease of 2 s, and a task keeping it alive every 500 ms (abort it to stop).
pub async fn kept_lease(ch: &Channel) -> Option<(i64, tokio::task::JoinHandle<()>)> {
    let mut c = LeaseClient::new(ch.clone());
    let grant = c.lease_grant(LeaseGrantRequest { ttl: 2, id: 0 });
    let id = tokio::time::timeout(CALL, grant)
        .await
        .ok()?
        .ok()?
        .into_inner()
        .id;
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let req = tonic::codegen::tokio_stream::iter(vec![LeaseKeepAliveRequest { id }]);
            let call = async {
                let mut s = c.lease_keep_alive(req).await?.into_inner();
                s.message().await
            };
            let _ = tokio::time::timeout(CALL, call).await;
        }
    });
    Some((id, keeper))
}

/// Revokes `lease` (best effort).
pub async fn revoke(ch: &Channel, lease: i64) {
    let mut c = LeaseClient::new(ch.clone());
    let _ = tokio::time::timeout(CALL, c.lease_revoke(LeaseRevokeRequest { id: lease })).await;
}

/// Writes the guarded key's first value (fence 0) before the clients start: a value compare
/// against a missing key always fails in etcd.
pub async fn init(n: usize) {
    for i in (0..n).cycle().take(3 * n) {
        let Ok(ch) = channel(i, CALL) else { continue };
        let mut kv = KvClient::new(ch);
        let req = PutRequest {
            key: b"jfence".to_vec().into(),
            value: pad(0).into_bytes().into(),
            ..Default::default()
        };
        if let Ok(Ok(_)) = tokio::time::timeout(CALL, kv.put(req)).await {
            return;
        }
    }
}

/// Runs lock client `client` (on member `client % n`) until `until`.
pub async fn client(rec: Recorder, log: LockLog, client: u64, n: usize, until: Instant) {
    // Each call bounds itself (CALL, LOCK_WAIT, WRITE_WAIT); the channel allows the longest.
    let Ok(ch) = channel_with(client as usize % n, CALL, WRITE_WAIT) else {
        return;
    };
    let locker = Locker {
        rec,
        log,
        client,
        ch,
    };
    let mut rounds = 0u64;
    while Instant::now() < until {
        rounds += 1;
        let hold = Duration::from_millis(200 + (client * 131 + rounds * 97) % 600);
        locker.round(hold).await;
    }
}
