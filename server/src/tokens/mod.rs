//! The member's kind of auth token (`--auth-token`, etcd's syntax: `simple`, or
//! `jwt,opt=value,…`), below the client layer: the driver's handle verifies JWTs.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_engine::auth::Credential;

pub mod jwt;
mod syntax;

use jwt::JwtTokens;
pub use syntax::{parse_go_duration, TokenError};

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
