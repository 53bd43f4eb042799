//! Lease clients: grant leases, attach keys, keep some alive over LeaseKeepAlive streams, let
//! some expire, revoke some, and read the leased keys often enough to see them go.
//!
//! Every lease request is recorded in the run's [`LeaseLog`]; the leased puts and reads go
//! into the KV history like any other operation (keys of the lease key space, see
//! [`crate::lease_check`]). Each lease gets a plan when it is granted:
//!
//! * **keep alive**: a keepalive task renews it every third of its TTL until the safety phase
//!   ends, switching members when one fails (a follower forwards keepalives to the leader);
//! * **expire**: never renewed, so the leader revokes it one TTL after the grant;
//! * **revoke**: revoked by the client after a while (renewed until then, or not).
//!
//! Lease ids are the client's own (`(client + 1) << 40 | serial`), so a run replays them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::cluster::Cluster;
use crate::history::{Entry, Op, Outcome};
use crate::lease_check::{lease_prefix, LeaseOp, LeaseOutcome, LeaseRecord};
use crate::nemesis::SeedRng;
use crate::workload::{connect, run_op, Ctx, OP_TIMEOUT};

/// etcd's minimum lease TTL at the simulator's election timeout (etcd's default 1000 ms):
/// ⌈1.5 × 1 s⌉ = 2 s. Granted TTLs are one or two times this.
pub const LEASE_TTL_MIN_S: i64 = 2;
/// Leases one client holds at once (not yet revoked and not yet expired), at most.
pub const LEASES_LIVE_MAX: usize = 3;
/// Keys attached to one lease, at most.
pub const LEASE_KEYS_MAX: u64 = 3;
/// Leases one client grants in a run, at most.
pub const LEASES_PER_CLIENT_MAX: u64 = 24;
/// History client ids of lease clients start here.
pub const LEASE_CLIENT_BASE: usize = 500;
/// History client ids of the in-doubt deletions of lease keys start here.
pub const LEASE_GONE_CLIENT_BASE: usize = 2000;
/// A keepalive that failed is retried on the next member after this long.
const KEEPALIVE_RETRY_MS: u64 = 150;
/// A keepalive unanswered for this long is given up (outcome unknown) and retried on the next
/// member: well under the shortest TTL, so a lease survives a member's failure.
const KEEPALIVE_TIMEOUT_MS: u64 = 500;
/// After the safety phase a lease client keeps its leases alive and reads their keys for
/// this much longer (the faults still on), so that a lease granted late in a short run is
/// still watched past its first TTL.
pub const LEASE_TAIL_MS: u64 = 1500;
/// Pause between two reads of the tail.
const TAIL_READ_MS: u64 = 60;

/// What a client means to do with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    KeepAlive,
    Expire,
    /// Revoke at this many ns since the run began.
    Revoke(u64),
}

struct Held {
    id: i64,
    ttl_s: i64,
    plan: Plan,
    granted_ns: u64,
    keys: Vec<String>,
    next_key: u64,
    stop: Arc<AtomicBool>,
    revoked: bool,
}

impl Held {
    /// Whether puts with this lease can still succeed (as far as the client knows).
    fn live(&self, now_ns: u64) -> bool {
        !self.revoked
            && (self.plan == Plan::KeepAlive
                || now_ns < self.granted_ns + self.ttl_s as u64 * 1_000_000_000)
    }
}

struct LeaseClientState {
    ctx: Ctx,
    endpoints: Vec<String>,
    id: usize,
    member: usize,
    rng: SeedRng,
    kv: Option<KvClient<Channel>>,
    held: Vec<Held>,
    serial: u64,
    next_value: u64,
    until: tokio::time::Instant,
}

fn status_text(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Whether a failed lease request certainly did not take effect (a NOSPACE refusal included:
/// see [`crate::alarm::is_no_space`]).
fn certainly_failed(status: &Status) -> bool {
    crate::alarm::is_no_space(status)
        || matches!(
            status.code(),
            Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition
        )
}

/// Records one lease request.
fn record(
    ctx: &Ctx,
    client: usize,
    member: usize,
    lease: i64,
    op: LeaseOp,
    invoke: (u64, u64),
    outcome: LeaseOutcome,
) -> LeaseRecord {
    let r = ctx.leases.push(LeaseRecord {
        index: 0,
        client,
        member,
        lease,
        op,
        invoke_ns: invoke.0,
        complete_ns: ctx.now_ns(),
        invoke_seq: invoke.1,
        outcome,
    });
    ctx.trace.record(format!("lease {r}"));
    r
}

async fn lease_client_for(endpoint: &str) -> Option<LeaseClient<Channel>> {
    match tokio::time::timeout(OP_TIMEOUT, LeaseClient::connect(endpoint.to_string())).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

impl LeaseClientState {
    fn client_id(&self) -> usize {
        LEASE_CLIENT_BASE + self.id
    }

    fn next_member(&mut self) {
        self.member = (self.member + 1) % self.endpoints.len();
        self.kv = None;
    }

    /// Grant or revoke, recorded; `None` if no connection could be made (nothing sent).
    async fn unary(&mut self, lease: i64, op: LeaseOp) -> Option<LeaseRecord> {
        let mut client = lease_client_for(&self.endpoints[self.member]).await?;
        let invoke = (self.ctx.now_ns(), self.ctx.history.tick());
        let result = match op {
            LeaseOp::Grant { ttl_s } => {
                let req = LeaseGrantRequest {
                    ttl: ttl_s,
                    id: lease,
                };
                tokio::time::timeout(OP_TIMEOUT, client.lease_grant(req))
                    .await
                    .map(|r| r.map(|r| r.into_inner().ttl))
            }
            LeaseOp::Revoke => {
                let req = LeaseRevokeRequest { id: lease };
                tokio::time::timeout(OP_TIMEOUT, client.lease_revoke(req))
                    .await
                    .map(|r| r.map(|_| 0))
            }
            LeaseOp::KeepAlive => unreachable!("keepalives go over a stream"),
        };
        let outcome = match result {
            Ok(Ok(ttl_s)) => LeaseOutcome::Ok { ttl_s },
            Ok(Err(s)) if certainly_failed(&s) => LeaseOutcome::Fail(status_text(&s)),
            Ok(Err(s)) => LeaseOutcome::Info(status_text(&s)),
            Err(_) => LeaseOutcome::Info("timeout".to_string()),
        };
        let r = record(
            &self.ctx,
            self.client_id(),
            self.member,
            lease,
            op,
            invoke,
            outcome,
        );
        if !matches!(r.outcome, LeaseOutcome::Ok { .. }) {
            self.next_member();
        }
        Some(r)
    }

    async fn kv_op(&mut self, op: Op) -> Option<Entry> {
        let mut kv = match self.kv.take() {
            Some(kv) => kv,
            None => match connect(&self.endpoints[self.member]).await {
                Some(kv) => kv,
                None => {
                    self.next_member();
                    return None;
                }
            },
        };
        let entry = run_op(&self.ctx, &mut kv, self.client_id(), self.member, op).await;
        if matches!(entry.outcome, Outcome::Ok(_)) {
            self.kv = Some(kv);
        } else {
            self.next_member();
        }
        Some(entry)
    }

    async fn grant(&mut self) {
        self.serial += 1;
        let lease = (((self.id + 1) as i64) << 40) | self.serial as i64;
        // The first lease is kept alive with the shortest TTL, so even a short run sees a
        // kept-alive lease outlive its first TTL.
        let first = self.held.is_empty();
        let ttl_s = if first {
            LEASE_TTL_MIN_S
        } else {
            LEASE_TTL_MIN_S * self.rng.between(1, 2) as i64
        };
        let Some(r) = self.unary(lease, LeaseOp::Grant { ttl_s }).await else {
            return;
        };
        let LeaseOutcome::Ok { ttl_s } = r.outcome else {
            return;
        };
        let granted_ns = r.invoke_ns;
        let plan = match self.rng.below(10) {
            _ if first => Plan::KeepAlive,
            0..=3 => Plan::KeepAlive,
            4..=6 => Plan::Expire,
            _ => {
                let after_ms = self.rng.between(200, ttl_s as u64 * 1500);
                Plan::Revoke(self.ctx.now_ns() + after_ms * 1_000_000)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let renew = plan == Plan::KeepAlive || (plan != Plan::Expire && self.rng.chance(1, 2));
        if renew {
            let task = KeepAlive {
                ctx: self.ctx.clone(),
                endpoints: self.endpoints.clone(),
                client: self.client_id(),
                member: self.member,
                lease,
                ttl_s,
                stop: Arc::clone(&stop),
                until: self.until + Duration::from_millis(LEASE_TAIL_MS),
            };
            tokio::spawn(task.run());
        }
        self.ctx.trace.record(format!(
            "lease l{} plan {lease:x}: {plan:?} renew={renew}",
            self.id
        ));
        self.held.push(Held {
            id: lease,
            ttl_s,
            plan,
            granted_ns,
            keys: Vec::new(),
            next_key: 0,
            stop,
            revoked: false,
        });
    }

    async fn put_key(&mut self, h: usize) {
        let (lease, n) = (self.held[h].id, self.held[h].next_key);
        self.held[h].next_key += 1;
        self.next_value += 1;
        let key = format!("{}{n}", lease_prefix(lease));
        let op = Op::LeasePut {
            key: key.clone(),
            value: format!("l{}-{}", self.id, self.next_value),
            lease,
        };
        if let Some(e) = self.kv_op(op).await {
            if !matches!(e.outcome, Outcome::Fail(_)) {
                self.held[h].keys.push(key);
            }
        }
    }

    async fn read_key(&mut self, key: String) {
        let op = Op::Get {
            key,
            serializable: false,
        };
        let _ = self.kv_op(op).await;
    }

    async fn revoke(&mut self, h: usize) {
        let lease = self.held[h].id;
        self.held[h].stop.store(true, Ordering::Relaxed);
        if self.unary(lease, LeaseOp::Revoke).await.is_some() {
            self.held[h].revoked = true;
        }
    }

    /// One step of the client.
    async fn step(&mut self) {
        let now = self.ctx.now_ns();
        let due = self
            .held
            .iter()
            .position(|h| matches!(h.plan, Plan::Revoke(at) if at <= now) && !h.revoked);
        if let Some(h) = due {
            return self.revoke(h).await;
        }
        let live: Vec<usize> = (0..self.held.len())
            .filter(|&h| self.held[h].live(now))
            .collect();
        let roll = self.rng.below(100);
        let room = live.len() < LEASES_LIVE_MAX && self.serial < LEASES_PER_CLIENT_MAX;
        if room && (roll < 15 || live.is_empty()) {
            return self.grant().await;
        }
        let puttable: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&h| self.held[h].next_key < LEASE_KEYS_MAX)
            .collect();
        if roll < 40 && !puttable.is_empty() {
            let h = puttable[self.rng.index(puttable.len())];
            return self.put_key(h).await;
        }
        if let Some(key) = self.pick_key() {
            self.read_key(key).await;
        }
    }

    /// A key to read: of one of the last few leases.
    fn pick_key(&mut self) -> Option<String> {
        let recent: Vec<&Held> = self
            .held
            .iter()
            .rev()
            .take(2 * LEASES_LIVE_MAX)
            .filter(|h| !h.keys.is_empty())
            .collect();
        if recent.is_empty() {
            return None;
        }
        let h = recent[self.rng.index(recent.len())];
        Some(h.keys[self.rng.index(h.keys.len())].clone())
    }
}

/// Runs lease client `id` until `until`, then for [`LEASE_TAIL_MS`] more keeps its leases
/// alive and reads the keys of the kept-alive ones.
pub async fn lease_client(
    ctx: Ctx,
    endpoints: Vec<String>,
    id: usize,
    seed: u64,
    until: tokio::time::Instant,
) {
    let member = id % endpoints.len();
    let mut c = LeaseClientState {
        ctx,
        endpoints,
        id,
        member,
        rng: SeedRng::new(seed, 0x1EA5E + id as u64),
        kv: None,
        held: Vec::new(),
        serial: 0,
        next_value: 0,
        until,
    };
    while tokio::time::Instant::now() < until {
        let think = c.rng.between(10, 100);
        tokio::time::sleep(Duration::from_millis(think)).await;
        c.step().await;
    }
    let tail_end = until + Duration::from_millis(LEASE_TAIL_MS);
    let kept: Vec<String> = c
        .held
        .iter()
        .filter(|h| h.plan == Plan::KeepAlive && !h.revoked)
        .flat_map(|h| h.keys.clone())
        .collect();
    while !kept.is_empty() && tokio::time::Instant::now() < tail_end {
        tokio::time::sleep(Duration::from_millis(TAIL_READ_MS)).await;
        let key = kept[c.rng.index(kept.len())].clone();
        c.read_key(key).await;
    }
    for h in &c.held {
        h.stop.store(true, Ordering::Relaxed);
    }
}

/// A keepalive stream for one lease, moving to the next member when one fails.
struct KeepAlive {
    ctx: Ctx,
    endpoints: Vec<String>,
    client: usize,
    member: usize,
    lease: i64,
    ttl_s: i64,
    stop: Arc<AtomicBool>,
    until: tokio::time::Instant,
}

type KeepAliveStream = (
    tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
    Streaming<LeaseKeepAliveResponse>,
);

impl KeepAlive {
    async fn open(&self) -> Option<KeepAliveStream> {
        let mut client = lease_client_for(&self.endpoints[self.member]).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let call = client.lease_keep_alive(ReceiverStream::new(rx));
        let bound = Duration::from_millis(KEEPALIVE_TIMEOUT_MS);
        let responses = tokio::time::timeout(bound, call).await.ok()?.ok()?;
        Some((tx, responses.into_inner()))
    }

    async fn run(mut self) {
        let period = Duration::from_millis(self.ttl_s as u64 * 1000 / 3);
        let mut stream: Option<KeepAliveStream> = None;
        let mut wait = period;
        loop {
            tokio::time::sleep(wait).await;
            if self.stop.load(Ordering::Relaxed) || tokio::time::Instant::now() >= self.until {
                return;
            }
            wait = Duration::from_millis(KEEPALIVE_RETRY_MS);
            let (tx, mut responses) = match stream.take() {
                Some(s) => s,
                None => match self.open().await {
                    Some(s) => s,
                    None => {
                        self.member = (self.member + 1) % self.endpoints.len();
                        continue;
                    }
                },
            };
            let invoke = (self.ctx.now_ns(), self.ctx.history.tick());
            let request = LeaseKeepAliveRequest { id: self.lease };
            let answer = match tx.send(request).await {
                Ok(()) => {
                    let bound = Duration::from_millis(KEEPALIVE_TIMEOUT_MS);
                    tokio::time::timeout(bound, responses.message()).await
                }
                Err(_) => Ok(Ok(None)),
            };
            let (outcome, keep) = match answer {
                Ok(Ok(Some(r))) if r.ttl > 0 => (LeaseOutcome::Ok { ttl_s: r.ttl }, true),
                Ok(Ok(Some(_))) => (LeaseOutcome::Fail("ttl 0: no such lease".into()), false),
                Ok(Ok(None)) => (LeaseOutcome::Fail("stream ended".into()), false),
                Ok(Err(s)) => (LeaseOutcome::Fail(status_text(&s)), false),
                Err(_) => (LeaseOutcome::Info("timeout".into()), false),
            };
            let gone = matches!(&outcome, LeaseOutcome::Fail(w) if w.starts_with("ttl 0"));
            let op = LeaseOp::KeepAlive;
            record(
                &self.ctx,
                self.client,
                self.member,
                self.lease,
                op,
                invoke,
                outcome,
            );
            if gone {
                return;
            }
            if keep {
                stream = Some((tx, responses));
                wait = period;
            } else {
                self.member = (self.member + 1) % self.endpoints.len();
            }
        }
    }
}

/// Spawns `clients` lease clients on the cluster's client node; they stop at `until`.
pub fn spawn_lease_clients(
    cluster: &Cluster,
    ctx: &Ctx,
    clients: usize,
    seed: u64,
    until: tokio::time::Instant,
) -> Vec<madsim::task::JoinHandle<()>> {
    let endpoints = cluster.endpoints();
    (0..clients)
        .map(|id| {
            let task = lease_client(ctx.clone(), endpoints.clone(), id, seed, until);
            cluster.client_node.spawn(task)
        })
        .collect()
}

/// The in-doubt deletion of each lease's keys (see [`crate::history::Op::LeaseKeysGone`]),
/// added to the history at the end of a run: for each lease some put tried to attach a key
/// to, invoked with the first such put (the deletion cannot change the store before a key is
/// attached; a lease without keys changes nothing when it goes, so it gets none). The
/// narrower the window, the fewer revisions the checker must consider it for.
pub fn record_lease_deletions(ctx: &Ctx) {
    let mut first_put: std::collections::BTreeMap<i64, Entry> = Default::default();
    for e in ctx.history.entries() {
        if let Op::LeasePut { lease, .. } = &e.op {
            if !matches!(e.outcome, Outcome::Fail(_)) {
                first_put.entry(*lease).or_insert(e);
            }
        }
    }
    for (k, (lease, put)) in first_put.into_iter().enumerate() {
        // Same invocation position as the put; the history's stable sort keeps the put first.
        ctx.history.push(Entry {
            index: 0,
            client: LEASE_GONE_CLIENT_BASE + k,
            member: put.member,
            op: Op::LeaseKeysGone {
                lease,
                prefix: lease_prefix(lease),
            },
            invoke_ns: put.invoke_ns,
            complete_ns: ctx.now_ns(),
            invoke_seq: put.invoke_seq,
            complete_seq: 0,
            outcome: Outcome::Info("revoked or expired at a revision nobody reports".into()),
        });
    }
}
