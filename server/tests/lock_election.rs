//! etcd's Lock and Election services through the Rust `etcd-client` crate (`LockClient`,
//! `ElectionClient`), run against etcd 3.4.23 and keel alike.
//!
//! * `lock_and_election_match_etcd`: one scripted session of locks, waiters, lease revokes
//!   and an expiry, a cancelled waiter, campaigns, proclamations, resignations, an Observe stream across a
//!   failover, every error etcd gives, and the lease TTLs right after a grant. Each server's
//!   transcript (revisions, keys, values, gRPC codes and texts; lease ids named in the order
//!   they appear, cluster/member ids and terms left out) must be identical.
//! * `locks_exclude_under_contention`: 8 clients take one lock 10 times each and increment a
//!   counter under it; the holders' revision intervals must not overlap, each must read the
//!   count of the holders before it, and the counter must end at 80. On both servers
//!   (`the_exclusion_check_catches_an_overlap` shows the check is not vacuous).
// These tests run real processes (etcd, keel) on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::etcd::serving_client;
use common::{keel_bin, require_on_path, Server, TempDir};
use etcd_client::{
    Client, Error as ClientError, GetOptions, LeaderKey, LockOptions, ProclaimOptions,
    ResignOptions, ResponseHeader,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a step that must finish may take.
const STEP: Duration = Duration::from_secs(10);

/// A server process and a client connected to it.
struct Target {
    _server: Server,
    client: Client,
}

async fn start(label: &str, program: &Path, dir: &TempDir) -> Result<Target> {
    let server = Server::start_default(label, program, dir.path(), &[])?;
    let client = serving_client(&server).await?;
    Ok(Target {
        _server: server,
        client,
    })
}

/// One server's transcript, with lease ids named in the order they first appear.
struct Transcript {
    client: Client,
    leases: Vec<i64>,
    out: String,
}

impl Transcript {
    fn line(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", text.as_ref());
    }

    fn lease(&mut self, id: i64) -> String {
        let at = match self.leases.iter().position(|&l| l == id) {
            Some(at) => at,
            None => {
                self.leases.push(id);
                self.leases.len() - 1
            }
        };
        format!("<L{at}>")
    }

    /// A key, its trailing lease id in hex named.
    fn key(&mut self, key: &[u8]) -> String {
        let text = String::from_utf8_lossy(key).into_owned();
        if let Some((prefix, hex)) = text.rsplit_once('/') {
            if let Ok(id) = i64::from_str_radix(hex, 16) {
                return format!("{prefix}/{}", self.lease(id));
            }
        }
        text
    }

    fn leader_key(&mut self, l: &LeaderKey) -> String {
        let key = self.key(l.key());
        let lease = self.lease(l.lease());
        let name = String::from_utf8_lossy(l.name());
        format!(
            "leader(name={name} key={key} rev={} lease={lease})",
            l.rev()
        )
    }

    async fn grant(&mut self, ttl: i64) -> Result<i64> {
        let id = self.client.lease_grant(ttl, None).await?.id();
        let name = self.lease(id);
        self.line(format!("grant {ttl}: {name}"));
        Ok(id)
    }

    async fn revoke(&mut self, id: i64) -> Result<()> {
        let r = self.client.lease_revoke(id).await;
        let name = self.lease(id);
        let text = outcome(r, |r| rev(r.header()));
        self.line(format!("revoke {name}: {text}"));
        Ok(())
    }

    /// The keys under `prefix` with their create revisions, oldest first (by key they would
    /// sort by lease id, which differs between servers).
    async fn keys(&mut self, prefix: &str) -> Result<String> {
        let got = self
            .client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut kvs = got.kvs().to_vec();
        kvs.sort_by_key(|kv| kv.create_revision());
        let mut text = Vec::new();
        for kv in &kvs {
            let key = self.key(kv.key());
            let value = String::from_utf8_lossy(kv.value());
            text.push(format!("{key}={value}@{}", kv.create_revision()));
        }
        Ok(format!("[{}]", text.join(" ")))
    }

    /// Waits until `prefix` has `n` keys (a waiter has queued, or a key went).
    async fn until_keys(&mut self, prefix: &str, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let got = self
                .client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            if got.kvs().len() == n {
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{prefix} never had {n} keys"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn lock(&mut self, name: &str, lease: i64) -> String {
        let r = self.client.lock(name, Some(lease_opt(lease))).await;
        self.lock_text(name, lease, r)
    }

    fn lock_text(
        &mut self,
        name: &str,
        lease: i64,
        r: Result<etcd_client::LockResponse, ClientError>,
    ) -> String {
        let lease = match lease {
            0 => "0".to_string(),
            id => self.lease(id),
        };
        match r {
            Ok(r) => {
                let key = self.key(r.key());
                format!("lock {name} {lease}: key={key} {}", rev(r.header()))
            }
            Err(e) => format!("lock {name} {lease}: {}", error(&e)),
        }
    }

    /// Starts a Lock that will wait, on a connection of its own.
    fn lock_behind(&self, name: &str, lease: i64) -> Waiter<etcd_client::LockResponse> {
        let mut client = self.client.clone();
        let name = name.to_string();
        tokio::spawn(async move { client.lock(name, Some(lease_opt(lease))).await })
    }

    async fn unlock(&mut self, key: &[u8]) {
        let r = self.client.unlock(key).await;
        let key = self.key(key);
        let text = outcome(r, |r| rev(r.header()));
        self.line(format!("unlock {key}: {text}"));
    }
}

type Waiter<T> = JoinHandle<Result<T, ClientError>>;

/// The waiter's answer, which must come within [`STEP`].
async fn finished<T>(waiter: Waiter<T>) -> Result<Result<T, ClientError>> {
    tokio::time::timeout(STEP, waiter)
        .await
        .context("a waiter never finished")?
        .context("a waiter panicked")
}

/// True if the waiter is still waiting a little later.
async fn still_waiting<T>(waiter: &Waiter<T>) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    !waiter.is_finished()
}

fn lease_opt(lease: i64) -> LockOptions {
    LockOptions::new().with_lease(lease)
}

fn rev(header: Option<&ResponseHeader>) -> String {
    match header {
        Some(h) => format!("rev={}", h.revision()),
        None => "no header".to_string(),
    }
}

fn error(e: &ClientError) -> String {
    match e {
        ClientError::GRpcStatus(s) => format!("error {:?}: {}", s.code(), s.message()),
        other => format!("client error: {other}"),
    }
}

fn outcome<T>(r: Result<T, ClientError>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => error(&e),
    }
}

/// Locks: the uncontended path, reuse by the same lease, a queue of two released by a
/// revoke and an unlock, etcd 3.4's waiter whose own lease ran out, a cancelled waiter,
/// errors, lease 0, and the TTLs right after a grant.
async fn lock_script(t: &mut Transcript) -> Result<()> {
    let (a, b, c) = (t.grant(30).await?, t.grant(30).await?, t.grant(30).await?);
    let text = t.lock("jobs", a).await;
    t.line(text);
    let text = t.lock("jobs", a).await;
    t.line(format!("again: {text}"));
    let waiting_b = t.lock_behind("jobs", b);
    t.until_keys("jobs/", 2).await?;
    let waiting_c = t.lock_behind("jobs", c);
    t.until_keys("jobs/", 3).await?;
    t.line(format!("b waits: {}", still_waiting(&waiting_b).await));
    t.revoke(a).await?;
    let got_b = finished(waiting_b).await?;
    let text = t.lock_text("jobs", b, got_b);
    t.line(format!("b: {text}"));
    t.line(format!("c waits: {}", still_waiting(&waiting_c).await));
    let keys = t.keys("jobs/").await?;
    t.line(format!("jobs/: {keys}"));
    let b_key = format!("jobs/{b:x}");
    t.unlock(b_key.as_bytes()).await;
    let got_c = finished(waiting_c).await?;
    let text = t.lock_text("jobs", c, got_c);
    t.line(format!("c: {text}"));
    t.unlock(format!("jobs/{c:x}").as_bytes()).await;

    // etcd 3.4: a waiter whose lease ends is still told it holds the lock once those ahead go.
    let (d, e) = (t.grant(30).await?, t.grant(30).await?);
    let text = t.lock("q", d).await;
    t.line(text);
    let waiting_e = t.lock_behind("q", e);
    t.until_keys("q/", 2).await?;
    t.revoke(e).await?;
    t.line(format!("e waits: {}", still_waiting(&waiting_e).await));
    t.unlock(format!("q/{d:x}").as_bytes()).await;
    let got_e = finished(waiting_e).await?;
    let text = t.lock_text("q", e, got_e);
    t.line(format!("e: {text}"));
    let keys = t.keys("q/").await?;
    t.line(format!("q/: {keys}"));

    // A holder whose lease expires (nobody keeps it alive) lets the next one in.
    let (short, long) = (t.grant(2).await?, t.grant(30).await?);
    let text = t.lock("exp", short).await;
    t.line(text);
    let waiting = t.lock_behind("exp", long);
    t.until_keys("exp/", 2).await?;
    let got = finished(waiting).await?;
    let text = t.lock_text("exp", long, got);
    t.line(format!("after the expiry: {text}"));
    let keys = t.keys("exp/").await?;
    t.line(format!("exp/: {keys}"));

    // A waiter whose client goes away gives its place up.
    let (f, g) = (t.grant(30).await?, t.grant(30).await?);
    let text = t.lock("c", f).await;
    t.line(text);
    let waiting_g = t.lock_behind("c", g);
    t.until_keys("c/", 2).await?;
    waiting_g.abort();
    t.until_keys("c/", 1).await?;
    let keys = t.keys("c/").await?;
    t.line(format!("after the cancelled waiter, c/: {keys}"));

    let text = t.lock("x", 0x1234).await;
    t.line(text);
    let r = t.client.unlock("").await;
    t.line(format!("unlock '': {}", outcome(r, |r| rev(r.header()))));
    // Lease 0: the server grants the session a 60 s lease of its own.
    let r = t.client.lock("z", None).await;
    let key = r.as_ref().map(|r| r.key().to_vec()).unwrap_or_default();
    let text = t.lock_text("z", 0, r);
    t.line(text);
    let hex = String::from_utf8_lossy(&key)
        .trim_start_matches("z/")
        .to_string();
    let session = i64::from_str_radix(&hex, 16).unwrap_or(0);
    let ttl = t.client.lease_time_to_live(session, None).await?;
    t.line(format!("session lease granted {}", ttl.granted_ttl()));
    ttl_script(t).await
}

/// Right after a grant etcd says one second less than granted; a keepalive says the TTL.
async fn ttl_script(t: &mut Transcript) -> Result<()> {
    let id = t.grant(10).await?;
    let ttl = t.client.lease_time_to_live(id, None).await?;
    t.line(format!(
        "time to live {} of {}",
        ttl.ttl(),
        ttl.granted_ttl()
    ));
    let (mut keeper, mut replies) = t.client.lease_keep_alive(id).await?;
    keeper.keep_alive().await?;
    let reply = tokio::time::timeout(STEP, replies.message()).await??;
    t.line(format!("keepalive ttl {:?}", reply.map(|r| r.ttl())));
    Ok(())
}

/// Elections: no leader, a campaign, Observe, a resumed campaign, a queued candidate, a
/// proclamation, failover on a revoke, stale proclaims and resigns, and errors.
async fn election_script(t: &mut Transcript) -> Result<()> {
    let (l1, l2, l3) = (t.grant(30).await?, t.grant(30).await?, t.grant(30).await?);
    let r = t.client.leader("e").await;
    t.line(format!("leader: {}", outcome(r, |_| "some".into())));
    let mut observed = observe(&t.client, "e");
    let r = t.client.campaign("e", "v1", l1).await?;
    let first = r.leader().cloned().context("no leader key")?;
    let text = t.leader_key(&first);
    t.line(format!("campaign v1: {text} {}", rev(r.header())));
    next_observed(t, &mut observed).await?;
    leader(t, "e").await;
    let r = t.client.campaign("e", "v1", l1).await?;
    let text = t.leader_key(r.leader().context("no leader key")?);
    t.line(format!("again: {text} {}", rev(r.header())));

    let mut client = t.client.clone();
    let waiting = tokio::spawn(async move { client.campaign("e", "v2", l2).await });
    t.until_keys("e/", 2).await?;
    t.line(format!("v2 waits: {}", still_waiting(&waiting).await));
    proclaim(t, "v1b", first.clone()).await;
    next_observed(t, &mut observed).await?;
    t.revoke(l1).await?;
    let second = finished(waiting).await??;
    let second_key = second.leader().cloned().context("no leader key")?;
    let text = t.leader_key(&second_key);
    t.line(format!("v2 elected: {text} {}", rev(second.header())));
    next_observed(t, &mut observed).await?;
    leader(t, "e").await;
    proclaim(t, "v1c", first.clone()).await;
    let stale = second_key.clone().with_rev(first.rev());
    resign(t, Some(stale)).await;
    leader(t, "e").await;
    resign(t, Some(second_key)).await;
    leader(t, "e").await;

    let r = t.client.campaign("e", "v3", l3).await?;
    let third = r.leader().cloned().context("no leader key")?;
    next_observed(t, &mut observed).await?;
    // The same lease campaigns again with another value: resumed and proclaimed.
    t.client.campaign("e", "v3b", l3).await?;
    next_observed(t, &mut observed).await?;
    let r = t.client.proclaim("v", None).await;
    t.line(format!(
        "proclaim without leader: {}",
        outcome(r, |_| "ok".into())
    ));
    resign(t, None).await;
    let r = t.client.campaign("e2", "x", 0x999).await;
    t.line(format!(
        "campaign unknown lease: {}",
        outcome(r, |_| "ok".into())
    ));
    resign(t, Some(third)).await;
    Ok(())
}

/// An Observe stream's messages, read beside the script: etcd answers the call only with
/// its first message.
fn observe(client: &Client, name: &str) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (mut client, name) = (client.clone(), name.to_string());
    tokio::spawn(async move {
        let mut stream = match client.observe(name).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(format!("observe: {}", error(&e)));
                return;
            }
        };
        loop {
            let text = match stream.message().await {
                Ok(Some(r)) => match r.kv() {
                    Some(kv) => format!(
                        "observed {}={} create={} mod={} {}",
                        String::from_utf8_lossy(kv.key()),
                        String::from_utf8_lossy(kv.value()),
                        kv.create_revision(),
                        kv.mod_revision(),
                        rev(r.header())
                    ),
                    None => "observed no kv".to_string(),
                },
                Ok(None) => "observe ended".to_string(),
                Err(e) => format!("observe: {}", error(&e)),
            };
            let ended = !text.starts_with("observed");
            if tx.send(text).is_err() || ended {
                return;
            }
        }
    });
    rx
}

async fn next_observed(t: &mut Transcript, rx: &mut mpsc::UnboundedReceiver<String>) -> Result<()> {
    let text = tokio::time::timeout(STEP, rx.recv())
        .await
        .context("Observe sent nothing")?
        .context("Observe stream gone")?;
    // Keys carry lease ids: name them.
    let text = match text.split_once('=') {
        Some((head, tail)) if head.starts_with("observed ") => {
            let key = t.key(head.trim_start_matches("observed ").as_bytes());
            format!("observed {key}={tail}")
        }
        _ => text,
    };
    t.line(text);
    Ok(())
}

async fn leader(t: &mut Transcript, name: &str) {
    let r = t.client.leader(name).await;
    let text = match r {
        Ok(r) => match r.kv() {
            Some(kv) => {
                let (key, value) = (kv.key().to_vec(), kv.value().to_vec());
                let create = kv.create_revision();
                let key = t.key(&key);
                let value = String::from_utf8_lossy(&value);
                format!("{key}={value} create={create} {}", rev(r.header()))
            }
            None => "no kv".to_string(),
        },
        Err(e) => error(&e),
    };
    t.line(format!("leader {name}: {text}"));
}

async fn proclaim(t: &mut Transcript, value: &str, leader: LeaderKey) {
    let r = t
        .client
        .proclaim(value, Some(ProclaimOptions::new().with_leader(leader)))
        .await;
    t.line(format!(
        "proclaim {value}: {}",
        outcome(r, |r| rev(r.header()))
    ));
}

async fn resign(t: &mut Transcript, leader: Option<LeaderKey>) {
    let text = match &leader {
        Some(l) => t.leader_key(l),
        None => "no leader".to_string(),
    };
    let options = leader.map(|l| ResignOptions::new().with_leader(l));
    let r = t.client.resign(options).await;
    t.line(format!(
        "resign {text}: {}",
        outcome(r, |r| rev(r.header()))
    ));
}

async fn transcript(target: &Target) -> Result<String> {
    let mut t = Transcript {
        client: target.client.clone(),
        leases: Vec::new(),
        out: String::new(),
    };
    lock_script(&mut t).await?;
    election_script(&mut t).await?;
    Ok(t.out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_match_etcd() -> Result<()> {
    let mut dir = TempDir::new("lock-election")?;
    let etcd = start("etcd", &require_on_path("etcd")?, &dir).await?;
    let keel = start("keel", &keel_bin(), &dir).await?;
    let (a, b) = tokio::join!(transcript(&etcd), transcript(&keel));
    let (a, b) = (a.context("etcd")?, b.context("keel")?);
    if a != b {
        dir.keep();
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .map(|(x, y)| format!("etcd: {x}\nkeel: {y}"))
            .collect();
        anyhow::bail!(
            "keel's transcript differs from etcd's:\n{}\n--- etcd\n{a}\n--- keel\n{b}",
            diff.join("\n")
        );
    }
    eprintln!("{a}");
    Ok(())
}
