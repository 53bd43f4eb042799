//! The auth token a client sends with its requests, and the member's kind of token
//! (`--auth-token`, etcd's syntax: `simple`, or `jwt,opt=value,…`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::auth::Credential;
use tonic::Request as GrpcRequest;

use super::jwt::JwtTokens;

/// The auth token a client sent: gRPC metadata `token` (etcd's clients), or
/// `authorization` (etcd's gateway). Without one, a connection whose verified client
/// certificate names a user (`--client-cert-auth`, [`crate::tls`]) acts as that user, as in
/// etcd; a token, when sent, wins.
pub(crate) fn auth_token<T>(request: &GrpcRequest<T>) -> Option<String> {
    let md = request.metadata();
    let Some(value) = md.get("token").or_else(|| md.get("authorization")) else {
        return common_name(request);
    };
    // A token that is not ASCII can name no one: it is passed on to be refused as invalid.
    Some(value.to_str().unwrap_or("\u{fffd}").to_string())
}

/// What is wrong with `--auth-token` or a token operation, in etcd's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A malformed option list, an unknown type or signing method, a key file that cannot
    /// be read, or a bad `ttl` (the detail is logged, as etcd does).
    #[error("auth: invalid auth options")]
    InvalidOptions,
    /// No key for the signing method.
    #[error("auth: missing key data")]
    MissingKey,
    /// `pub-key` and `priv-key` are not one pair.
    #[error("auth: public and private keys don't match")]
    KeyMismatch,
    /// Authenticate on a member given only a public key.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// A signing method golang-jwt knows that keel (or etcd 3.4) cannot use.
    #[error("unsupported signing method: {0}")]
    Unsupported(String),
    /// A key file that does not parse.
    #[error("failed to parse {0}")]
    Key(String),
    /// Signing failed.
    #[error("failed to sign a JWT token: {0}")]
    Sign(String),
}

/// The member's kind of auth token.
#[derive(Clone, Debug, Default)]
pub enum Tokens {
    /// etcd's simple tokens: opaque, assigned through raft, known to each member that
    /// applied the login (the engine holds them).
    #[default]
    Simple,
    /// Signed JWTs, checked by any member with the key.
    Jwt(Arc<JwtTokens>),
}

impl Tokens {
    /// Parses `--auth-token` (etcd's `NewTokenProvider`).
    pub fn parse(flag: &str) -> Result<Tokens, TokenError> {
        let (kind, options) = decompose(flag)?;
        match kind {
            "simple" => {
                tracing::warn!("simple token is not cryptographically signed");
                Ok(Tokens::Simple)
            }
            "jwt" => Ok(Tokens::Jwt(Arc::new(JwtTokens::from_options(&options)?))),
            other => {
                tracing::error!(r#type = other, "unknown token type");
                Err(TokenError::InvalidOptions)
            }
        }
    }

    /// A client's token as the engine takes it: a simple token is resolved by the engine; a
    /// JWT is verified here (one that fails is refused as `invalid auth token`).
    pub fn credential(&self, token: String) -> Credential {
        if token.starts_with(keel_engine::auth::COMMON_NAME_CALLER) {
            // A verified client certificate's user (`--client-cert-auth`): whatever the kind
            // of token, the engine names the caller from it.
            return Credential::Token(token);
        }
        match self {
            Tokens::Simple => Credential::Token(token),
            Tokens::Jwt(jwt) => jwt.credential(&token),
        }
    }
}

/// etcd's `decomposeOpts`: the type, then `key=value` pairs, each key once.
fn decompose(flag: &str) -> Result<(&str, BTreeMap<String, String>), TokenError> {
    let mut parts = flag.split(',');
    let kind = parts.next().unwrap_or("");
    let mut options = BTreeMap::new();
    for part in parts {
        let pair: Vec<&str> = part.split('=').collect();
        let [key, value] = pair[..] else {
            tracing::error!(option = part, "invalid token specific option");
            return Err(TokenError::InvalidOptions);
        };
        if options.insert(key.to_string(), value.to_string()).is_some() {
            tracing::error!(duplicate = key, "invalid token specific option, duplicated");
            return Err(TokenError::InvalidOptions);
        }
    }
    Ok((kind, options))
}

/// A Go duration (`time.ParseDuration`): `5m`, `1h30m`, `1.5s`, `300ms`…
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {text:?}"))?;
        let value: f64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            unit => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        total += value * nanos;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total as u64))
}

/// The caller named by the connection's verified client certificate, if any.
#[cfg(not(madsim))]
fn common_name<T>(request: &GrpcRequest<T>) -> Option<String> {
    let info = request.extensions().get::<crate::tls::stream::ConnInfo>()?;
    let name = info.common_name.as_deref()?;
    Some(keel_engine::auth::common_name_caller(name))
}

#[cfg(madsim)]
fn common_name<T>(_request: &GrpcRequest<T>) -> Option<String> {
    None
}
