//! Differential test of the v2 keys API: the same `ETCDCTL_API=2 etcdctl` session and the same
//! raw HTTP requests against etcd 3.4.23 (`--enable-v2=true`) and keel (`--enable-v2`), each a
//! fresh single-member cluster. Outputs must be identical once indexes are made relative to
//! each server's store index at the start (etcd's own membership writes move it) and ids,
//! ports and times are masked; `ls` output is sorted (etcd lists in Go map order).
//!
//! | test | what |
//! |---|---|
//! | `etcdctl_v2_session_matches_etcd` | set, get, mk twice, mkdir, setdir, updatedir, update, rm, rmdir (non-empty fails), ls -r -p, watch with a concurrent set, exec-watch, member list, cluster-health, set --ttl 2 and the key gone after it, error cases |
//! | `curl_v2_requests_match_etcd` | PUT with ttl, prevExist, prevValue, prevIndex; POST in-order keys read back sorted; GET wait with waitIndex; DELETE dir+recursive; bad fields; refresh; members, machines: bodies, statuses and X-Etcd-Index |
//! | `python_etcd_works_against_keel` | Debian's python3-etcd (python-etcd 0.4.5): write and read, a TTL key, an in-order queue, a wait |
// Real processes on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{
    keel_bin, require_on_path, require_python_module, run_python, Ports, Server, TempDir,
};

/// Both servers, started fresh, and each one's store index once it settled.
struct Pair {
    _dir: TempDir,
    servers: Vec<(Server, u64)>,
}

fn start_pair(label: &str) -> Result<Pair> {
    let etcd = require_on_path("etcd")?;
    let dir = TempDir::new(label)?;
    let etcd_server = Server::start_etcd_style(
        "etcd",
        &etcd,
        "default",
        &dir.path().join("etcd"),
        Ports::pick(),
        &["--enable-v2=true".to_string()],
    )?;
    let keel_server = Server::start_etcd_style(
        "keel",
        &keel_bin(),
        "default",
        &dir.path().join("keel"),
        Ports::pick(),
        &["--enable-v2".to_string()],
    )?;
    let mut servers = Vec::new();
    for s in [etcd_server, keel_server] {
        let base = settled_index(&s)?;
        servers.push((s, base));
    }
    Ok(Pair { _dir: dir, servers })
}

/// Writes once (so a leader is there), then waits until the store index stays put for a
/// while (etcd writes its member attributes and cluster version to its v2 store at start).
fn settled_index(s: &Server) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http(s, "PUT", "/v2/keys/_warmup", Some("value=1"));
        if r.as_ref().is_ok_and(|r| r.status < 300) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} never took a v2 write: {r:?}", s.label());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut last = index_of(&http(s, "GET", "/v2/keys/_warmup", None)?);
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(250));
        let now = index_of(&http(s, "GET", "/v2/keys/_warmup", None)?);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        if Instant::now() > deadline {
            bail!("{}: the v2 index never settled", s.label());
        }
    }
    Ok(last)
}

#[derive(Debug)]
struct HttpReply {
    status: u16,
    etcd_index: Option<u64>,
    body: String,
}

fn index_of(r: &HttpReply) -> u64 {
    r.etcd_index.unwrap_or(0)
}

/// One HTTP/1.1 request (form body if any), read to the end.
fn http(s: &Server, method: &str, target: &str, form: Option<&str>) -> Result<HttpReply> {
    let mut conn = TcpStream::connect(("127.0.0.1", s.ports.client))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = form.unwrap_or("");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if form.is_some() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    conn.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .with_context(|| format!("{} {method} {target}", s.label()))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let mut chunked = false;
    let mut etcd_index = None;
    for line in head.lines().skip(1) {
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "x-etcd-index" => etcd_index = v.trim().parse().ok(),
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(HttpReply {
        status,
        etcd_index,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Makes indexes relative to `base`, masks times, ids and ports.
fn normalize(text: &str, base: u64, ports: Ports) -> String {
    let text = text
        .replace(&ports.client.to_string(), "PORT")
        .replace(&ports.peer.to_string(), "PEERPORT");
    let mut out = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !c.is_ascii_digit() {
            out.push(c);
            continue;
        }
        let mut end = i + 1;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        let digits = &text[i..end];
        let before = &text[..i];
        let index_like = before.ends_with("Index\":")
            || before.ends_with("Index: ")
            || before.ends_with("\"index\":")
            || before.ends_with('[')
            || before.ends_with("!= ")
            || digits.len() == 20;
        match digits.parse::<u64>() {
            Ok(n) if index_like && n >= base => out.push_str(&format!("i{}", n - base)),
            _ => out.push_str(digits),
        }
    }
    mask_times_and_ids(&out)
}

/// RFC 3339 times → TIME; member ids (up to 16 hex digits: a random id's leading zeros are
/// not printed, so etcd's may be 14 or fewer) → ID.
fn mask_times_and_ids(s: &str) -> String {
    let mut out = String::new();
    for token in s.split_inclusive(['"', ' ', '\n', ',', '=']) {
        let (word, sep) = match token.char_indices().last() {
            Some((i, '"' | ' ' | '\n' | ',' | '=')) => token.split_at(i),
            _ => (token, ""),
        };
        let is_time =
            word.len() > 19 && word.as_bytes().get(10) == Some(&b'T') && word.ends_with('Z');
        let is_id = (ID_DIGITS_MIN..=16).contains(&word.len())
            && word
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let is_id = is_id && word.bytes().any(|b| b.is_ascii_alphabetic());
        let word = if is_time {
            "TIME"
        } else if is_id {
            "ID"
        } else {
            word
        };
        let word = word.strip_suffix(':').map_or(word.to_string(), |w| {
            if is_id_text(w) {
                "ID:".into()
            } else {
                word.into()
            }
        });
        out.push_str(&word);
        out.push_str(sep);
    }
    out
}

/// The fewest hex digits taken for a member id (one in 2^24 random ids has fewer).
const ID_DIGITS_MIN: usize = 10;

fn is_id_text(w: &str) -> bool {
    (ID_DIGITS_MIN..=16).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs `etcdctl` (API 2) against `s`; stdout, stderr and the exit code.
fn etcdctl(s: &Server, args: &[&str]) -> Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(format!("http://{}", s.endpoint()))
        .args(args)
        .output()
        .context("etcdctl")?;
    Ok(format!(
        "{}{}exit {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    ))
}

/// A watching etcdctl (`watch` or `exec-watch`) while `set` runs, then its output.
fn watched(s: &Server, watch: &[&str], key: &str, value: &str, wait_exit: bool) -> Result<String> {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(format!("http://{}", s.endpoint()))
        .args(watch)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    etcdctl(s, &["set", key, value])?;
    let deadline = Instant::now() + Duration::from_secs(if wait_exit { 10 } else { 1 });
    while Instant::now() < deadline && child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Compares one step's normalized outputs; collects a mismatch.
fn compare(step: &str, outputs: &[(String, u64, Ports)], failures: &mut Vec<String>, sort: bool) {
    let mut normalized: Vec<String> = outputs
        .iter()
        .map(|(text, base, ports)| normalize(text, *base, *ports))
        .collect();
    if sort {
        for n in &mut normalized {
            let mut lines: Vec<&str> = n.lines().collect();
            lines.sort_unstable();
            *n = lines.join("\n");
        }
    }
    if normalized[0] != normalized[1] {
        failures.push(format!(
            "step {step}\n  etcd: {:?}\n  keel: {:?}",
            normalized[0], normalized[1]
        ));
    }
}

/// The etcdctl session, step by step (a classic v2 tutorial's commands and their errors).
const CTL_STEPS: &[&[&str]] = &[
    &["set", "/testdir/testkey", "Hello world"],
    &["get", "/testdir/testkey"],
    &["-o", "json", "get", "/testdir/testkey"],
    &["mk", "/t/mk", "v"],
    &["mk", "/t/mk", "v"],
    &["mkdir", "/t/d"],
    &["mkdir", "/t/d"],
    &["setdir", "/t/sd"],
    &["updatedir", "/t/sd"],
    &["updatedir", "/t/none"],
    &["update", "/t/mk", "v2"],
    &["update", "/t/none", "v2"],
    &["set", "--swap-with-value", "v2", "/t/mk", "v3"],
    &["set", "--swap-with-value", "nope", "/t/mk", "v4"],
    &["get", "/t/d"],
    &["get", "/nothere"],
    &["rm", "/t/mk"],
    &["rm", "/t/mk"],
    &["rm", "/t/d"],
    &["rmdir", "/testdir"],
    &["rmdir", "/t/d"],
    &["set", "/t/sd", "x"],
    &["ls"],
    &["ls", "-r", "-p", "/"],
    &["ls", "/testdir"],
    &["ls", "--sort", "-r", "/t"],
    &["-o", "extended", "get", "/testdir/testkey"],
    &["member", "list"],
    &["cluster-health"],
    &["set", "--ttl", "2", "/ttl", "x"],
    &["get", "/ttl"],
    &["rm", "--recursive", "/t"],
    &["rm", "--dir", "/"],
];

#[test]
fn etcdctl_v2_session_matches_etcd() -> Result<()> {
    require_on_path("etcdctl")?;
    let pair = start_pair("v2ctl")?;
    let mut failures = Vec::new();
    for step in CTL_STEPS {
        let mut outputs = Vec::new();
        for (s, base) in &pair.servers {
            outputs.push((etcdctl(s, step)?, *base, s.ports));
        }
        let sort = step.first() == Some(&"ls");
        compare(&step.join(" "), &outputs, &mut failures, sort);
    }
    std::thread::sleep(Duration::from_millis(3500));
    let mut outputs = Vec::new();
    for (s, base) in &pair.servers {
        outputs.push((etcdctl(s, &["get", "/ttl"])?, *base, s.ports));
    }
    compare("get /ttl after it expired", &outputs, &mut failures, false);
    let mut watch = Vec::new();
    let mut exec = Vec::new();
    for (s, base) in &pair.servers {
        watch.push((
            watched(s, &["watch", "/w/k"], "/w/k", "v1", true)?,
            *base,
            s.ports,
        ));
        let cmd = [
            "exec-watch",
            "/w/e",
            "--",
            "sh",
            "-c",
            "echo $ETCD_WATCH_ACTION $ETCD_WATCH_KEY $ETCD_WATCH_VALUE",
        ];
        exec.push((watched(s, &cmd, "/w/e", "v2", false)?, *base, s.ports));
    }
    compare(
        "watch /w/k with a concurrent set",
        &watch,
        &mut failures,
        false,
    );
    compare("exec-watch /w/e", &exec, &mut failures, false);
    if !failures.is_empty() {
        bail!("{} steps differ:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

/// Raw requests: (method, target, form); `{N}` in a target or form is the server's base
/// index + N.
const HTTP_STEPS: &[(&str, &str, Option<&str>)] = &[
    ("PUT", "/v2/keys/k", Some("value=one&ttl=30")),
    ("GET", "/v2/keys/k", None),
    ("PUT", "/v2/keys/k?prevExist=false", Some("value=two")),
    ("PUT", "/v2/keys/k?prevExist=true", Some("value=two")),
    ("PUT", "/v2/keys/k?prevValue=one", Some("value=three")),
    ("PUT", "/v2/keys/k?prevValue=two", Some("value=three")),
    ("PUT", "/v2/keys/k?prevIndex={1}", Some("value=four")),
    (
        "PUT",
        "/v2/keys/k?prevIndex={3}&prevValue=three",
        Some("value=four"),
    ),
    ("PUT", "/v2/keys/k?prevIndex=x", Some("value=four")),
    ("PUT", "/v2/keys/k", Some("value=v&ttl=abc")),
    ("PUT", "/v2/keys/k?prevValue=", Some("value=v")),
    ("PUT", "/v2/keys/k?refresh=true", Some("ttl=")),
    (
        "PUT",
        "/v2/keys/k?refresh=true&prevExist=true",
        Some("ttl=50"),
    ),
    ("PUT", "/v2/keys/k", Some("value=a%zz")),
    ("GET", "/v2/keys/k?recursive=maybe", None),
    ("PUT", "/v2/keys/k?wait=true", Some("value=x")),
    ("POST", "/v2/keys/queue", Some("value=job1")),
    ("POST", "/v2/keys/queue", Some("value=job2")),
    ("POST", "/v2/keys/queue", Some("value=job3")),
    ("GET", "/v2/keys/queue?sorted=true", None),
    ("GET", "/v2/keys/queue?recursive=true&sorted=true", None),
    ("GET", "/v2/keys/k?wait=true&waitIndex={1}", None),
    (
        "GET",
        "/v2/keys/queue?wait=true&recursive=true&waitIndex={6}",
        None,
    ),
    ("GET", "/v2/keys/?recursive=true&sorted=true", None),
    ("GET", "/v2/keys/queue?quorum=true&sorted=true", None),
    ("PUT", "/v2/keys/d/a/b", Some("value=deep")),
    ("PUT", "/v2/keys/d/a/b/c", Some("value=under a key")),
    ("PUT", "/v2/keys/d2?dir=true", Some("")),
    ("PUT", "/v2/keys/d2?dir=true", Some("")),
    ("DELETE", "/v2/keys/d", None),
    ("DELETE", "/v2/keys/d?dir=true", None),
    ("DELETE", "/v2/keys/d?dir=true&recursive=true", None),
    ("DELETE", "/v2/keys/k?prevValue=nope", None),
    ("DELETE", "/v2/keys/k?prevIndex={7}", None),
    ("DELETE", "/v2/keys/", None),
    ("HEAD", "/v2/keys/queue", None),
    ("PATCH", "/v2/keys/queue", None),
    ("GET", "/v2/keys/d?wait=true&waitIndex=1", None),
    ("GET", "/v2/machines", None),
    ("GET", "/v2/members", None),
    ("GET", "/v2/members/leader", None),
];

#[test]
fn curl_v2_requests_match_etcd() -> Result<()> {
    let pair = start_pair("v2curl")?;
    let mut failures = Vec::new();
    for (method, target, form) in HTTP_STEPS {
        let mut outputs = Vec::new();
        for (s, base) in &pair.servers {
            let fill = |t: &str| fill_indexes(t, *base);
            let form = form.map(fill);
            let r = http(s, method, &fill(target), form.as_deref())?;
            let text = format!(
                "{} X-Etcd-Index={} {}",
                r.status,
                r.etcd_index.map_or("-".to_string(), |i| format!("[{i}]")),
                r.body
            );
            outputs.push((text, *base, s.ports));
        }
        compare(
            &format!("{method} {target} {form:?}"),
            &outputs,
            &mut failures,
            false,
        );
    }
    if !failures.is_empty() {
        bail!(
            "{} requests differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// `{N}` → `base + N`.
fn fill_indexes(t: &str, base: u64) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let n: u64 = rest[open + 1..open + close].parse().unwrap_or(0);
        out.push_str(&(base + n).to_string());
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn python_etcd_works_against_keel() -> Result<()> {
    require_python_module("etcd", "python3-etcd")?;
    let dir = TempDir::new("v2py")?;
    let keel = Server::start_etcd_style(
        "keel",
        &keel_bin(),
        "default",
        &dir.path().join("keel"),
        Ports::pick(),
        &["--enable-v2".to_string()],
    )?;
    settled_index(&keel)?;
    let script = format!(
        r#"
import etcd, threading, time
c = etcd.Client(host="127.0.0.1", port={port}, protocol="http")
c.write("/svc/a", "1")
assert c.read("/svc/a").value == "1"
c.write("/svc/ttl", "hb", ttl=2)
r = c.read("/svc/ttl")
assert r.ttl in (1, 2), r.ttl
time.sleep(3.5)
try:
    c.read("/svc/ttl")
    raise SystemExit("the TTL key outlived its TTL")
except etcd.EtcdKeyNotFound:
    pass
for job in ("j1", "j2", "j3"):
    c.write("/queue", job, append=True)
jobs = [n.value for n in c.read("/queue", sorted=True).children]
assert jobs == ["j1", "j2", "j3"], jobs
got = []
t = threading.Thread(target=lambda: got.append(c.read("/svc/w", wait=True, timeout=10).value))
t.start()
time.sleep(0.5)
c.write("/svc/w", "woke")
t.join()
assert got == ["woke"], got
try:
    c.write("/svc/a", "2", prevExist=False)
    raise SystemExit("created twice")
except etcd.EtcdAlreadyExist:
    pass
print("ok")
"#,
        port = keel.ports.client
    );
    let out = run_python(&script, &[]).context("python3-etcd against keel")?;
    if !out.contains("ok") {
        bail!("python3-etcd against keel did not finish:\n{out}");
    }
    Ok(())
}
