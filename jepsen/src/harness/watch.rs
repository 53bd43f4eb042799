//! The `watch` workload's watchers: beside the register clients (the writers), one watcher per
//! member keeps a watch open on the whole register key space from revision 1, every response
//! recorded in keel-jepsen's watch-log format on the history's clock. When a stream breaks,
//! stalls (no answer to a progress request within [`STALL`]) or is canceled, the watcher
//! records its end and opens a new watch on the next member from the last revision it saw + 1.
//! The watch checker (`crate::watch`) then checks the log against the history.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest as PbWatchRequest, WatchResponse,
};
use keel_proto::mvccpb;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::member::channel;
use super::recorder::Recorder;
use crate::history::KeyValue;
use crate::watch::{EventType, WatchEvent, WatchLog, WatchRecord, WatchRecordKind, WatchRequest};

/// A watcher asks for progress after this long without a response.
const PROGRESS_EVERY: Duration = Duration::from_millis(400);
/// A watch that answers nothing for this long is given up and reopened elsewhere.
const STALL: Duration = Duration::from_millis(2500);
const OPEN_TIMEOUT: Duration = Duration::from_millis(1500);

/// The run's watch log, shared by the watchers; times come from the history's recorder.
#[derive(Clone)]
pub struct WatchRecorder {
    rec: Recorder,
    inner: Arc<Mutex<(u64, Vec<WatchRecord>)>>,
}

impl WatchRecorder {
    /// A log on `rec`'s clock.
    pub fn new(rec: Recorder) -> WatchRecorder {
        WatchRecorder {
            rec,
            inner: Arc::new(Mutex::new((0, Vec::new()))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<WatchRecord>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_watch(&self) -> u64 {
        let mut g = self.lock();
        g.0 += 1;
        g.0
    }

    fn push(&self, watch: u64, kind: WatchRecordKind) {
        let mut g = self.lock();
        let time = self.rec.now_ns();
        g.1.push(WatchRecord { watch, time, kind });
    }

    /// The log so far.
    pub fn log(&self) -> WatchLog {
        WatchLog {
            records: self.lock().1.clone(),
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kv(k: &mvccpb::KeyValue) -> KeyValue {
    KeyValue::new(
        &text(&k.key),
        &text(&k.value),
        k.create_revision,
        k.mod_revision,
        k.version,
    )
}

fn event(e: &mvccpb::Event) -> Option<WatchEvent> {
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
        EventType::Delete
    } else {
        EventType::Put
    };
    Some(WatchEvent {
        kind,
        kv: kv(e.kv.as_ref()?),
        prev_kv: e.prev_kv.as_ref().map(kv),
    })
}

fn create(spec: &WatchRequest) -> PbWatchRequest {
    let create = WatchCreateRequest {
        key: spec.key.as_bytes().to_vec().into(),
        range_end: spec
            .range_end
            .as_ref()
            .map(|e| e.as_bytes().to_vec().into())
            .unwrap_or_default(),
        start_revision: spec.start_revision,
        prev_kv: spec.prev_kv,
        ..Default::default()
    };
    PbWatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }
}

fn progress() -> PbWatchRequest {
    PbWatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

struct Open {
    tx: mpsc::Sender<PbWatchRequest>,
    responses: Streaming<WatchResponse>,
}

async fn open(member: usize, spec: &WatchRequest) -> Option<Open> {
    let mut client = WatchClient::new(channel(member, OPEN_TIMEOUT).ok()?);
    let (tx, rx) = mpsc::channel(8);
    tx.send(create(spec)).await.ok()?;
    let call = client.watch(ReceiverStream::new(rx));
    let responses = tokio::time::timeout(OPEN_TIMEOUT, call).await.ok()?.ok()?;
    Some(Open {
        tx,
        responses: responses.into_inner(),
    })
}

/// How one watch ended.
enum End {
    /// The fault phase is over.
    Done,
    /// The stream failed or stalled: reopen from the next revision.
    Broken(String),
    /// Canceled by the server (for compaction when positive).
    Canceled(i64),
}

/// Records one response of watch `w`; moves `next` past what it covered. A cancel gives
/// its compaction revision.
fn on_response(log: &WatchRecorder, w: u64, r: &WatchResponse, next: &mut i64) -> Option<i64> {
    let revision = r.header.as_ref().map_or(0, |h| h.revision);
    if r.created {
        log.push(w, WatchRecordKind::Created { revision });
        return None;
    }
    if r.canceled {
        let kind = WatchRecordKind::Canceled {
            compact_revision: r.compact_revision,
            reason: r.cancel_reason.clone(),
        };
        log.push(w, kind);
        return Some(r.compact_revision);
    }
    if r.events.is_empty() {
        log.push(w, WatchRecordKind::Progress { revision });
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
    log.push(w, kind);
    if !r.fragment {
        *next = (*next).max(last + 1);
    }
    None
}

async fn run_watch(
    log: &WatchRecorder,
    mut o: Open,
    w: u64,
    next: &mut i64,
    until: Instant,
) -> End {
    let mut last_heard = Instant::now();
    loop {
        let now = Instant::now();
        if now >= until {
            return End::Done;
        }
        if now.duration_since(last_heard) >= STALL {
            return End::Broken("stalled: no answer to progress requests".to_string());
        }
        let tick = PROGRESS_EVERY.min(until - now);
        match tokio::time::timeout(tick, o.responses.message()).await {
            Err(_) => {
                if o.tx.try_send(progress()).is_err() {
                    return End::Broken("request side closed".to_string());
                }
            }
            Ok(Ok(Some(r))) => {
                last_heard = Instant::now();
                if let Some(compacted) = on_response(log, w, &r, next) {
                    return End::Canceled(compacted);
                }
            }
            Ok(Ok(None)) => return End::Broken("stream ended".to_string()),
            Ok(Err(s)) => return End::Broken(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// Runs watcher `id` (starting on member `id % n`) until `until`, on the register keys from
/// revision 1; `prev_kv` for odd ids.
pub async fn watcher(log: WatchRecorder, id: usize, n: usize, until: Instant) {
    let mut member = id % n;
    let mut next: i64 = 1;
    let base = WatchRequest {
        prev_kv: id % 2 == 1,
        ..WatchRequest::range("r", "s")
    };
    while Instant::now() < until {
        let spec = WatchRequest {
            start_revision: next,
            ..base.clone()
        };
        let Some(o) = open(member, &spec).await else {
            member = (member + 1) % n;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let w = log.new_watch();
        log.push(w, WatchRecordKind::Open(spec));
        match run_watch(&log, o, w, &mut next, until).await {
            End::Done => {
                log.push(w, WatchRecordKind::Closed { error: None });
                return;
            }
            End::Broken(why) => {
                log.push(w, WatchRecordKind::Closed { error: Some(why) });
                member = (member + 1) % n;
            }
            End::Canceled(compacted) => {
                log.push(w, WatchRecordKind::Closed { error: None });
                next = next.max(compacted);
            }
        }
    }
}
