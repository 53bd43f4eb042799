//! Certificates for the TLS tests, made in the test with rcgen: a CA, and leaf certificates
//! it signs (server + client usage, 127.0.0.1/localhost names, a chosen CommonName), written
//! as PEM files; and etcdctl runs with TLS flags.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A certificate authority that writes the certificates it issues under `dir`.
pub struct Ca {
    pub cert_path: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

/// A certificate and its key file.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new CA named `name`, its certificate at `dir/name.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key)?;
        let cert_path = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        Ok(Ca {
            cert_path,
            cert,
            key,
            dir: dir.to_path_buf(),
        })
    }

    /// A certificate for 127.0.0.1 and localhost with CommonName `cn`, usable by servers
    /// and clients, as `dir/file.pem` and `dir/file.key`.
    pub fn issue(&self, file: &str, cn: &str) -> Result<Leaf> {
        self.issue_with(file, cn, |_| {})
    }

    /// [`Ca::issue`] with the parameters adjusted by `adjust` (e.g. an expired validity).
    pub fn issue_with(
        &self,
        file: &str,
        cn: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem())?;
        std::fs::write(&leaf.key, key.serialize_pem())?;
        Ok(leaf)
    }
}

impl Ca {
    /// A certificate revocation list signed by this CA listing `serials`, DER (etcd's
    /// format), as `dir/file`.
    pub fn crl(&self, file: &str, serials: &[u64]) -> Result<PathBuf> {
        let revoked_certs = serials
            .iter()
            .map(|&serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)?;
        let path = self.dir.join(file);
        std::fs::write(&path, crl.der())?;
        Ok(path)
    }
}

/// Server flags for `leaf` (and `--trusted-ca-file`/`--client-cert-auth` when `ca` is given).
pub fn client_tls_flags(leaf: &Leaf, ca: Option<&Path>) -> Vec<String> {
    let mut flags = vec![
        format!("--cert-file={}", leaf.cert.display()),
        format!("--key-file={}", leaf.key.display()),
    ];
    if let Some(ca) = ca {
        flags.push(format!("--trusted-ca-file={}", ca.display()));
        flags.push("--client-cert-auth".to_string());
    }
    flags
}

/// Runs `etcdctl --endpoints https://ENDPOINT <tls...> <args...>` (API v3, 3 s timeouts).
pub fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> Result<Output> {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{endpoint}"))
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(tls)
        .args(args)
        .output()
        .context("running etcdctl")
}

/// etcdctl's TLS flags for a client with `ca`, and `leaf` if given.
pub fn etcdctl_tls(ca: &Path, leaf: Option<&Leaf>) -> Vec<String> {
    let mut flags = vec![format!("--cacert={}", ca.display())];
    if let Some(leaf) = leaf {
        flags.push(format!("--cert={}", leaf.cert.display()));
        flags.push(format!("--key={}", leaf.key.display()));
    }
    flags
}

/// stdout of a successful run, or an error with both streams.
pub fn ok(output: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "etcdctl failed ({}): stdout {stdout:?} stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// The last line etcdctl wrote to stderr (its `Error: ...`), for a run that must fail.
pub fn refused(output: Output) -> Result<String> {
    anyhow::ensure!(
        !output.status.success(),
        "etcdctl succeeded where it must be refused: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    Ok(stderr.lines().last().unwrap_or_default().to_string())
}

/// Retries `f` until it succeeds or `timeout` passes (a cluster still electing).
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
