//! etcd's operator conventions with the real binary: a packaged `ETCD_*` configuration file
//! sourced into the environment, etcd's YAML `--config-file`, etcd's JSON log lines, no colour
//! codes in a log file, and an etcd flag keel lacks refused by name.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use common::{keel_bin, require_on_path, Ports, Server, TempDir};

fn etcdctl(endpoint: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(require_on_path("etcdctl")?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .context("run etcdctl")?;
    ensure!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Puts and reads back a key, so the member is known to serve.
fn serves(endpoint: &str) -> Result<()> {
    etcdctl(endpoint, &["put", "conventions", "ok"])?;
    let got = etcdctl(endpoint, &["get", "conventions", "--print-value-only"])?;
    ensure!(got.trim() == "ok", "read back {got:?}");
    Ok(())
}

fn no_colour_codes(log: &str, what: &str) -> Result<()> {
    ensure!(
        !log.contains('\u{1b}'),
        "{what} holds ANSI escape codes:\n{log}"
    );
    Ok(())
}

#[test]
fn a_packaged_etcd_conf_sourced_into_the_environment_starts_a_member() -> Result<()> {
    let dir = TempDir::new("etcd-conf")?;
    let ports = Ports::pick();
    let data = dir.path().join("data");
    let log = dir.path().join("member.log");
    let conf = dir.path().join("etcd.conf");
    let text = format!(
        "# /etc/etcd/etcd.conf, as distribution packages ship it\n\
         ETCD_NAME=\"pkg\"\n\
         ETCD_DATA_DIR=\"{data}\"\n\
         ETCD_LISTEN_PEER_URLS=\"{peer}\"\n\
         ETCD_LISTEN_CLIENT_URLS=\"{client}\"\n\
         ETCD_ADVERTISE_CLIENT_URLS=\"{client}\"\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\"\n\
         ETCD_INITIAL_CLUSTER=\"pkg={peer}\"\n\
         ETCD_INITIAL_CLUSTER_STATE=\"new\"\n\
         ETCD_INITIAL_CLUSTER_TOKEN=\"pkg-cluster\"\n\
         ETCD_ENABLE_V2=\"false\"\n\
         ETCD_LOGGER=\"zap\"\n\
         ETCD_LOG_OUTPUTS=\"{log}\"\n",
        data = data.display(),
        peer = ports.peer_url(),
        client = ports.client_url(),
        log = log.display(),
    );
    std::fs::write(&conf, text)?;
    let script = format!(
        "set -a; . '{}'; exec '{}'",
        conf.display(),
        keel_bin().display()
    );
    let console = dir.path().join("console.log");
    let server = Server::start(
        "keel",
        Path::new("/bin/bash"),
        &["-c".to_string(), script],
        ports,
        &console,
    )?;
    serves(&server.endpoint())?;
    let members = etcdctl(&server.endpoint(), &["member", "list"])?;
    ensure!(
        members.contains(", pkg, "),
        "ETCD_NAME names the member: {members}"
    );
    ensure!(
        data.join("member").is_dir() || data.is_dir(),
        "ETCD_DATA_DIR holds the data"
    );
    drop(server);
    let lines = std::fs::read_to_string(&log).context("ETCD_LOG_OUTPUTS names the log file")?;
    no_colour_codes(&lines, "the JSON log")?;
    let mut count = 0;
    for line in lines.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("a log line that is not JSON: {line}"))?;
        for key in ["level", "ts", "caller", "msg"] {
            ensure!(value.get(key).is_some(), "no {key:?} in {line}");
        }
        ensure!(line.starts_with("{\"level\":"), "etcd's key order: {line}");
        count += 1;
    }
    ensure!(count > 0, "the log file is empty");
    Ok(())
}

#[test]
fn human_readable_logs_into_a_file_have_no_colour_codes() -> Result<()> {
    let dir = TempDir::new("plain-log")?;
    let server = Server::start_etcd_style(
        "keel",
        &keel_bin(),
        "plain",
        &dir.path().join("data"),
        Ports::pick(),
        &[],
    )?;
    serves(&server.endpoint())?;
    let log = server.log_tail(1 << 20);
    ensure!(log.contains("INFO"), "human-readable lines: {log}");
    no_colour_codes(&log, "a log written to a file")
}

#[test]
fn etcds_yaml_config_file_starts_a_member() -> Result<()> {
    let dir = TempDir::new("config-file")?;
    let ports = Ports::pick();
    let file = dir.path().join("etcd.conf.yml");
    let yaml = format!(
        "name: 'from-yaml'\ndata-dir: {data}\nlisten-client-urls: {client}\n\
         advertise-client-urls: {client}\nlisten-peer-urls: {peer}\n\
         initial-advertise-peer-urls: {peer}\ninitial-cluster: from-yaml={peer}\n\
         initial-cluster-state: 'new'\nsnapshot-count: 10000\nwal-dir:\nenable-pprof: false\n\
         proxy: 'off'\nclient-transport-security:\n  client-cert-auth: false\n",
        data = dir.path().join("data").display(),
        client = ports.client_url(),
        peer = ports.peer_url(),
    );
    std::fs::write(&file, yaml)?;
    let args = vec![format!("--config-file={}", file.display())];
    let server = Server::start("keel", &keel_bin(), &args, ports, &dir.path().join("k.log"))?;
    serves(&server.endpoint())?;
    let members = etcdctl(&server.endpoint(), &["member", "list"])?;
    ensure!(
        members.contains(", from-yaml, "),
        "the file names the member: {members}"
    );
    Ok(())
}

#[test]
fn an_etcd_flag_keel_lacks_stops_the_start_by_name() -> Result<()> {
    let dir = TempDir::new("unsupported")?;
    let data = dir.path().join("data");
    let out = Command::new(keel_bin())
        .arg(format!("--data-dir={}", data.display()))
        .args(["--wal-dir", "/var/lib/etcd-wal"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        bail!("keel started with an unsupported --wal-dir: {stderr}");
    }
    ensure!(
        stderr.contains("keel does not support etcd's --wal-dir"),
        "the refusal names the flag: {stderr}"
    );
    ensure!(!data.exists(), "nothing was created before the refusal");
    Ok(())
}
