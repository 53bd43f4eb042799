//! `keelutl defrag` with the real binaries: it refuses a running member and a directory that
//! is not a member's, and rewrites a stopped one to a single snapshot it restarts from with the
//! same state.
// These tests run real processes on real sockets: tokio build only.
#![cfg(not(madsim))]

mod backup_common;
mod common;

use std::path::Path;

use anyhow::{ensure, Result};
use backup_common::{
    channel, hash_and_revision, keelutl_bin, loaded_member, put, run, start, wait_leader,
};
use common::TempDir;
use keel_proto::etcdserverpb::kv_client::KvClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelutl_defrag_rewrites_a_stopped_member_and_refuses_a_running_one() -> Result<()> {
    let dir = TempDir::new("backup-defrag")?;
    let member = loaded_member(dir.path(), 600, 100).await?;
    let p = member.ports[0];
    let before = hash_and_revision(p).await?;
    let data_dir = dir.path().join("one-m0");
    let defrag = |d: &Path| {
        run(
            &keelutl_bin(),
            &["defrag", "--data-dir", &d.display().to_string()],
        )
    };

    let running = defrag(&data_dir)?;
    let stderr = String::from_utf8_lossy(&running.stderr);
    ensure!(
        !running.status.success() && stderr.contains("a keel member is running"),
        "running: {stderr}"
    );
    let not_member = defrag(dir.path())?;
    let stderr = String::from_utf8_lossy(&not_member.stderr);
    ensure!(
        !not_member.status.success() && stderr.contains("not a keel member"),
        "not a member: {stderr}"
    );

    drop(member);
    let snaps =
        |d: &Path| -> Result<usize> { Ok(std::fs::read_dir(d.join("member/snap"))?.count()) };
    let done = defrag(&data_dir)?;
    ensure!(
        done.status.success(),
        "defrag: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&done.stdout).contains("Finished defragmenting keel data"),
        "defrag said nothing"
    );
    ensure!(
        snaps(&data_dir)? == 1,
        "defrag left {} snapshot files",
        snaps(&data_dir)?
    );

    // The member restarts from the new snapshot with the same state.
    let member = start(dir.path(), "one", vec![p], "one-token")?;
    wait_leader(&member).await?;
    ensure!(
        hash_and_revision(p).await? == before,
        "the state changed across defrag"
    );
    let mut kv = KvClient::new(channel(p)?);
    put(&mut kv, "after-defrag", "z").await?;
    Ok(())
}
