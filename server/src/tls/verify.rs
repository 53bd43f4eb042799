//! What a side accepts beyond "signed by its CA": etcd's `--peer-cert-allowed-cn`,
//! `--peer-cert-allowed-hostname` and `--client-cert-allowed-hostname` (the other side's
//! certificate must carry that CommonName, or be valid for that host name), and the
//! certificate revocation lists of `--client-crl-file` / `--peer-crl-file`.
//!
//! As in etcd, the name check applies to every certificate the side verifies: the clients'
//! (or incoming peers') certificates on its listener, and, for the peer side, the other
//! members' server certificates when it dials them. A CRL is checked on the listener only,
//! against the end-entity certificate; a CRL issued by another CA than the one that signed the
//! certificate says nothing about it (webpki's "unknown status", accepted), as etcd checks
//! only the serial numbers it lists.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::error::TlsError;

/// The subject CommonName of a certificate, if it has a non-empty one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    let name = cn.as_str().ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The name the other side's certificate must carry, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Allowed {
    /// Any certificate the CA signed.
    #[default]
    Any,
    /// Its subject CommonName must be this (`--peer-cert-allowed-cn`).
    CommonName(String),
    /// It must be valid for this host name or IP address (`--*-cert-allowed-hostname`).
    Hostname(String),
}

impl Allowed {
    /// From the flags' values: etcd refuses both at once, with its text.
    pub fn from_flags(cn: &str, hostname: &str) -> Result<Allowed, TlsError> {
        match (cn.is_empty(), hostname.is_empty()) {
            (true, true) => Ok(Allowed::Any),
            (false, true) => Ok(Allowed::CommonName(cn.to_string())),
            (true, false) => Ok(Allowed::Hostname(hostname.to_string())),
            (false, false) => Err(TlsError::Flag(format!(
                "AllowedCN and AllowedHostname are mutually exclusive (cn={cn:?}, \
                 hostname={hostname:?})"
            ))),
        }
    }

    /// Whether `cert` carries the allowed name; the reason when it does not.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), String> {
        match self {
            Allowed::Any => Ok(()),
            Allowed::CommonName(want) => match common_name(cert) {
                Some(cn) if &cn == want => Ok(()),
                Some(cn) => Err(format!("CommonName {cn:?} is not the allowed {want:?}")),
                None => Err(format!("no CommonName (the allowed one is {want:?})")),
            },
            Allowed::Hostname(host) => {
                let name = ServerName::try_from(host.as_str())
                    .map_err(|e| format!("allowed hostname {host:?}: {e}"))?;
                let parsed =
                    ParsedCertificate::try_from(cert).map_err(|e| format!("unparsable: {e}"))?;
                rustls::client::verify_server_name(&parsed, &name)
                    .map_err(|_| format!("not valid for the allowed hostname {host:?}"))
            }
        }
    }

    fn enforce(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        self.check(cert).map_err(|reason| {
            tracing::warn!(%reason, "client certificate authentication failed");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })
    }
}

/// The revocation lists in a CRL file, DER (what etcd reads) or PEM.
pub fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "CRL file",
        path: path.display().to_string(),
        source,
    })?;
    let bad = |reason: String| TlsError::Content {
        what: "CRL file",
        path: path.display().to_string(),
        reason,
    };
    if bytes.starts_with(b"-----BEGIN") {
        let lists: Result<Vec<_>, _> =
            CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
        let lists = lists.map_err(|e| bad(format!("not a PEM X509 CRL: {e}")))?;
        if lists.is_empty() {
            return Err(bad("holds no PEM X509 CRL block".into()));
        }
        return Ok(lists);
    }
    if x509_parser::parse_x509_crl(&bytes).is_err() {
        return Err(bad("not a certificate revocation list (DER or PEM)".into()));
    }
    Ok(vec![CertificateRevocationListDer::from(bytes)])
}

/// The handshake-signature methods, which both verifier traits share, handed to `self.inner`.
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// A client-certificate verifier that also requires the allowed name.
#[derive(Debug)]
pub struct CheckedClient {
    /// The CA (and CRL) verification.
    pub inner: Arc<dyn ClientCertVerifier>,
    /// The name the certificate must carry.
    pub allowed: Allowed,
}

impl ClientCertVerifier for CheckedClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.enforce(end_entity)?;
        Ok(verified)
    }

    delegate_signatures!();
}

/// A server-certificate verifier (outbound peer connections) that also requires the
/// allowed name.
#[derive(Debug)]
pub struct CheckedServer {
    /// The CA verification (or none, for auto-TLS peers).
    pub inner: Arc<dyn ServerCertVerifier>,
    /// The name the certificate must carry.
    pub allowed: Allowed,
}

impl ServerCertVerifier for CheckedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.enforce(end_entity)?;
        Ok(verified)
    }

    delegate_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cn: &str, names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn the_allowed_name_is_checked_by_common_name_or_host() {
        let cert = leaf("member-1", &["m1.example.com", "10.0.0.1"]);
        assert_eq!(Allowed::Any.check(&cert), Ok(()), "any");
        let cn = Allowed::from_flags("member-1", "").expect("cn");
        assert_eq!(cn.check(&cert), Ok(()), "the allowed CN");
        let other = Allowed::from_flags("member-2", "").expect("cn");
        let why = other.check(&cert).expect_err("another CN");
        assert!(
            why.contains("\"member-1\" is not the allowed \"member-2\""),
            "{why}"
        );
        let host = Allowed::from_flags("", "m1.example.com").expect("host");
        assert_eq!(host.check(&cert), Ok(()), "a DNS name of the certificate");
        let ip = Allowed::from_flags("", "10.0.0.1").expect("ip");
        assert_eq!(ip.check(&cert), Ok(()), "an IP address of the certificate");
        let wrong = Allowed::from_flags("", "m2.example.com").expect("host");
        assert!(wrong.check(&cert).is_err(), "a name the certificate lacks");
        let both = Allowed::from_flags("a", "b").expect_err("both refused");
        assert_eq!(
            both.to_string(),
            "AllowedCN and AllowedHostname are mutually exclusive (cn=\"a\", hostname=\"b\")"
        );
    }

    #[test]
    fn a_crl_file_is_read_as_der_or_pem_and_garbage_is_named() {
        let dir = std::env::temp_dir().join(format!("keel-crl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&key).expect("ca");
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca, &key)
        .expect("crl");
        let der = dir.join("crl.der");
        std::fs::write(&der, crl.der()).expect("write");
        assert_eq!(crls(&der).expect("der").len(), 1, "a DER CRL");
        let pem = dir.join("crl.pem");
        std::fs::write(&pem, crl.pem().expect("pem")).expect("write");
        assert_eq!(crls(&pem).expect("pem").len(), 1, "a PEM CRL");
        let junk = dir.join("junk");
        std::fs::write(&junk, b"not a crl").expect("write");
        let err = crls(&junk).expect_err("junk").to_string();
        assert!(
            err.contains("junk") && err.contains("not a certificate revocation list"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
