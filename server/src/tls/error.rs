//! What can be wrong with a TLS setup.

/// A TLS setup that cannot work; each names the file or flag and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which flag's file.
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file whose content is not what its flag needs.
    #[error("{what} {path}: {reason}")]
    Content {
        /// Which flag's file.
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A private key that does not belong to its certificate.
    #[error("key file {key} does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's finding.
        reason: String,
    },
    /// An `https://` URL with no certificate to serve it.
    #[error("TLS key/cert ({flags}) must be provided for {url} with HTTPS scheme (or use {auto})")]
    HttpsWithoutCerts {
        /// The certificate flags.
        flags: &'static str,
        /// The auto-TLS flag.
        auto: &'static str,
        /// The URL.
        url: String,
    },
    /// A TLS flag with a value keel cannot use.
    #[error("{0}")]
    Flag(String),
    /// Generating the `--auto-tls` certificate failed.
    #[error("auto-tls: {0}")]
    Auto(String),
}
