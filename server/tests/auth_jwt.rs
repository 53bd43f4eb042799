//! JWT auth tokens (`--auth-token jwt,…`), real processes with openssl-made keys:
//! * a 3-member keel cluster: a token issued by one member is accepted by the others, a
//!   member given only the public key verifies but cannot sign, an expired token and a token
//!   older than the auth store's last change are refused;
//! * the same etcdctl session and the same hand-made tokens against etcd 3.4.23 and keel,
//!   started with the same flag and keys: identical outcomes;
//! * a bad flag stops both at start with etcd's text.
#![cfg(not(madsim))]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{keel_bin, require_on_path, Ports, Server, TempDir};
use keel_proto::etcdserverpb::auth_client::AuthClient;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest};

/// RSA and EC key pairs made by the openssl CLI, as an operator would.
fn make_keys(dir: &Path) -> Result<()> {
    let run = |args: &str| -> Result<()> {
        let st = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .context("run openssl")?;
        ensure!(st.status.success(), "openssl {args}: {st:?}");
        Ok(())
    };
    run("genrsa -out rsa.key 2048")?;
    run("rsa -in rsa.key -pubout -out rsa.pub")?;
    run("ecparam -genkey -name prime256v1 -noout -out ec.key")?;
    run("ec -in ec.key -pubout -out ec.pub")?;
    run("genrsa -out other.key 2048")?;
    Ok(())
}

fn flag(dir: &Path, method: &str, pub_key: Option<&str>, priv_key: Option<&str>) -> String {
    let mut f = format!("--auth-token=jwt,sign-method={method}");
    if let Some(p) = pub_key {
        f += &format!(",pub-key={}", dir.join(p).display());
    }
    if let Some(p) = priv_key {
        f += &format!(",priv-key={}", dir.join(p).display());
    }
    f + ",ttl=5m"
}

fn etcdctl(endpoint: &str, args: &str) -> Result<String> {
    let out = Command::new(require_on_path("etcdctl")?)
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args.split_whitespace())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // clientv3's retry warnings carry times and ports: only the outcome is compared.
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('{')).collect();
    Ok(lines.join("\n").trim().to_string())
}

async fn login(endpoint: &str, name: &str, password: &str) -> Result<String, tonic::Status> {
    let mut auth = AuthClient::connect(format!("http://{endpoint}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    Ok(auth.authenticate(r).await?.into_inner().token)
}

/// A put with `token`: "ok" or the gRPC code and message.
async fn put_with(endpoint: &str, token: &str, key: &str) -> Result<String> {
    let mut kv = KvClient::connect(format!("http://{endpoint}")).await?;
    let mut req = tonic::Request::new(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: "v".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("token", token.to_string().parse()?);
    Ok(match kv.put(req).await {
        Ok(_) => "ok".to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    })
}

/// A range with `token`, as [`put_with`].
async fn get_with(endpoint: &str, token: &str, key: &str) -> Result<String> {
    let mut kv = KvClient::connect(format!("http://{endpoint}")).await?;
    let mut req = tonic::Request::new(RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("token", token.to_string().parse()?);
    Ok(match kv.range(req).await {
        Ok(r) => format!("ok, {} kvs", r.into_inner().kvs.len()),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    })
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    username: &'a str,
    revision: u64,
    exp: u64,
}

/// A token made here with the cluster's private key: what a member would sign.
fn forge(dir: &Path, key: &str, username: &str, revision: u64, exp: u64) -> Result<String> {
    let pem = std::fs::read(dir.join(key))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?;
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let claims = Claims {
        username,
        revision,
        exp,
    };
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// The claims of a token, decoded without checking (what a client could read).
fn claims(token: &str) -> Result<serde_json::Value> {
    use std::io::Read as _;
    let payload = token.split('.').nth(1).context("a JWT has three parts")?;
    // base64url without padding, decoded by hand to keep the test's dependencies small.
    let mut b64 = payload.replace('-', "+").replace('_', "/");
    while b64.len() % 4 != 0 {
        b64.push('=');
    }
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(b64.as_bytes())?;
    }
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_end(&mut out)?;
    child.wait()?;
    Ok(serde_json::from_slice(&out)?)
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Sets up root, a role `rw` with readwrite on `a/`, `alice` holding it and `bob` holding
/// nothing, then enables auth, through etcdctl on `ep`.
fn setup_users(ep: &str) -> Result<()> {
    for step in [
        "user add root:rootpw",
        "user grant-role root root",
        "role add rw",
        "role grant-permission rw readwrite --prefix=true a/",
        "user add alice:alicepw",
        "user grant-role alice rw",
        "user add bob:bobpw",
        "auth enable",
    ] {
        let out = etcdctl(ep, step)?;
        ensure!(!out.starts_with("Error"), "{step}: {out}");
    }
    Ok(())
}

/// Waits until `ep` answers a serializable read.
fn wait_serving(ep: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !etcdctl(ep, "endpoint health")?.contains("is healthy") {
        ensure!(std::time::Instant::now() < deadline, "{ep} never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_cross_members_and_expire() -> Result<()> {
    let dir = TempDir::new("auth-jwt-cluster")?;
    make_keys(dir.path())?;
    let ports: Vec<Ports> = (0..3).map(|_| Ports::pick()).collect();
    let cluster = (0..3)
        .map(|i| format!("m{i}={}", ports[i].peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let d = dir.path();
    let tokens = [
        flag(d, "RS256", Some("rsa.pub"), Some("rsa.key")),
        flag(d, "RS256", None, Some("rsa.key")),
        // Verify-only: a public key alone.
        flag(d, "RS256", Some("rsa.pub"), None),
    ];
    let mut servers = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let args = vec![
            format!("--name=m{i}"),
            format!("--data-dir={}", d.join(format!("m{i}")).display()),
            format!("--listen-client-urls={}", p.client_url()),
            format!("--advertise-client-urls={}", p.client_url()),
            format!("--listen-peer-urls={}", p.peer_url()),
            format!("--initial-advertise-peer-urls={}", p.peer_url()),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-state=new".to_string(),
            "--bcrypt-cost=4".to_string(),
            tokens[i].clone(),
        ];
        let log = d.join(format!("m{i}.log"));
        servers.push(Server::spawn(
            &format!("m{i}"),
            &keel_bin(),
            &args,
            *p,
            &log,
        )?);
    }
    let servers: Vec<Server> = servers
        .into_iter()
        .map(|s| s.wait_ready(common::START_TIMEOUT))
        .collect::<Result<_>>()?;
    let ep: Vec<String> = servers.iter().map(Server::endpoint).collect();
    wait_serving(&ep[0])?;
    setup_users(&ep[0])?;

    // Issued by m0, good on m1 and m2 (m2 holds only the public key).
    let token = login(&ep[0], "alice", "alicepw").await?;
    let c = claims(&token)?;
    assert_eq!(c["username"], "alice", "etcd's claims: {c}");
    let revision = c["revision"].as_u64().context("a numeric revision")?;
    let exp = c["exp"].as_u64().context("a numeric exp")?;
    assert!(
        exp > now_secs() + 250 && exp <= now_secs() + 300,
        "exp is ttl (5m) from now: {c}"
    );
    for e in &ep {
        assert_eq!(put_with(e, &token, "a/1").await?, "ok", "on {e}");
        assert_eq!(
            put_with(e, &token, "b/1").await?,
            "PermissionDenied: etcdserver: permission denied",
            "outside alice's keys, on {e}"
        );
    }
    let from_m1 = login(&ep[1], "alice", "alicepw").await?;
    assert_eq!(put_with(&ep[2], &from_m1, "a/2").await?, "ok", "m1's token");
    let verify_only = login(&ep[2], "alice", "alicepw")
        .await
        .expect_err("verify-only");
    assert_eq!(
        verify_only.message(),
        "auth: token signing attempted with verify-only key"
    );

    // Expired (signed with the cluster's key a second ago), and signed with another key.
    let expired = forge(d, "rsa.key", "alice", revision, now_secs() - 1)?;
    let foreign = forge(d, "other.key", "alice", revision, now_secs() + 60)?;
    let fresh = forge(d, "rsa.key", "alice", revision, now_secs() + 60)?;
    for e in &ep {
        for t in [&expired, &foreign] {
            assert_eq!(
                get_with(e, t, "a/1").await?,
                "Unauthenticated: etcdserver: invalid auth token",
                "on {e}"
            );
        }
        assert_eq!(get_with(e, &fresh, "a/1").await?, "ok, 1 kvs", "on {e}");
    }

    // The auth store changes: tokens from before are stale on every member.
    let out = etcdctl(&ep[1], "--user root:rootpw role add other")?;
    ensure!(out.contains("created"), "role add: {out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for e in &ep {
        assert_eq!(
            put_with(e, &token, "a/1").await?,
            "InvalidArgument: etcdserver: revision of auth store is old",
            "on {e}"
        );
    }
    // A new login works; once alice is deleted, her token is refused.
    let token = login(&ep[1], "alice", "alicepw").await?;
    assert_eq!(put_with(&ep[0], &token, "a/3").await?, "ok");
    let out = etcdctl(&ep[0], "--user root:rootpw user delete alice")?;
    ensure!(out.contains("deleted"), "user delete: {out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for e in &ep {
        let refused = put_with(e, &token, "a/1").await?;
        assert_eq!(
            refused, "InvalidArgument: etcdserver: revision of auth store is old",
            "a deleted user's token, on {e}"
        );
    }
    let gone = login(&ep[0], "alice", "alicepw")
        .await
        .expect_err("deleted");
    assert_eq!(
        gone.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    Ok(())
}

/// The session's outcomes on one server started with `token_flag`, a line each.
async fn session(label: &str, program: &Path, dir: &Path, token_flag: &str) -> Result<Vec<String>> {
    let server = Server::start_etcd_style(
        label,
        program,
        "default",
        &dir.join(format!("{label}.data")),
        Ports::pick(),
        &[token_flag.to_string()],
    )?;
    let ep = server.endpoint();
    wait_serving(&ep)?;
    setup_users(&ep)?;
    let mut out = Vec::new();
    for step in [
        "--user alice:alicepw put a/1 v",
        "--user alice:alicepw get a/1 --print-value-only",
        "--user alice:alicepw put b/1 v",
        "--user alice:alicepw get b/1",
        "--user bob:bobpw get a/1",
        "--user alice:wrong get a/1",
        "--user nobody:pw get a/1",
        "--user root:rootpw user list",
        "--user alice:alicepw user list",
        "--user alice:alicepw user get alice",
        "--user alice:alicepw role get rw",
        "--user root:rootpw role revoke-permission rw --prefix=true a/",
        "--user alice:alicepw put a/2 v",
        "get a/1",
        "--user root:rootpw auth disable",
        "get a/1 --print-value-only",
    ] {
        let answer = etcdctl(&ep, step)?;
        // The auth revision differs by how each counts setup steps; mask it.
        let answer = match answer.find("AuthRevision:") {
            Some(at) => format!("{}AuthRevision:<n>", &answer[..at]),
            None => answer,
        };
        out.push(format!("{step} => {answer}"));
    }
    // Hand-made tokens with the shared key: expired, foreign, a missing user, an auth
    // revision older than the store's.
    setup_again(&ep)?;
    let rev = 1000;
    for (what, token) in [
        (
            "expired",
            forge(dir, "rsa.key", "alice", rev, now_secs() - 1)?,
        ),
        (
            "foreign",
            forge(dir, "other.key", "alice", rev, now_secs() + 60)?,
        ),
        (
            "nobody",
            forge(dir, "rsa.key", "nobody", rev, now_secs() + 60)?,
        ),
        ("stale", forge(dir, "rsa.key", "alice", 1, now_secs() + 60)?),
        ("garbage", "abc.def.ghi".to_string()),
    ] {
        out.push(format!("{what} => {}", get_with(&ep, &token, "a/1").await?));
    }
    Ok(out)
}

/// Auth on again (root exists), after the session disabled it.
fn setup_again(ep: &str) -> Result<()> {
    let out = etcdctl(ep, "auth enable")?;
    if !out.contains("Authentication Enabled") {
        bail!("auth enable: {out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn same_session_as_etcd_with_jwt() -> Result<()> {
    let etcd = require_on_path("etcd")?;
    let dir = TempDir::new("auth-jwt-diff")?;
    make_keys(dir.path())?;
    for (method, public, private) in [
        ("RS256", "rsa.pub", "rsa.key"),
        ("ES256", "ec.pub", "ec.key"),
    ] {
        let f = flag(dir.path(), method, Some(public), Some(private));
        let theirs = session(&format!("etcd-{method}"), &etcd, dir.path(), &f).await?;
        let ours = session(&format!("keel-{method}"), &keel_bin(), dir.path(), &f).await?;
        for (a, b) in theirs.iter().zip(&ours) {
            assert_eq!(a, b, "{method}: etcd (left) and keel (right) differ");
        }
        assert_eq!(theirs.len(), ours.len(), "{method}");
        eprintln!("{method}:\n{}", ours.join("\n"));
    }
    Ok(())
}

/// What a process printed before exiting at start.
fn start_failure(program: &Path, dir: &Path, token_flag: &str) -> Result<String> {
    let p = Ports::pick();
    let out = Command::new(program)
        .arg(format!("--data-dir={}", dir.join("bad.data").display()))
        .arg(format!("--listen-client-urls={}", p.client_url()))
        .arg(format!("--advertise-client-urls={}", p.client_url()))
        .arg(format!("--listen-peer-urls={}", p.peer_url()))
        .arg(token_flag)
        .output()?;
    ensure!(!out.status.success(), "{token_flag} started");
    let _ = std::fs::remove_dir_all(dir.join("bad.data"));
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_stop_the_start_as_etcd() -> Result<()> {
    let etcd = require_on_path("etcd")?;
    let dir = TempDir::new("auth-jwt-flags")?;
    make_keys(dir.path())?;
    let d = dir.path();
    let cases = [
        (
            "--auth-token=bogus".to_string(),
            "auth: invalid auth options",
        ),
        (
            "--auth-token=jwt,sign-method".to_string(),
            "auth: invalid auth options",
        ),
        (
            flag(d, "XX256", None, Some("rsa.key")),
            "auth: invalid auth options",
        ),
        (
            flag(d, "RS256", None, Some("missing.key")),
            "auth: invalid auth options",
        ),
        (flag(d, "RS256", None, None), "auth: missing key data"),
        (flag(d, "HS256", None, None), "auth: missing key data"),
        (
            format!(
                "--auth-token=jwt,sign-method=RS256,priv-key={},ttl=xx",
                d.join("rsa.key").display()
            ),
            "auth: invalid auth options",
        ),
    ];
    for (f, text) in cases {
        let theirs = start_failure(&etcd, d, &f)?;
        let ours = start_failure(&keel_bin(), d, &f)?;
        assert!(theirs.contains(text), "etcd, {f}: {theirs}");
        assert!(ours.contains(text), "keel, {f}: {ours}");
    }
    Ok(())
}
