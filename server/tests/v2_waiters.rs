//! Thousands of long-polling v2 waits (`GET /v2/keys/...?wait=true`) on keel: each is one
//! registered entry (the store stats count them), writes go on while they wait, and every
//! one gets exactly its own change. Write throughput with and without waiters is measured by
//! `benches/v2-waiters.sh`, not timed here.
// Real processes on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{keel_bin, Ports, Server, TempDir};

/// Waiting clients.
const WAITERS: usize = 2000;

fn request(port: u16, method: &str, target: &str, form: &str) -> Result<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    conn.write_all(req.as_bytes())?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn thousands_of_waits_each_get_their_change() -> Result<()> {
    let dir = TempDir::new("v2wait")?;
    let keel = Server::start_etcd_style(
        "keel",
        &keel_bin(),
        "default",
        &dir.path().join("keel"),
        Ports::pick(),
        &["--enable-v2".to_string()],
    )?;
    let port = keel.ports.client;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !request(port, "PUT", "/v2/keys/ready", "value=1")?.starts_with("HTTP/1.1 201") {
        if Instant::now() > deadline {
            bail!("keel never took a v2 write");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut waits = Vec::with_capacity(WAITERS);
    for i in 0..WAITERS {
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let req = format!(
            "GET /v2/keys/wk/k{i}?wait=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(req.as_bytes())?;
        waits.push(conn);
    }
    // Every wait registered: one entry each in the store's stats.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = request(port, "GET", "/v2/stats/store", "")?;
        if stats.contains(&format!("\"watchers\":{WAITERS}")) {
            break;
        }
        if Instant::now() > deadline {
            bail!("not every wait registered: {stats}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Unrelated writes wake no one.
    for i in 0..100 {
        request(port, "PUT", &format!("/v2/keys/other/o{i}"), "value=x")?;
    }
    let stats = request(port, "GET", "/v2/stats/store", "")?;
    assert!(
        stats.contains(&format!("\"watchers\":{WAITERS}")),
        "still waiting: {stats}"
    );
    for i in 0..WAITERS {
        let r = request(
            port,
            "PUT",
            &format!("/v2/keys/wk/k{i}"),
            &format!("value=v{i}"),
        )?;
        assert!(r.starts_with("HTTP/1.1 201"), "write {i}: {r}");
    }
    for (i, mut conn) in waits.into_iter().enumerate() {
        let mut out = String::new();
        conn.read_to_string(&mut out)
            .with_context(|| format!("wait {i}"))?;
        let want = format!("\"key\":\"/wk/k{i}\",\"value\":\"v{i}\"");
        assert!(out.contains(&want), "wait {i} got {out}");
        assert_eq!(
            out.matches("\"action\"").count(),
            1,
            "wait {i}: one event: {out}"
        );
    }
    let stats = request(port, "GET", "/v2/stats/store", "")?;
    assert!(stats.contains("\"watchers\":0"), "every wait left: {stats}");
    Ok(())
}
