//! What the backup tests share (`backup_restore.rs`, `keelutl_defrag.rs`): keel members on
//! loopback, the gRPC calls they make, and running `keelutl`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{HashKvRequest, PutRequest, StatusRequest};
use tonic::transport::Channel;

use crate::common::{self, keel_bin, Ports, Server};

pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
pub fn keelutl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keelutl"))
}

/// Keel processes on loopback (three, or one for the smaller tests).
pub struct Cluster {
    pub ports: Vec<Ports>,
    pub servers: Vec<Server>,
}

pub fn initial_cluster(ports: &[Ports]) -> String {
    (0..ports.len())
        .map(|i| format!("m{i}={}", ports[i].peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `ports.len()` members on data dirs `<dir>/<label>-m<i>` with `token`.
pub fn start(dir: &Path, label: &str, ports: Vec<Ports>, token: &str) -> Result<Cluster> {
    let mut spawned = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let args = vec![
            format!("--name=m{i}"),
            format!("--data-dir={}", dir.join(format!("{label}-m{i}")).display()),
            format!("--listen-client-urls={}", p.client_url()),
            format!("--advertise-client-urls={}", p.client_url()),
            format!("--listen-peer-urls={}", p.peer_url()),
            format!("--initial-advertise-peer-urls={}", p.peer_url()),
            format!("--initial-cluster={}", initial_cluster(&ports)),
            format!("--initial-cluster-token={token}"),
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
            // Snapshots every 100 entries: the members have snapshot files (defrag needs one).
            "--snapshot-count=100".to_string(),
            "--snapshot-log-percent=0".to_string(),
        ];
        let log = dir.join(format!("{label}-m{i}.log"));
        spawned.push(Server::spawn(
            &format!("{label}-m{i}"),
            &keel_bin(),
            &args,
            *p,
            &log,
        )?);
    }
    let servers = spawned
        .into_iter()
        .map(|s| s.wait_ready(common::START_TIMEOUT))
        .collect::<Result<Vec<_>>>()?;
    Ok(Cluster { ports, servers })
}

pub fn channel(ports: Ports) -> Result<Channel> {
    Ok(Channel::from_shared(ports.client_url())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(RPC_TIMEOUT)
        .connect_lazy())
}

/// Waits until every member reports the same leader.
pub async fn wait_leader(cluster: &Cluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = Vec::new();
        for p in &cluster.ports {
            let status = MaintenanceClient::new(channel(*p)?)
                .status(StatusRequest {})
                .await;
            leaders.push(status.map(|s| s.into_inner().leader).unwrap_or(0));
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts `key`; the revision it was written at.
pub async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> Result<i64> {
    let r = kv
        .put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.header.context("put without header")?.revision)
}

pub fn run(program: &Path, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))
}

pub fn restore(
    file: &Path,
    data_dir: &Path,
    name: &str,
    ports: &[Ports],
    i: usize,
    token: &str,
) -> Result<Output> {
    run(
        &keelutl_bin(),
        &[
            "snapshot",
            "restore",
            &file.display().to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--name",
            name,
            "--initial-cluster",
            &initial_cluster(ports),
            "--initial-cluster-token",
            token,
            "--initial-advertise-peer-urls",
            &ports[i].peer_url(),
        ],
    )
}

/// A one-member keel with `keys` keys of `value_bytes` each.
pub async fn loaded_member(dir: &Path, keys: usize, value_bytes: usize) -> Result<Cluster> {
    let member = start(dir, "one", vec![Ports::pick()], "one-token")?;
    wait_leader(&member).await?;
    let mut kv = KvClient::new(channel(member.ports[0])?);
    for n in 0..keys {
        put(&mut kv, &format!("k{n:06}"), &"v".repeat(value_bytes)).await?;
    }
    Ok(member)
}

/// HashKV of the member on `p` at its current revision, with that revision.
pub async fn hash_and_revision(p: Ports) -> Result<(u32, i64)> {
    let r = MaintenanceClient::new(channel(p)?)
        .hash_kv(HashKvRequest { revision: 0 })
        .await?
        .into_inner();
    Ok((r.hash, r.header.map_or(0, |h| h.revision)))
}
