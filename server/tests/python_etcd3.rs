//! Debian's python3-etcd3 (etcd3 0.12 over grpcio), unmodified, against a real keel: with a
//! user and password (auth enabled: a permitted put and get, a forbidden put refused with
//! etcd's permission-denied error, a wrong password refused), and over TLS with a client
//! certificate (put, get, watch). Certificates are made here (rcgen).
//!
//! The login runs over TLS (server certificate only): grpcio sends the token as a call
//! credential, which it refuses to put on a plaintext channel ("Established channel does not
//! have a sufficient security level to transfer call credential"), against etcd 3.4.23 as
//! against keel. Missing python3-etcd3 fails the test (`scripts/install-deps` installs it).

// Real processes on real sockets, and TLS (which the madsim build has not): tokio build only.
#![cfg(not(madsim))]

mod common;
mod tls_common;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use common::{
    keel_bin, require_on_path, require_python_module, run_python, Ports, Server, TempDir,
};
use tls_common::{client_tls_flags, etcdctl, etcdctl_tls, eventually, ok, Ca};

/// A single keel member serving `https://` with `tls` flags.
fn start_https(dir: &TempDir, tls: &[String]) -> Result<Server> {
    let ports = Ports::pick();
    let client = format!("https://127.0.0.1:{}", ports.client);
    let mut args = vec![
        "--name=n1".to_string(),
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={}", ports.peer_url()),
        format!("--initial-advertise-peer-urls={}", ports.peer_url()),
        format!("--initial-cluster=n1={}", ports.peer_url()),
    ];
    args.extend(tls.iter().cloned());
    Server::start(
        "keel",
        &keel_bin(),
        &args,
        ports,
        &dir.path().join("keel.log"),
    )
}

/// Logs in as alice (readwrite on the prefix `py/`), puts and gets inside it, is refused
/// outside it; a wrong password is refused at login.
const AUTH_SCRIPT: &str = r#"
import sys, grpc, etcd3
port, ca = int(sys.argv[1]), sys.argv[2]
c = etcd3.client(host="127.0.0.1", port=port, ca_cert=ca, user="alice", password="alicepw")
c.put("py/a", "1")
value, meta = c.get("py/a")
assert value == b"1", value
assert meta.key == b"py/a", meta.key
try:
    c.put("other", "x")
    raise SystemExit("a put outside py/ was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.code()
    assert e.details() == "etcdserver: permission denied", e.details()
    print("forbidden:", e.details())
try:
    etcd3.client(host="127.0.0.1", port=port, ca_cert=ca, user="alice", password="wrong")
    raise SystemExit("a wrong password logged in")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
    print("wrong password:", e.details())
print("auth ok")
"#;

#[test]
fn python_etcd3_logs_in_is_permitted_and_refused_as_with_etcd() -> Result<()> {
    require_python_module("etcd3", "python3-etcd3")?;
    require_on_path("etcdctl")?;
    let dir = TempDir::new("py-etcd3-auth")?;
    let ca = Ca::new(dir.path(), "ca")?;
    let server = ca.issue("server", "server")?;
    let keel = start_https(&dir, &client_tls_flags(&server, None))?;
    let ep = keel.endpoint();
    let tls = etcdctl_tls(&ca.cert_path, None);
    let setup: [&[&str]; 7] = [
        &["user", "add", "root:rootpw"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "py"],
        &[
            "role",
            "grant-permission",
            "py",
            "readwrite",
            "py/",
            "--prefix",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "py"],
        &["auth", "enable"],
    ];
    eventually(Duration::from_secs(10), || {
        ok(etcdctl(&ep, &tls, &["endpoint", "health"])?)
    })?;
    for args in setup {
        ok(etcdctl(&ep, &tls, args)?)?;
    }
    let ca_path = ca.cert_path.display().to_string();
    let out = run_python(AUTH_SCRIPT, &[keel.ports.client.to_string(), ca_path])?;
    assert!(out.contains("auth ok"), "script output: {out}");
    assert!(
        out.contains(
            "wrong password: etcdserver: authentication failed, invalid user ID or password"
        ),
        "etcd's text for a wrong password: {out}"
    );
    Ok(())
}

/// Over TLS with a client certificate: put, get, and a watch that sees a put and a delete.
const TLS_SCRIPT: &str = r#"
import sys, threading, time, etcd3
port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
c = etcd3.client(host="127.0.0.1", port=port, ca_cert=ca, cert_cert=cert, cert_key=key)
c.put("tls/a", "1")
value, meta = c.get("tls/a")
assert value == b"1", value
events, cancel = c.watch("tls/w")
got = []
def reader():
    for e in events:
        got.append(e)
        if len(got) == 2:
            break
t = threading.Thread(target=reader, daemon=True)
t.start()
time.sleep(0.5)
c.put("tls/w", "x")
c.delete("tls/w")
t.join(10)
cancel()
assert len(got) == 2, got
assert isinstance(got[0], etcd3.events.PutEvent) and got[0].value == b"x", got
assert isinstance(got[1], etcd3.events.DeleteEvent) and got[1].key == b"tls/w", got
print("tls ok")
"#;

#[test]
fn python_etcd3_works_over_tls_with_a_client_certificate() -> Result<()> {
    require_python_module("etcd3", "python3-etcd3")?;
    let dir = TempDir::new("py-etcd3-tls")?;
    let ca = Ca::new(dir.path(), "ca")?;
    let server = ca.issue("server", "server")?;
    let client = ca.issue("client", "client")?;
    let keel = start_https(&dir, &client_tls_flags(&server, Some(&ca.cert_path)))?;
    let args = [
        keel.ports.client.to_string(),
        path(&ca.cert_path),
        path(&client.cert),
        path(&client.key),
    ];
    let out = eventually(Duration::from_secs(10), || run_python(TLS_SCRIPT, &args))?;
    assert!(out.contains("tls ok"), "script output: {out}");
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
