//! `keelutl snapshot restore FILE --data-dir DIR --name --initial-cluster
//! --initial-cluster-token --initial-advertise-peer-urls`: a member directory for a *new*
//! cluster from a backup, as etcdutl's restore makes one from an etcd snapshot.
//!
//! The backup is read and checked whole first (length, magic, sha256, every crc32 inside).
//! The member directory then holds one snapshot file and a WAL that says the log was replaced
//! by it: the store and leases of the backup, the member table rewritten to the new
//! `--initial-cluster` (the ids a member started with these flags derives, so its own), the
//! alarms of the old cluster dropped (they name its members). The cluster id is derived from
//! the token and member URLs, as for any new keel cluster; restoring every member from the
//! same file with the same flags gives the same state on each, and they elect a leader from
//! it. The raft index and term are the backup's: revisions, HashKV and watches' history are
//! the old cluster's.
//!
//! Nothing is left half-made: the directory is built under a temporary name next to
//! `--data-dir` and renamed into place at the end (removed on any failure).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Parser as _;
use keel_engine::alarm::Alarms;
use keel_engine::membership::{Member, Membership};
use keel_engine::raft_log::{encode_conf_state, encode_hard_state};
use keel_engine::raftpb::{ConfState, HardState};
use keel_engine::state_snapshot::{
    encode_sections, SECTION_ALARMS, SECTION_LEASES, SECTION_MEMBERS, SECTION_MVCC,
};
use keel_server::backup::read::{self, Opened};
use keel_server::{Config, Identity};
use keel_storage::{OsDisk, SnapDir, Wal, WalOptions};

use crate::progress::Progress;

/// etcdutl's restore flags, with its defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The backup file (saved with `etcdctl snapshot save` from keel).
    pub file: PathBuf,
    /// Path to the data directory (default: `<name>.keel`).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Initial cluster configuration for restore bootstrap.
    #[arg(
        long = "initial-cluster",
        default_value = "default=http://localhost:2380"
    )]
    pub initial_cluster: String,
    /// Initial cluster token for the cluster during restore bootstrap.
    #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long = "initial-advertise-peer-urls",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
}

/// Restores the backup into a new member directory.
pub fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.keel", args.name)));
    refuse_non_empty(&data_dir)?;
    let (identity, members) = new_members(args, &data_dir)?;
    let len = std::fs::metadata(&args.file)
        .map_err(|e| read::BackupError {
            path: args.file.clone(),
            fault: read::Fault::Io(e),
        })?
        .len();
    let progress = Progress::start(&format!("reading {}", args.file.display()), len);
    let opened = read::open(&args.file, &mut |done| progress.set(done))?;
    progress.finish();
    // Every crc32 inside, before anything is written.
    opened.decode()?;
    let tmp = tmp_dir(&data_dir)?;
    let written =
        write_member(&tmp, &opened, &members).and_then(|()| put_in_place(&tmp, &data_dir));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("restoring {} failed", args.file.display())));
    }
    let h = &opened.header;
    println!(
        "restored snapshot {} to {}: member {} ({:x}) of new cluster {:x} of {} members, \
         revision {}, raft index {}",
        args.file.display(),
        data_dir.display(),
        identity.name,
        identity.member_id,
        identity.cluster_id,
        members.len(),
        h.revision,
        h.raft_index,
    );
    Ok(())
}

/// etcdutl refuses a data directory that holds anything.
fn refuse_non_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "data-dir {:?} not empty or could not be read",
                    dir.display().to_string()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => bail!(
            "data-dir {:?} not empty or could not be read",
            dir.display().to_string()
        ),
    }
}

/// The new member table, derived as a keel member started with the same flags derives it.
fn new_members(args: &RestoreArgs, data_dir: &Path) -> anyhow::Result<(Identity, Vec<Member>)> {
    let config = Config::try_parse_from([
        "keel",
        "--name",
        &args.name,
        "--initial-cluster",
        &args.initial_cluster,
        "--initial-cluster-token",
        &args.initial_cluster_token,
        "--initial-advertise-peer-urls",
        &args.initial_advertise_peer_urls,
        "--data-dir",
        &data_dir.display().to_string(),
    ])
    .context("bad restore flags")?;
    let (identity, members) =
        keel_server::bootstrap::new_cluster(&config).context("bad --initial-cluster")?;
    let mut advertised: Vec<String> = config
        .initial_advertise_peer_urls
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    advertised.sort();
    let mut listed = identity.peer_urls.clone();
    listed.sort();
    if advertised != listed {
        bail!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            args.name,
            listed.join(","),
            advertised.join(",")
        );
    }
    Ok((identity, members))
}

/// A temporary directory beside `data_dir`, empty.
fn tmp_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let tmp = data_dir.with_file_name(format!(".{name}.restoring-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Writes `dir/member/snap` (one snapshot) and `dir/member/wal` (its mark and hard state).
fn write_member(dir: &Path, opened: &Opened, members: &[Member]) -> anyhow::Result<()> {
    let data = new_state(opened, members)?;
    let h = &opened.header;
    let (index, term) = (h.raft_index.max(1), h.raft_term.max(1));
    let conf = ConfState::from((members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![]));
    let disk = std::sync::Arc::new(OsDisk::new());
    let member = dir.join("member");
    let progress = Progress::start("writing the member's snapshot", data.len() as u64);
    let snaps = SnapDir::open(disk.clone(), &member.join("snap"), 2)?;
    snaps.save(index, term, &encode_conf_state(&conf), &data)?;
    progress.set(data.len() as u64);
    progress.finish();
    let (mut wal, _) = Wal::open(disk, &member.join("wal"), WalOptions::default())?;
    let hard_state = HardState {
        term,
        vote: 0,
        commit: index,
        ..Default::default()
    };
    wal.append_snapshot(index, term)?;
    wal.append_hard_state(&encode_hard_state(&hard_state))?;
    wal.sync()?;
    Ok(())
}

/// The backup's state with the new member table and no alarms; the store and lease sections
/// are the backup's bytes as they are.
fn new_state(opened: &Opened, members: &[Member]) -> anyhow::Result<Vec<u8>> {
    let sections = keel_engine::state_snapshot::decode_known(opened.data())
        .map_err(|e| anyhow::anyhow!("{}: {e}", opened.path.display()))?;
    let table = Membership::bootstrap(members.to_vec()).encode();
    let alarms = Alarms::default().encode_section();
    Ok(encode_sections(&[
        (SECTION_MVCC, sections[&SECTION_MVCC]),
        (SECTION_LEASES, sections[&SECTION_LEASES]),
        (SECTION_MEMBERS, &table),
        (SECTION_ALARMS, &alarms),
    ]))
}

/// Renames the finished directory to `data_dir` (an empty one there is replaced).
fn put_in_place(tmp: &Path, data_dir: &Path) -> anyhow::Result<()> {
    if data_dir.exists() {
        std::fs::remove_dir(data_dir)
            .with_context(|| format!("removing the empty {}", data_dir.display()))?;
    }
    std::fs::rename(tmp, data_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), data_dir.display()))?;
    Ok(())
}
