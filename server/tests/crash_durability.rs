//! Crash durability: every put keel acknowledged survives `kill -9` and a restart on the same data
//! directory, at the revision it was acknowledged with.
//!
//! Each round starts keel on the same data dir (every other round after first killing it right
//! after its port opens, i.e. during recovery), checks everything acknowledged in earlier rounds,
//! runs a concurrent put load (unique keys), SIGKILLs keel mid-load at a different point, and
//! moves on. A quarter of the writers write key pairs in one txn, which must survive atomically.
//! A final restart checks the last round. Unacknowledged puts may or may not be there,
//! but whatever is there must be exactly what was written.
//!
//! `KEEL_CRASH_TEST_BIN=/usr/bin/etcd` runs the same test against another etcd-compatible server
//! (how the harness itself was validated).
// These tests run real processes (etcd, keel) on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use common::{keel_bin, Ports, Server, TempDir};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::request_op::Request;
use keel_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

const PREFIX: &str = "crash/";
/// `PREFIX` with its last byte incremented: the end of the prefix range.
const PREFIX_END: &str = "crash0";
const WRITERS: usize = 8;
/// How long after the first acknowledged put of a round keel gets SIGKILLed, per round.
const KILL_AFTER_MS: [u64; 5] = [0, 40, 200, 600, 1200];
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// An acknowledged put: value and the revision in the response header.
#[derive(Clone, Debug)]
struct Acked {
    value: String,
    revision: i64,
}

/// The server under test: keel, unless `KEEL_CRASH_TEST_BIN` names another binary.
fn server_bin() -> PathBuf {
    std::env::var_os("KEEL_CRASH_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(keel_bin)
}

fn start_keel(dir: &TempDir, ports: Ports, round: usize) -> Result<Server> {
    let data_dir = dir.path().join("keel.data");
    let args = {
        let mut a = common::etcd_flags("default", &data_dir, ports);
        a.push("--log-level=info".to_string());
        a
    };
    let log = dir.path().join(format!("server-round{round}.log"));
    let label = format!("server under test (round {round})");
    Server::start(&label, &server_bin(), &args, ports, &log)
}

/// Connects and waits until a linearizable read succeeds (a leader is serving).
async fn connect_ready(server: &Server) -> Result<KvClient<Channel>> {
    let url = format!("http://{}", server.endpoint());
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_err = String::new();
    while Instant::now() < deadline {
        match Channel::from_shared(url.clone())?
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
        {
            Ok(channel) => {
                let mut client =
                    KvClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
                let probe = RangeRequest {
                    key: Bytes::from_static(b"probe"),
                    ..Default::default()
                };
                match tokio::time::timeout(RPC_TIMEOUT, client.range(probe)).await {
                    Ok(Ok(_)) => return Ok(client),
                    Ok(Err(status)) => last_err = format!("range: {status}"),
                    Err(_) => last_err = "range: timed out".to_string(),
                }
            }
            Err(e) => last_err = format!("connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{} not serving within {READY_TIMEOUT:?} (last error: {last_err}); log {}:\n{}",
        server.label(),
        server.log_path().display(),
        server.log_tail(4000)
    )
}

/// Reads every key under [`PREFIX`]: key → (value, mod_revision), plus the header revision.
async fn read_all(
    client: &mut KvClient<Channel>,
) -> Result<(BTreeMap<String, (String, i64)>, i64)> {
    let req = RangeRequest {
        key: Bytes::from_static(PREFIX.as_bytes()),
        range_end: Bytes::from_static(PREFIX_END.as_bytes()),
        ..Default::default()
    };
    let resp = tokio::time::timeout(RPC_TIMEOUT * 3, client.range(req))
        .await
        .context("range over the prefix timed out")?
        .context("range over the prefix")?
        .into_inner();
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    let mut kvs = BTreeMap::new();
    for kv in resp.kvs {
        kvs.insert(
            String::from_utf8_lossy(&kv.key).into_owned(),
            (
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            ),
        );
    }
    ensure!(
        resp.count as usize == kvs.len() && !resp.more,
        "range returned {} kvs but count {} / more {}",
        kvs.len(),
        resp.count,
        resp.more
    );
    Ok((kvs, revision))
}

fn value_for(key: &str) -> String {
    format!("value-of-{key}")
}

/// Checks the store against everything acknowledged so far.
fn verify(
    round: usize,
    store: &BTreeMap<String, (String, i64)>,
    store_revision: i64,
    acked: &HashMap<String, Acked>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let max_acked_rev = acked.values().map(|a| a.revision).max().unwrap_or(0);
    if store_revision < max_acked_rev {
        problems.push(format!(
            "after restart {round}: store revision {store_revision} < highest acknowledged revision {max_acked_rev}"
        ));
    }
    let mut missing = Vec::new();
    for (key, a) in acked {
        match store.get(key) {
            None => missing.push(key.clone()),
            Some((value, mod_rev)) => {
                if *value != a.value {
                    problems.push(format!(
                        "after restart {round}: {key} = {value:?}, acknowledged {:?}",
                        a.value
                    ));
                }
                if *mod_rev != a.revision {
                    problems.push(format!(
                        "after restart {round}: {key} has mod_revision {mod_rev}, acknowledged at revision {}",
                        a.revision
                    ));
                }
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        problems.push(format!(
            "after restart {round}: {} acknowledged keys lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    // Unacknowledged writes may have landed, but only with what was written.
    for (key, (value, _)) in store {
        if *value != value_for(key) {
            problems.push(format!(
                "after restart {round}: {key} holds unexpected {value:?}"
            ));
        }
    }
    // Txn pairs are atomic: both keys or neither.
    for key in store.keys() {
        let partner = if let Some(base) = key.strip_suffix("/a") {
            format!("{base}/b")
        } else if let Some(base) = key.strip_suffix("/b") {
            format!("{base}/a")
        } else {
            continue;
        };
        if !store.contains_key(&partner) {
            problems.push(format!(
                "after restart {round}: {key} present without {partner} (written in one txn)"
            ));
        }
    }
    // Each acknowledged write has its own revision.
    let mut by_rev: HashMap<i64, &str> = HashMap::new();
    for (key, a) in acked {
        if let Some(other) = by_rev.insert(a.revision, write_of(key)) {
            if other != write_of(key) {
                problems.push(format!(
                    "{key} and {other} were both acknowledged at revision {}",
                    a.revision
                ));
            }
        }
    }
    problems
}

/// One writer: puts unique keys until told to stop or a put fails (keel got killed).
async fn writer(
    mut client: KvClient<Channel>,
    round: usize,
    id: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Acked)>>>,
    acked_count: Arc<AtomicUsize>,
) {
    // Every fourth writer writes pairs `.../a`, `.../b` in one txn instead of single puts.
    let pairs = id % 4 == 3;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let base = format!("{PREFIX}r{round}/w{id}/{seq:07}");
        let keys = if pairs {
            vec![format!("{base}/a"), format!("{base}/b")]
        } else {
            vec![base]
        };
        let puts: Vec<PutRequest> = keys
            .iter()
            .map(|key| PutRequest {
                key: Bytes::from(key.clone()),
                value: Bytes::from(value_for(key)),
                ..Default::default()
            })
            .collect();
        let revision = if pairs {
            let txn = TxnRequest {
                success: puts
                    .into_iter()
                    .map(|p| RequestOp {
                        request: Some(Request::RequestPut(p)),
                    })
                    .collect(),
                ..Default::default()
            };
            match tokio::time::timeout(RPC_TIMEOUT, client.txn(txn)).await {
                Ok(Ok(resp)) => resp.into_inner().header.map_or(0, |h| h.revision),
                // Killed (or unavailable): this write's fate is unknown; stop writing.
                Ok(Err(_)) | Err(_) => break,
            }
        } else {
            let Some(put) = puts.into_iter().next() else {
                break;
            };
            match tokio::time::timeout(RPC_TIMEOUT, client.put(put)).await {
                Ok(Ok(resp)) => resp.into_inner().header.map_or(0, |h| h.revision),
                Ok(Err(_)) | Err(_) => break,
            }
        };
        {
            let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
            for key in keys {
                let value = value_for(&key);
                acked.push((key, Acked { value, revision }));
            }
        }
        acked_count.fetch_add(1, Ordering::Relaxed);
        seq += 1;
    }
}

/// The write a key belongs to: a txn's pair `.../a`, `.../b` is one write.
fn write_of(key: &str) -> &str {
    key.strip_suffix("/a")
        .or_else(|| key.strip_suffix("/b"))
        .unwrap_or(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9() -> Result<()> {
    let mut dir = TempDir::new("crash-durability")?;
    let result = kill_restart_rounds(&dir).await;
    if result.is_err() {
        dir.keep(); // data dir and per-round server logs, for inspection
    }
    result
}

async fn kill_restart_rounds(dir: &TempDir) -> Result<()> {
    // Same ports every round: a restarted member keeps its URLs.
    let ports = Ports::pick();
    let mut acked: HashMap<String, Acked> = HashMap::new();
    let started = Instant::now();

    for (round, kill_after_ms) in KILL_AFTER_MS.iter().enumerate() {
        let round_start = Instant::now();
        if round % 2 == 1 {
            // Also crash during startup (recovery / election), before any client traffic.
            let mut early = start_keel(dir, ports, round)?;
            tokio::time::sleep(Duration::from_millis(10 * round as u64)).await;
            early.kill();
        }
        let mut server = start_keel(dir, ports, round)?;
        let mut client = connect_ready(&server).await?;
        let (store, revision) = read_all(&mut client).await?;
        let problems = verify(round, &store, revision, &acked);
        ensure!(problems.is_empty(), "{}", problems.join("\n"));

        let stop = Arc::new(AtomicBool::new(false));
        let round_acked = Arc::new(Mutex::new(Vec::new()));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| {
                tokio::spawn(writer(
                    client.clone(),
                    round,
                    id,
                    stop.clone(),
                    round_acked.clone(),
                    acked_count.clone(),
                ))
            })
            .collect();

        // Kill mid-load: some time after the first acknowledgement of this round.
        let first_ack_deadline = Instant::now() + Duration::from_secs(10);
        while acked_count.load(Ordering::Relaxed) == 0 {
            if Instant::now() > first_ack_deadline {
                stop.store(true, Ordering::Relaxed);
                bail!(
                    "round {round}: no put acknowledged within 10s; log:\n{}",
                    server.log_tail(4000)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(*kill_after_ms)).await;
        ensure!(
            server.is_running(),
            "round {round}: keel exited by itself during the load; log:\n{}",
            server.log_tail(4000)
        );
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(RPC_TIMEOUT * 2, t).await;
        }
        let new: Vec<(String, Acked)> =
            std::mem::take(&mut *round_acked.lock().unwrap_or_else(|e| e.into_inner()));
        eprintln!(
            "round {round}: killed {kill_after_ms} ms after the first ack; {} keys acknowledged; round took {:?}",
            new.len(),
            round_start.elapsed()
        );
        acked.extend(new);
    }

    // Final restart: everything acknowledged in every round is there.
    let round = KILL_AFTER_MS.len();
    let server = start_keel(dir, ports, round)?;
    let mut client = connect_ready(&server).await?;
    let (store, revision) = read_all(&mut client).await?;
    let problems = verify(round, &store, revision, &acked);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "{} acknowledged keys verified across {} kills in {:?} ({} keys present, revision {revision})",
        acked.len(),
        KILL_AFTER_MS.len(),
        started.elapsed(),
        store.len()
    );
    Ok(())
}

/// The checker itself: it must flag lost, changed, misplaced and torn writes.
#[test]
fn verify_flags_lost_changed_and_torn_writes() {
    let k = |s: &str| format!("{PREFIX}{s}");
    let acked: HashMap<String, Acked> = [
        (k("lost"), 5),
        (k("moved"), 6),
        (k("ok"), 7),
        (k("t/a"), 8),
        (k("t/b"), 8),
    ]
    .into_iter()
    .map(|(key, revision)| {
        let value = value_for(&key);
        (key, Acked { value, revision })
    })
    .collect();
    let mut store: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for (key, rev) in [("moved", 9), ("ok", 7), ("t/a", 8), ("t/b", 8)] {
        store.insert(k(key), (value_for(&k(key)), rev));
    }
    // "lost" is missing, "moved" has the wrong mod_revision.
    assert_eq!(verify(0, &store, 9, &acked).len(), 2);
    store.insert(k("lost"), (value_for(&k("lost")), 5));
    store.insert(k("moved"), (value_for(&k("moved")), 6));
    assert_eq!(verify(0, &store, 9, &acked), Vec::<String>::new());
    store.insert(k("u/a"), (value_for(&k("u/a")), 10)); // torn: no u/b
    store.insert(k("junk"), ("garbage".to_string(), 11));
    let problems = verify(0, &store, 11, &acked);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(verify(0, &store, 4, &acked).len(), 3); // store behind acknowledged revisions
}
