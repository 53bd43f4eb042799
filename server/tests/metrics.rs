//! `/metrics` with the real binary: etcd's metric names on the client port and on
//! `--listen-metrics-urls`, gRPC calls counted per method and code, and Debian's Prometheus
//! scraping keel and answering a query for `etcd_server_has_leader`.

mod common;
mod gateway_http;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{free_port, keel_bin, require_on_path, Ports, Server, TempDir};

/// How long Prometheus gets to scrape keel and answer the query.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(60);

fn metrics_text(port: u16) -> Result<String> {
    let answer = gateway_http::request(port, "GET", "/metrics", b"")?;
    ensure!(answer.status == 200, "GET /metrics: {answer:?}");
    ensure!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "Prometheus's text format: {}",
        answer.content_type
    );
    Ok(answer.body)
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn etcdctl(endpoint: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(require_on_path("etcdctl")?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()?;
    ensure!(out.status.success(), "etcdctl {args:?}: {out:?}");
    Ok(())
}

#[test]
fn metrics_carry_etcds_names_and_prometheus_scrapes_them() -> Result<()> {
    let prometheus = require_on_path("prometheus")?;
    let dir = TempDir::new("metrics")?;
    let metrics_port = free_port();
    let server = Server::start_etcd_style(
        "keel",
        &keel_bin(),
        "m1",
        &dir.path().join("data"),
        Ports::pick(),
        &[format!(
            "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
        )],
    )?;
    etcdctl(&server.endpoint(), &["put", "a", "1"])?;
    etcdctl(&server.endpoint(), &["get", "no-such-key"])?;
    // Gauges follow the node once per tick.
    std::thread::sleep(Duration::from_millis(300));
    let text = metrics_text(server.ports.client)?;
    for (series, want) in [
        ("etcd_server_has_leader ", 1.0),
        ("etcd_server_is_leader ", 1.0),
        ("etcd_debugging_mvcc_keys_total ", 1.0),
        ("etcd_server_version{server_version=\"3.4.23\"} ", 1.0),
    ] {
        ensure!(
            sample(&text, series) == Some(want),
            "{series}≠{want} in:\n{text}"
        );
    }
    let puts = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",\
                grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} ";
    ensure!(sample(&text, puts) == Some(1.0), "the put counted: {text}");
    for name in [
        "etcd_server_leader_changes_seen_total ",
        "etcd_server_proposals_committed_total ",
        "etcd_server_proposals_applied_total ",
        "etcd_server_proposals_pending ",
        "etcd_server_proposals_failed_total ",
        "etcd_disk_wal_fsync_duration_seconds_count ",
        "etcd_disk_backend_commit_duration_seconds_count ",
        "etcd_mvcc_db_total_size_in_bytes ",
        "etcd_mvcc_db_total_size_in_use_in_bytes ",
        "etcd_debugging_mvcc_watcher_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        ensure!(sample(&text, name).is_some(), "no {name:?} in:\n{text}");
    }
    let from_metrics_port = metrics_text(metrics_port)?;
    ensure!(
        sample(&from_metrics_port, "etcd_server_has_leader ") == Some(1.0),
        "--listen-metrics-urls serves the same metrics"
    );
    let health = gateway_http::request(metrics_port, "GET", "/health", b"")?;
    ensure!(health.body.contains("\"health\":\"true\""), "{health:?}");
    scraped_by_prometheus(&prometheus, &dir, metrics_port)
}

/// Runs Prometheus against keel's metrics port until a query for `etcd_server_has_leader`
/// answers 1.
fn scraped_by_prometheus(
    prometheus: &std::path::Path,
    dir: &TempDir,
    metrics_port: u16,
) -> Result<()> {
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keel\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )?;
    let web = free_port();
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{web}"),
    ];
    let ports = Ports {
        client: web,
        peer: web,
    };
    let _prom = Server::start(
        "prometheus",
        prometheus,
        &args,
        ports,
        &dir.path().join("prometheus.log"),
    )?;
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let answer = gateway_http::request(
            web,
            "GET",
            "/api/v1/query?query=etcd_server_has_leader",
            b"",
        )
        .context("query Prometheus")?;
        let value: serde_json::Value =
            serde_json::from_str(&answer.body).unwrap_or(serde_json::Value::Null);
        if value["data"]["result"][0]["value"][1] == "1" {
            return Ok(());
        }
        last = answer.body;
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("Prometheus never answered etcd_server_has_leader = 1; last answer: {last}")
}
