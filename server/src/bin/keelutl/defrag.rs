//! `keelutl defrag --data-dir DIR`: rewrites a *stopped* member's storage compactly.
//!
//! What keel's storage leaves reclaimable is old snapshot files (the member keeps the newest
//! two, `--max-snapshots`) and the WAL since the older of them. Defrag replays the WAL after
//! the newest snapshot up to its commit index, through the engine itself (the same apply
//! code a restart runs), writes one fresh snapshot of that state, removes every older
//! snapshot file and releases the WAL segments the new snapshot covers. The member restarts
//! from the new snapshot with nothing to replay.
//!
//! Refused: a directory that is not a keel member's (no `member/wal` and `member/snap`), a
//! member that is running (its lock, [`keel_server::member_lock`], is held), and a member
//! that has no snapshot yet (its member table then lives only in its bootstrap flags).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use keel_engine::node::{Node, NodeConfig, Recovered, WatchConfig};
use keel_engine::raft_log::{decode_conf_state, decode_entry, decode_hard_state};
use keel_engine::raftpb::Snapshot;
use keel_server::member_lock;
use keel_storage::{OsDisk, SnapDir, Wal, WalOptions};

use crate::progress::Progress;

/// Defragments the stopped member in `data_dir`.
pub fn defrag(data_dir: &Path) -> anyhow::Result<()> {
    let member = data_dir.join("member");
    if !member.join("wal").is_dir() || !member.join("snap").is_dir() {
        bail!(
            "{} is not a keel member's data directory (no member/wal and member/snap)",
            data_dir.display()
        );
    }
    let _lock = member_lock::lock(data_dir)?;
    let before = dir_bytes(&member);
    let disk: Arc<OsDisk> = Arc::new(OsDisk::new());
    let snaps = SnapDir::open(disk.clone(), &member.join("snap"), 1)?;
    let (mut wal, recovered) = recover(&snaps, disk, &member)?;
    let snap_index = recovered
        .snapshot
        .as_ref()
        .map_or(0, |s| s.get_metadata().index);
    let node = replay(recovered).context("replaying the WAL")?;
    let job = node
        .backup_job()
        .context("the replayed member has no state to snapshot")?;
    let index = job.index();
    if index > snap_index {
        let len = job.encoded_len();
        let progress = Progress::start(&format!("writing the snapshot at index {index}"), len);
        let conf = keel_engine::raft_log::encode_conf_state(job.metadata().get_conf_state());
        snaps.save_streaming(index, job.metadata().term, &conf, len, |out| {
            let mut counted = Counted {
                out,
                done: 0,
                progress: &progress,
            };
            job.write_data(&mut counted)
        })?;
        progress.finish();
    }
    for (term, old) in snaps.list()? {
        if old < index {
            let path = member
                .join("snap")
                .join(keel_storage::snap::file_name(term, old));
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let released = wal.release_before(index)?;
    let after = dir_bytes(&member);
    println!(
        "Finished defragmenting keel data[{}]: snapshot at index {index} (was {snap_index}), \
         {released} WAL segments released, {before} -> {after} bytes",
        data_dir.display()
    );
    Ok(())
}

/// The newest snapshot and the WAL after it, as a restart reads them.
fn recover(snaps: &SnapDir, disk: Arc<OsDisk>, member: &Path) -> anyhow::Result<(Wal, Recovered)> {
    let Some(loaded) = snaps.load_newest()?.snapshot else {
        bail!(
            "{} has no snapshot yet: its member table is only in its bootstrap flags; start it \
             and let it take one first",
            member.display()
        );
    };
    let mut snapshot = Snapshot {
        data: loaded.data,
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = loaded.index;
    meta.term = loaded.term;
    meta.set_conf_state(decode_conf_state(&loaded.meta)?);
    let (wal, from_disk) = Wal::open(disk, &member.join("wal"), WalOptions::default())?;
    let hard_state = from_disk
        .hard_state
        .as_deref()
        .map(decode_hard_state)
        .transpose()?;
    let entries = from_disk
        .entries
        .iter()
        .filter(|e| e.index > loaded.index)
        .map(|e| decode_entry(&e.data))
        .collect::<Result<Vec<_>, _>>()?;
    let recovered = Recovered {
        snapshot: Some(snapshot),
        hard_state,
        entries,
    };
    Ok((wal, recovered))
}

/// The engine, started on what was recovered: it applies the committed entries at once. It
/// runs as a non-voting joiner with an id of no member's, so it never campaigns; nothing it
/// outputs is carried out.
fn replay(recovered: Recovered) -> anyhow::Result<Node> {
    let commit = recovered.hard_state.as_ref().map_or(0, |hs| hs.commit);
    let voters = recovered
        .snapshot
        .as_ref()
        .map(|s| s.get_metadata().get_conf_state().voters.clone())
        .unwrap_or_default();
    let config = NodeConfig {
        member_id: u64::MAX,
        cluster_id: 0,
        voters,
        election_ticks: 10,
        heartbeat_ticks: 1,
        tick_ms: 100,
        seed: 0,
        incarnation: 0,
        snapshot_count: u64::MAX,
        snapshot_log_percent: 0,
        raft_log_bytes_max: None,
        initial_members: Vec::new(),
        name: String::new(),
        client_urls: Vec::new(),
        joining: true,
        watch: WatchConfig::default(),
        auth_token_ttl_ms: keel_engine::node::AUTH_TOKEN_TTL_MS_DEFAULT,
        maintenance: keel_engine::node::MaintenanceConfig::default(),
        bugs: keel_engine::bugs::Bugs::none(),
    };
    let mut node = Node::new(config, recovered)?;
    drop(node.take_outputs());
    let applied = node.status().raft_applied_index;
    if applied < commit {
        bail!("replay stopped at index {applied}, before the commit index {commit}");
    }
    Ok(node)
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Passes bytes on, reporting progress.
struct Counted<'a> {
    out: &'a mut dyn std::io::Write,
    done: u64,
    progress: &'a Progress,
}

impl std::io::Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.done += n as u64;
        self.progress.set(self.done);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
