//! TLS on the client port, with real etcdctl 3.4 and certificates made here (rcgen): gRPC,
//! the `:authority` shim (`endpoint status`), clients refused without a certificate or with
//! one from another CA, certificate rotation without a restart, CommonName login, --auto-tls,
//! and the start-up errors that name the file and the problem.

// Real processes on real sockets, and TLS (which the madsim build has not): tokio build only.
#![cfg(not(madsim))]

mod common;
mod tls_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{keel_bin, require_on_path, Ports, Server, TempDir};
use tls_common::{client_tls_flags, etcdctl, etcdctl_tls, eventually, ok, refused, Ca, Leaf};

/// Flags of a single keel member whose client URLs are `https://`.
fn https_flags(name: &str, data_dir: &Path, ports: Ports) -> Vec<String> {
    let client = format!("https://127.0.0.1:{}", ports.client);
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={}", ports.peer_url()),
        format!("--initial-advertise-peer-urls={}", ports.peer_url()),
        format!("--initial-cluster={name}={}", ports.peer_url()),
    ]
}

fn start(dir: &TempDir, ports: Ports, extra: &[String]) -> Result<Server> {
    let data = dir.path().join("data");
    let mut args = https_flags("n1", &data, ports);
    args.extend(extra.iter().cloned());
    Server::start(
        "keel",
        &keel_bin(),
        &args,
        ports,
        &dir.path().join("keel.log"),
    )
}

#[test]
fn etcdctl_works_over_https_and_clients_without_a_trusted_certificate_are_refused() -> Result<()> {
    require_on_path("etcdctl")?;
    let dir = TempDir::new("tls-client")?;
    let ca = Ca::new(dir.path(), "ca")?;
    let server = ca.issue("server", "server")?;
    let client = ca.issue("client", "client")?;
    let other = Ca::new(dir.path(), "other-ca")?;
    let stranger = other.issue("stranger", "client")?;
    let ports = Ports::pick();
    let keel = start(&dir, ports, &client_tls_flags(&server, Some(&ca.cert_path)))?;
    let ep = keel.endpoint();
    let tls = etcdctl_tls(&ca.cert_path, Some(&client));
    eventually(Duration::from_secs(10), || {
        ok(etcdctl(&ep, &tls, &["put", "k", "v"])?)
    })?;
    assert_eq!(
        ok(etcdctl(&ep, &tls, &["get", "k"])?)?,
        "k\nv\n",
        "get over https"
    );
    let status = ok(etcdctl(&ep, &tls, &["endpoint", "status"])?)?;
    assert!(
        status.starts_with(&format!("https://{ep}, ")) && status.contains("3.4.23"),
        "endpoint status over https (the :authority shim behind TLS): {status}"
    );
    let health = etcdctl(&ep, &tls, &["endpoint", "health"])?;
    let said = String::from_utf8_lossy(&health.stderr);
    assert!(
        health.status.success() && said.contains("is healthy"),
        "endpoint health (etcdctl 3.4 reports on stderr): {said}"
    );
    let no_cert = refused(etcdctl(
        &ep,
        &etcdctl_tls(&ca.cert_path, None),
        &["get", "k"],
    )?)?;
    assert_eq!(
        no_cert, "Error: context deadline exceeded",
        "no client certificate"
    );
    let foreign = etcdctl_tls(&ca.cert_path, Some(&stranger));
    let foreign = refused(etcdctl(&ep, &foreign, &["get", "k"])?)?;
    assert_eq!(
        foreign, "Error: context deadline exceeded",
        "a certificate from another CA"
    );
    let wrong_ca = etcdctl_tls(&other.cert_path, Some(&client));
    refused(etcdctl(&ep, &wrong_ca, &["get", "k"])?).context("server cert not trusted")?;
    let mut skip = etcdctl_tls(&other.cert_path, Some(&client));
    skip.push("--insecure-skip-tls-verify".into());
    assert_eq!(
        ok(etcdctl(&ep, &skip, &["get", "k"])?)?,
        "k\nv\n",
        "skip verify"
    );
    assert!(
        keel.log_tail(20_000).contains("rejected connection"),
        "refused handshakes are logged"
    );
    if common::find_on_path("curl").is_some() {
        let curl = |path: &str, body: Option<&str>| -> Result<String> {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--cacert"]).arg(&ca.cert_path);
            cmd.arg("--cert")
                .arg(&client.cert)
                .arg("--key")
                .arg(&client.key);
            if let Some(body) = body {
                cmd.args(["-d", body]);
            }
            let out = cmd.arg(format!("https://{ep}{path}")).output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        assert_eq!(
            curl("/health", None)?,
            "{\"health\":\"true\"}",
            "/health over https"
        );
        let range = curl("/v3/kv/range", Some("{\"key\":\"aw==\"}"))?;
        assert!(
            range.contains("\"value\":\"dg==\""),
            "the JSON gateway over https: {range}"
        );
        let metrics = curl("/metrics", None)?;
        assert!(
            metrics.contains("etcd_server_has_leader 1"),
            "/metrics over https"
        );
    }
    Ok(())
}

#[test]
fn rotated_certificate_files_take_effect_without_a_restart() -> Result<()> {
    require_on_path("etcdctl")?;
    let dir = TempDir::new("tls-rotate")?;
    let old_ca = Ca::new(dir.path(), "old-ca")?;
    let new_ca = Ca::new(dir.path(), "new-ca")?;
    let live = Leaf {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
    };
    let old = old_ca.issue("old", "server")?;
    let new = new_ca.issue("new", "server")?;
    std::fs::copy(&old.cert, &live.cert)?;
    std::fs::copy(&old.key, &live.key)?;
    let ports = Ports::pick();
    let keel = start(&dir, ports, &client_tls_flags(&live, None))?;
    let ep = keel.endpoint();
    let trusting = |ca: &Ca| etcdctl_tls(&ca.cert_path, None);
    eventually(Duration::from_secs(10), || {
        ok(etcdctl(&ep, &trusting(&old_ca), &["put", "k", "v"])?)
    })?;
    refused(etcdctl(&ep, &trusting(&new_ca), &["get", "k"])?).context("before rotation")?;
    // Rotate as operators do: write aside, rename over (key first, then the certificate).
    for (from, to) in [(&new.key, &live.key), (&new.cert, &live.cert)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, to)?;
    }
    let got = eventually(Duration::from_secs(5), || {
        ok(etcdctl(&ep, &trusting(&new_ca), &["get", "k"])?)
    })?;
    assert_eq!(got, "k\nv\n", "new connections get the new certificate");
    refused(etcdctl(&ep, &trusting(&old_ca), &["get", "k"])?).context("after rotation")?;
    assert!(
        keel.log_tail(20_000)
            .contains("reloaded TLS certificate files"),
        "the reload is logged"
    );
    Ok(())
}

#[test]
fn a_verified_certificate_logs_in_as_its_common_name() -> Result<()> {
    require_on_path("etcdctl")?;
    let dir = TempDir::new("tls-cn")?;
    let ca = Ca::new(dir.path(), "ca")?;
    let server = ca.issue("server", "server")?;
    let root = ca.issue("root", "root")?;
    let alice = ca.issue("alice", "alice")?;
    let nobody = ca.issue("nobody", "nobody")?;
    let ports = Ports::pick();
    let keel = start(&dir, ports, &client_tls_flags(&server, Some(&ca.cert_path)))?;
    let ep = keel.endpoint();
    let as_root = etcdctl_tls(&ca.cert_path, Some(&root));
    let run = |tls: &[String], args: &[&str]| etcdctl(&ep, tls, args);
    eventually(Duration::from_secs(10), || {
        ok(run(&as_root, &["put", "open", "1"])?)
    })?;
    // With auth off a certificate's user needs no permission.
    ok(run(
        &etcdctl_tls(&ca.cert_path, Some(&alice)),
        &["put", "a", "1"],
    )?)?;
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--no-password"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "a"],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        // `root` acts by its certificate's CommonName once auth is on (auth enable itself
        // runs with auth off).
        ok(run(&as_root, args)?).with_context(|| format!("{args:?}"))?;
    }
    let as_alice = etcdctl_tls(&ca.cert_path, Some(&alice));
    assert_eq!(
        ok(run(&as_alice, &["get", "a"])?)?,
        "a\n1\n",
        "alice may read a"
    );
    let denied = refused(run(&as_alice, &["put", "a", "2"])?)?;
    assert_eq!(
        denied, "Error: etcdserver: permission denied",
        "alice may not write"
    );
    let denied = refused(run(&as_alice, &["get", "open"])?)?;
    assert_eq!(
        denied, "Error: etcdserver: permission denied",
        "nor read other keys"
    );
    let as_nobody = etcdctl_tls(&ca.cert_path, Some(&nobody));
    let denied = refused(run(&as_nobody, &["get", "a"])?)?;
    assert_eq!(
        denied, "Error: etcdserver: permission denied",
        "a CN with no user"
    );
    // A token, when sent, wins over the certificate (etcd's AuthInfoFromCtx).
    let mut by_password = as_nobody.clone();
    by_password.push("--user=root:rootpw".into());
    ok(run(&by_password, &["put", "open", "2"])?).context("root by password")?;
    ok(run(&as_root, &["put", "open", "3"])?).context("root by its certificate")?;
    ok(run(&as_root, &["auth", "disable"])?)?;
    Ok(())
}

#[test]
fn auto_tls_generates_a_self_signed_certificate_under_the_data_dir() -> Result<()> {
    require_on_path("etcdctl")?;
    let dir = TempDir::new("tls-auto")?;
    let ports = Ports::pick();
    let keel = start(&dir, ports, &["--auto-tls".to_string()])?;
    let ep = keel.endpoint();
    // etcdctl 3.4 dials https:// with TLS only when given a certificate flag or
    // --insecure-transport=false (as against etcd).
    let skip = vec![
        "--insecure-transport=false".to_string(),
        "--insecure-skip-tls-verify".to_string(),
    ];
    eventually(Duration::from_secs(10), || {
        ok(etcdctl(&ep, &skip, &["put", "k", "v"])?)
    })?;
    let fixtures = dir.path().join("data/fixtures/client");
    assert!(
        fixtures.join("cert.pem").is_file(),
        "cert.pem under fixtures/client"
    );
    assert!(
        fixtures.join("key.pem").is_file(),
        "key.pem under fixtures/client"
    );
    let strict = etcdctl_tls(&fixtures.join("cert.pem"), None);
    assert_eq!(
        ok(etcdctl(&ep, &strict, &["get", "k"])?)?,
        "k\nv\n",
        "trusting the cert"
    );
    let pem = std::fs::read(fixtures.join("cert.pem"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).context("cert.pem is PEM")?;
    let cert = pem.parse_x509().context("cert.pem is X.509")?;
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert_eq!(
        days, 365,
        "valid for one year, as etcd's (--self-signed-cert-validity 1)"
    );
    Ok(())
}

/// Runs keel with `extra` and expects it to stop at once with an error containing every one
/// of `wanted`.
fn fails_to_start(dir: &TempDir, extra: &[String], wanted: &[&str]) -> Result<()> {
    let ports = Ports::pick();
    let mut args = https_flags("n1", &dir.path().join("data"), ports);
    args.extend(extra.iter().cloned());
    let out = Command::new(keel_bin()).args(&args).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "keel started with {extra:?}");
    for w in wanted {
        ensure!(
            stderr.contains(w),
            "{extra:?}: {w:?} not in the error:\n{stderr}"
        );
    }
    Ok(())
}

#[test]
fn bad_tls_setups_stop_the_start_naming_the_file_and_the_problem() -> Result<()> {
    let dir = TempDir::new("tls-errors")?;
    let ca = Ca::new(dir.path(), "ca")?;
    let server = ca.issue("server", "server")?;
    let other = ca.issue("other", "server")?;
    let expired = ca.issue_with("expired", "server", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })?;
    let missing = dir.path().join("missing.pem");
    let flags = |cert: &Path, key: &Path| {
        vec![
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
        ]
    };
    let missing_text = missing.display().to_string();
    fails_to_start(
        &dir,
        &flags(&missing, &server.key),
        &[&missing_text, "cannot read"],
    )?;
    let mismatch = flags(&server.cert, &other.key);
    let other_key = other.key.display().to_string();
    fails_to_start(&dir, &mismatch, &[&other_key, "does not match"])?;
    let old = flags(&expired.cert, &expired.key);
    let old_cert = expired.cert.display().to_string();
    fails_to_start(&dir, &old, &[&old_cert, "certificate has expired"])?;
    fails_to_start(
        &dir,
        &[],
        &[
            "TLS key/cert (--cert-file, --key-file) must be provided",
            "https://127.0.0.1:",
        ],
    )?;
    let mut tls11 = flags(&server.cert, &server.key);
    tls11.push("--tls-min-version=TLS1.1".into());
    fails_to_start(
        &dir,
        &tls11,
        &["unexpected TLS version \"TLS1.1\"", "TLS 1.2 and 1.3"],
    )?;
    let mut no_ca = flags(&server.cert, &server.key);
    no_ca.push("--client-cert-auth".into());
    fails_to_start(
        &dir,
        &no_ca,
        &["--client-cert-auth needs --trusted-ca-file"],
    )?;
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello")?;
    let not_pem_text = not_pem.display().to_string();
    fails_to_start(
        &dir,
        &flags(&not_pem, &server.key),
        &[&not_pem_text, "no PEM"],
    )?;
    Ok(())
}
