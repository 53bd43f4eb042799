//! Watch clients and the compactor: watches kept open on the workload's keys, every response
//! recorded in keel-jepsen's watch-log format, and compactions at revisions where a delete
//! happened, each followed by a watch that starts exactly at the compaction revision.
//!
//! A watch client picks a spec (one key, the `k*` prefix, every key from `k` on — leased keys
//! included —, or the lease key space; with or without `prev_kv`, filters, fragments) and a
//! start (now, a past revision, or the last compaction revision), then keeps the watch open
//! until the safety phase ends. When its stream fails, stalls (no answer to a progress request
//! within [`WATCH_STALL_MS`]) or is canceled, it records the end and opens a *new* watch —
//! on the next member — from the last revision it saw + 1 (after a compaction cancel: from the
//! compaction revision). Every watch has its own recorder id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_jepsen::history::KeyValue as JKeyValue;
use keel_jepsen::watch::{
    EventType, Filter, WatchEvent, WatchLog, WatchRecord, WatchRecordKind, WatchRequest,
};
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::watch_create_request::FilterType;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest as PbWatchRequest, WatchResponse,
};
use keel_proto::mvccpb;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::cluster::Cluster;
use crate::history::{Op, OpResult, Outcome};
use crate::lease_check::{is_lease_key, Gone, LEASE_PREFIX};
use crate::nemesis::SeedRng;
use crate::workload::{connect, run_op, Ctx, OP_TIMEOUT};

/// A watch client asks for progress this often.
pub const WATCH_PROGRESS_EVERY_MS: u64 = 400;
/// A watch that answers nothing for this long is given up and reopened elsewhere.
pub const WATCH_STALL_MS: u64 = 2000;
/// The compactor's longest pause between compactions.
pub const COMPACT_EVERY_MS_MAX: u64 = 900;
/// The compactor's check watch gives up waiting for progress after this long.
const BOUNDARY_WATCH_MS: u64 = 1500;
/// History client id of the compactor.
pub const COMPACTOR_CLIENT: usize = 900;

/// The run's watch log, shared by every watch client.
#[derive(Debug, Clone, Default)]
pub struct WatchRecorder {
    inner: Arc<Mutex<(u64, Vec<WatchRecord>)>>,
}

impl WatchRecorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<WatchRecord>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh recorder id for a new watch.
    pub fn new_watch(&self) -> u64 {
        let mut g = self.lock();
        g.0 += 1;
        g.0
    }

    /// The log so far.
    pub fn log(&self) -> WatchLog {
        WatchLog {
            records: self.lock().1.clone(),
        }
    }
}

fn push(ctx: &Ctx, watch: u64, kind: WatchRecordKind) {
    let record = WatchRecord {
        watch,
        time: ctx.now_ns(),
        kind,
    };
    ctx.trace.record(format!("watch {}", record.to_json()));
    ctx.watches.lock().1.push(record);
}

/// Leased keys a watch saw deleted: disappearances for the lease check.
pub fn lease_deletions(log: &WatchLog) -> Vec<Gone> {
    let mut gone = Vec::new();
    for r in &log.records {
        let WatchRecordKind::Events { events, .. } = &r.kind else {
            continue;
        };
        for e in events {
            if e.kind == EventType::Delete && is_lease_key(&e.kv.key) {
                gone.push(Gone {
                    key: e.kv.key.clone(),
                    by_ns: r.time,
                    after_put_ns: None,
                    what: format!(
                        "watch w{} delete {}@{} received at {:.3}s",
                        r.watch,
                        e.kv.key,
                        e.kv.mod_revision,
                        r.time as f64 / 1e9
                    ),
                });
            }
        }
    }
    gone
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn jkv(kv: &mvccpb::KeyValue) -> JKeyValue {
    JKeyValue::new(
        &text(&kv.key),
        &text(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
    )
}

fn event(e: &mvccpb::Event) -> Option<WatchEvent> {
    let kv = e.kv.as_ref()?;
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
        EventType::Delete
    } else {
        EventType::Put
    };
    Some(WatchEvent {
        kind,
        kv: jkv(kv),
        prev_kv: e.prev_kv.as_ref().map(jkv),
    })
}

/// The create request for `spec` from `start`.
fn create_request(spec: &WatchRequest, start: i64) -> PbWatchRequest {
    let filters = spec
        .filters
        .iter()
        .map(|f| match f {
            Filter::NoPut => FilterType::Noput as i32,
            Filter::NoDelete => FilterType::Nodelete as i32,
        })
        .collect();
    let create = WatchCreateRequest {
        key: spec.key.as_bytes().to_vec().into(),
        range_end: spec
            .range_end
            .as_ref()
            .map(|e| e.as_bytes().to_vec().into())
            .unwrap_or_default(),
        start_revision: start,
        progress_notify: spec.progress_notify,
        filters,
        prev_kv: spec.prev_kv,
        fragment: spec.fragment,
        ..Default::default()
    };
    PbWatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }
}

fn progress_request() -> PbWatchRequest {
    PbWatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// One open watch stream.
struct Open {
    tx: mpsc::Sender<PbWatchRequest>,
    responses: Streaming<WatchResponse>,
}

async fn open(endpoint: &str, spec: &WatchRequest, start: i64) -> Option<Open> {
    let mut client = tokio::time::timeout(OP_TIMEOUT, WatchClient::connect(endpoint.to_string()))
        .await
        .ok()?
        .ok()?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(create_request(spec, start)).await.ok()?;
    let call = client.watch(ReceiverStream::new(rx));
    let responses = tokio::time::timeout(OP_TIMEOUT, call).await.ok()?.ok()?;
    Some(Open {
        tx,
        responses: responses.into_inner(),
    })
}

/// How one watch ended.
enum End {
    /// The safety phase is over (or the caller's deadline passed).
    Done,
    /// The stream failed or stalled: reopen from the next revision.
    Broken(String),
    /// Canceled by the server; for compaction when the revision is positive.
    Canceled(i64),
}

/// Records one response of watch `w`; returns the cancel's compaction revision if it was a
/// cancel. Moves `next` past what the response covered.
fn on_response(ctx: &Ctx, w: u64, r: &WatchResponse, next: &mut i64) -> Option<i64> {
    let revision = r.header.as_ref().map_or(0, |h| h.revision);
    if r.created {
        push(ctx, w, WatchRecordKind::Created { revision });
        if *next == 0 {
            *next = revision + 1;
        }
        return None;
    }
    if r.canceled {
        let kind = WatchRecordKind::Canceled {
            compact_revision: r.compact_revision,
            reason: r.cancel_reason.clone(),
        };
        push(ctx, w, kind);
        return Some(r.compact_revision);
    }
    if r.events.is_empty() {
        push(ctx, w, WatchRecordKind::Progress { revision });
        *next = (*next).max(revision + 1);
        return None;
    }
    let events: Vec<WatchEvent> = r.events.iter().filter_map(event).collect();
    let last = events.iter().map(|e| e.revision()).max().unwrap_or(0);
    let kind = WatchRecordKind::Events {
        revision,
        fragment: r.fragment,
        events,
    };
    push(ctx, w, kind);
    if !r.fragment {
        *next = (*next).max(last + 1);
    }
    None
}

/// Runs one watch until `until`; `next` is the next revision the client needs (0: from now).
async fn run_watch(
    ctx: &Ctx,
    mut o: Open,
    w: u64,
    next: &mut i64,
    until: tokio::time::Instant,
) -> End {
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return End::Done;
        }
        if now.duration_since(last_heard) >= Duration::from_millis(WATCH_STALL_MS) {
            return End::Broken("stalled: no answer to progress requests".to_string());
        }
        let tick = Duration::from_millis(WATCH_PROGRESS_EVERY_MS).min(until - now);
        match tokio::time::timeout(tick, o.responses.message()).await {
            Err(_) => {
                if o.tx.try_send(progress_request()).is_err() {
                    return End::Broken("request side closed".to_string());
                }
            }
            Ok(Ok(Some(r))) => {
                last_heard = tokio::time::Instant::now();
                if let Some(compacted) = on_response(ctx, w, &r, next) {
                    return End::Canceled(compacted);
                }
            }
            Ok(Ok(None)) => return End::Broken("stream ended".to_string()),
            Ok(Err(s)) => return End::Broken(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// A random watch spec.
fn pick_spec(rng: &mut SeedRng) -> WatchRequest {
    let mut spec = match rng.below(8) {
        0..=1 => WatchRequest::key(&format!("k{}", rng.below(crate::workload::KEYS))),
        2..=4 => WatchRequest::range("k", "l"),
        5..=6 => WatchRequest::range("k", "\0"),
        _ => WatchRequest::range(LEASE_PREFIX, &crate::history::prefix_end(LEASE_PREFIX)),
    };
    spec.prev_kv = rng.chance(1, 2);
    spec.fragment = rng.chance(1, 4);
    if rng.chance(1, 5) {
        spec.filters.push(Filter::NoPut);
    } else if rng.chance(1, 8) {
        spec.filters.push(Filter::NoDelete);
    }
    spec
}

/// The revision of the newest acknowledged operation, and of the newest acknowledged
/// compaction, in the history so far.
fn known_revisions(ctx: &Ctx) -> (i64, i64) {
    let mut newest = 0;
    let mut compacted = 0;
    for e in ctx.history.entries() {
        if let Outcome::Ok(r) = &e.outcome {
            newest = newest.max(r.revision());
            if let Op::Compact { revision } = e.op {
                compacted = compacted.max(revision);
            }
        }
    }
    (newest, compacted)
}

/// Runs watch client `id` until `until`.
pub async fn watch_client(
    ctx: Ctx,
    endpoints: Vec<String>,
    id: usize,
    seed: u64,
    until: tokio::time::Instant,
) {
    let mut rng = SeedRng::new(seed, 0x3A7C4 + id as u64);
    let mut member = id % endpoints.len();
    let spec = pick_spec(&mut rng);
    tokio::time::sleep(Duration::from_millis(rng.between(0, 500))).await;
    let (newest, compacted) = known_revisions(&ctx);
    let mut next: i64 = match rng.below(3) {
        0 => 0,
        1 => (newest - rng.between(0, 20) as i64).max(1),
        _ if compacted > 0 => compacted,
        _ => 1,
    };
    while tokio::time::Instant::now() < until {
        let Some(o) = open(&endpoints[member], &spec, next).await else {
            member = (member + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let w = ctx.watches.new_watch();
        let req = WatchRequest {
            start_revision: next,
            ..spec.clone()
        };
        push(&ctx, w, WatchRecordKind::Open(req));
        match run_watch(&ctx, o, w, &mut next, until).await {
            End::Done => {
                push(&ctx, w, WatchRecordKind::Closed { error: None });
                return;
            }
            End::Broken(why) => {
                push(&ctx, w, WatchRecordKind::Closed { error: Some(why) });
                member = (member + 1) % endpoints.len();
            }
            End::Canceled(compacted) => {
                push(&ctx, w, WatchRecordKind::Closed { error: None });
                if compacted > 0 {
                    next = next.max(compacted);
                }
            }
        }
    }
}

/// The compactor: every so often compacts at the revision of the newest acknowledged delete
/// that removed a key (so a delete sits exactly at the compaction revision), then opens a
/// watch of the `k*` keys starting at that revision and waits for its progress notification.
pub async fn compactor(ctx: Ctx, endpoints: Vec<String>, seed: u64, until: tokio::time::Instant) {
    let mut rng = SeedRng::new(seed, 0xC0_3AC7);
    let mut last = 0i64;
    while tokio::time::Instant::now() < until {
        let pause = rng.between(COMPACT_EVERY_MS_MAX / 3, COMPACT_EVERY_MS_MAX);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let Some(revision) = newest_delete(&ctx, last) else {
            continue;
        };
        let member = rng.index(endpoints.len());
        let Some(mut kv) = connect(&endpoints[member]).await else {
            continue;
        };
        let op = Op::Compact { revision };
        let e = run_op(&ctx, &mut kv, COMPACTOR_CLIENT, member, op).await;
        if !matches!(e.outcome, Outcome::Ok(_)) {
            continue;
        }
        last = revision;
        let member = rng.index(endpoints.len());
        boundary_watch(&ctx, &endpoints[member], revision, until).await;
    }
}

/// The revision of the newest acknowledged delete of a `k*` key above `above`.
fn newest_delete(ctx: &Ctx, above: i64) -> Option<i64> {
    ctx.history
        .entries()
        .iter()
        .filter_map(|e| match (&e.op, &e.outcome) {
            (
                Op::Delete { .. },
                Outcome::Ok(OpResult::Write {
                    revision, deleted, ..
                }),
            ) if *deleted > 0 && *revision > above => Some(*revision),
            _ => None,
        })
        .max()
}

/// A watch of the `k*` keys from exactly `revision` (just compacted), kept until it answers a
/// progress request or a bound passes.
async fn boundary_watch(ctx: &Ctx, endpoint: &str, revision: i64, until: tokio::time::Instant) {
    let spec = WatchRequest::range("k", "l");
    let Some(mut o) = open(endpoint, &spec, revision).await else {
        return;
    };
    let w = ctx.watches.new_watch();
    push(ctx, w, WatchRecordKind::Open(spec.start(revision)));
    let _ = o.tx.send(progress_request()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(BOUNDARY_WATCH_MS);
    let mut next = revision;
    let end = loop {
        let now = tokio::time::Instant::now();
        if now >= deadline || now >= until {
            break None;
        }
        match tokio::time::timeout(deadline - now, o.responses.message()).await {
            Ok(Ok(Some(r))) => {
                let progress = !r.created && !r.canceled && r.events.is_empty();
                if on_response(ctx, w, &r, &mut next).is_some() || progress {
                    break None;
                }
            }
            Ok(Ok(None)) => break Some("stream ended".to_string()),
            Ok(Err(s)) => break Some(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => break None,
        }
    };
    push(ctx, w, WatchRecordKind::Closed { error: end });
}

/// Spawns `clients` watch clients and the compactor on the cluster's client node.
pub fn spawn_watch_clients(
    cluster: &Cluster,
    ctx: &Ctx,
    clients: usize,
    seed: u64,
    until: tokio::time::Instant,
) -> Vec<madsim::task::JoinHandle<()>> {
    let endpoints = cluster.endpoints();
    let mut tasks: Vec<_> = (0..clients)
        .map(|id| {
            let task = watch_client(ctx.clone(), endpoints.clone(), id, seed, until);
            cluster.client_node.spawn(task)
        })
        .collect();
    let task = compactor(ctx.clone(), endpoints, seed, until);
    tasks.push(cluster.client_node.spawn(task));
    tasks
}
