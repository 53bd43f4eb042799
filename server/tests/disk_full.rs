//! Disk full, with the real binary on a real, size-limited filesystem (a tmpfs).
//!
//! keel's data dir lives on a small tmpfs that also holds two ballast files. The test writes
//! until keel refuses with etcd's `etcdserver: mvcc: database space exceeded`, and checks that
//! keel stays up, serves serializable and linearizable reads and a watch, and that every
//! acknowledged put reads back. The member raises its `NOSPACE` alarm as soon as the next WAL
//! segment cannot be preallocated (while the active one still has room). It then frees the
//! first ballast: the member finds room again, the alarm is listed, writes stay refused until
//! `alarm disarm`, then resume. It fills the disk again, kills keel and restarts it on the full disk: it must
//! start, serve every acknowledged put and refuse writes; freeing the second ballast and
//! disarming lets writes resume.
//!
//! Mounting needs root. CI runs as root; anywhere else the test fails with a message saying
//! so (it never skips silently). The tmpfs is unmounted whatever happens (a guard).
//!
//! Snapshots are kept out of the way (`--snapshot-count` beyond the test's writes): a failed
//! snapshot save is still fatal until snapshot saving retries on its own.
// These tests run real processes on real sockets and mounts: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{keel_bin, Ports, Server, TempDir};
use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, PutRequest, RangeRequest, StatusRequest,
    WatchCreateRequest, WatchRequest,
};
use tonic::transport::Channel;

const TMPFS_BYTES: u64 = 32 << 20;
const BALLAST_BYTES: usize = 4 << 20;
const VALUE_BYTES: usize = 64 << 10;
/// Puts before the disk must have filled up (the tmpfs holds about 400 of them).
const PUTS_MAX: usize = 2_000;
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A tmpfs mounted for the test; unmounted (lazily, so a process still inside cannot stop
/// it) on drop, whatever happened.
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(path: &Path, bytes: u64) -> Result<Mount> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .context("running mount")?;
        ensure!(status.success(), "mount -t tmpfs failed: {status}");
        Ok(Mount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fails, with the reason, unless the test runs as root.
fn require_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        uid == "0",
        "the disk-full test mounts a tmpfs and needs root (uid 0), but runs as uid {uid}: \
         run it as root (CI does); it does not skip"
    );
    Ok(())
}

fn start_keel(data_dir: &Path, log: &Path, ports: Ports) -> Result<Server> {
    let mut args = common::etcd_flags("default", data_dir, ports);
    args.extend([
        "--log-level=info".to_string(),
        "--snapshot-count=100000000".to_string(),
        "--wal-segment-bytes=1048576".to_string(),
    ]);
    Server::start("keel", &keel_bin(), &args, ports, log)
}

async fn channel(server: &Server) -> Result<Channel> {
    Ok(
        Channel::from_shared(format!("http://{}", server.endpoint()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(RPC_TIMEOUT)
            .connect()
            .await?,
    )
}

/// How a put ended.
enum Put {
    Acked(i64),
    NoSpace,
    /// Timed out or another error: its outcome is unknown.
    Unknown(String),
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &[u8]) -> Put {
    let request = PutRequest {
        key: key.to_owned().into(),
        value: value.to_vec().into(),
        ..Default::default()
    };
    match kv.put(request).await {
        Ok(r) => Put::Acked(r.into_inner().header.map_or(0, |h| h.revision)),
        Err(s) if s.code() == tonic::Code::ResourceExhausted && s.message() == NO_SPACE => {
            Put::NoSpace
        }
        Err(s) => Put::Unknown(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn value_of(round: usize, i: usize) -> Vec<u8> {
    let mut v = format!("{round}/{i}/").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

/// Puts distinct keys until keel refuses one for lack of space; records what was acked.
async fn fill(kv: &mut KvClient<Channel>, round: usize, acked: &mut Acked) -> Result<()> {
    let mut unknown = 0;
    for i in 0..PUTS_MAX {
        let key = format!("fill/{round}/{i:05}");
        let value = value_of(round, i);
        match put(kv, &key, &value).await {
            Put::Acked(rev) => {
                acked.insert(key, (value, rev));
            }
            Put::NoSpace => {
                eprintln!("round {round}: refused after {i} puts ({unknown} unknown)");
                return Ok(());
            }
            Put::Unknown(why) => {
                unknown += 1;
                eprintln!("round {round}: put {i} outcome unknown: {why}");
                ensure!(unknown < 5, "puts keep failing without NOSPACE: {why}");
            }
        }
    }
    bail!("{PUTS_MAX} puts and the disk never filled up")
}

type Acked = BTreeMap<String, (Vec<u8>, i64)>;

/// Every acknowledged put reads back with its value and revision.
async fn check_acked(kv: &mut KvClient<Channel>, acked: &Acked, serializable: bool) -> Result<()> {
    for (key, (value, rev)) in acked {
        let range = RangeRequest {
            key: key.clone().into(),
            serializable,
            ..Default::default()
        };
        let r = kv
            .range(range)
            .await
            .with_context(|| format!("get {key}"))?;
        let kvs = r.into_inner().kvs;
        let kv0 = kvs
            .first()
            .with_context(|| format!("acked {key} is missing"))?;
        ensure!(
            kv0.value.as_ref() == value.as_slice(),
            "{key} has another value"
        );
        ensure!(
            kv0.mod_revision == *rev,
            "{key} at {} not {rev}",
            kv0.mod_revision
        );
    }
    Ok(())
}

async fn alarms(m: &mut MaintenanceClient<Channel>) -> Result<Vec<AlarmMember>> {
    let get = AlarmRequest::default();
    Ok(m.alarm(get).await?.into_inner().alarms)
}

/// Waits until this member's NOSPACE alarm is listed, then disarms it (etcdctl's `alarm
/// disarm` does for each listed alarm).
async fn await_alarm_and_disarm(m: &mut MaintenanceClient<Channel>, member: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let want = AlarmMember {
        member_id: member,
        alarm: AlarmType::Nospace as i32,
    };
    loop {
        if alarms(m).await.unwrap_or_default().contains(&want) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the NOSPACE alarm never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let disarm = AlarmRequest {
        action: AlarmAction::Deactivate as i32,
        member_id: member,
        alarm: AlarmType::Nospace as i32,
    };
    // The alarm is raised while the disk is still full (the next WAL segment could not be
    // preallocated); the disarm, a write, is refused with NOSPACE until the member has found
    // room again (it retries the preallocation with backoff, up to 4 s apart).
    loop {
        match m.alarm(disarm).await {
            Ok(r) => {
                let cleared = r.into_inner().alarms;
                ensure!(cleared == vec![want], "disarm answered {cleared:?}");
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted && s.message() == NO_SPACE => {
                ensure!(
                    Instant::now() < deadline,
                    "the disarm was still refused with NOSPACE after space was freed"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// A put that must succeed soon (the disk has room and no alarm is active).
async fn put_resumes(kv: &mut KvClient<Channel>, key: &str, acked: &mut Acked) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match put(kv, key, b"resumed").await {
            Put::Acked(rev) => {
                acked.insert(key.to_string(), (b"resumed".to_vec(), rev));
                return Ok(());
            }
            other if Instant::now() > deadline => {
                let why = match other {
                    Put::NoSpace => NO_SPACE.to_string(),
                    Put::Unknown(why) => why,
                    Put::Acked(_) => unreachable!("handled above"),
                };
                bail!("writes did not resume: {why}");
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A watch from revision 1 on the fill keys gets its catch-up events while the disk is full.
async fn watch_serves(ch: Channel) -> Result<()> {
    // Catch-up from revision 1 comes as one response of every event (about 25 MB).
    let mut watch = WatchClient::new(ch).max_decoding_message_size(usize::MAX);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "fill/".into(),
            range_end: "fill0".into(),
            start_revision: 1,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(create).await?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = watch.watch(stream).await?.into_inner();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(r) = responses.message().await? else {
            bail!("the watch stream ended");
        };
        if !r.events.is_empty() {
            return Ok(());
        }
    }
    bail!("the watch sent no events")
}

/// The checks while the disk is full: writes refused, reads and watches served.
async fn check_full(ch: &Channel, acked: &Acked) -> Result<()> {
    let mut kv = KvClient::new(ch.clone());
    ensure!(
        matches!(put(&mut kv, "refused", b"x").await, Put::NoSpace),
        "a put on the full disk is refused with {NO_SPACE:?}"
    );
    check_acked(&mut kv, acked, true).await?;
    check_acked(&mut kv, acked, false).await?;
    watch_serves(ch.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers() -> Result<()> {
    require_root()?;
    let dir = TempDir::new("disk-full")?;
    let mount = Mount::tmpfs(&dir.path().join("mnt"), TMPFS_BYTES)?;
    let ballast = [mount.path.join("ballast-1"), mount.path.join("ballast-2")];
    for b in &ballast {
        std::fs::write(b, vec![0xa5u8; BALLAST_BYTES])?;
    }
    let data_dir = mount.path.join("keel.data");
    let log = dir.path().join("keel.log");
    let ports = Ports::pick();
    let mut keel = start_keel(&data_dir, &log, ports)?;
    let result = run(&mut keel, &data_dir, &log, &ballast).await;
    if result.is_err() {
        eprintln!("keel log tail:\n{}", keel.log_tail(6000));
    }
    drop(keel); // before the mount guard: nothing may hold the tmpfs
    drop(mount);
    result
}

async fn run(keel: &mut Server, data_dir: &Path, log: &Path, ballast: &[PathBuf]) -> Result<()> {
    let ch = channel(keel).await?;
    let (mut kv, mut m) = (
        KvClient::new(ch.clone()),
        MaintenanceClient::new(ch.clone()),
    );
    let member = m.status(StatusRequest::default()).await?.into_inner();
    let member = member.header.map_or(0, |h| h.member_id);
    let mut acked = Acked::new();

    // Full: refused, reads and a watch served, keel still up.
    fill(&mut kv, 0, &mut acked).await?;
    ensure!(keel.is_running(), "keel stopped on a full disk");
    check_full(&ch, &acked).await?;

    // Space again: the waiting batch is written, the alarm appears; disarm; writes resume.
    std::fs::remove_file(&ballast[0])?;
    await_alarm_and_disarm(&mut m, member).await?;
    put_resumes(&mut kv, "resumed/1", &mut acked).await?;
    check_acked(&mut kv, &acked, false).await?;

    // Full again, then a restart on the full disk.
    fill(&mut kv, 1, &mut acked).await?;
    keel.kill();
    let ports = keel.ports;
    *keel = start_keel(data_dir, log, ports)?;
    let ch = channel(keel).await?;
    let (mut kv, mut m) = (
        KvClient::new(ch.clone()),
        MaintenanceClient::new(ch.clone()),
    );
    check_acked(&mut kv, &acked, true).await?;
    // A write may still fit in a page the filesystem had left; keep going until refused.
    fill(&mut kv, 2, &mut acked).await?;
    check_acked(&mut kv, &acked, true).await?;
    ensure!(
        keel.is_running(),
        "keel stopped after restarting on a full disk"
    );

    std::fs::remove_file(&ballast[1])?;
    await_alarm_and_disarm(&mut m, member).await?;
    put_resumes(&mut kv, "resumed/2", &mut acked).await?;
    check_acked(&mut kv, &acked, false).await
}
