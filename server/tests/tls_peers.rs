//! Peer TLS with real processes: a 3-member cluster whose peer URLs are `https://`, with
//! `--peer-client-cert-auth`, elects, replicates and survives killing its leader; a fourth
//! process with a self-signed certificate (`--peer-auto-tls`) is refused at the handshake,
//! before any raft message is read, and the cluster does not notice it. The killed leader,
//! restarted after the others moved past what they keep for followers, catches up through a
//! snapshot streamed over peer TLS (on the receiver's snapshot lane).

// Real processes on real sockets, and TLS (which the madsim build has not): tokio build only.
#![cfg(not(madsim))]

mod common;
mod tls_common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{keel_bin, require_on_path, Ports, Server, TempDir};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::PutRequest;
use tls_common::{eventually, Ca};

/// Applied entries between snapshots (the others keep about this many for followers).
const SNAPSHOT_COUNT: u64 = 100;

fn peer_url(ports: Ports) -> String {
    format!("https://127.0.0.1:{}", ports.peer)
}

fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=4s"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The member id of the leader, as member `endpoint` sees it.
fn leader(endpoint: &str) -> Result<u64> {
    let json = etcdctl(endpoint, &["endpoint", "status", "-w", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let leader = v[0]["Status"]["leader"]
        .as_u64()
        .context("leader in status")?;
    anyhow::ensure!(leader != 0, "no leader yet");
    Ok(leader)
}

fn member_id(endpoint: &str) -> Result<u64> {
    let json = etcdctl(endpoint, &["endpoint", "status", "-w", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    v[0]["Status"]["header"]["member_id"]
        .as_u64()
        .context("member id")
}

#[test]
fn a_cluster_on_peer_tls_replicates_survives_its_leader_and_refuses_a_rogue_peer() -> Result<()> {
    require_on_path("etcdctl")?;
    let dir = TempDir::new("tls-peers")?;
    let ca = Ca::new(dir.path(), "peer-ca")?;
    let ports: Vec<Ports> = (0..3).map(|_| Ports::pick()).collect();
    let cluster: Vec<String> = (0..3)
        .map(|i| format!("n{i}={}", peer_url(ports[i])))
        .collect();
    let mut members = Vec::new();
    let mut member_args = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let leaf = ca.issue(&format!("peer{i}"), &format!("n{i}"))?;
        let args = vec![
            format!("--name=n{i}"),
            format!("--data-dir={}", dir.path().join(format!("n{i}")).display()),
            format!("--listen-client-urls={}", p.client_url()),
            format!("--advertise-client-urls={}", p.client_url()),
            format!("--listen-peer-urls={}", peer_url(*p)),
            format!("--initial-advertise-peer-urls={}", peer_url(*p)),
            format!("--initial-cluster={}", cluster.join(",")),
            format!("--peer-cert-file={}", leaf.cert.display()),
            format!("--peer-key-file={}", leaf.key.display()),
            format!("--peer-trusted-ca-file={}", ca.cert_path.display()),
            "--peer-client-cert-auth".to_string(),
            format!("--snapshot-count={SNAPSHOT_COUNT}"),
            "--snapshot-log-percent=0".to_string(),
        ];
        let log = dir.path().join(format!("n{i}.log"));
        members.push(Server::spawn(
            &format!("n{i}"),
            &keel_bin(),
            &args,
            *p,
            &log,
        )?);
        member_args.push(args);
    }
    let mut members: Vec<Server> = members
        .into_iter()
        .map(|m| m.wait_ready(common::START_TIMEOUT))
        .collect::<Result<_>>()?;
    let eps: Vec<String> = ports.iter().map(|p| p.client_url()).collect();
    let elected = eventually(Duration::from_secs(15), || leader(&eps[0]))?;
    eventually(Duration::from_secs(10), || {
        etcdctl(&eps[0], &["put", "k", "v1"])
    })?;
    for ep in &eps {
        let got = eventually(Duration::from_secs(5), || etcdctl(ep, &["get", "k"]))?;
        assert_eq!(got, "k\nv1\n", "replicated to {ep} over peer TLS");
    }

    // A rogue: a self-signed peer certificate, claiming a seat next to n0.
    let rogue_ports = Ports::pick();
    let rogue_args = vec![
        "--name=rogue".to_string(),
        format!("--data-dir={}", dir.path().join("rogue").display()),
        format!("--listen-client-urls={}", rogue_ports.client_url()),
        format!("--advertise-client-urls={}", rogue_ports.client_url()),
        format!("--listen-peer-urls={}", peer_url(rogue_ports)),
        format!("--initial-advertise-peer-urls={}", peer_url(rogue_ports)),
        format!(
            "--initial-cluster=rogue={},{}",
            peer_url(rogue_ports),
            cluster.join(",")
        ),
        "--peer-auto-tls".to_string(),
    ];
    let rogue_log = dir.path().join("rogue.log");
    let _rogue = Server::start("rogue", &keel_bin(), &rogue_args, rogue_ports, &rogue_log)?;
    let refused = eventually(Duration::from_secs(10), || {
        let logs: String = members.iter().map(|m| m.log_tail(200_000)).collect();
        anyhow::ensure!(
            logs.contains("rejected connection (TLS handshake)"),
            "not yet"
        );
        Ok(())
    });
    refused.context("the members refuse the rogue's handshakes")?;
    let logs: String = members.iter().map(|m| m.log_tail(200_000)).collect();
    assert!(
        !logs.contains("belongs to cluster"),
        "no raft message of the rogue was read (the cluster id check never ran)"
    );
    assert_eq!(leader(&eps[1])?, elected, "the rogue disturbed no election");
    let list = etcdctl(&eps[1], &["member", "list"])?;
    assert_eq!(list.lines().count(), 3, "still three members: {list}");

    // Kill the leader; the other two elect a new one and keep serving.
    let victim = (0..3)
        .find(|&i| member_id(&eps[i]).ok() == Some(elected))
        .context("the leader is one of the three")?;
    members[victim].kill();
    let alive: Vec<&String> = (0..3).filter(|&i| i != victim).map(|i| &eps[i]).collect();
    let next = eventually(Duration::from_secs(15), || {
        let l = leader(alive[0])?;
        anyhow::ensure!(l != elected, "old leader still reported");
        Ok(l)
    })?;
    assert_ne!(next, elected, "a new leader");
    eventually(Duration::from_secs(10), || {
        etcdctl(alive[0], &["put", "k", "v2"])
    })?;
    let got = eventually(Duration::from_secs(5), || {
        let got = etcdctl(alive[1], &["get", "k"])?;
        anyhow::ensure!(got == "k\nv2\n", "not yet: {got}");
        Ok(got)
    })?;
    assert_eq!(got, "k\nv2\n", "replicated after the leader died");

    // Move the other two well past the entries they keep for followers, then restart the
    // old leader: it can only catch up through a snapshot, sent over peer TLS.
    let writes = 4 * SNAPSHOT_COUNT;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut kv = KvClient::connect(alive[0].clone()).await?;
        for i in 0..writes {
            kv.put(PutRequest {
                key: format!("bulk/{i:04}").into_bytes().into(),
                value: b"x".to_vec().into(),
                ..Default::default()
            })
            .await?;
        }
        anyhow::Ok(())
    })?;
    let log = dir.path().join(format!("n{victim}-restarted.log"));
    let restarted = Server::spawn(
        &format!("n{victim}"),
        &keel_bin(),
        &member_args[victim],
        ports[victim],
        &log,
    )?
    .wait_ready(common::START_TIMEOUT)?;
    let last = format!("bulk/{:04}", writes - 1);
    eventually(Duration::from_secs(20), || {
        let got = etcdctl(&eps[victim], &["get", &last, "--consistency=s"])?;
        anyhow::ensure!(got == format!("{last}\nx\n"), "not yet: {got:?}");
        Ok(())
    })
    .context("the restarted member caught up")?;
    let text = restarted.log_tail(2_000_000);
    assert!(
        text.contains("installed the leader's snapshot"),
        "the restarted member caught up without a snapshot; its log: {}",
        log.display()
    );
    Ok(())
}
