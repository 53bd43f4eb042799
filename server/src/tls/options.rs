//! `--cipher-suites`, `--tls-min-version` and `--tls-max-version`, with etcd 3.5's names and
//! value syntax, mapped onto rustls (which speaks TLS 1.2 and 1.3 only).
//!
//! As in Go (and so etcd), `--cipher-suites` restricts the TLS 1.2 suites; TLS 1.3's suites
//! are not configurable and stay enabled. Example: `--cipher-suites
//! TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
//! --tls-min-version TLS1.2 --tls-max-version TLS1.3`.

use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use super::error::TlsError;
use crate::config::Config;

/// Go's cipher suite names that rustls does not implement (CBC, RC4, 3DES, static RSA key
/// exchange): refused by name rather than silently dropped.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// Go's TLS 1.3 suite names: accepted, and without effect, as in Go.
const TLS13_NAMES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The protocol versions and cipher suites every TLS configuration of this member uses.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    versions: Vec<&'static SupportedProtocolVersion>,
    /// The TLS 1.2 suites `--cipher-suites` allows, in its order; None: all of rustls's.
    tls12_suites: Option<Vec<SupportedCipherSuite>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            versions: rustls::ALL_VERSIONS.to_vec(),
            tls12_suites: None,
        }
    }
}

/// A version flag's value: 12 or 13 (etcd's names), None for "" (the default).
fn version(flag: &str, value: &str) -> Result<Option<u8>, TlsError> {
    match value.trim() {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(12)),
        "TLS1.3" => Ok(Some(13)),
        other => {
            let mut text = format!(
                "--{flag}: unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
            );
            if matches!(other, "TLS1.0" | "TLS1.1") {
                text.push_str("; keel's TLS (rustls) supports only TLS 1.2 and 1.3");
            }
            Err(TlsError::Flag(text))
        }
    }
}

/// The rustls suite of an etcd (Go) cipher suite name; None for a TLS 1.3 name.
fn suite(name: &str) -> Result<Option<SupportedCipherSuite>, TlsError> {
    if TLS13_NAMES.contains(&name) {
        return Ok(None);
    }
    // Go's short names for the two ChaCha20 suites.
    let full = match name {
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        other => other,
    };
    let found = ring::ALL_CIPHER_SUITES
        .iter()
        .find(|s| s.tls13().is_none() && format!("{:?}", s.suite()) == full);
    if let Some(s) = found {
        return Ok(Some(*s));
    }
    if GO_ONLY_SUITES.contains(&name) {
        return Err(TlsError::Flag(format!(
            "--cipher-suites: {name:?} is not supported by keel's TLS (rustls supports the \
             ECDHE suites with AES-GCM or ChaCha20-Poly1305)"
        )));
    }
    Err(TlsError::Flag(format!(
        "--cipher-suites: unexpected TLS cipher suite {name:?}"
    )))
}

impl TlsOptions {
    /// Reads the three flags, with etcd 3.5's checks and texts.
    pub fn from_config(config: &Config) -> Result<TlsOptions, TlsError> {
        let min = version("tls-min-version", &config.tls_min_version)?.unwrap_or(12);
        let max = version("tls-max-version", &config.tls_max_version)?.unwrap_or(13);
        if min > max {
            return Err(TlsError::Flag(format!(
                "min version ({}) is greater than max version ({})",
                config.tls_min_version, config.tls_max_version
            )));
        }
        let names: Vec<&str> = config
            .cipher_suites
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if min == 13 && !names.is_empty() {
            return Err(TlsError::Flag(
                "cipher suites cannot be configured when only TLS1.3 is enabled".into(),
            ));
        }
        let mut tls12_suites = None;
        if !names.is_empty() {
            let mut picked = Vec::new();
            for name in names {
                picked.extend(suite(name)?);
            }
            tls12_suites = Some(picked);
        }
        let mut versions = Vec::new();
        if min <= 12 {
            versions.push(&rustls::version::TLS12);
        }
        if max >= 13 {
            versions.push(&rustls::version::TLS13);
        }
        Ok(TlsOptions {
            versions,
            tls12_suites,
        })
    }

    /// The protocol versions to enable.
    pub fn versions(&self) -> &[&'static SupportedProtocolVersion] {
        &self.versions
    }

    /// ring's provider with the allowed cipher suites.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        // ring, not aws-lc-rs (no cmake/NASM in the build); rustls 0.23.48 deprecates ring's
        // provider only for its lack of post-quantum key exchange, which etcd's Go TLS
        // clients do not need.
        #[allow(deprecated)]
        let mut provider = ring::default_provider();
        if let Some(tls12) = &self.tls12_suites {
            provider.cipher_suites.retain(|s| s.tls13().is_some());
            provider.cipher_suites.extend(tls12.iter().copied());
        }
        Arc::new(provider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn options(args: &[&str]) -> Result<TlsOptions, String> {
        let mut all = vec!["keel"];
        all.extend_from_slice(args);
        let config = Config::try_parse_from(all).map_err(|e| e.to_string())?;
        TlsOptions::from_config(&config).map_err(|e| e.to_string())
    }

    #[test]
    fn versions_and_suites_read_as_etcd_reads_them() {
        let all = options(&[]).expect("defaults");
        assert_eq!(all.versions().len(), 2, "TLS 1.2 and 1.3 by default");
        let only13 = options(&["--tls-min-version", "TLS1.3"]).expect("1.3");
        assert_eq!(only13.versions(), &[&rustls::version::TLS13]);
        let old = options(&["--tls-min-version", "TLS1.1"]).expect_err("1.1 refused");
        assert!(old.contains("unexpected TLS version \"TLS1.1\""), "{old}");
        assert!(old.contains("supports only TLS 1.2 and 1.3"), "{old}");
        let inverted = options(&["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"]);
        assert_eq!(
            inverted.expect_err("min > max"),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        let suites = options(&[
            "--cipher-suites",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ])
        .expect("two suites");
        let provider = suites.provider();
        let tls12 = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none());
        assert_eq!(tls12.count(), 2, "only the two TLS 1.2 suites named");
        let cbc = options(&["--cipher-suites", "TLS_RSA_WITH_AES_128_CBC_SHA"]);
        assert!(
            cbc.expect_err("cbc").contains("not supported"),
            "CBC refused by name"
        );
        let unknown = options(&["--cipher-suites", "NOPE"]).expect_err("unknown");
        assert!(
            unknown.contains("unexpected TLS cipher suite \"NOPE\""),
            "{unknown}"
        );
        let only13 = options(&[
            "--tls-min-version",
            "TLS1.3",
            "--cipher-suites",
            "TLS_AES_128_GCM_SHA256",
        ]);
        assert_eq!(
            only13.expect_err("suites with 1.3 only"),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
    }
}
