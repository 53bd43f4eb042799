//! No password, token or password hash appears in keel's log, even at debug level, over a
//! whole auth session: users added, a password changed, logins (right and wrong), requests
//! with a token, auth enabled and disabled.
// Real processes on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{keel_bin, require_on_path, Ports, Server, TempDir};
use keel_proto::etcdserverpb::auth_client::AuthClient;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{AuthenticateRequest, RangeRequest};

const SECRETS: [&str; 4] = [
    "R00tPassw0rdXyz",
    "Al1cePassw0rdXyz",
    "Al1ceNewPassw0rd",
    "Wr0ngPassw0rdXyz",
];

fn etcdctl(etcdctl: &Path, endpoint: &str, args: &str, stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(etcdctl);
    cmd.arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args.split_whitespace());
    let out = match stdin {
        None => cmd.output()?,
        Some(input) => {
            use std::io::Write as _;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
            child.wait_with_output()?
        }
    };
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_token_or_hash_is_logged_at_debug_level() -> Result<()> {
    let ctl = require_on_path("etcdctl")?;
    let dir = TempDir::new("auth-log")?;
    let ports = Ports::pick();
    let data = dir.path().join("keel.data");
    let extra = ["--log-level=debug".to_string()];
    let server = Server::start_etcd_style("keel", &keel_bin(), "default", &data, ports, &extra)?
        .wait_ready(Duration::from_secs(20))?;
    let ep = server.endpoint();
    let [root_pw, alice_pw, alice_new, wrong] = SECRETS;
    let root = format!("--user root:{root_pw}");
    let steps = [
        format!("user add root:{root_pw}"),
        "auth enable".to_string(),
        format!("{root} user add alice:{alice_pw}"),
        format!("{root} role add r"),
        format!("{root} role grant-permission r readwrite k"),
        format!("{root} user grant-role alice r"),
        format!("--user alice:{alice_pw} put k v"),
        format!("--user alice:{wrong} get k"),
    ];
    for step in &steps {
        let out = etcdctl(&ctl, &ep, step, None)?;
        for secret in SECRETS {
            assert!(!out.contains(secret), "etcdctl echoed a password: {out}");
        }
    }
    let passwd = format!("{root} user passwd alice --interactive=false");
    etcdctl(&ctl, &ep, &passwd, Some(&format!("{alice_new}\n")))?;

    // A token, to look for in the log.
    let url = format!("http://{ep}");
    let mut auth = AuthClient::connect(url.clone()).await?;
    let login = AuthenticateRequest {
        name: "alice".into(),
        password: alice_new.into(),
    };
    let token = auth.authenticate(login).await?.into_inner().token;
    assert!(token.len() > 16, "a simple token: {token:?}");
    let mut kv = KvClient::connect(url).await?;
    let mut get = tonic::Request::new(RangeRequest {
        key: "k".into(),
        ..Default::default()
    });
    get.metadata_mut().insert("token", token.parse()?);
    kv.range(get).await?;
    let mut bogus = tonic::Request::new(RangeRequest {
        key: "k".into(),
        ..Default::default()
    });
    bogus
        .metadata_mut()
        .insert("token", "NotARealTokenXyz.7".parse()?);
    let refused = kv.range(bogus).await.expect_err("an unknown token");
    assert_eq!(refused.message(), "etcdserver: invalid auth token");
    etcdctl(&ctl, &ep, &format!("{root} auth disable"), None)?;

    let log = std::fs::read_to_string(server.log_path())?;
    assert!(log.contains("DEBUG"), "the log is at debug level");
    for secret in SECRETS
        .iter()
        .copied()
        .chain([token.as_str(), "NotARealTokenXyz"])
    {
        assert!(!log.contains(secret), "the log holds a secret: {secret:?}");
    }
    let prefix = token.split('.').next().unwrap_or_default();
    assert!(!log.contains(prefix), "the log holds a token's random part");
    assert!(!log.contains("$2b$"), "the log holds a bcrypt hash");
    drop(server);
    Ok(())
}
