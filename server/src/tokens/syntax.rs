//! What `--auth-token`'s options are made of, and what is wrong with them: a leaf module
//! shared by the token kinds.

use std::time::Duration;

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
