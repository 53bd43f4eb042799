//! Backup and restore with the real binaries: `etcdctl snapshot save` against keel during
//! writes, `keelutl snapshot restore` into a new three-member cluster, and the refusals of bad
//! input.
//!
//! - Every key acknowledged before the save started is in the restored cluster, with its
//!   revision, and HashKV agrees on all three members.
//! - `keelutl` refuses a truncated, a bit-flipped, an empty file and an etcd snapshot, naming
//!   the file and the problem, and leaves no data directory behind.
//! - A `Maintenance.Snapshot` client that stops reading or disconnects halfway leaves the
//!   server healthy: writes go on, and the next backup is whole.
// These tests run real processes on real sockets: tokio build only.
#![cfg(not(madsim))]

mod backup_common;
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use backup_common::{
    channel, keelutl_bin, loaded_member, put, restore, run, start, wait_leader, Cluster,
};
use bytes::Bytes;
use common::{require_on_path, Ports, Server, TempDir};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{HashKvRequest, RangeRequest, SnapshotRequest, StatusRequest};
use sha2::{Digest, Sha256};

const MEMBERS: usize = 3;
/// Keys loaded before the save.
const LOADED_KEYS: usize = 3000;
const WRITERS: usize = 4;
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

/// Writer `w` puts keys `<prefix><w>-<n>` through member `w % members` until `stop`.
async fn writer(w: usize, ports: Vec<Ports>, prefix: &str, stop: Arc<AtomicBool>, acked: Acked) {
    let Ok(ch) = channel(ports[w % ports.len()]) else {
        return;
    };
    let mut kv = KvClient::new(ch);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (key, value) = (
            format!("{prefix}{w}-{n}"),
            format!("value-{w}-{n}-{}", "x".repeat(64)),
        );
        n += 1;
        if let Ok(rev) = put(&mut kv, &key, &value).await {
            acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (value, rev));
        }
    }
}

async fn load(cluster: &Cluster, keys: usize, acked: &Acked) -> Result<()> {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let ports = cluster.ports.clone();
        let acked = Arc::clone(acked);
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::new(channel(ports[w % ports.len()])?);
            for n in (w..keys).step_by(WRITERS) {
                let (key, value) = (format!("load/{n:06}"), format!("v{n}"));
                let rev = put(&mut kv, &key, &value).await?;
                acked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (value, rev));
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_saved_during_writes_restores_a_new_three_member_cluster() -> Result<()> {
    let etcdctl = require_on_path("etcdctl")?;
    let dir = TempDir::new("backup-restore")?;
    let old = start(
        dir.path(),
        "old",
        (0..MEMBERS).map(|_| Ports::pick()).collect(),
        "old-token",
    )?;
    wait_leader(&old).await?;
    let acked: Acked = Arc::default();
    load(&old, LOADED_KEYS, &acked).await?;

    // Writes go on during the save, on every member.
    let stop = Arc::new(AtomicBool::new(false));
    let during: Acked = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (ports, stop, during) = (old.ports.clone(), Arc::clone(&stop), Arc::clone(&during));
            tokio::spawn(async move { writer(w, ports, "during/", stop, during).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Everything acknowledged by now must be in the backup.
    let mut required = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    required.extend(during.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let file = dir.path().join("backup.db");
    let saved = run(
        &etcdctl,
        &[
            "--endpoints",
            &old.ports[1].endpoint(),
            "snapshot",
            "save",
            &file.display().to_string(),
        ],
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let stdout = String::from_utf8_lossy(&saved.stdout);
    ensure!(
        saved.status.success(),
        "snapshot save failed: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    ensure!(
        stdout.trim() == format!("Snapshot saved at {}", file.display()),
        "stdout: {stdout}"
    );
    let written_during = during.lock().unwrap_or_else(|e| e.into_inner()).len();
    ensure!(
        written_during > 0,
        "no write was acknowledged around the save"
    );
    drop(old);

    let ports: Vec<Ports> = (0..MEMBERS).map(|_| Ports::pick()).collect();
    for i in 0..MEMBERS {
        let data_dir = dir.path().join(format!("new-m{i}"));
        let out = restore(&file, &data_dir, &format!("m{i}"), &ports, i, "new-token")?;
        ensure!(
            out.status.success(),
            "restore m{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let new = start(dir.path(), "new", ports, "new-token")?;
    wait_leader(&new).await?;
    check_keys(&new, &required).await?;
    check_hashes_agree(&new).await?;
    println!(
        "restored {} required keys ({} written during the save) on {MEMBERS} members",
        required.len(),
        written_during
    );
    Ok(())
}

/// Every required key is there with its value and revision, read on every member.
async fn check_keys(cluster: &Cluster, required: &BTreeMap<String, (String, i64)>) -> Result<()> {
    for p in &cluster.ports {
        let mut kv = KvClient::new(channel(*p)?);
        for prefix in ["load/", "during/"] {
            let mut end = prefix.as_bytes().to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            let r = kv
                .range(RangeRequest {
                    key: Bytes::from(prefix),
                    range_end: Bytes::from(end),
                    serializable: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let got: BTreeMap<String, (String, i64)> = r
                .kvs
                .iter()
                .map(|kv| {
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    (
                        key,
                        (
                            String::from_utf8_lossy(&kv.value).into_owned(),
                            kv.mod_revision,
                        ),
                    )
                })
                .collect();
            for (key, want) in required.iter().filter(|(k, _)| k.starts_with(prefix)) {
                match got.get(key) {
                    Some(have) if have == want => {}
                    other => bail!("{}: {key} should be {want:?}, is {other:?}", p.endpoint()),
                }
            }
        }
    }
    Ok(())
}

async fn check_hashes_agree(cluster: &Cluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut hashes = Vec::new();
        for p in &cluster.ports {
            let r = MaintenanceClient::new(channel(*p)?)
                .hash_kv(HashKvRequest { revision: 0 })
                .await?
                .into_inner();
            hashes.push((r.hash, r.header.map_or(0, |h| h.revision)));
        }
        if hashes.iter().all(|h| *h == hashes[0]) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "HashKV differs: {hashes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelutl_refuses_bad_files_naming_the_file_and_the_problem() -> Result<()> {
    let etcdctl = require_on_path("etcdctl")?;
    let etcd = require_on_path("etcd")?;
    let dir = TempDir::new("backup-bad")?;
    let member = loaded_member(dir.path(), 200, 100).await?;
    let good = dir.path().join("good.db");
    let saved = run(
        &etcdctl,
        &[
            "--endpoints",
            &member.ports[0].endpoint(),
            "snapshot",
            "save",
            &good.display().to_string(),
        ],
    )?;
    ensure!(
        saved.status.success(),
        "save: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    drop(member);
    let bytes = std::fs::read(&good)?;

    // An etcd snapshot, saved from real etcd.
    let etcd_ports = Ports::pick();
    let etcd_dir = dir.path().join("etcd-data");
    let etcd_server = Server::start_etcd_style("etcd", &etcd, "e", &etcd_dir, etcd_ports, &[])?;
    let from_etcd = dir.path().join("from-etcd.db");
    let put = run(
        &etcdctl,
        &["--endpoints", &etcd_ports.endpoint(), "put", "a", "b"],
    )?;
    ensure!(
        put.status.success(),
        "etcd put: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let saved = run(
        &etcdctl,
        &[
            "--endpoints",
            &etcd_ports.endpoint(),
            "snapshot",
            "save",
            &from_etcd.display().to_string(),
        ],
    )?;
    ensure!(
        saved.status.success(),
        "etcd save: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    drop(etcd_server);

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x04;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.db",
            bytes[..bytes.len() / 2].to_vec(),
            "truncated",
        ),
        (
            "truncated-at-512.db",
            bytes[..bytes.len() - 32].to_vec(),
            "truncated",
        ),
        ("flipped.db", flipped, "sha256 mismatch"),
        ("empty.db", Vec::new(), "empty"),
        (
            "from-etcd.db",
            std::fs::read(&from_etcd)?,
            "etcd (bbolt) snapshot",
        ),
    ];
    let ports = vec![Ports::pick()];
    for (name, content, problem) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content)?;
        let data_dir = dir.path().join(format!("restored-from-{name}"));
        let out = restore(&path, &data_dir, "m0", &ports, 0, "t")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "{name}: restore should fail; stderr: {stderr}"
        );
        ensure!(
            stderr.contains(&path.display().to_string()) && stderr.contains(problem),
            "{name}: the error should name the file and say {problem:?}: {stderr}"
        );
        ensure!(
            !data_dir.exists(),
            "{name}: restore left {}",
            data_dir.display()
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".restoring-"))
            .collect();
        ensure!(leftovers.is_empty(), "{name}: restore left {leftovers:?}");
        let status = run(
            &keelutl_bin(),
            &["snapshot", "status", &path.display().to_string()],
        )?;
        let stderr = String::from_utf8_lossy(&status.stderr);
        ensure!(
            !status.status.success() && stderr.contains(problem),
            "{name}: status: {stderr}"
        );
    }

    // The good file restores, once: a non-empty data dir is refused.
    let data_dir = dir.path().join("restored-good");
    let out = restore(&good, &data_dir, "m0", &ports, 0, "t")?;
    ensure!(
        out.status.success(),
        "good: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = restore(&good, &data_dir, "m0", &ports, 0, "t")?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && stderr.contains("not empty"),
        "again: {stderr}"
    );
    let status = run(
        &keelutl_bin(),
        &[
            "snapshot",
            "status",
            &good.display().to_string(),
            "-w",
            "json",
        ],
    )?;
    let json = String::from_utf8_lossy(&status.stdout);
    ensure!(
        json.contains("\"revision\":201") && json.contains("\"totalKey\":200"),
        "status: {json}"
    );
    Ok(())
}

/// Reads a whole backup over gRPC: its body and the sha256 it ended with.
async fn read_backup(ports: Ports) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut stream = MaintenanceClient::new(channel(ports)?)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let mut body = Vec::new();
    let mut last_remaining = u64::MAX;
    let mut sha = None;
    while let Some(r) = stream.message().await? {
        ensure!(sha.is_none(), "a message after the sha256");
        ensure!(
            r.remaining_bytes <= last_remaining,
            "remaining_bytes went up"
        );
        if r.remaining_bytes == 0 && last_remaining == 0 {
            sha = Some(r.blob.to_vec());
        } else {
            ensure!(r.blob.len() <= 32 * 1024, "a chunk over 32 KiB");
            body.extend_from_slice(&r.blob);
        }
        last_remaining = r.remaining_bytes;
    }
    Ok((body, sha.context("the stream ended without its sha256")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_client_that_stalls_or_disconnects_leaves_the_server_healthy() -> Result<()> {
    let dir = TempDir::new("backup-disconnect")?;
    // About 4 MB of backup: 128 chunks, far more than the server queues.
    let member = loaded_member(dir.path(), 2000, 2000).await?;
    let p = member.ports[0];

    // A client that reads one chunk and stops reading: writes go on meanwhile.
    let mut stalled = MaintenanceClient::new(channel(p)?)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    ensure!(stalled.message().await?.is_some(), "no first chunk");
    let mut kv = KvClient::new(channel(p)?);
    let started = Instant::now();
    for n in 0..100 {
        put(&mut kv, &format!("while-stalled/{n}"), "x").await?;
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "writes slowed by a stalled backup"
    );

    // Clients that go away after a few chunks, several times.
    drop(stalled);
    for _ in 0..5 {
        let mut s = MaintenanceClient::new(channel(p)?)
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        for _ in 0..3 {
            ensure!(s.message().await?.is_some(), "a chunk");
        }
        drop(s);
    }
    put(&mut kv, "after/1", "y").await?;
    let status = MaintenanceClient::new(channel(p)?)
        .status(StatusRequest {})
        .await?
        .into_inner();
    ensure!(status.leader != 0, "no leader after the disconnects");

    // The next backup is whole, and its sha256 matches.
    let (body, sha) = read_backup(p).await?;
    ensure!(body.len() > 4_000_000, "a backup of {} bytes", body.len());
    ensure!(body.len() % 512 == 0, "the body is not a multiple of 512");
    ensure!(Sha256::digest(&body)[..] == sha[..], "sha256 mismatch");
    let mut server = member.servers.into_iter().next().context("the member")?;
    ensure!(server.is_running(), "the server exited");
    let log = std::fs::read_to_string(server.log_path())?;
    ensure!(
        log.contains("the client went away during a backup"),
        "no disconnect was logged"
    );
    Ok(())
}
