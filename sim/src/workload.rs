//! The workload: concurrent clients on a small key space doing puts, gets (linearizable and
//! serializable), deletes, ranges, compare-and-set txns and multi-key txns, each with a
//! timeout, each recorded in the [`History`] and the [`Trace`].
//!
//! Client `c` talks to member `c % n`. While it runs, each client checks the invariant that
//! needs no global view: the revisions of its linearizable operations never go backwards.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::request_op::Request as ReqOp;
use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::check::{events_between, Failure, FailureKind};
use crate::cluster::Cluster;
use crate::history::{Entry, History, KeyValue, Op, OpResult, Outcome};
use crate::lease_check::LeaseLog;
use crate::nemesis::SeedRng;
use crate::trace::Trace;
use crate::watch::WatchRecorder;

/// Keys of the workload: `k0 .. k{KEYS-1}`.
pub const KEYS: u64 = 6;
/// A client gives up on one request after this long.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest a client waits between two operations.
pub const THINK_MS_MAX: u64 = 40;

/// Shared context of the clients of one run.
#[derive(Clone)]
pub struct Ctx {
    /// The history being recorded.
    pub history: History,
    /// The run's trace.
    pub trace: Trace,
    /// When the run began (history times are relative to it).
    pub start: tokio::time::Instant,
    /// Safety violations seen while running.
    pub violations: Arc<Mutex<Vec<Failure>>>,
    /// Nemesis events: (simulated ns since start, description).
    pub events: Arc<Mutex<Vec<(u64, String)>>>,
    /// The lease clients' requests.
    pub leases: LeaseLog,
    /// The watch clients' log.
    pub watches: WatchRecorder,
}

impl Ctx {
    /// A context for a run starting now.
    pub fn new(trace: Trace) -> Self {
        Ctx {
            history: History::new(),
            trace,
            start: tokio::time::Instant::now(),
            violations: Arc::new(Mutex::new(Vec::new())),
            events: Arc::new(Mutex::new(Vec::new())),
            leases: LeaseLog::default(),
            watches: WatchRecorder::default(),
        }
    }

    /// Records a nemesis event (trace and event log).
    pub fn event(&self, e: String) {
        self.trace.record(format!("nemesis {e}"));
        let at = self.now_ns();
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, e));
    }

    /// The nemesis events so far.
    pub fn events(&self) -> Vec<(u64, String)> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Simulated nanoseconds since the run began.
    pub fn now_ns(&self) -> u64 {
        tokio::time::Instant::now()
            .duration_since(self.start)
            .as_nanos() as u64
    }

    /// Records a violation: which check, what broke, and the operations that show it.
    pub fn violation(&self, kind: FailureKind, what: String, evidence: Vec<String>) {
        self.trace.record(format!("VIOLATION {what}"));
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Failure::new(kind, what, evidence));
    }

    /// The violations so far.
    pub fn violations(&self) -> Vec<Failure> {
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn key(i: u64) -> String {
    format!("k{i}")
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn header_rev<H>(h: Option<H>, rev: impl Fn(&H) -> i64) -> i64 {
    h.as_ref().map_or(0, rev)
}

/// Sends one operation.
pub async fn execute(kv: &mut KvClient<Channel>, op: &Op) -> Result<OpResult, Status> {
    let write = |revision: i64, succeeded: bool, deleted: i64| OpResult::Write {
        revision,
        succeeded,
        deleted,
    };
    match op {
        Op::Put { key, value } => {
            let r = kv.put(put_req(key, value)).await?.into_inner();
            Ok(write(header_rev(r.header, |h| h.revision), true, 0))
        }
        Op::Delete { key } => {
            let req = DeleteRangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            };
            let r = kv.delete_range(req).await?.into_inner();
            Ok(write(header_rev(r.header, |h| h.revision), true, r.deleted))
        }
        Op::Get { key, serializable } => read(kv, key, None, *serializable).await,
        Op::Range { serializable } => read(kv, "k", Some("l"), *serializable).await,
        Op::Cas { key, expect, value } => {
            let compare = match expect {
                Some(v) => Compare {
                    key: key.as_bytes().to_vec().into(),
                    target: CompareTarget::Value as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::Value(v.as_bytes().to_vec().into())),
                    ..Default::default()
                },
                None => Compare {
                    key: key.as_bytes().to_vec().into(),
                    target: CompareTarget::Create as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let txn = TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp {
                    request: Some(ReqOp::RequestPut(put_req(key, value))),
                }],
                failure: vec![],
            };
            let r = kv.txn(txn).await?.into_inner();
            Ok(write(header_rev(r.header, |h| h.revision), r.succeeded, 0))
        }
        Op::MultiPut { kvs } => {
            let success = kvs
                .iter()
                .map(|(k, v)| RequestOp {
                    request: Some(ReqOp::RequestPut(put_req(k, v))),
                })
                .collect();
            let txn = TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            };
            let r = kv.txn(txn).await?.into_inner();
            Ok(write(header_rev(r.header, |h| h.revision), true, 0))
        }
        Op::LeasePut { key, value, lease } => {
            let req = PutRequest {
                lease: *lease,
                ..put_req(key, value)
            };
            let r = kv.put(req).await?.into_inner();
            Ok(write(header_rev(r.header, |h| h.revision), true, 0))
        }
        Op::Compact { revision } => {
            let req = CompactionRequest {
                revision: *revision,
                physical: false,
            };
            let r = kv.compact(req).await?.into_inner();
            Ok(write(header_rev(r.header, |h| h.revision), true, 0))
        }
        Op::LeaseKeysGone { .. } => Err(Status::unimplemented(
            "the harness records lease deletions; no client sends them",
        )),
    }
}

async fn read(
    kv: &mut KvClient<Channel>,
    key: &str,
    range_end: Option<&str>,
    serializable: bool,
) -> Result<OpResult, Status> {
    let req = RangeRequest {
        key: key.as_bytes().to_vec().into(),
        range_end: range_end
            .map(|e| e.as_bytes().to_vec().into())
            .unwrap_or_default(),
        serializable,
        ..Default::default()
    };
    let r = kv.range(req).await?.into_inner();
    let kvs = r
        .kvs
        .iter()
        .map(|kv| KeyValue {
            key: text(&kv.key),
            value: text(&kv.value),
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            version: kv.version,
        })
        .collect();
    Ok(OpResult::Read {
        revision: header_rev(r.header, |h| h.revision),
        kvs,
    })
}

/// Whether a failed write certainly did not take effect: etcd rejected it before raft, or it
/// is a NOSPACE refusal (see [`crate::alarm::is_no_space`]).
fn write_certainly_failed(status: &Status) -> bool {
    crate::alarm::is_no_space(status)
        || matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
        )
}

/// Runs `op` against `kv` with the timeout and records it; returns the recorded entry.
pub async fn run_op(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    client: usize,
    member: usize,
    op: Op,
) -> Entry {
    let invoke_ns = ctx.now_ns();
    let invoke_seq = ctx.history.tick();
    let outcome = match tokio::time::timeout(OP_TIMEOUT, execute(kv, &op)).await {
        Ok(Ok(result)) => Outcome::Ok(result),
        Ok(Err(status)) if !op.is_write() || write_certainly_failed(&status) => {
            Outcome::Fail(format!("{:?}: {}", status.code(), status.message()))
        }
        Ok(Err(status)) => Outcome::Info(format!("{:?}: {}", status.code(), status.message())),
        Err(_) if op.is_write() => Outcome::Info("timeout".to_string()),
        Err(_) => Outcome::Fail("timeout".to_string()),
    };
    let entry = ctx.history.push(Entry {
        index: 0,
        client,
        member,
        op,
        invoke_ns,
        complete_ns: ctx.now_ns(),
        invoke_seq,
        complete_seq: 0,
        outcome,
    });
    ctx.trace.record(format!("op {entry}"));
    entry
}

/// Connects to `endpoint`, giving up after `OP_TIMEOUT`.
pub async fn connect(endpoint: &str) -> Option<KvClient<Channel>> {
    match tokio::time::timeout(OP_TIMEOUT, KvClient::connect(endpoint.to_string())).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// One client's state: its generator and what it last read of each key (for Cas).
struct Client {
    id: usize,
    member: usize,
    rng: SeedRng,
    next_value: u64,
    last_seen: Vec<Option<String>>,
    /// The entry with the highest revision among its ok linearizable operations.
    max_revision: Option<Entry>,
}

impl Client {
    fn value(&mut self) -> String {
        self.next_value += 1;
        format!("c{}-{}", self.id, self.next_value)
    }

    fn next_op(&mut self) -> Op {
        let k = self.rng.below(KEYS);
        let roll = self.rng.below(100);
        match roll {
            0..=24 => Op::Put {
                key: key(k),
                value: self.value(),
            },
            25..=44 => Op::Get {
                key: key(k),
                serializable: false,
            },
            45..=52 => Op::Get {
                key: key(k),
                serializable: true,
            },
            53..=59 => Op::Delete { key: key(k) },
            60..=67 => Op::Range {
                serializable: self.rng.chance(1, 4),
            },
            68..=87 => Op::Cas {
                key: key(k),
                expect: self.last_seen[k as usize].clone(),
                value: self.value(),
            },
            _ => {
                let other = (k + 1 + self.rng.below(KEYS - 1)) % KEYS;
                Op::MultiPut {
                    kvs: vec![(key(k), self.value()), (key(other), self.value())],
                }
            }
        }
    }

    /// Remembers what the client learned, and checks that revisions never go backwards.
    fn observe(&mut self, ctx: &Ctx, entry: &Entry) {
        let Outcome::Ok(result) = &entry.outcome else {
            return;
        };
        if let OpResult::Read { kvs, .. } = result {
            if let Op::Get { key, .. } = &entry.op {
                let i = key[1..].parse::<usize>().unwrap_or(0);
                self.last_seen[i] = kvs.first().map(|kv| kv.value.clone());
            }
        }
        if entry.op.is_serializable() {
            return;
        }
        match &self.max_revision {
            Some(max) if result.revision() < max_rev(max) => {
                let mut evidence = vec![max.to_string()];
                evidence.extend(events_between(
                    &ctx.events(),
                    max.invoke_ns,
                    entry.complete_ns,
                    8,
                ));
                evidence.push(entry.to_string());
                ctx.violation(
                    FailureKind::RevisionBackwards,
                    format!(
                        "revision went backwards for client c{}: rev {} after rev {}",
                        self.id,
                        result.revision(),
                        max_rev(max)
                    ),
                    evidence,
                );
            }
            Some(max) if result.revision() == max_rev(max) => {}
            _ => self.max_revision = Some(entry.clone()),
        }
    }
}

fn max_rev(entry: &Entry) -> i64 {
    match &entry.outcome {
        Outcome::Ok(r) => r.revision(),
        _ => 0,
    }
}

/// Runs client `id` against `endpoint` until `until`.
pub async fn client(
    ctx: Ctx,
    endpoint: String,
    id: usize,
    member: usize,
    seed: u64,
    until: tokio::time::Instant,
) {
    let mut c = Client {
        id,
        member,
        rng: SeedRng::new(seed, 0xC1_1E47 + id as u64),
        next_value: 0,
        last_seen: vec![None; KEYS as usize],
        max_revision: None,
    };
    let mut kv: Option<KvClient<Channel>> = None;
    while tokio::time::Instant::now() < until {
        let think = c.rng.between(0, THINK_MS_MAX);
        tokio::time::sleep(Duration::from_millis(think)).await;
        let mut conn = match kv.take() {
            Some(k) => k,
            None => match connect(&endpoint).await {
                Some(k) => k,
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let op = c.next_op();
        let entry = run_op(&ctx, &mut conn, c.id, c.member, op).await;
        c.observe(&ctx, &entry);
        if matches!(entry.outcome, Outcome::Ok(_)) {
            kv = Some(conn);
        }
    }
}

/// Spawns `clients` clients on the cluster's client node; they stop at `until`.
pub fn spawn_clients(
    cluster: &Cluster,
    ctx: &Ctx,
    clients: usize,
    seed: u64,
    until: tokio::time::Instant,
) -> Vec<madsim::task::JoinHandle<()>> {
    (0..clients)
        .map(|id| {
            let member = id % cluster.members.len();
            let endpoint = cluster.endpoint(member);
            cluster
                .client_node
                .spawn(client(ctx.clone(), endpoint, id, member, seed, until))
        })
        .collect()
}

/// One attempt at a serializable read of member `i`, from the client node.
async fn probe_once(cluster: &Cluster, i: usize) -> bool {
    let endpoint = cluster.endpoint(i);
    let attempt = cluster.client_node.spawn(async move {
        let Some(mut kv) = connect(&endpoint).await else {
            return false;
        };
        let op = Op::Get {
            key: key(0),
            serializable: true,
        };
        matches!(
            tokio::time::timeout(OP_TIMEOUT, execute(&mut kv, &op)).await,
            Ok(Ok(_))
        )
    });
    attempt.await.unwrap_or(false)
}

/// Whether member `i` answers a serializable read within `bound_ms` (stops early if the
/// member's process exits). Not recorded: it reads and writes nothing.
pub async fn probe_serves(cluster: &Cluster, i: usize, bound_ms: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(bound_ms);
    while tokio::time::Instant::now() < deadline {
        if cluster.exited(i).is_some() {
            return false;
        }
        if probe_once(cluster, i).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Runs `op` on member `member` from the client node as client `client`, recorded.
pub async fn recorded_op(
    cluster: &Cluster,
    ctx: &Ctx,
    client: usize,
    member: usize,
    op: Op,
) -> Option<Entry> {
    let endpoint = cluster.endpoint(member);
    let ctx = ctx.clone();
    let task = cluster.client_node.spawn(async move {
        let mut kv = connect(&endpoint).await?;
        Some(run_op(&ctx, &mut kv, client, member, op).await)
    });
    task.await.ok().flatten()
}
