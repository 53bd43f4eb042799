//! Lock clients: take the simulator's lock through etcd's Lock service, write under it with a
//! fenced txn, and let it go by Unlock, by revoking the lease, or by letting the lease expire.
//!
//! Each holding gets a fresh lease (TTL 2 or 4 s, the client's own id, never kept alive), so
//! faults also make holders' and waiters' leases run out. A Lock call is given up after
//! [`LOCK_WAIT`] (the server then gives the waiter's place up). What the store proves of each
//! holding goes into the run's [`LockLog`], checked by [`crate::lock_check::check_locks`].
//!
//! Every write the lock clients cause goes into the KV history for the linearizability
//! checker, which must explain every revision: the fenced write as acknowledged (or failed,
//! when its compare failed), and each lock key's put and deletion in doubt (the key is put by
//! the Lock service, and deleted by Unlock, a revoke, an expiry or a cancelled wait, at
//! revisions the client does not always learn). Each gets a history client id of its own.
//!
//! A *rogue* client (`SimConfig::lock_rogue`) skips the Lock service: it puts its key under
//! the lock's prefix itself and writes at once, which overlaps whoever holds the lock. It is
//! the injected fault that shows the checker works.

use std::time::Duration;

use bytes::Bytes;
use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::{
    request_op, Compare, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RequestOp, TxnRequest,
};
use keel_proto::v3lockpb::lock_client::LockClient;
use keel_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::history::{Entry, Op, OpResult, Outcome};
use crate::lease::LEASE_TTL_MIN_S;
use crate::lock_check::{LockHolding, LockLog, LOCK_NAME, LOCK_WITNESS};
use crate::nemesis::SeedRng;
use crate::workload::{Ctx, OP_TIMEOUT};

/// A Lock call is given up after this long.
pub const LOCK_WAIT: Duration = Duration::from_millis(3000);
/// Longest a holder keeps the lock before letting it go.
const HOLD_MS_MAX: u64 = 30;
/// History client ids of the lock clients' writes start here (one id per write).
pub const LOCK_HISTORY_CLIENT_BASE: usize = 4000;
/// History client ids per lock client.
const LOCK_HISTORY_IDS: usize = 100_000;

/// One connection's clients.
struct Conn {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    lock: LockClient<Channel>,
}

async fn open(endpoint: &str) -> Option<Conn> {
    let connect = async {
        Some(Conn {
            kv: KvClient::connect(endpoint.to_string()).await.ok()?,
            lease: LeaseClient::connect(endpoint.to_string()).await.ok()?,
            lock: LockClient::connect(endpoint.to_string()).await.ok()?,
        })
    };
    tokio::time::timeout(OP_TIMEOUT, connect)
        .await
        .ok()
        .flatten()
}

/// Lock client `id`.
struct LockClientState {
    ctx: Ctx,
    endpoints: Vec<String>,
    id: usize,
    member: usize,
    rng: SeedRng,
    conn: Option<Conn>,
    serial: i64,
    rogue: bool,
    log: LockLog,
    /// Writes recorded in the history so far.
    recorded: usize,
}

impl LockClientState {
    /// One round: lease, lock, fenced write, release. A request that fails moves the client
    /// to the next member.
    async fn round(&mut self) {
        if self.conn.is_none() {
            self.conn = open(&self.endpoints[self.member]).await;
        }
        let Some(mut conn) = self.conn.take() else {
            self.member = (self.member + 1) % self.endpoints.len();
            return;
        };
        match self.hold(&mut conn).await {
            Some(()) => self.conn = Some(conn),
            None => self.member = (self.member + 1) % self.endpoints.len(),
        }
    }

    async fn hold(&mut self, conn: &mut Conn) -> Option<()> {
        self.serial += 1;
        let lease = ((0x100 + self.id as i64) << 40) | self.serial;
        let ttl = LEASE_TTL_MIN_S * (1 + self.rng.below(2) as i64);
        let grant = LeaseGrantRequest { ttl, id: lease };
        bounded(OP_TIMEOUT, conn.lease.lease_grant(grant)).await?;
        // From here on the lease's key may be put, and deleted again.
        let key = format!("{LOCK_NAME}/{lease:x}");
        let invoke = (self.ctx.now_ns(), self.ctx.history.tick());
        let held = self.locked(conn, lease).await;
        let in_doubt = Outcome::Info("the lock key's put and deletion are in doubt".into());
        let put = Op::Put {
            key: key.clone(),
            value: String::new(),
        };
        self.record(put, invoke, in_doubt.clone());
        self.record(Op::Delete { key }, invoke, in_doubt);
        held
    }

    /// Lock (or the rogue's way), the fenced write, the release.
    async fn locked(&mut self, conn: &mut Conn, lease: i64) -> Option<()> {
        let (key, acquired) = if self.rogue {
            self.jump_the_queue(conn, lease).await?
        } else {
            let lock = LockRequest {
                name: Bytes::from(LOCK_NAME),
                lease,
            };
            let locked = bounded(LOCK_WAIT, conn.lock.lock(lock)).await?;
            (locked.key, locked.header.map_or(0, |h| h.revision))
        };
        let name = String::from_utf8_lossy(&key).into_owned();
        let witness = format!("c{}-{}", self.id, self.serial);
        let invoke = (self.ctx.now_ns(), self.ctx.history.tick());
        let answer = bounded(OP_TIMEOUT, conn.kv.txn(fenced_write(&key, witness.clone()))).await;
        let wrote = answer
            .as_ref()
            .and_then(|a| a.header)
            .map_or(0, |h| h.revision);
        let outcome = match &answer {
            Some(a) if a.succeeded => Outcome::Ok(OpResult::Write {
                revision: wrote,
                succeeded: true,
                deleted: 0,
            }),
            Some(_) => Outcome::Fail("the lock key was gone: nothing written".into()),
            None => Outcome::Info("timeout".into()),
        };
        let put = Op::Put {
            key: LOCK_WITNESS.to_string(),
            value: witness,
        };
        self.record(put, invoke, outcome);
        let fenced = answer?;
        self.ctx.trace.record(format!(
            "lock c{} {name} acquired at {acquired}, fenced write at {wrote}: {}",
            self.id, fenced.succeeded
        ));
        if fenced.succeeded {
            self.log.push(LockHolding {
                client: self.id,
                key: name,
                acquired,
                wrote,
            });
        }
        let hold = self.rng.below(HOLD_MS_MAX + 1);
        tokio::time::sleep(Duration::from_millis(hold)).await;
        match self.rng.below(8) {
            0 => {} // the lease expires
            1 => {
                bounded(
                    OP_TIMEOUT,
                    conn.lease.lease_revoke(LeaseRevokeRequest { id: lease }),
                )
                .await?;
            }
            _ => {
                let unlock = UnlockRequest { key };
                bounded(OP_TIMEOUT, conn.lock.unlock(unlock)).await?;
            }
        }
        Some(())
    }

    /// Records one of the lock clients' writes in the history.
    fn record(&mut self, op: Op, invoke: (u64, u64), outcome: Outcome) {
        let client = LOCK_HISTORY_CLIENT_BASE + self.id * LOCK_HISTORY_IDS + self.recorded;
        self.recorded += 1;
        let entry = self.ctx.history.push(Entry {
            index: 0,
            client,
            member: self.member,
            op,
            invoke_ns: invoke.0,
            complete_ns: self.ctx.now_ns(),
            invoke_seq: invoke.1,
            complete_seq: 0,
            outcome,
        });
        self.ctx.trace.record(format!("op {entry}"));
    }

    /// The rogue's "lock": its key put straight under the prefix, no waiting.
    async fn jump_the_queue(&mut self, conn: &mut Conn, lease: i64) -> Option<(Bytes, i64)> {
        let key = Bytes::from(format!("{LOCK_NAME}/{lease:x}"));
        let put = PutRequest {
            key: key.clone(),
            lease,
            ..Default::default()
        };
        let put = bounded(OP_TIMEOUT, conn.kv.put(put)).await?;
        Some((key, put.header.map_or(0, |h| h.revision)))
    }
}

/// A request's answer within `bound`, or `None`.
async fn bounded<T, F>(bound: Duration, call: F) -> Option<T>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    Some(
        tokio::time::timeout(bound, call)
            .await
            .ok()?
            .ok()?
            .into_inner(),
    )
}

/// If `key` still exists, put the witness.
fn fenced_write(key: &Bytes, witness: String) -> TxnRequest {
    let exists = Compare {
        result: CompareResult::Greater as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    let put = PutRequest {
        key: Bytes::from(LOCK_WITNESS),
        value: Bytes::from(witness),
        ..Default::default()
    };
    TxnRequest {
        compare: vec![exists],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put)),
        }],
        failure: Vec::new(),
    }
}

/// Spawns `clients` lock clients on the cluster's client node (client 0 is the rogue when
/// `rogue`); they stop at `until`.
pub fn spawn_lock_clients(
    cluster: &Cluster,
    ctx: &Ctx,
    clients: usize,
    rogue: bool,
    seed: u64,
    until: tokio::time::Instant,
) -> (Vec<madsim::task::JoinHandle<()>>, LockLog) {
    let log = LockLog::default();
    let endpoints = cluster.endpoints();
    let tasks = (0..clients)
        .map(|id| {
            let mut c = LockClientState {
                ctx: ctx.clone(),
                member: id % endpoints.len(),
                endpoints: endpoints.clone(),
                id,
                rng: SeedRng::new(seed, 0x10C4 + id as u64),
                conn: None,
                serial: 0,
                rogue: rogue && id == 0,
                log: log.clone(),
                recorded: 0,
            };
            cluster.client_node.spawn(async move {
                while tokio::time::Instant::now() < until {
                    let think = c.rng.between(20, 80);
                    tokio::time::sleep(Duration::from_millis(think)).await;
                    c.round().await;
                }
            })
        })
        .collect();
    (tasks, log)
}
