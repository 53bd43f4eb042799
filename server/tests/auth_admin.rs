//! The Maintenance and Cluster admin RPCs with auth enabled: the same etcdctl commands as
//! root, as a user without the root role and with no user at all, against etcd 3.4.23 and
//! keel; the outcomes (success, or the error text) must match. etcd 3.4 makes Snapshot,
//! Defragment, Hash and HashKV and the member changes admin-only and leaves Status,
//! MoveLeader, Alarm and MemberList to anyone.
#![cfg(not(madsim))]

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};
use common::{keel_bin, require_on_path, Ports, Server, TempDir};

/// An etcdctl command's outcome: `ok`, or its error text with endpoints, member ids and
/// paths masked.
fn outcome(endpoint: &str, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(require_on_path("etcdctl")?)
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args)
        .current_dir(dir)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = !out.status.success() || text.contains("Error") || text.contains("Failed");
    if !failed {
        return Ok("ok".to_string());
    }
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| mask(&l.replace(endpoint, "<ep>")))
        .collect();
    Ok(lines.join(" / "))
}

/// Member ids (hex words of 10 or more digits) masked.
fn mask(line: &str) -> String {
    line.split(' ')
        .map(|w| {
            let hex = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            if hex.len() >= 10 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                w.replace(hex, "<id>")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn must(endpoint: &str, dir: &Path, args: &str) -> Result<()> {
    let o = outcome(endpoint, dir, &args.split_whitespace().collect::<Vec<_>>())?;
    ensure!(o == "ok", "{args}: {o}");
    Ok(())
}

/// The admin commands etcdctl has, as `user` (`None`: no user).
fn commands(root: bool) -> Vec<&'static str> {
    let mut c = vec![
        "defrag",
        "snapshot save snap.db",
        "endpoint hashkv",
        "endpoint status",
        "endpoint health",
        "alarm list",
        "alarm disarm",
        "member list",
        "member remove 4d2",
        "member update 4d2 --peer-urls=http://127.0.0.1:9",
        "member promote 4d2",
        "move-leader 4d2",
        "compaction 1",
    ];
    if !root {
        // As root this would change the one-member cluster.
        c.push("member add extra --peer-urls=http://127.0.0.1:9");
        c.push("member add extra --learner --peer-urls=http://127.0.0.1:9");
    }
    c
}

async fn session(label: &str, program: &Path, dir: &Path) -> Result<Vec<String>> {
    let server = Server::start_etcd_style(
        label,
        program,
        "default",
        &dir.join(format!("{label}.data")),
        Ports::pick(),
        &["--bcrypt-cost=4".to_string()],
    )?;
    let ep = server.endpoint();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while outcome(&ep, dir, &["put", "probe", "x"])? != "ok" {
        ensure!(std::time::Instant::now() < deadline, "{label} never served");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for step in [
        "user add root:rootpw",
        "user grant-role root root",
        "role add rw",
        "role grant-permission rw readwrite --prefix=true a/",
        "user add alice:alicepw",
        "user grant-role alice rw",
        "auth enable",
    ] {
        must(&ep, dir, step)?;
    }
    let mut out = Vec::new();
    for (who, user) in [
        ("alice", Some("alice:alicepw")),
        ("no user", None),
        ("root", Some("root:rootpw")),
    ] {
        for cmd in commands(who == "root") {
            let mut args: Vec<&str> = Vec::new();
            let flag = user.map(|u| format!("--user={u}"));
            if let Some(f) = &flag {
                args.push(f);
            }
            args.extend(cmd.split_whitespace());
            out.push(format!("{who}: {cmd} => {}", outcome(&ep, dir, &args)?));
            let _ = std::fs::remove_file(dir.join("snap.db"));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_rpcs_are_checked_as_etcd_checks_them() -> Result<()> {
    let etcd = require_on_path("etcd")?;
    let dir = TempDir::new("auth-admin")?;
    let theirs = session("etcd", &etcd, dir.path()).await?;
    let ours = session("keel", &keel_bin(), dir.path()).await?;
    eprintln!("{}", ours.join("\n"));
    for (a, b) in theirs.iter().zip(&ours) {
        assert_eq!(a, b, "etcd (left) and keel (right) differ");
    }
    assert_eq!(theirs.len(), ours.len());
    Ok(())
}
