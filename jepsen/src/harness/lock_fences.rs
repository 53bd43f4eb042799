//! The guarded key's whole history, read after the heal: every fenced write that took effect,
//! in doubt or not.
//!
//! A holder's fenced write can time out (its member paused or cut off) and still apply later;
//! the clients' records cannot say whether or where it landed. After the heal the harness
//! watches `jfence` and `jowner` from revision 1 (the harness never compacts) until a progress
//! notification at or past the store's current revision, and joins the two keys' puts by
//! revision: each fenced txn puts both at one revision, so a revision with both is one applied
//! fenced write and names its fence and its client. They go into the lock log as `applied`
//! records ([`LockRecord::op`]) followed by one `fences-read` record naming the member read;
//! when the history could not be read, one `fences-unread` record says why, so the check
//! reports it instead of judging from the clients' records alone.
use std::collections::BTreeMap;
use std::time::Duration;

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use keel_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::lock::{LockLog, LockRecord};
use super::member::channel;

const CALL: Duration = Duration::from_secs(3);
/// How long one member gets to stream the guarded keys' history.
const READ_FOR: Duration = Duration::from_secs(20);
const PROGRESS_EVERY: Duration = Duration::from_millis(300);

/// One applied fenced write, from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedFence {
    /// The revision it made.
    pub revision: i64,
    /// The fence it wrote (`jfence`).
    pub fence: i64,
    /// The client it names (`jowner`).
    pub client: u64,
}

/// Reads the guarded keys' history from some member of `n` and appends it to `log`: one
/// `applied` record per fenced write the store holds, or one `fences-unread` record.
pub async fn record_applied_fences(log: &LockLog, n: usize) {
    let mut why = String::from("no member answered");
    for member in 0..n {
        match read_from(member).await {
            Ok(applied) => {
                for a in applied {
                    log.push(LockRecord {
                        client: a.client,
                        op: "applied".to_string(),
                        fence: a.fence,
                        invoke_ns: 0,
                        complete_ns: 0,
                        outcome: "ok".to_string(),
                        applied: true,
                        revision: a.revision,
                    });
                }
                log.push(LockRecord {
                    client: 0,
                    op: "fences-read".to_string(),
                    fence: 0,
                    invoke_ns: 0,
                    complete_ns: 0,
                    outcome: format!("m{}", member + 1),
                    applied: false,
                    revision: 0,
                });
                return;
            }
            Err(e) => why = format!("m{}: {e}", member + 1),
        }
    }
    log.push(LockRecord {
        client: 0,
        op: "fences-unread".to_string(),
        fence: 0,
        invoke_ns: 0,
        complete_ns: 0,
        outcome: why,
        applied: false,
        revision: 0,
    });
}

async fn current_revision(member: usize) -> Result<i64, String> {
    let mut kv = KvClient::new(channel(member, CALL).map_err(|e| e.to_string())?);
    let req = RangeRequest {
        key: b"jfence".to_vec().into(),
        ..Default::default()
    };
    let r = tokio::time::timeout(CALL, kv.range(req))
        .await
        .map_err(|_| "range timed out".to_string())?
        .map_err(|e| format!("range: {}", e.message()))?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

fn request(union: RequestUnion) -> WatchRequest {
    WatchRequest {
        request_union: Some(union),
    }
}

/// Streams `jfence` and `jowner` from revision 1 on `member` until a progress notification at
/// or past the store's current revision.
async fn read_from(member: usize) -> Result<Vec<AppliedFence>, String> {
    let upto = current_revision(member).await?;
    let mut client = WatchClient::new(channel(member, CALL).map_err(|e| e.to_string())?);
    let (tx, rx) = mpsc::channel(8);
    for key in ["jfence", "jowner"] {
        let create = WatchCreateRequest {
            key: key.as_bytes().to_vec().into(),
            start_revision: 1,
            ..Default::default()
        };
        let _ = tx.send(request(RequestUnion::CreateRequest(create))).await;
    }
    let call = client.watch(ReceiverStream::new(rx));
    let mut stream = tokio::time::timeout(CALL, call)
        .await
        .map_err(|_| "watch timed out".to_string())?
        .map_err(|e| format!("watch: {}", e.message()))?
        .into_inner();
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + READ_FOR;
    while !seen.done(upto) {
        let next = tokio::time::timeout(PROGRESS_EVERY, stream.message());
        match next.await {
            Err(_) => {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("no progress past revision {upto} in {READ_FOR:?}"));
                }
                let progress = RequestUnion::ProgressRequest(WatchProgressRequest {});
                let _ = tx.send(request(progress)).await;
            }
            Ok(Err(e)) => return Err(format!("watch stream: {}", e.message())),
            Ok(Ok(None)) => return Err("the watch stream ended".to_string()),
            Ok(Ok(Some(r))) => seen.take(&r)?,
        }
    }
    seen.join()
}

/// What the two watches delivered.
#[derive(Default)]
struct Seen {
    created: usize,
    /// The highest revision a progress notification vouched for.
    progress: i64,
    fences: BTreeMap<i64, String>,
    owners: BTreeMap<i64, String>,
}

impl Seen {
    fn done(&self, upto: i64) -> bool {
        self.created == 2 && self.progress >= upto
    }

    fn take(&mut self, r: &WatchResponse) -> Result<(), String> {
        if r.canceled || r.compact_revision > 0 {
            return Err(format!(
                "watch canceled (compacted at {}): {}",
                r.compact_revision, r.cancel_reason
            ));
        }
        if r.created {
            self.created += 1;
            return Ok(());
        }
        if r.events.is_empty() {
            self.progress = self
                .progress
                .max(r.header.as_ref().map_or(0, |h| h.revision));
            return Ok(());
        }
        for e in &r.events {
            let Some(kv) = &e.kv else { continue };
            if e.r#type != EventType::Put as i32 {
                continue;
            }
            let value = String::from_utf8_lossy(&kv.value).into_owned();
            match kv.key.as_ref() {
                b"jfence" => self.fences.insert(kv.mod_revision, value),
                b"jowner" => self.owners.insert(kv.mod_revision, value),
                _ => None,
            };
        }
        Ok(())
    }

    /// The fenced writes: revisions that put both keys. The first `jfence` (fence 0, put
    /// before the clients start) has no owner and is left out.
    fn join(self) -> Result<Vec<AppliedFence>, String> {
        let mut out = Vec::new();
        for (revision, fence) in &self.fences {
            let Some(owner) = self.owners.get(revision) else {
                continue;
            };
            let bad =
                |what: &str, v: &str| format!("{what} at rev {revision} is not a number: {v:?}");
            out.push(AppliedFence {
                revision: *revision,
                fence: fence.parse().map_err(|_| bad("jfence", fence))?,
                client: owner.parse().map_err(|_| bad("jowner", owner))?,
            });
        }
        Ok(out)
    }
}
