//! Membership with real processes and etcdctl, etcd's own way:
//!
//! - three keel members; `etcdctl member add --learner`; the fourth starts with
//!   `--initial-cluster-state existing`, joins and catches up by log replay (same key count, then
//!   the same `endpoint hashkv` everywhere once promoted);
//! - `member promote`, then `member remove` of a voter: the removed process stops;
//! - `member list` shows the table with every member's published name and client URLs;
//! - a removed member, wiped and added back, restarted later with its original bootstrap
//!   flags, is the member it was added as (its data dir keeps its identity);
//! - bad membership commands get the same codes and texts from keel as from etcd 3.4.
// These tests run real processes on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{keel_bin, require_on_path, Ports, Server, TempDir};

const HEARTBEAT_MS: u64 = 50;
const ELECTION_MS: u64 = 500;
const KEYS: usize = 40;
const WAIT: Duration = Duration::from_secs(20);

/// One etcdctl call: (success, stdout, stderr).
fn etcdctl(endpoints: &[String], args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(require_on_path("etcdctl")?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=8s")
        .args(args)
        .output()
        .context("running etcdctl")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn etcdctl_ok(endpoints: &[String], args: &[&str]) -> Result<String> {
    let (ok, out, err) = etcdctl(endpoints, args)?;
    ensure!(ok, "etcdctl {args:?} failed: {out}{err}");
    Ok(out)
}

/// The gRPC error etcdctl reports, as `code = X desc = Y`.
fn grpc_error(endpoints: &[String], args: &[&str]) -> Result<String> {
    let (ok, out, err) = etcdctl(endpoints, args)?;
    ensure!(!ok, "etcdctl {args:?} should fail, printed {out}");
    let Some(at) = err.find("code = ") else {
        bail!("etcdctl {args:?}: no gRPC error in {err}");
    };
    let rest = &err[at..];
    Ok(rest[..rest.find('"').unwrap_or(rest.len())].to_string())
}

fn retry<T>(what: &str, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        match attempt() {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() > deadline => return Err(e.context(what.to_string())),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

struct Member {
    name: String,
    ports: Ports,
    server: Option<Server>,
}

fn member_args(dir: &Path, name: &str, p: Ports, cluster: &str, state: &str) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", dir.join(name).display()),
        format!("--listen-client-urls={}", p.client_url()),
        format!("--advertise-client-urls={}", p.client_url()),
        format!("--listen-peer-urls={}", p.peer_url()),
        format!("--initial-advertise-peer-urls={}", p.peer_url()),
        format!("--initial-cluster={cluster}"),
        format!("--initial-cluster-state={state}"),
        "--initial-cluster-token=membership-test".to_string(),
        format!("--heartbeat-interval={HEARTBEAT_MS}"),
        format!("--election-timeout={ELECTION_MS}"),
    ]
}

fn initial_cluster(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.ports.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

fn start(program: &Path, dir: &Path, members: &mut [Member], i: usize, state: &str) -> Result<()> {
    let cluster = initial_cluster(members);
    start_with(program, dir, members, i, state, &cluster)
}

fn start_with(
    program: &Path,
    dir: &Path,
    members: &mut [Member],
    i: usize,
    state: &str,
    cluster: &str,
) -> Result<()> {
    let m = &members[i];
    let args = member_args(dir, &m.name, m.ports, cluster, state);
    let log = dir.join(format!("{}.log", m.name));
    let server = Server::start(&m.name, program, &args, m.ports, &log)?;
    members[i].server = Some(server);
    Ok(())
}

fn endpoints(members: &[Member]) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.server.is_some())
        .map(|m| m.ports.endpoint())
        .collect()
}

/// One row of `member list`: (id, name, peer URLs, client URLs, is_learner).
type Row = (u64, String, String, String, bool);

/// `member list -w json`, ordered by name.
fn member_table(endpoint: &str) -> Result<Vec<Row>> {
    let json = etcdctl_ok(&[endpoint.to_string()], &["member", "list", "-w", "json"])?;
    let value: serde_json::Value = serde_json::from_str(&json).context("member list json")?;
    let mut rows = Vec::new();
    for m in value["members"].as_array().context("members")? {
        let urls = |key: &str| {
            m[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        rows.push((
            m["ID"].as_u64().context("ID")?,
            m["name"].as_str().unwrap_or("").to_string(),
            urls("peerURLs"),
            urls("clientURLs"),
            m["isLearner"].as_bool().unwrap_or(false),
        ));
    }
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(rows)
}

fn key_count(endpoint: &str) -> Result<usize> {
    let out = etcdctl_ok(
        &[endpoint.to_string()],
        &["get", "k", "--prefix", "--keys-only", "--consistency=s"],
    )?;
    Ok(out.lines().filter(|l| !l.is_empty()).count())
}

/// The endpoint of a member that is not the leader.
fn follower_endpoint(endpoints: &[String]) -> Result<String> {
    let out = etcdctl_ok(endpoints, &["endpoint", "status", "-w", "json"])?;
    let value: serde_json::Value = serde_json::from_str(&out).context("status json")?;
    for e in value.as_array().context("array")? {
        let status = &e["Status"];
        if status["header"]["member_id"].as_u64() != status["leader"].as_u64() {
            return e["Endpoint"]
                .as_str()
                .map(str::to_string)
                .context("endpoint");
        }
    }
    bail!("no follower in {out}")
}

/// The member id `member add` printed ("Member 8e9e05c52164694d added to cluster ...").
fn added_id(output: &str) -> Result<u64> {
    let hex = output
        .split_whitespace()
        .nth(1)
        .context("member add output")?;
    u64::from_str_radix(hex, 16).context("member id")
}

#[test]
fn a_learner_joins_catches_up_is_promoted_and_a_voter_is_removed() -> Result<()> {
    let mut dir = TempDir::new("membership")?;
    let result = learner_scenario(dir.path());
    if result.is_err() {
        dir.keep();
    }
    result
}

fn learner_scenario(dir: &Path) -> Result<()> {
    let keel = keel_bin();
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member {
            name: format!("m{i}"),
            ports: Ports::pick(),
            server: None,
        })
        .collect();
    // Bootstrap: m0..m2 only.
    let bootstrap = initial_cluster(&members);
    for i in 0..3 {
        start(&keel, dir, &mut members, i, "new")?;
    }
    let first = vec![members[0].ports.endpoint()];
    for i in 0..KEYS {
        retry("put", || {
            etcdctl_ok(&first, &["put", &format!("k{i}"), "v"])
        })?;
    }

    let learner_ports = Ports::pick();
    let add = etcdctl_ok(
        &first,
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls={}", learner_ports.peer_url()),
        ],
    )?;
    let learner_id = added_id(&add)?;
    members.push(Member {
        name: "m3".into(),
        ports: learner_ports,
        server: None,
    });
    start(&keel, dir, &mut members, 3, "existing")?;
    let learner = vec![learner_ports.endpoint()];
    let want = key_count(&members[0].ports.endpoint())?;
    retry("the learner catches up", || {
        let got = key_count(&learner[0])?;
        ensure!(got == want, "learner has {got}, leader {want}");
        Ok(())
    })?;
    let (ok, _, err) = etcdctl(&learner, &["get", "k1"])?;
    ensure!(
        !ok && err.contains("etcdserver: rpc not supported for learner"),
        "{err}"
    );
    let status = etcdctl_ok(&learner, &["endpoint", "status", "-w", "json"])?;
    ensure!(
        status.contains("\"is_learner\":true") || status.contains("isLearner"),
        "{status}"
    );

    // Through a follower: it forwards the promote to the leader, which checks the learner.
    let follower = vec![follower_endpoint(&endpoints(&members[..3]))?];
    retry("promote", || {
        etcdctl_ok(
            &follower,
            &["member", "promote", &format!("{learner_id:x}")],
        )
    })?;
    let all = endpoints(&members);
    retry("same hashkv everywhere", || {
        let out = etcdctl_ok(&all, &["endpoint", "hashkv", "-w", "json"])?;
        let value: serde_json::Value = serde_json::from_str(&out)?;
        let hashes: Vec<u64> = value
            .as_array()
            .context("array")?
            .iter()
            .filter_map(|e| e["HashKV"]["hash"].as_u64())
            .collect();
        ensure!(
            hashes.len() == 4 && hashes.iter().all(|h| *h == hashes[0]),
            "{out}"
        );
        Ok(())
    })?;

    // Remove m2 (a voter): it stops on its own.
    let table = member_table(&first[0])?;
    let m2 = table.iter().find(|r| r.1 == "m2").context("m2 listed")?.0;
    etcdctl_ok(&first, &["member", "remove", &format!("{m2:x}")])?;
    retry("the removed member stops", || {
        let running = members[2].server.as_mut().is_some_and(Server::is_running);
        ensure!(!running, "m2 still running");
        Ok(())
    })?;
    members[2].server = None;
    // A proposal forwarded to the removed leader just before it stopped is lost: retry.
    let left = endpoints(&members);
    retry("put after remove", || {
        etcdctl_ok(&left, &["put", "after-remove", "v"])
    })?;

    let expected: Vec<(String, String, String, bool)> = [0usize, 1, 3]
        .iter()
        .map(|&i| {
            let p = members[i].ports;
            (members[i].name.clone(), p.peer_url(), p.client_url(), false)
        })
        .collect();
    for endpoint in endpoints(&members) {
        let table = retry("member list", || {
            let rows = member_table(&endpoint)?;
            let rows: Vec<_> = rows.into_iter().map(|r| (r.1, r.2, r.3, r.4)).collect();
            ensure!(rows == expected, "{endpoint}: {rows:?}");
            Ok(rows)
        })?;
        assert_eq!(table, expected);
    }

    // A restarted member rebuilds the table from its log (and learns its peers from it).
    members[0].server = None;
    start_with(&keel, dir, &mut members, 0, "new", &bootstrap)?;
    let endpoint = members[0].ports.endpoint();
    retry("member list after a restart", || {
        let rows = member_table(&endpoint)?;
        let rows: Vec<_> = rows.into_iter().map(|r| (r.1, r.2, r.3, r.4)).collect();
        ensure!(rows == expected, "{endpoint}: {rows:?}");
        Ok(())
    })?;
    let all = endpoints(&members);
    retry("put after a restart", || {
        etcdctl_ok(&all, &["put", "after-restart", "v"])
    })?;

    // Restarted as an operator would after changes: `existing` and the current members.
    members[0].server = None;
    let current: Vec<Member> = [0usize, 1, 3]
        .iter()
        .map(|&i| Member {
            name: members[i].name.clone(),
            ports: members[i].ports,
            server: None,
        })
        .collect();
    let current = initial_cluster(&current);
    start_with(&keel, dir, &mut members, 0, "existing", &current)?;
    retry("member list after an `existing` restart", || {
        let rows = member_table(&endpoint)?;
        let rows: Vec<_> = rows.into_iter().map(|r| (r.1, r.2, r.3, r.4)).collect();
        ensure!(rows == expected, "{endpoint}: {rows:?}");
        Ok(())
    })?;
    retry("put through the restarted member", || {
        etcdctl_ok(
            std::slice::from_ref(&endpoint),
            &["put", "after-existing-restart", "v"],
        )
    })?;
    rejoin_and_restart(&keel, dir, &mut members, &bootstrap)
}

/// The removed m2, wiped and added back (a new id), joins; then restarted with its original
/// bootstrap flags, it is still the member it was added as (its data dir says so), not the
/// removed one its flags derive.
fn rejoin_and_restart(
    keel: &Path,
    dir: &Path,
    members: &mut [Member],
    bootstrap: &str,
) -> Result<()> {
    std::fs::remove_dir_all(dir.join("m2")).context("wiping m2")?;
    let live = endpoints(members);
    let add = retry("member add m2 again", || {
        etcdctl_ok(
            &live,
            &[
                "member",
                "add",
                "m2",
                &format!("--peer-urls={}", members[2].ports.peer_url()),
            ],
        )
    })?;
    let new_id = added_id(&add)?;
    let current = initial_cluster(members);
    start_with(keel, dir, members, 2, "existing", &current)?;
    let endpoint = members[2].ports.endpoint();
    retry("the re-added m2 serves", || {
        etcdctl_ok(std::slice::from_ref(&endpoint), &["put", "rejoined", "v"])
    })?;
    members[2].server = None;
    start_with(keel, dir, members, 2, "new", bootstrap)?;
    retry(
        "m2 restarted on its bootstrap flags serves as its new id",
        || {
            let out = etcdctl_ok(
                std::slice::from_ref(&endpoint),
                &["endpoint", "status", "-w", "json"],
            )?;
            let value: serde_json::Value = serde_json::from_str(&out)?;
            let id = value[0]["Status"]["header"]["member_id"].as_u64();
            ensure!(
                id == Some(new_id),
                "m2 answers as {id:?}, added as {new_id}"
            );
            etcdctl_ok(std::slice::from_ref(&endpoint), &["put", "restarted", "v"])
        },
    )?;
    ensure!(
        members[2].server.as_mut().is_some_and(Server::is_running),
        "m2 keeps running"
    );
    Ok(())
}

/// One member of `program`, alone, for the error diff.
fn single(program: &Path, dir: &Path, label: &str) -> Result<Member> {
    let mut members = vec![Member {
        name: label.to_string(),
        ports: Ports::pick(),
        server: None,
    }];
    start(program, dir, &mut members, 0, "new")?;
    Ok(members.remove(0))
}

/// The errors bad membership commands get, in order.
fn bad_command_errors(member: &Member) -> Result<Vec<String>> {
    let e = vec![member.ports.endpoint()];
    let own = member_table(&e[0])?.first().context("own member")?.0;
    let mut errors = Vec::new();
    errors.push(grpc_error(&e, &["member", "remove", "1234"])?);
    errors.push(grpc_error(&e, &["member", "promote", "1234"])?);
    let update = ["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"];
    errors.push(grpc_error(&e, &update)?);
    let taken = format!("--peer-urls={}", member.ports.peer_url());
    errors.push(grpc_error(&e, &["member", "add", "x", &taken])?);
    errors.push(grpc_error(&e, &["member", "promote", &format!("{own:x}")])?);
    let learner = [
        "member",
        "add",
        "l1",
        "--learner",
        "--peer-urls=http://127.0.0.1:2",
    ];
    let learner_id = added_id(&etcdctl_ok(&e, &learner)?)?;
    let second = [
        "member",
        "add",
        "l2",
        "--learner",
        "--peer-urls=http://127.0.0.1:3",
    ];
    errors.push(grpc_error(&e, &second)?);
    errors.push(grpc_error(
        &e,
        &["member", "promote", &format!("{learner_id:x}")],
    )?);
    Ok(errors)
}

#[test]
fn bad_membership_commands_fail_as_with_etcd() -> Result<()> {
    let dir = TempDir::new("membership-errors")?;
    let etcd: PathBuf = require_on_path("etcd")?;
    let keel = single(&keel_bin(), dir.path(), "keel")?;
    retry("keel serves", || member_table(&keel.ports.endpoint()))?;
    let keel_errors = bad_command_errors(&keel)?;
    let etcd = single(&etcd, dir.path(), "etcd")?;
    retry("etcd serves", || member_table(&etcd.ports.endpoint()))?;
    let etcd_errors = bad_command_errors(&etcd)?;
    assert_eq!(keel_errors, etcd_errors);
    assert!(keel_errors[0].contains("NotFound desc = etcdserver: member not found"));
    Ok(())
}
