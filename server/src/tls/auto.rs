//! `--auto-tls` / `--peer-auto-tls`: a self-signed certificate generated at the first start,
//! as etcd's `SelfCert` does, under `<data-dir>/fixtures/client` (or `peer`) as `cert.pem`
//! and `key.pem`, and reused by later starts.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::TlsError;

/// The certificate and key files under `dir`, generated now if either is missing, for the
/// hosts of `urls` (a comma-separated URL list) plus `localhost` and 127.0.0.1, valid from
/// now for `years` years (`--self-signed-cert-validity`, etcd's 1 by default).
pub fn self_cert(dir: &Path, urls: &str, years: u32) -> Result<(PathBuf, PathBuf), TlsError> {
    if years == 0 {
        return Err(TlsError::Flag(
            "--self-signed-cert-validity must be at least 1 (years)".into(),
        ));
    }
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        tracing::info!(cert = %cert_path.display(), "using the existing auto-TLS certificate");
        return Ok((cert_path, key_path));
    }
    let mut hosts: Vec<String> = urls
        .split(',')
        .filter_map(|u| u.trim().split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .filter_map(|hostport| hostport.rsplit_once(':').map(|(h, _)| h.to_string()))
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .collect();
    hosts.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    hosts.sort();
    hosts.dedup();
    let auto = |e: &dyn std::fmt::Display| TlsError::Auto(e.to_string());
    let mut params = rcgen::CertificateParams::new(hosts).map_err(|e| auto(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "keel");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(years));
    let key = rcgen::KeyPair::generate().map_err(|e| auto(&e))?;
    let cert = params.self_signed(&key).map_err(|e| auto(&e))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| TlsError::Auto(format!("cannot create {}: {e}", dir.display())))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())
        .map_err(|e| TlsError::Auto(format!("cannot write {}: {e}", cert_path.display())))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed auto-TLS certificate");
    Ok((cert_path, key_path))
}

/// Writes a key file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let fail = |e: std::io::Error| TlsError::Auto(format!("cannot write {}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}
