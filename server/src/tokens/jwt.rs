//! etcd's JWT tokens (`--auth-token jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`).
//!
//! A token is a JSON Web Token signed by the member that logged the user in, with etcd's
//! claims: `username`, `revision` (the auth revision at login) and `exp` (Unix seconds,
//! `ttl` after login). Any member holding the verifying key accepts it without asking the
//! others, which is the point of JWT: a client can log in on one member and use the token on
//! another. A member given only `pub-key` verifies tokens but cannot sign them (its
//! Authenticate fails with etcd's `auth: token signing attempted with verify-only key`).
//!
//! The token lives in the server, not the engine: signing and verifying are done here (on
//! the async threads; an RSA-2048 check is tens of microseconds) and the engine receives an
//! already verified caller ([`Credential::Verified`]), checked against the auth store's
//! revision like any other (a token older than the store's last change is refused with
//! `revision of auth store is old`, as in etcd).
//!
//! Keys are PEM files as etcd reads them: RSA (PKCS#1 or PKCS#8) for RS*/PS*, EC (SEC1 or
//! PKCS#8) on P-256/P-384 for ES256/ES384, raw bytes of `priv-key` for HS*. ES512 (P-521)
//! and EdDSA are refused at start: the crypto library has no P-521, and etcd 3.4 has no
//! EdDSA.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keel_engine::auth::{AuthInfo, Credential};
use serde::{Deserialize, Serialize};

use super::syntax::{parse_go_duration, TokenError};

/// `ttl` when the option is not given (etcd's `DefaultTTL`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The options etcd knows (others are warned about and ignored).
const KNOWN_OPTIONS: [&str; 4] = ["sign-method", "pub-key", "priv-key", "ttl"];

/// etcd's claims.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// A member's JWT signer and verifier.
pub struct JwtTokens {
    algorithm: Algorithm,
    /// `None`: verify-only (a public key alone).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key material in any output.
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The signing method named by `sign-method`, as golang-jwt names them.
fn algorithm(method: &str) -> Result<Algorithm, TokenError> {
    Ok(match method {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        // Known to golang-jwt, but etcd 3.4 cannot use "none" or EdDSA keys, and the crypto
        // library has no P-521.
        "none" | "EdDSA" | "ES512" => return Err(TokenError::Unsupported(method.to_string())),
        _ => {
            tracing::error!("problem loading JWT options: auth: invalid auth signature method");
            return Err(TokenError::InvalidOptions);
        }
    })
}

fn read_key(option: &str, path: &str) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|e| {
        tracing::error!(option, path, error = %e, "problem loading JWT options");
        TokenError::InvalidOptions
    })
}

impl JwtTokens {
    /// Tokens from the `jwt` type's options (etcd's `newTokenProviderJWT`).
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<JwtTokens, TokenError> {
        let unknown: Vec<&str> = options
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_OPTIONS.contains(k))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(keys = ?unknown, "unknown JWT options");
        }
        let get = |k: &str| options.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let ttl = match get("ttl") {
            None => DEFAULT_TTL,
            Some(t) => parse_go_duration(t).map_err(|e| {
                tracing::error!(error = %e, "problem loading JWT options");
                TokenError::InvalidOptions
            })?,
        };
        let public = get("pub-key").map(|p| read_key("pub-key", p)).transpose()?;
        let private = get("priv-key")
            .map(|p| read_key("priv-key", p))
            .transpose()?;
        let algorithm = algorithm(get("sign-method").unwrap_or(""))?;
        let (signing, verifying) = keys(algorithm, public.as_deref(), private.as_deref())?;
        let tokens = JwtTokens {
            algorithm,
            signing,
            verifying,
            ttl,
        };
        tokens.check_pair()?;
        Ok(tokens)
    }

    /// Whether this member can only verify.
    pub fn verify_only(&self) -> bool {
        self.signing.is_none()
    }

    /// A signed token for `username` at auth revision `revision` (etcd's `assign`).
    pub fn assign(&self, username: &str, revision: u64) -> Result<String, TokenError> {
        let key = self.signing.as_ref().ok_or(TokenError::VerifyOnly)?;
        let exp = jsonwebtoken::get_current_timestamp().saturating_add(self.ttl.as_secs());
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp: Some(exp),
        };
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        tracing::debug!(user = %username, revision, "created/assigned a new JWT token");
        Ok(token)
    }

    /// The caller a token names, if its signature, method and expiry hold (etcd's `info`).
    pub fn info(&self, token: &str) -> Option<AuthInfo> {
        let mut validation = Validation::new(self.algorithm);
        // golang-jwt: no leeway, and `exp` checked only when present.
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        match jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation) {
            Ok(data) => Some(AuthInfo {
                username: data.claims.username,
                revision: data.claims.revision,
            }),
            Err(e) => {
                // The token itself is never logged.
                tracing::warn!(error = %e, "failed to parse a JWT token");
                None
            }
        }
    }

    /// A client's token as the engine takes it: verified here, or refused.
    pub fn credential(&self, token: &str) -> Credential {
        self.info(token)
            .map_or(Credential::Invalid, Credential::Verified)
    }

    /// Both keys given: they must be one pair (etcd's `ErrKeyMismatch`).
    fn check_pair(&self) -> Result<(), TokenError> {
        if self.signing.is_none() {
            return Ok(());
        }
        let token = self.assign("", 1)?;
        match self.info(&token) {
            Some(_) => Ok(()),
            None => Err(TokenError::KeyMismatch),
        }
    }
}

type KeyPair = (Option<EncodingKey>, DecodingKey);

/// The signing key (if a private key is given) and the verifying key for `algorithm`.
fn keys(
    algorithm: Algorithm,
    public: Option<&[u8]>,
    private: Option<&[u8]>,
) -> Result<KeyPair, TokenError> {
    use Algorithm as A;
    match algorithm {
        A::HS256 | A::HS384 | A::HS512 => {
            let secret = private
                .filter(|k| !k.is_empty())
                .ok_or(TokenError::MissingKey)?;
            Ok((
                Some(EncodingKey::from_secret(secret)),
                DecodingKey::from_secret(secret),
            ))
        }
        A::ES256 | A::ES384 => ec_keys(algorithm, public, private),
        _ => rsa_keys(public, private),
    }
}

fn bad_key(which: &str, e: impl std::fmt::Display) -> TokenError {
    TokenError::Key(format!("{which}: {e}"))
}

fn rsa_keys(public: Option<&[u8]>, private: Option<&[u8]>) -> Result<KeyPair, TokenError> {
    let Some(private) = private else {
        let public = public.ok_or(TokenError::MissingKey)?;
        let verifying = DecodingKey::from_rsa_pem(public).map_err(|e| bad_key("pub-key", e))?;
        return Ok((None, verifying));
    };
    let signing = EncodingKey::from_rsa_pem(private).map_err(|e| bad_key("priv-key", e))?;
    let pem = pem::parse(private).map_err(|e| bad_key("priv-key", e))?;
    let pair = match pem.tag() {
        "RSA PRIVATE KEY" => ring::rsa::KeyPair::from_der(pem.contents()),
        _ => ring::rsa::KeyPair::from_pkcs8(pem.contents()),
    }
    .map_err(|e| bad_key("priv-key", e))?;
    let verifying = match public {
        Some(p) => DecodingKey::from_rsa_pem(p).map_err(|e| bad_key("pub-key", e))?,
        None => DecodingKey::from_rsa_der(ring::signature::KeyPair::public_key(&pair).as_ref()),
    };
    Ok((Some(signing), verifying))
}

fn ec_keys(
    algorithm: Algorithm,
    public: Option<&[u8]>,
    private: Option<&[u8]>,
) -> Result<KeyPair, TokenError> {
    let Some(private) = private else {
        let public = public.ok_or(TokenError::MissingKey)?;
        let verifying = DecodingKey::from_ec_pem(public).map_err(|e| bad_key("pub-key", e))?;
        return Ok((None, verifying));
    };
    let pem = pem::parse(private).map_err(|e| bad_key("priv-key", e))?;
    let (ring_alg, curve_oid): (_, &[u8]) = match algorithm {
        Algorithm::ES384 => (
            &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &[0x2b, 0x81, 0x04, 0x00, 0x22],
        ),
        _ => (
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        ),
    };
    let pkcs8 = match pem.tag() {
        "EC PRIVATE KEY" => sec1_to_pkcs8(pem.contents(), curve_oid),
        _ => pem.contents().to_vec(),
    };
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(ring_alg, &pkcs8, &rng)
        .map_err(|e| bad_key("priv-key", e))?;
    let verifying = match public {
        Some(p) => DecodingKey::from_ec_pem(p).map_err(|e| bad_key("pub-key", e))?,
        None => DecodingKey::from_ec_der(ring::signature::KeyPair::public_key(&pair).as_ref()),
    };
    Ok((Some(EncodingKey::from_ec_der(&pkcs8)), verifying))
}

/// A DER length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    der_len(content.len(), out);
    out.extend_from_slice(content);
}

/// An SEC1 `EC PRIVATE KEY` (openssl's default output) wrapped as PKCS#8 `PrivateKeyInfo`
/// for the named curve, which is what the crypto library reads.
fn sec1_to_pkcs8(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    // id-ecPublicKey, 1.2.840.10045.2.1.
    const EC_PUBLIC_KEY: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let mut alg = Vec::new();
    der(0x06, &EC_PUBLIC_KEY, &mut alg);
    der(0x06, curve_oid, &mut alg);
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    der(0x30, &alg, &mut body);
    der(0x04, sec1, &mut body);
    let mut out = Vec::new();
    der(0x30, &body, &mut out);
    out
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
