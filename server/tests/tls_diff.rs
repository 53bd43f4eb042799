//! TLS differential: etcd 3.4.23 and keel, started with the same certificates and flags
//! (`--cert-file --key-file --trusted-ca-file --client-cert-auth`, `https://` client URLs),
//! answer the same etcdctl commands with the same output and the same errors: with a client
//! certificate, without one, with one from another CA, trusting the wrong CA, with
//! `--insecure-skip-tls-verify`, and logged in by a certificate's CommonName under auth; and
//! with `--client-crl-file` and `--client-cert-allowed-hostname`, the same certificates
//! refused.

// Real processes on real sockets, and TLS (which the madsim build has not): tokio build only.
#![cfg(not(madsim))]

mod common;
mod tls_common;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use common::{keel_bin, require_on_path, Ports, Server, TempDir};
use tls_common::{client_tls_flags, etcdctl, etcdctl_tls, eventually, ok, Ca, Leaf};

/// Who runs a step: the TLS flags etcdctl gets.
#[derive(Clone, Copy, Debug)]
enum As {
    /// The right CA and a client certificate with this file name (its CN is the same).
    Cert(&'static str),
    /// The right CA, no client certificate.
    NoCert,
    /// The right CA and a certificate another CA signed.
    Stranger,
    /// Trusting another CA (the server's certificate does not verify), with a client cert.
    WrongCa,
    /// Trusting another CA with `--insecure-skip-tls-verify`, with a client certificate.
    SkipVerify,
    /// `--insecure-skip-tls-verify` and no client certificate.
    SkipVerifyNoCert,
    /// A client certificate with CN `nobody` plus `--user root:rootpw`.
    PasswordOver(&'static str),
}

const STEPS: &[(As, &[&str])] = &[
    (As::Cert("root"), &["put", "k", "v"]),
    (As::Cert("root"), &["get", "k"]),
    (As::Cert("root"), &["get", "--prefix", "k"]),
    (As::NoCert, &["get", "k"]),
    (As::Stranger, &["get", "k"]),
    (As::WrongCa, &["get", "k"]),
    (As::SkipVerify, &["get", "k"]),
    (As::SkipVerifyNoCert, &["get", "k"]),
    (As::Cert("root"), &["user", "add", "root:rootpw"]),
    (As::Cert("root"), &["user", "grant-role", "root", "root"]),
    (As::Cert("root"), &["user", "add", "alice:alicepw"]),
    (As::Cert("root"), &["role", "add", "reader"]),
    (
        As::Cert("root"),
        &["role", "grant-permission", "reader", "read", "a"],
    ),
    (As::Cert("root"), &["user", "grant-role", "alice", "reader"]),
    (As::Cert("root"), &["put", "a", "1"]),
    (As::Cert("root"), &["auth", "enable"]),
    (As::Cert("alice"), &["get", "a"]),
    (As::Cert("alice"), &["put", "a", "2"]),
    (As::Cert("alice"), &["get", "k"]),
    (As::Cert("nobody"), &["get", "a"]),
    (As::PasswordOver("nobody"), &["put", "k", "v2"]),
    (As::Cert("root"), &["get", "k"]),
    (As::Cert("root"), &["user", "list"]),
    (As::Cert("root"), &["auth", "disable"]),
    (As::NoCert, &["get", "k"]),
];

struct Pki {
    ca: Ca,
    other: Ca,
    stranger: Leaf,
}

impl Pki {
    fn flags(&self, who: As) -> Vec<String> {
        let leaf = |name: &str| Leaf {
            cert: self.ca.cert_path.with_file_name(format!("{name}.pem")),
            key: self.ca.cert_path.with_file_name(format!("{name}.key")),
        };
        let skip = "--insecure-skip-tls-verify".to_string();
        match who {
            As::Cert(name) => etcdctl_tls(&self.ca.cert_path, Some(&leaf(name))),
            As::NoCert => etcdctl_tls(&self.ca.cert_path, None),
            As::Stranger => etcdctl_tls(&self.ca.cert_path, Some(&self.stranger)),
            As::WrongCa => etcdctl_tls(&self.other.cert_path, Some(&leaf("root"))),
            As::SkipVerify => {
                let mut f = etcdctl_tls(&self.other.cert_path, Some(&leaf("root")));
                f.push(skip);
                f
            }
            As::SkipVerifyNoCert => vec!["--insecure-transport=false".into(), skip],
            As::PasswordOver(name) => {
                let mut f = etcdctl_tls(&self.ca.cert_path, Some(&leaf(name)));
                f.push("--user=root:rootpw".into());
                f
            }
        }
    }
}

/// What a step shows: exit status, stdout, and the last stderr line (etcdctl's `Error:`).
fn run(endpoint: &str, pki: &Pki, who: As, args: &[&str]) -> Result<String> {
    let out = etcdctl(endpoint, &pki.flags(who), args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    Ok(format!(
        "ok={} stdout={:?} error={last:?}",
        out.status.success(),
        String::from_utf8_lossy(&out.stdout)
    ))
}

fn start(label: &str, program: &Path, dir: &Path, server: &Leaf, ca: &Path) -> Result<Server> {
    start_with(label, program, dir, server, ca, &[])
}

fn start_with(
    label: &str,
    program: &Path,
    dir: &Path,
    server: &Leaf,
    ca: &Path,
    extra: &[String],
) -> Result<Server> {
    let ports = Ports::pick();
    let client = format!("https://127.0.0.1:{}", ports.client);
    let mut args = vec![
        format!("--name={label}"),
        format!("--data-dir={}", dir.join(label).display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={}", ports.peer_url()),
        format!("--initial-advertise-peer-urls={}", ports.peer_url()),
        format!("--initial-cluster={label}={}", ports.peer_url()),
    ];
    args.extend(client_tls_flags(server, Some(ca)));
    args.extend(extra.iter().cloned());
    let log = dir.join(format!("{label}.log"));
    Server::start(label, program, &args, ports, &log)
}

#[test]
fn etcdctl_sees_keel_tls_as_etcd() -> Result<()> {
    let etcd_bin = require_on_path("etcd")?;
    require_on_path("etcdctl")?;
    let dir = TempDir::new("tls-diff")?;
    let ca = Ca::new(dir.path(), "ca")?;
    let server = ca.issue("server", "server")?;
    for name in ["root", "alice", "nobody"] {
        ca.issue(name, name)?;
    }
    let other = Ca::new(dir.path(), "other-ca")?;
    let stranger = other.issue("stranger", "root")?;
    let pki = Pki {
        ca,
        other,
        stranger,
    };
    let etcd = start("etcd", &etcd_bin, dir.path(), &server, &pki.ca.cert_path)?;
    let keel = start("keel", &keel_bin(), dir.path(), &server, &pki.ca.cert_path)?;
    for s in [&etcd, &keel] {
        let ready = || {
            ok(etcdctl(
                &s.endpoint(),
                &pki.flags(As::Cert("root")),
                &["get", "x"],
            )?)
        };
        eventually(Duration::from_secs(15), ready)?;
    }
    let mut differ = Vec::new();
    for (who, args) in STEPS {
        let want = run(&etcd.endpoint(), &pki, *who, args)?;
        let got = run(&keel.endpoint(), &pki, *who, args)?;
        if want != got {
            differ.push(format!("{who:?} {args:?}\n  etcd: {want}\n  keel: {got}"));
        }
    }
    assert!(
        differ.is_empty(),
        "keel differs from etcd:\n{}",
        differ.join("\n")
    );
    Ok(())
}

#[test]
fn revoked_certificates_and_other_hosts_are_refused_as_etcd_refuses_them() -> Result<()> {
    let etcd_bin = require_on_path("etcd")?;
    require_on_path("etcdctl")?;
    let dir = TempDir::new("tls-crl")?;
    let ca = Ca::new(dir.path(), "ca")?;
    let server = ca.issue("server", "server")?;
    let good = ca.issue_with("good", "good", |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(1001u64))
    })?;
    let revoked = ca.issue_with("revoked", "revoked", |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(1002u64))
    })?;
    let elsewhere = ca.issue_with("elsewhere", "elsewhere", |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(1003u64));
        p.subject_alt_names = vec![rcgen::SanType::DnsName(
            "other.example".try_into().expect("a DNS name"),
        )];
    })?;
    let crl = ca.crl("revoked.crl", &[1002])?;
    let extra = [
        format!("--client-crl-file={}", crl.display()),
        "--client-cert-allowed-hostname=localhost".to_string(),
    ];
    let etcd = start_with(
        "etcd",
        &etcd_bin,
        dir.path(),
        &server,
        &ca.cert_path,
        &extra,
    )?;
    let keel = start_with(
        "keel",
        &keel_bin(),
        dir.path(),
        &server,
        &ca.cert_path,
        &extra,
    )?;
    let flags = |leaf: &Leaf| etcdctl_tls(&ca.cert_path, Some(leaf));
    for s in [&etcd, &keel] {
        let ready = || ok(etcdctl(&s.endpoint(), &flags(&good), &["put", "k", "v"])?);
        eventually(Duration::from_secs(15), ready)?;
    }
    let mut seen = Vec::new();
    for s in [&etcd, &keel] {
        let mut runs = Vec::new();
        for (who, leaf) in [
            ("good", &good),
            ("revoked", &revoked),
            ("elsewhere", &elsewhere),
        ] {
            let out = etcdctl(&s.endpoint(), &flags(leaf), &["get", "k"])?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            runs.push(format!(
                "{who}: ok={} stdout={:?} error={:?}",
                out.status.success(),
                String::from_utf8_lossy(&out.stdout),
                stderr.lines().last().unwrap_or_default()
            ));
        }
        seen.push(runs);
    }
    assert_eq!(seen[0], seen[1], "etcd (left) and keel (right) differ");
    assert!(
        seen[1][0].starts_with("good: ok=true") && seen[1][1].starts_with("revoked: ok=false"),
        "the good certificate works and the revoked one is refused: {:?}",
        seen[1]
    );
    assert!(
        seen[1][2].starts_with("elsewhere: ok=false"),
        "a certificate not valid for the allowed hostname is refused: {:?}",
        seen[1]
    );
    Ok(())
}
