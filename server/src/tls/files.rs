//! Reading and checking certificate files: PEM parsing, a key that matches its certificate,
//! validity dates, and a certificate's CommonName.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use std::path::PathBuf;

use super::error::TlsError;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn bad(what: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Content {
        what,
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The certificates in a PEM file, in order; at least one.
pub fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| bad(what, path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad(what, path, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key file", path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad("key file", path, format!("holds no PEM private key: {e}")))
}

/// Refuses a certificate outside its validity period (now, by the system clock).
pub fn check_validity(
    what: &'static str,
    path: &Path,
    cert: &CertificateDer<'_>,
) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| bad(what, path, format!("not an X.509 certificate: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let validity = parsed.validity();
    if now > validity.not_after.timestamp() {
        return Err(bad(
            what,
            path,
            format!("certificate has expired (not after {})", validity.not_after),
        ));
    }
    if now < validity.not_before.timestamp() {
        return Err(bad(
            what,
            path,
            format!(
                "certificate is not valid yet (not before {})",
                validity.not_before
            ),
        ));
    }
    Ok(())
}

/// The certificate chain and key of `cert`/`key`, checked: the key parses, matches the
/// first certificate, and that certificate is within its validity period.
pub fn certified_key(
    cert: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs("cert file", cert)?;
    check_validity("cert file", cert, &chain[0])?;
    let private = key(key_path)?;
    let signer = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| bad("key file", key_path, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| TlsError::KeyMismatch {
        cert: cert.display().to_string(),
        key: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

/// The CA certificates of a trusted-CA file.
pub fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(what, path)? {
        store
            .add(cert)
            .map_err(|e| bad(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// One certificate for every handshake, either side.
#[derive(Debug)]
pub struct Single(pub Arc<CertifiedKey>);

impl ResolvesServerCert for Single {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

impl ResolvesClientCert for Single {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any server certificate (still checking the handshake's signatures): outbound
/// peer connections under `--peer-auto-tls`, whose certificates are self-signed, as etcd's
/// InsecureSkipVerify.
#[derive(Debug)]
pub struct AcceptAny(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One side's (client or peer) certificate files, as the flags name them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate (chain) served, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The CA that signs the other side's certificates, PEM, if any.
    pub trusted_ca: Option<PathBuf>,
    /// Whether the other side must present a certificate signed by `trusted_ca`. As in etcd,
    /// a trusted CA alone also requires one.
    pub client_cert_auth: bool,
    /// The certificate was generated by `--auto-tls`: outbound connections do not verify the
    /// other side (etcd's InsecureSkipVerify for self-signed peers).
    pub self_signed: bool,
    /// The certificate revocation list checked against the other side's certificate
    /// (`--client-crl-file` / `--peer-crl-file`), DER or PEM.
    pub crl: Option<PathBuf>,
    /// The name the other side's certificate must carry (`--peer-cert-allowed-cn`,
    /// `--*-cert-allowed-hostname`).
    pub allowed: super::verify::Allowed,
}

impl TlsFiles {
    /// Whether a connecting client (or peer) must present a verified certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.client_cert_auth || self.trusted_ca.is_some()
    }

    /// The files to watch for rotation.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.trusted_ca.clone());
        files.extend(self.crl.clone());
        files
    }
}
