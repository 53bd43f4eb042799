//! Lock with auth enabled: the recipe's key operations are checked with the caller's
//! permissions, as etcd's Lock service checks them with the caller's context. The same session
//! runs against etcd 3.4.23 and keel through the `etcd-client` crate; the outcomes must match.
#![cfg(not(madsim))]

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::{keel_bin, require_on_path, Server, TempDir};
use etcd_client::{Client, ConnectOptions, Permission, ProclaimOptions};

/// How long a client may take to connect and be answered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

async fn client(server: &Server, user: Option<(&str, &str)>) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let options = user.map(|(name, pw)| ConnectOptions::new().with_user(name, pw));
        match Client::connect([server.endpoint()], options).await {
            Ok(client) => return Ok(client),
            Err(e) => ensure!(
                tokio::time::Instant::now() < deadline,
                "{}: no client: {e}",
                server.label()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The session's outcomes on one server, a line each.
async fn session(label: &str, program: &Path, dir: &TempDir) -> Result<Vec<String>> {
    let server = Server::start_default(label, program, dir.path(), &[])?;
    let mut admin = client(&server, None).await?;
    // Until the member serves reads, setup calls may fail: wait for one read.
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while admin.get("probe", None).await.is_err() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{label} never served a read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.role_add("root").await?;
    admin.user_add("root", "rootpw", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.role_add("locker").await?;
    admin
        .role_grant_permission("locker", Permission::read_write("held/").with_prefix())
        .await?;
    admin.user_add("alice", "alicepw", None).await?;
    admin.user_grant_role("alice", "locker").await?;
    admin.user_add("bob", "bobpw", None).await?;
    admin.auth_enable().await?;
    let mut out = Vec::new();
    for (user, pw, name) in [
        ("alice", "alicepw", "held/x"),
        ("alice", "alicepw", "other"),
        ("bob", "bobpw", "held/y"),
        ("root", "rootpw", "other"),
    ] {
        let mut c = client(&server, Some((user, pw))).await?;
        let outcome = match c.lock(name, None).await {
            Ok(r) => {
                let key = String::from_utf8_lossy(r.key()).into_owned();
                let prefix_ok = key.starts_with(&format!("{name}/"));
                let unlocked = c.unlock(r.key()).await.is_ok();
                format!("ok (key under the name: {prefix_ok}, unlocked: {unlocked})")
            }
            Err(e) => format!("error: {e}"),
        };
        out.push(format!("{user} locks {name}: {outcome}"));
    }
    for (user, pw, name) in [("alice", "alicepw", "held/e"), ("bob", "bobpw", "held/f")] {
        let mut c = client(&server, Some((user, pw))).await?;
        out.push(format!(
            "{user} campaigns on {name}: {}",
            election(&mut c, name).await
        ));
    }
    Ok(out)
}

/// Campaign, Proclaim and Leader on `name` for one user: what each answered.
async fn election(c: &mut Client, name: &str) -> String {
    let lease = match c.lease_grant(30, None).await {
        Ok(granted) => granted.id(),
        Err(e) => return format!("lease error: {e}"),
    };
    let leader = match c.campaign(name, "v1", lease).await {
        Ok(r) => r.leader().cloned(),
        Err(e) => return format!("campaign error: {e}"),
    };
    let Some(leader) = leader else {
        return "campaign answered no leader key".into();
    };
    let proclaimed = c
        .proclaim("v2", Some(ProclaimOptions::new().with_leader(leader)))
        .await
        .map(|_| "ok".to_string())
        .unwrap_or_else(|e| format!("error: {e}"));
    let value = match c.leader(name).await {
        Ok(r) => r
            .kv()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .unwrap_or_default(),
        Err(e) => format!("error: {e}"),
    };
    format!("proclaim {proclaimed}, leader's value {value}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_checks_the_callers_permissions_as_etcds_does() -> Result<()> {
    let dir = TempDir::new("lock-auth")?;
    let etcd = session("etcd", &require_on_path("etcd")?, &dir).await?;
    let keel = session("keel", &keel_bin(), &dir).await?;
    assert_eq!(
        keel, etcd,
        "keel's outcomes (left) differ from etcd's (right)"
    );
    ensure!(
        etcd.iter()
            .filter(|l| l.contains("permission denied"))
            .count()
            == 3,
        "the session refuses two locks and a campaign on both servers: {etcd:#?}"
    );
    Ok(())
}
