//! The recorder: every client operation as an invocation and a completion in the history's
//! JSON-lines format, timed in monotonic nanoseconds since the run began.
//!
//! A read that errors or times out certainly did not take effect (`fail`). A write does only
//! if etcd refused it before raft; any other error or a timeout leaves it in doubt (`info`),
//! and the client then continues as a new process, as Jepsen's do, because the old one may
//! still have an operation in flight.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use super::client::{error_text, execute, write_certainly_failed};
use crate::history::{Event, History, ProcessId, Request, Response};

/// How an operation ended.
#[derive(Clone, Debug)]
pub enum Done {
    /// It took effect with this response.
    Ok(Response),
    /// It certainly did not take effect.
    Fail,
    /// Unknown.
    Info,
}

/// The shared history of one run.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

fn is_write(req: &Request) -> bool {
    !matches!(req, Request::Get(_) | Request::Range(_))
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the run began.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Appends the event `make` builds for the time now, taken under the lock so that the
    /// history's times never go backwards.
    fn push(&self, make: impl FnOnce(u64) -> Event) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now_ns();
        events.push(make(now));
    }

    /// Sends `req` as `process`, recording its invocation and completion. `recorded` is the
    /// request as the history shows it (the stale-read probe records a serializable read as
    /// a linearizable one; otherwise it is `req`).
    pub async fn op(
        &self,
        kv: &mut KvClient<Channel>,
        process: ProcessId,
        req: &Request,
        recorded: Request,
        timeout: Duration,
    ) -> Done {
        let call = execute(kv, req);
        self.op_with(process, is_write(req), recorded, timeout, call)
            .await
    }

    /// Records `recorded` as invoked by `process` now, awaits `call` (bounded by `timeout`)
    /// and records its completion: `ok`, `fail` for a read's error or a write etcd refused,
    /// `info` for a write's other error or timeout.
    pub async fn op_with(
        &self,
        process: ProcessId,
        write: bool,
        recorded: Request,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<Response, tonic::Status>>,
    ) -> Done {
        let f = recorded.function();
        self.push(|now| Event::invoke(process, now, recorded));
        let result = tokio::time::timeout(timeout, call).await;
        let (done, error) = match result {
            Ok(Ok(resp)) => (Done::Ok(resp), String::new()),
            Ok(Err(status)) if !write || write_certainly_failed(&status) => {
                (Done::Fail, error_text(&status))
            }
            Ok(Err(status)) => (Done::Info, error_text(&status)),
            Err(_) if write => (Done::Info, "timeout".to_string()),
            Err(_) => (Done::Fail, "timeout".to_string()),
        };
        self.push(|now| match &done {
            Done::Ok(resp) => Event::ok(process, f, now, resp.clone()),
            Done::Fail => Event::fail(process, f, now, &error),
            Done::Info => Event::info(process, f, now, &error),
        });
        done
    }

    /// Records the invocation of `req` by `process` now, never completed: an operation in
    /// doubt from now on (the lease workload's deletion of a lease's keys by its expiry or
    /// revoke, which no client's response reports).
    pub fn in_doubt(&self, process: ProcessId, req: Request) {
        self.push(|now| Event::invoke(process, now, req));
    }

    /// The history so far.
    pub fn history(&self) -> History {
        let events = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        History { events }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}
