//! TLS on the client and peer ports (tokio build only; the simulator keeps plain
//! connections).
//!
//! TLS terminates in keel itself, with rustls (ring provider): the client listener
//! ([`crate::client::listener`]) completes the handshake on each accepted connection before
//! it tells gRPC from HTTP/1.1, so gRPC, the JSON gateway, `/health` and `/metrics` all work
//! over `https://`; the peer listener does the same before tonic reads a byte, and outbound
//! peer channels dial through [`connector::PeerConnector`].
//!
//! Certificates are re-read on change ([`reload`]): a task polls the files' modification
//! times and swaps in a freshly built configuration, which the next handshake uses.
//! Handshakes never touch the disk.

pub mod auto;
pub mod connector;
pub mod error;
pub mod files;
pub mod options;
pub mod reload;
pub mod stream;
pub mod verify;

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::config::Config;
pub use error::TlsError;
pub use files::TlsFiles;
pub use options::TlsOptions;
pub use reload::{Reloading, ServerTls};
pub use verify::Allowed;

/// ALPN protocols the client port offers, in the server's order of preference: a client
/// that offers both (curl) speaks HTTP/1.1 to the gateway; gRPC clients offer only `h2`.
pub const CLIENT_ALPN: [&[u8]; 2] = [b"http/1.1", b"h2"];

/// Builds a server configuration from the files as they are now.
pub fn server_config(files: &TlsFiles, options: &TlsOptions) -> Result<ServerConfig, TlsError> {
    let provider = options.provider();
    let key = files::certified_key(&files.cert, &files.key, &provider)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(options.versions())
        .map_err(|e| TlsError::Flag(format!("TLS versions and cipher suites: {e}")))?;
    let builder = match (&files.trusted_ca, files.requires_client_cert()) {
        (Some(ca), true) => {
            let roots = files::roots("trusted CA file", ca)?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &files.crl {
                verifier = verifier
                    .with_crls(verify::crls(crl)?)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let verifier = verifier
                .build()
                .map_err(|e| content("trusted CA file", ca, e))?;
            builder.with_client_cert_verifier(Arc::new(verify::CheckedClient {
                inner: verifier,
                allowed: files.allowed.clone(),
            }))
        }
        (None, true) => {
            return Err(TlsError::Flag(
                "--client-cert-auth needs --trusted-ca-file (the CA that signs client \
                 certificates)"
                    .into(),
            ))
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(files::Single(key)));
    config.alpn_protocols = CLIENT_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds the configuration outbound peer connections use: the peer certificate as the
/// client certificate, and the peer CA (if any) to verify the other member.
pub fn client_config(files: &TlsFiles, options: &TlsOptions) -> Result<ClientConfig, TlsError> {
    let provider = options.provider();
    let key = files::certified_key(&files.cert, &files.key, &provider)?;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(options.versions())
        .map_err(|e| TlsError::Flag(format!("TLS versions and cipher suites: {e}")))?;
    let inner: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        match (&files.trusted_ca, files.self_signed) {
            (Some(ca), _) => {
                let roots = Arc::new(files::roots("peer trusted CA file", ca)?);
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .build()
                    .map_err(|e| content("peer trusted CA file", ca, e))?
            }
            (None, true) => Arc::new(files::AcceptAny(Arc::clone(&provider))),
            (None, false) => {
                let roots = Arc::new(rustls::RootCertStore::empty());
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::Flag(format!("peer TLS without a trusted CA: {e}")))?
            }
        };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::CheckedServer {
            inner,
            allowed: files.allowed.clone(),
        }));
    let mut config = builder.with_client_cert_resolver(Arc::new(files::Single(key)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn content(what: &'static str, path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Content {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The TLS this member serves and dials with, as its flags ask.
#[derive(Clone, Default)]
pub struct MemberTls {
    /// The client port's server configuration (for `https://` client URLs).
    pub client: Option<Arc<ServerTls>>,
    /// The peer port's server configuration (for `https://` peer URLs).
    pub peer_server: Option<Arc<ServerTls>>,
    /// Outbound peer connections' configuration.
    pub peer_client: Option<Arc<Reloading<ClientConfig>>>,
}

impl MemberTls {
    /// Loads every certificate the flags name, checks them, and starts their reloaders.
    /// Must run inside the tokio runtime.
    pub fn load(config: &Config) -> Result<MemberTls, TlsError> {
        let options = TlsOptions::from_config(config)?;
        let mut tls = MemberTls::default();
        if let Some(files) = client_files(config)? {
            let common_name_login = files.client_cert_auth;
            let built = Reloading::start(files, options.clone(), server_config)?;
            tls.client = Some(Arc::new(ServerTls {
                config: built,
                common_name_login,
            }));
        }
        if let Some(files) = peer_files(config)? {
            let server = Reloading::start(files.clone(), options.clone(), server_config)?;
            tls.peer_server = Some(Arc::new(ServerTls {
                config: server,
                common_name_login: false,
            }));
            tls.peer_client = Some(Reloading::start(files, options, client_config)?);
        }
        Ok(tls)
    }
}

fn https_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| u.starts_with("https://"))
        .map(String::from)
        .collect()
}

fn client_files(config: &Config) -> Result<Option<TlsFiles>, TlsError> {
    let mut https = https_urls(&config.listen_client_urls);
    https.extend(https_urls(&config.advertise_client_urls));
    let Some(url) = https.first() else {
        if !config.cert_file.is_empty() {
            tracing::warn!(
                "scheme is HTTP while key and cert files are present; ignoring key and cert files"
            );
        }
        return Ok(None);
    };
    let given = !config.cert_file.is_empty() || !config.key_file.is_empty();
    let checks = (
        &config.client_crl_file,
        Allowed::from_flags("", &config.client_cert_allowed_hostname)?,
    );
    if config.auto_tls && !given {
        let auto = auto_files(config, "client", &config.listen_client_urls)?;
        return Ok(Some(with_checks(auto, checks)));
    }
    side_files(
        url,
        (&config.cert_file, &config.key_file, &config.trusted_ca_file),
        config.client_cert_auth,
        (
            "--cert-file, --key-file",
            "--auto-tls",
            "--client-cert-auth",
            "--trusted-ca-file",
        ),
    )
    .map(|files| Some(with_checks(files, checks)))
}

/// `files` with the CRL (a path, "" for none) and the allowed name of its side's flags.
fn with_checks(mut files: TlsFiles, (crl, allowed): (&String, Allowed)) -> TlsFiles {
    files.crl = (!crl.is_empty()).then(|| crl.into());
    files.allowed = allowed;
    files
}

/// `--auto-tls` / `--peer-auto-tls`: a self-signed certificate under the data dir's
/// `fixtures/<side>`, made at the first start and reused after.
fn auto_files(config: &Config, side: &str, urls: &str) -> Result<TlsFiles, TlsError> {
    let dir = config.data_dir.join("fixtures").join(side);
    let (cert, key) = auto::self_cert(&dir, urls, config.self_signed_cert_validity)?;
    Ok(TlsFiles {
        cert,
        key,
        trusted_ca: None,
        client_cert_auth: false,
        self_signed: true,
        ..TlsFiles::default()
    })
}

fn peer_files(config: &Config) -> Result<Option<TlsFiles>, TlsError> {
    let mut https = https_urls(&config.listen_peer_urls);
    https.extend(https_urls(&config.initial_advertise_peer_urls));
    let Some(url) = https.first() else {
        return Ok(None);
    };
    let given = !config.peer_cert_file.is_empty() || !config.peer_key_file.is_empty();
    let checks = (
        &config.peer_crl_file,
        Allowed::from_flags(
            &config.peer_cert_allowed_cn,
            &config.peer_cert_allowed_hostname,
        )?,
    );
    if config.peer_auto_tls && !given {
        let auto = auto_files(config, "peer", &config.listen_peer_urls)?;
        return Ok(Some(with_checks(auto, checks)));
    }
    side_files(
        url,
        (
            &config.peer_cert_file,
            &config.peer_key_file,
            &config.peer_trusted_ca_file,
        ),
        config.peer_client_cert_auth,
        (
            "--peer-cert-file, --peer-key-file",
            "--peer-auto-tls",
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
        ),
    )
    .map(|files| Some(with_checks(files, checks)))
}

fn side_files(
    url: &str,
    (cert, key, ca): (&str, &str, &str),
    client_cert_auth: bool,
    (flags, auto, auth_flag, ca_flag): (&'static str, &'static str, &'static str, &'static str),
) -> Result<TlsFiles, TlsError> {
    if cert.is_empty() || key.is_empty() {
        return Err(TlsError::HttpsWithoutCerts {
            flags,
            auto,
            url: url.to_string(),
        });
    }
    if client_cert_auth && ca.is_empty() {
        return Err(TlsError::Flag(format!(
            "{auth_flag} needs {ca_flag} (the CA that signs the certificates to accept)"
        )));
    }
    Ok(TlsFiles {
        cert: cert.into(),
        key: key.into(),
        trusted_ca: (!ca.is_empty()).then(|| ca.into()),
        client_cert_auth,
        self_signed: false,
        ..TlsFiles::default()
    })
}
