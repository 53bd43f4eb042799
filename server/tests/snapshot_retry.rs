//! A member whose disk fails its snapshot writes keeps serving writes (the WAL holds them),
//! retries the save after a backoff, and the snapshot lands once the disk lets it; the WAL
//! before it is then released. In process, over an in-memory disk that fails the first
//! snapshot writes.
#![cfg(not(madsim))]

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser as _;
use common::Ports;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::PutRequest;
use keel_server::{Config, Env, SystemClock};
use keel_storage::{Disk, DiskFile, SimDisk};

/// Snapshot writes that fail before one succeeds.
const FAILURES: usize = 2;
/// Applied entries between snapshots.
const SNAPSHOT_COUNT: u64 = 50;

/// A [`SimDisk`] whose first `failures` snapshot files fail their first append.
struct FailingSnapshots {
    inner: SimDisk,
    failures: Arc<AtomicUsize>,
}

impl Disk for FailingSnapshots {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let is_snapshot = path.to_string_lossy().ends_with(".snap.tmp");
        if is_snapshot
            && self
                .failures
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            let file = self.inner.open_append(path)?;
            return Ok(Box::new(FailingFile(file)));
        }
        self.inner.open_append(path)
    }
    fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn DiskFile>> {
        self.inner.open_at(path, offset)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
}

/// A file whose appends fail (as on a full disk).
struct FailingFile(Box<dyn DiskFile>);

impl DiskFile for FailingFile {
    fn append(&mut self, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::other("no space left on device (test)"))
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync()
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.0.allocate(len)
    }
}

fn config(ports: Ports) -> Result<Config> {
    let args = [
        "keel".to_string(),
        "--name=solo".to_string(),
        "--data-dir=/data".to_string(),
        format!("--listen-client-urls={}", ports.client_url()),
        format!("--advertise-client-urls={}", ports.client_url()),
        format!("--listen-peer-urls={}", ports.peer_url()),
        format!("--initial-advertise-peer-urls={}", ports.peer_url()),
        format!("--initial-cluster=solo={}", ports.peer_url()),
        format!("--snapshot-count={SNAPSHOT_COUNT}"),
        "--snapshot-log-percent=0".to_string(),
        // Small segments, so the snapshot releases some.
        "--wal-segment-bytes=4096".to_string(),
    ];
    Config::try_parse_from(args).context("flags parse")
}

async fn put(kv: &mut KvClient<tonic::transport::Channel>, i: u64) -> Result<()> {
    let req = PutRequest {
        key: format!("k{}", i % 20).into(),
        value: format!("v{i}").into(),
        ..Default::default()
    };
    tokio::time::timeout(Duration::from_secs(5), kv.put(req))
        .await
        .context("put timed out")?
        .context("put failed")?;
    Ok(())
}

fn snapshot_files(disk: &SimDisk) -> Vec<String> {
    let dir = PathBuf::from("/data/member/snap");
    let mut names = disk.list_dir(&dir).unwrap_or_default();
    names.retain(|n| n.ends_with(".snap"));
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_snapshot_saves_are_retried_while_writes_go_on() -> Result<()> {
    let sim = SimDisk::new();
    let disk = Arc::new(FailingSnapshots {
        inner: sim.clone(),
        failures: Arc::new(AtomicUsize::new(FAILURES)),
    });
    let ports = Ports::pick();
    let disk_failures_left = Arc::clone(&disk.failures);
    let env = Env {
        disk,
        clock: Arc::new(SystemClock::new()),
        seed: 7,
    };
    let server = tokio::spawn(keel_server::run(config(ports)?, env));
    let mut kv = connect(&ports).await?;
    // Past the snapshot count: the first save fails, and so does the retry.
    for i in 0..2 * SNAPSHOT_COUNT {
        put(&mut kv, i).await?;
    }
    let wal_segments_before = wal_segments(&sim);
    let mut i = 2 * SNAPSHOT_COUNT;
    let deadline = Instant::now() + Duration::from_secs(20);
    while snapshot_files(&sim).is_empty() {
        if server.is_finished() {
            bail!("the member stopped: {:?}", server.await);
        }
        if Instant::now() > deadline {
            bail!("no snapshot landed after {FAILURES} failed saves");
        }
        put(&mut kv, i).await?;
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The saves backed off 1 s, then 2 s, before one landed; writes went on meanwhile.
    let while_failing = i - 2 * SNAPSHOT_COUNT;
    assert!(
        while_failing >= 5,
        "only {while_failing} writes while the saves failed"
    );
    assert_eq!(
        disk_failures_left.load(Ordering::Relaxed),
        0,
        "every failure was met"
    );
    assert!(!server.is_finished(), "a failed save is not fatal");
    let names = sim.list_dir(Path::new("/data/member/snap"))?;
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "failed saves leave no temp file: {names:?}"
    );
    // Two saves more: the WAL before the older one goes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while wal_segments(&sim) >= wal_segments_before {
        if Instant::now() > deadline {
            bail!("the WAL was never released ({wal_segments_before} segments)");
        }
        put(&mut kv, i).await?;
        i += 1;
    }
    server.abort();
    Ok(())
}

fn wal_segments(disk: &SimDisk) -> usize {
    let names = disk
        .list_dir(Path::new("/data/member/wal"))
        .unwrap_or_default();
    names.iter().filter(|n| n.ends_with(".wal")).count()
}

async fn connect(ports: &Ports) -> Result<KvClient<tonic::transport::Channel>> {
    for _ in 0..100 {
        if let Ok(kv) = KvClient::connect(ports.client_url()).await {
            return Ok(kv);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the member never listened on {}", ports.client_url())
}
