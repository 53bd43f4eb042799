//! `--auth-token` parsing and JWT signing/verification (RSA and EC keys are covered by
//! tests/auth_jwt.rs with openssl-made keys).

use super::*;
use crate::tokens::Tokens;

/// A scratch file removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str, content: &[u8]) -> Scratch {
        let path = std::env::temp_dir().join(format!("keel-jwt-{}-{name}", std::process::id()));
        std::fs::write(&path, content).expect("write a scratch key");
        Scratch(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn jwt(flag: &str) -> Arc<JwtTokens> {
    match Tokens::parse(flag) {
        Ok(Tokens::Jwt(j)) => j,
        other => panic!("{flag}: expected JWT tokens, got {other:?}"),
    }
}

use std::sync::Arc;

#[test]
fn flags_are_refused_with_etcds_texts() {
    let key = Scratch::new("flags", b"secret");
    let cases = [
        ("bogus", "auth: invalid auth options"),
        ("jwt,sign-method", "auth: invalid auth options"),
        (
            "jwt,sign-method=HS256,sign-method=HS256",
            "auth: invalid auth options",
        ),
        ("jwt,sign-method=XX", "auth: invalid auth options"),
        (
            "jwt,pub-key=/nonexistent,sign-method=RS256",
            "auth: invalid auth options",
        ),
        ("jwt,sign-method=HS256", "auth: missing key data"),
        ("jwt,sign-method=RS256", "auth: missing key data"),
        ("jwt,sign-method=none", "unsupported signing method: none"),
    ];
    for (flag, text) in cases {
        let err = Tokens::parse(flag).expect_err(flag);
        assert_eq!(err.to_string(), text, "{flag}");
    }
    let ttl = format!("jwt,sign-method=HS256,priv-key={},ttl=xx", key.path());
    assert_eq!(
        Tokens::parse(&ttl).expect_err("bad ttl").to_string(),
        "auth: invalid auth options"
    );
    assert!(matches!(Tokens::parse("simple"), Ok(Tokens::Simple)));
}

#[test]
fn go_durations_parse() {
    let d = parse_go_duration;
    assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(d("300ms"), Ok(Duration::from_millis(300)));
    assert_eq!(d("0"), Ok(Duration::ZERO));
    assert_eq!(d("xx"), Err("time: invalid duration \"xx\"".to_string()));
    assert!(d("5").is_err(), "a number needs a unit");
    assert!(d("5d").is_err(), "no days in Go");
    assert!(d("").is_err(), "empty");
}

#[test]
fn a_signed_token_names_its_user_and_revision() {
    let key = Scratch::new("hs", b"a shared secret");
    let j = jwt(&format!(
        "jwt,sign-method=HS256,priv-key={},ttl=1m",
        key.path()
    ));
    let token = j.assign("alice", 7).expect("sign");
    assert_eq!(
        j.info(&token),
        Some(AuthInfo {
            username: "alice".into(),
            revision: 7
        })
    );
    // Another member with the same key accepts it; one with another key does not.
    let j2 = jwt(&format!("jwt,sign-method=HS256,priv-key={}", key.path()));
    assert!(j2.info(&token).is_some(), "same key, another member");
    let other = Scratch::new("hs2", b"another secret");
    let j3 = jwt(&format!("jwt,sign-method=HS256,priv-key={}", other.path()));
    assert_eq!(j3.info(&token), None, "another key");
    assert_eq!(j3.credential(&token), Credential::Invalid);
    // Another method with the same secret is refused (etcd checks the method).
    let j4 = jwt(&format!("jwt,sign-method=HS512,priv-key={}", key.path()));
    assert_eq!(j4.info(&token), None, "another method");
    assert_eq!(j.info("not.a.jwt"), None, "garbage");
}

#[test]
fn an_expired_token_is_refused() {
    let key = Scratch::new("exp", b"secret");
    let j = jwt(&format!("jwt,sign-method=HS256,priv-key={}", key.path()));
    let past = jsonwebtoken::get_current_timestamp() - 2;
    let claims = Claims {
        username: "u".into(),
        revision: 1,
        exp: Some(past),
    };
    let enc = EncodingKey::from_secret(b"secret");
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &enc)
        .expect("sign an expired token");
    assert_eq!(j.info(&token), None, "expired two seconds ago, no leeway");
}

#[test]
fn sec1_wraps_as_pkcs8() {
    let mut out = Vec::new();
    der_len(0x7f, &mut out);
    der_len(0x80, &mut out);
    der_len(0x1234, &mut out);
    assert_eq!(out, vec![0x7f, 0x81, 0x80, 0x82, 0x12, 0x34], "DER lengths");
    let p = sec1_to_pkcs8(&[1, 2, 3], &[0x2b, 0x81, 0x04, 0x00, 0x22]);
    assert_eq!(p[0], 0x30, "a SEQUENCE");
    assert_eq!(p[1] as usize, p.len() - 2, "its length");
    assert_eq!(
        &p[p.len() - 5..],
        &[0x04, 3, 1, 2, 3],
        "the key as an OCTET STRING"
    );
}
