//! The Watch API at the gRPC level, side by side with etcd 3.4.23: the same script of watch
//! requests and writes goes to both servers, and every watch response must be identical (prost
//! Debug text; only cluster id, member id and raft term are masked).
//!
//! This covers what `etcdctl watch` cannot send: filters, client-chosen and duplicate watch
//! ids, empty ranges, cancel requests (known and unknown ids), progress requests, the exact
//! fields of a compacted watch's cancellation, a watch starting at the compaction revision,
//! several watches on one stream, and a multi-key txn arriving as one response.
//!
//! `watch_harness_self_check` runs the same script against two etcds, which proves the
//! comparison is deterministic.
// These tests run real processes (etcd, keel) on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use common::{keel_bin, require_on_path, Server, TempDir};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::request_op::Request as Op;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Streaming;

/// After a step, responses are collected until none arrives for this long.
const QUIET: Duration = Duration::from_millis(400);

/// One step of the script.
enum Step {
    Watch(WatchRequest),
    Put(&'static str, &'static str),
    Delete(&'static str, &'static str),
    Txn(Vec<RequestOp>),
    Compact(i64),
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn create(req: WatchCreateRequest) -> Step {
    Step::Watch(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(req)),
    })
}

fn on(key: &str, end: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })),
    }
}

/// Both servers start empty (revision 1); the comments give the revision after each write.
fn script() -> Vec<Step> {
    vec![
        create(on("a", "")),
        create(WatchCreateRequest {
            filters: vec![0], // NOPUT
            prev_kv: true,
            ..on("p", "q")
        }),
        create(WatchCreateRequest {
            watch_id: 7,
            ..on("b", "")
        }),
        create(WatchCreateRequest {
            watch_id: 7,
            ..on("c", "")
        }),
        create(on("z", "a")), // empty range
        create(WatchCreateRequest {
            filters: vec![1], // NODELETE
            prev_kv: true,
            ..on("a", "\0")
        }),
        Step::Put("a", "1"),         // 2
        Step::Put("p1", "x"),        // 3
        Step::Put("p1", "y"),        // 4
        Step::Delete("p1", ""),      // 5
        Step::Put("b", "2"),         // 6
        Step::Delete("nothing", ""), // no revision
        Step::Txn(vec![put_op("p2", "t"), put_op("a", "t"), put_op("b", "t")]), // 7
        Step::Watch(WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
        }),
        Step::Watch(WatchRequest {
            request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: 7,
            })),
        }),
        Step::Watch(WatchRequest {
            request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: 99,
            })),
        }),
        Step::Put("b", "3"),    // 8: watch 7 is gone
        Step::Delete("a", "c"), // 9
        Step::Compact(5),
        create(WatchCreateRequest {
            start_revision: 3,
            ..on("a", "\0")
        }), // compacted
        // From just after the compaction revision. (From the compaction revision itself keel
        // also sends the delete of p1 at 5, which etcd 3.4 loses — etcd #19179; the engine's
        // watch tests cover keel's behaviour there.)
        create(WatchCreateRequest {
            start_revision: 6,
            prev_kv: true,
            ..on("a", "\0")
        }),
        create(WatchCreateRequest {
            start_revision: 100,
            ..on("b", "")
        }), // future start
        Step::Put("b", "4"), // 10: not seen by the future watch
        create(WatchCreateRequest {
            start_revision: 1,
            ..on("never", "")
        }), // compacted, though nothing ever changed there
    ]
}

/// What the stream yields: a response, the end, or an error.
type Received = Result<Option<WatchResponse>, tonic::Status>;

struct Target {
    kv: KvClient<Channel>,
    requests: mpsc::Sender<WatchRequest>,
    responses: mpsc::UnboundedReceiver<Received>,
}

async fn connect(server: &Server) -> Result<Target> {
    let channel = Channel::from_shared(format!("http://{}", server.endpoint()))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", server.label()))?;
    let mut kv = KvClient::new(channel.clone());
    // Wait until the server serves linearizable reads (it has a leader).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while kv
        .range(keel_proto::etcdserverpb::RangeRequest {
            key: b("probe"),
            ..Default::default()
        })
        .await
        .is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} never served a read",
            server.label()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (requests, rx) = mpsc::channel(16);
    let (tx, responses) = mpsc::unbounded_channel();
    // grpc-go (etcd) sends the response headers only with the first response, so the call
    // completes only once a request went out: run it beside the script.
    let mut client = WatchClient::new(channel);
    tokio::spawn(async move {
        let mut stream: Streaming<WatchResponse> = match client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let _ = tx.send(Err(status));
                return;
            }
        };
        loop {
            let item = stream.message().await;
            let done = !matches!(item, Ok(Some(_)));
            if tx.send(item).is_err() || done {
                return;
            }
        }
    });
    Ok(Target {
        kv,
        requests,
        responses,
    })
}

async fn step(t: &mut Target, s: &Step) -> Result<String> {
    let mut out = String::new();
    let written = match s {
        Step::Watch(r) => {
            t.requests.send(r.clone()).await?;
            String::new()
        }
        Step::Put(k, v) => format!(
            "{:?}",
            t.kv.put(PutRequest {
                key: b(k),
                value: b(v),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().header.map(|h| h.revision))
            .map_err(|e| e.message().to_string())
        ),
        Step::Delete(k, end) => format!(
            "{:?}",
            t.kv.delete_range(DeleteRangeRequest {
                key: b(k),
                range_end: b(end),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().deleted)
            .map_err(|e| e.message().to_string())
        ),
        Step::Txn(ops) => format!(
            "{:?}",
            t.kv.txn(TxnRequest {
                success: ops.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().succeeded)
            .map_err(|e| e.message().to_string())
        ),
        Step::Compact(rev) => format!(
            "{:?}",
            t.kv.compact(CompactionRequest {
                revision: *rev,
                physical: true,
            })
            .await
            .map(|_| ())
            .map_err(|e| e.message().to_string())
        ),
    };
    let _ = writeln!(out, "write: {written}");
    // etcd sends the responses of different watches in Go map order: compare each watch's
    // responses in order, the watches sorted by id.
    let mut got: Vec<(i64, String)> = Vec::new();
    loop {
        match tokio::time::timeout(QUIET, t.responses.recv()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Ok(Some(r)))) => {
                got.push((r.watch_id, common::mask_ids_in_debug(&format!("{r:#?}"))))
            }
            Ok(Some(Ok(None))) => {
                let _ = writeln!(out, "stream ended");
                break;
            }
            Ok(Some(Err(status))) => {
                let _ = writeln!(
                    out,
                    "stream error {:?} {:?}",
                    status.code(),
                    status.message()
                );
                break;
            }
        }
    }
    got.sort_by_key(|(id, _)| *id);
    for (_, text) in got {
        let _ = writeln!(out, "{text}");
    }
    Ok(out)
}

async fn diff(other_label: &str, other: &Path) -> Result<()> {
    let etcd = require_on_path("etcd")?;
    let mut dir = TempDir::new("watch-diff")?;
    let start =
        |label: &str, program: &Path| Server::start_default(label, program, dir.path(), &[]);
    let a = start("etcd", &etcd)?;
    let b = start(other_label, other)?;
    let mut ta = connect(&a).await?;
    let mut tb = connect(&b).await?;
    let mut report = String::new();
    let mut mismatches = 0;
    for (i, s) in script().iter().enumerate() {
        let (ra, rb) = tokio::join!(step(&mut ta, s), step(&mut tb, s));
        let (ra, rb) = (ra?, rb?);
        if ra != rb {
            mismatches += 1;
            let _ = writeln!(
                report,
                "=== step {i}\n--- etcd\n{ra}\n--- {other_label}\n{rb}"
            );
        }
    }
    if mismatches > 0 {
        dir.keep();
        anyhow::bail!("{mismatches} watch steps differ from etcd:\n{report}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_responses_match_etcd() -> Result<()> {
    diff("keel", &keel_bin()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_harness_self_check() -> Result<()> {
    let etcd = require_on_path("etcd")?;
    diff("etcd-2", &etcd).await
}
