//! The JSON gateway against etcd 3.4.23's: the same HTTP/1.1 session against a real etcd and
//! a keel member (fresh single-member clusters on spare ports), every answer compared after
//! normalizing what differs between any two clusters (ids, terms, raft indexes, sizes,
//! hashes, ports).
//!
//! Each step says how its answers are compared ([`Check`]): byte for byte; status and gRPC
//! code only (malformed bodies, whose texts are Go's or serde's); keel alone, where keel
//! deliberately differs (an unknown field is refused, `/v3alpha/` is served, a body above the
//! gateway's cap is 413); and for services keel has not implemented yet (Auth, Lock,
//! Election, Maintenance Hash/Defragment/Snapshot) keel's answer must be a well-formed JSON
//! `Unimplemented` error, or, once implemented, etcd's answer.
//!
//! Also here: python3-etcd3gw (Debian's package of the OpenStack etcd3gw client, which
//! speaks only the JSON gateway) against keel, skipped with a reason when not installed.

mod common;
mod gateway_http;

use std::time::Duration;

use anyhow::Result;
use common::{keel_bin, require_python_module, run_python, Ports, Server, TempDir};
use gateway_http::diff::{
    error_code, is_unimplemented, same, step, unimplemented, wait_healthy, Check, Pair, Step,
};
use gateway_http::{declare_only, request, Answer, Streamed};

fn kv_steps() -> Vec<Step> {
    use Check::*;
    vec![
        same("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        same(
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
        ),
        same(
            "/v3/kv/put",
            r#"{"key":"Zm9vMg==","value":"MQ==","lease":"0"}"#,
        ),
        same("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        same(
            "/v3/kv/range",
            r#"{"key":"Zm9v","range_end":"Zm9w","sort_order":"DESCEND","sort_target":"KEY"}"#,
        ),
        same(
            "/v3/kv/range",
            r#"{"key":"Zm9v","rangeEnd":"Zm9w","countOnly":true}"#,
        ),
        same(
            "/v3/kv/range",
            r#"{"key":"Zm9v","range_end":"Zm9w","keys_only":true,"limit":"1"}"#,
        ),
        same("/v3beta/kv/range", r#"{"key":"Zm9v","serializable":true}"#),
        same("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#),
        same(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"VALUE","value":"YmF6"}],"success":[{"request_range":{"key":"Zm9v"}},{"request_put":{"key":"eA==","value":"eQ==","prev_kv":true}}],"failure":[{"request_delete_range":{"key":"Zm9v"}}]}"#,
        ),
        same(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"eA==","result":"NOT_EQUAL","target":"VERSION","version":"1"}],"failure":[{"requestDeleteRange":{"key":"eA==","prev_kv":true}}]}"#,
        ),
        same("/v3/kv/deleterange", r#"{"key":"Zm9vMg==","prev_kv":true}"#),
        same("/v3/kv/deleterange", r#"{"key":"bm9uZQ=="}"#),
        same("/v3/kv/compaction", r#"{"revision":"3","physical":true}"#),
        same("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
        same("/v3/kv/compaction", r#"{"revision":"1000"}"#),
        // Errors etcd finds before raft, with its texts and statuses.
        same("/v3/kv/put", r#"{"key":"","value":"YmFy"}"#),
        same("/v3/kv/put", r#"{"value":"YmFy"}"#),
        same("/v3/kv/range", ""),
        same(
            "/v3/kv/put",
            r#"{"key":"YQ==","value":"MQ==","lease":"77"}"#,
        ),
        same(
            "/v3/kv/txn",
            r#"{"success":[{"request_put":{"key":"YQ=="}},{"request_put":{"key":"YQ=="}}]}"#,
        ),
        // Malformed bodies: Go's and serde's texts differ, status and code do not.
        step("/v3/kv/range", r#"{"key":"#, SameCode),
        step("/v3/kv/range", r#"{"key":5}"#, SameCode),
        step("/v3/kv/range", r#"{"key":"Zm9v","limit":"x"}"#, SameCode),
        step(
            "/v3/kv/range",
            r#"{"key":"Zm9v","sort_order":"BAD"}"#,
            SameCode,
        ),
        step("/v3/kv/put", r#"{"key":"YQ==","value":["MQ=="]}"#, SameCode),
        // keel refuses an unknown field (etcd 3.4.23's gateway ignores it) and changes nothing.
        step(
            "/v3/kv/put",
            r#"{"key":"dW5rbm93bg==","valeu":"MQ=="}"#,
            KeelOnly(400, 3),
        ),
        same("/v3/kv/range", r#"{"key":"dW5rbm93bg=="}"#),
        // etcd 3.4.23 answers 404 under /v3alpha/; keel serves it as /v3/ (etcd 3.3 clients).
        step("/v3alpha/kv/range", r#"{"key":"#, KeelOnly(400, 3)),
    ]
}

fn lease_steps() -> Vec<Step> {
    // etcd rounds the remaining TTL down (59 right after a 60 s grant), keel does not yet:
    // issue 15's separate TTL item. The remaining TTL is masked here.
    let timetolive = step(
        "/v3/lease/timetolive",
        r#"{"ID":"4096","keys":true}"#,
        Check::SameMasking(&["TTL"]),
    );
    vec![
        same("/v3/lease/grant", r#"{"TTL":"60","ID":"4096"}"#),
        same("/v3/lease/grant", r#"{"TTL":60,"ID":"4097"}"#),
        same("/v3/lease/grant", r#"{"TTL":"60","ID":"4096"}"#),
        same(
            "/v3/kv/put",
            r#"{"key":"bGVhc2Vk","value":"MQ==","lease":"4096"}"#,
        ),
        same("/v3/lease/leases", "{}"),
        same("/v3/kv/lease/leases", "{}"),
        same("/v3/lease/keepalive", r#"{"ID":"4096"}"#),
        same("/v3/lease/keepalive", r#"{"ID":"99"}"#),
        same("/v3/lease/keepalive", ""),
        timetolive,
        same("/v3/lease/timetolive", r#"{"ID":"99"}"#),
        same("/v3/kv/lease/timetolive", r#"{"ID":"99"}"#),
        same("/v3/lease/grant", r#"{"TTL":"60","ID":"4098"}"#),
        same("/v3/lease/revoke", r#"{"ID":"4098"}"#),
        same("/v3/kv/lease/revoke", r#"{"ID":"4098"}"#),
        same("/v3/lease/revoke", r#"{"ID":"4096"}"#),
        same("/v3/kv/range", r#"{"key":"bGVhc2Vk"}"#),
    ]
}

fn cluster_and_maintenance_steps() -> Vec<Step> {
    let mut add = step(
        "/v3/cluster/member/add",
        r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#,
        Check::SameMembersAnyOrder,
    );
    add.capture = Some(("{MEMBER}", "/member/ID"));
    let mut status = same("/v3/maintenance/status", "{}");
    status.capture = Some(("{SELF}", "/header/member_id"));
    vec![
        same("/v3/cluster/member/list", "{}"),
        add,
        // (No update of the learner: etcd 3.4's update drops its isLearner flag.)
        step("/v3/cluster/member/list", "{}", Check::SameMembersAnyOrder),
        same("/v3/cluster/member/promote", r#"{"ID":{MEMBER}}"#),
        same("/v3/cluster/member/remove", r#"{"ID":{MEMBER}}"#),
        same("/v3/cluster/member/remove", r#"{"ID":"5"}"#),
        same(
            "/v3/cluster/member/update",
            r#"{"ID":"5","peerURLs":["http://127.0.0.1:3"]}"#,
        ),
        same("/v3/cluster/member/promote", r#"{"ID":"5"}"#),
        status,
        same("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
        same(
            "/v3/maintenance/alarm",
            r#"{"action":"DEACTIVATE","memberID":"1","alarm":"NOSPACE"}"#,
        ),
        same("/v3/maintenance/transfer-leadership", r#"{"targetID":"1"}"#),
        unimplemented("/v3/maintenance/hash", "{}"),
        unimplemented("/v3/maintenance/defragment", "{}"),
    ]
}

fn auth_lock_election_steps() -> Vec<Step> {
    let mut campaign = unimplemented(
        "/v3/election/campaign",
        r#"{"name":"ZWw=","lease":"4097","value":"djE="}"#,
    );
    campaign.capture = Some(("{LEADER}", "/leader"));
    vec![
        unimplemented("/v3/auth/user/list", "{}"),
        unimplemented("/v3/auth/role/list", "{}"),
        unimplemented("/v3/auth/user/get", r#"{"name":"nobody"}"#),
        unimplemented("/v3/auth/role/get", r#"{"role":"nobody"}"#),
        unimplemented("/v3/auth/authenticate", r#"{"name":"root","password":"x"}"#),
        unimplemented("/v3/auth/enable", "{}"),
        unimplemented("/v3/auth/disable", "{}"),
        unimplemented("/v3/auth/user/add", r#"{"name":"gw","password":"pw"}"#),
        unimplemented(
            "/v3/auth/user/changepw",
            r#"{"name":"gw","password":"pw2"}"#,
        ),
        unimplemented("/v3/auth/role/add", r#"{"name":"gwrole"}"#),
        unimplemented(
            "/v3/auth/role/grant",
            r#"{"name":"gwrole","perm":{"permType":"READWRITE","key":"YQ==","range_end":"Yg=="}}"#,
        ),
        unimplemented("/v3/auth/user/grant", r#"{"user":"gw","role":"gwrole"}"#),
        unimplemented("/v3/auth/user/revoke", r#"{"name":"gw","role":"gwrole"}"#),
        unimplemented(
            "/v3/auth/role/revoke",
            r#"{"role":"gwrole","key":"YQ==","range_end":"Yg=="}"#,
        ),
        unimplemented("/v3/auth/role/delete", r#"{"role":"gwrole"}"#),
        unimplemented("/v3/auth/user/delete", r#"{"name":"gw"}"#),
        unimplemented("/v3/lock/lock", r#"{"name":"bG9jaw==","lease":"4097"}"#),
        unimplemented("/v3/lock/unlock", r#"{"key":"bG9jay8xMDAx"}"#),
        unimplemented("/v3/election/leader", r#"{"name":"bm9uZQ=="}"#),
        campaign,
        unimplemented("/v3/election/leader", r#"{"name":"ZWw="}"#),
        unimplemented(
            "/v3/election/proclaim",
            r#"{"leader":{LEADER},"value":"djI="}"#,
        ),
        unimplemented("/v3/election/resign", r#"{"leader":{LEADER}}"#),
    ]
}

/// `/health` with an alarm raised (false, then true with `?exclude=NOSPACE`), and after.
fn health_with_alarm(pair: &mut Pair) -> Result<()> {
    let activate = r#"{"action":"ACTIVATE","memberID":{SELF},"alarm":"NOSPACE"}"#;
    let deactivate = r#"{"action":"DEACTIVATE","memberID":{SELF},"alarm":"NOSPACE"}"#;
    pair.run(&[same("/v3/maintenance/alarm", activate)])?;
    for path in [
        "/health",
        "/health?exclude=NOSPACE",
        "/health?exclude=CORRUPT",
    ] {
        let s = step(path, "GET", Check::Same);
        let etcd = request(pair.etcd.ports.client, "GET", path, b"")?;
        let keel = request(pair.keel.ports.client, "GET", path, b"")?;
        pair.compare(&s, &etcd, &keel);
    }
    pair.run(&[
        same("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
        same("/v3/kv/put", r#"{"key":"bm9zcGFjZQ==","value":"MQ=="}"#),
        same("/v3/maintenance/alarm", deactivate),
        same("/v3/kv/put", r#"{"key":"bm9zcGFjZQ==","value":"MQ=="}"#),
    ])?;
    let s = step("/health", "GET", Check::Same);
    let etcd = request(pair.etcd.ports.client, "GET", "/health", b"")?;
    let keel = request(pair.keel.ports.client, "GET", "/health", b"")?;
    pair.compare(&s, &etcd, &keel);
    Ok(())
}

/// Paths and methods that are not gateway calls, and oversized bodies.
fn http_steps(pair: &mut Pair) -> Result<()> {
    let (e, k) = (pair.etcd.ports.client, pair.keel.ports.client);
    let asks: [(&str, &str, Vec<u8>); 8] = [
        ("GET", "/version", vec![]),
        ("GET", "/health", vec![]),
        ("POST", "/health", vec![]),
        ("POST", "/version", vec![]),
        ("GET", "/v3/kv/range", vec![]),
        ("POST", "/v3/kv/nothing", b"{}".to_vec()),
        ("GET", "/nothing", vec![]),
        ("POST", "/v3/kv/put", big_put(1600 * 1024)),
    ];
    for (method, path, body) in asks {
        let s = step(path, method, Check::Same);
        let etcd = request(e, method, path, &body)?;
        let keel = request(k, method, path, &body)?;
        pair.compare(&s, &etcd, &keel);
    }
    // Above gRPC's receive limit: grpc-go's ResourceExhausted text, from both.
    let body = big_put(8 * 1024 * 1024);
    let s = step("/v3/kv/put", "8 MiB value", Check::Same);
    let etcd = request(e, "POST", "/v3/kv/put", &body)?;
    let keel = request(k, "POST", "/v3/kv/put", &body)?;
    pair.compare(&s, &etcd, &keel);
    // Above the gateway's own cap: keel refuses the body by its declared length, unread, 413.
    let keel = declare_only(k, "/v3/kv/put", 24 * 1024 * 1024)?;
    if keel.status != 413 || error_code(&keel) != Some(8) {
        pair.mismatches
            .push(format!("24 MiB body: keel answered {keel:?}"));
    }
    Ok(())
}

fn big_put(value_bytes: usize) -> Vec<u8> {
    let value = "eHh4".repeat(value_bytes / 3);
    format!(r#"{{"key":"Ymln","value":"{value}"}}"#).into_bytes()
}

/// A streamed watch on both: created, then the events of two puts and a delete.
fn watch_session(pair: &mut Pair) -> Result<()> {
    let create = r#"{"create_request":{"key":"dw==","range_end":"eA==","prev_kv":true}}"#;
    let mut etcd = Streamed::open(pair.etcd.ports.client, "/v3/watch", create)?;
    let mut keel = Streamed::open(pair.keel.ports.client, "/v3/watch", create)?;
    let writes = [
        same("/v3/kv/put", r#"{"key":"dzE=","value":"MQ=="}"#),
        same("/v3/kv/put", r#"{"key":"dzE=","value":"Mg=="}"#),
        same("/v3/kv/deleterange", r#"{"key":"dzE="}"#),
    ];
    let wait = Duration::from_secs(10);
    let first = (etcd.line(wait)?, keel.line(wait)?);
    pair.run(&writes)?;
    let mut lines = vec![first];
    for _ in 0..writes.len() {
        lines.push((etcd.line(wait)?, keel.line(wait)?));
    }
    let s = step("/v3/watch", create, Check::Same);
    pair.compare(
        &s,
        &answer(etcd.status, &etcd.content_type, &lines, 0),
        &answer(keel.status, &keel.content_type, &lines, 1),
    );
    // Several requests in one body: a create, then its cancel.
    let both = r#"{"create_request":{"key":"dw=="}}{"cancel_request":{"watch_id":"0"}}"#;
    let mut etcd = Streamed::open(pair.etcd.ports.client, "/v3/watch", both)?;
    let mut keel = Streamed::open(pair.keel.ports.client, "/v3/watch", both)?;
    let lines = vec![
        (etcd.line(wait)?, keel.line(wait)?),
        (etcd.line(wait)?, keel.line(wait)?),
    ];
    pair.compare(
        &step("/v3/watch", both, Check::Same),
        &answer(etcd.status, &etcd.content_type, &lines, 0),
        &answer(keel.status, &keel.content_type, &lines, 1),
    );
    Ok(())
}

fn answer(
    status: u16,
    content_type: &str,
    lines: &[(Option<String>, Option<String>)],
    which: usize,
) -> Answer {
    let body = lines
        .iter()
        .map(|l| if which == 0 { &l.0 } else { &l.1 })
        .map(|l| l.clone().unwrap_or_else(|| "<end>".into()))
        .collect::<Vec<_>>()
        .join("\n");
    Answer {
        status,
        content_type: content_type.to_string(),
        body,
    }
}

/// Streamed routes that answer at once, not compared byte for byte with etcd's (a backup's
/// bytes differ): a JSON Unimplemented error while keel lacks one, else a 200 stream of
/// `{"result":…}` lines. (`election/observe` waits for a leader on both servers, so it has
/// no first line to compare here; tests/lock_election.rs covers it.)
fn unimplemented_streams(pair: &mut Pair) -> Result<()> {
    let streamed: &[(&'static str, &str)] = &[("/v3/maintenance/snapshot", "{}")];
    for &(path, body) in streamed {
        let mut keel = Streamed::open(pair.keel.ports.client, path, body)?;
        let line = keel.line(Duration::from_secs(10))?.unwrap_or_default();
        let got = Answer {
            status: keel.status,
            content_type: keel.content_type.clone(),
            body: line,
        };
        if is_unimplemented(&got) {
            pair.unimplemented.push(path);
        } else if got.status != 200 || !got.body.starts_with(r#"{"result":"#) {
            pair.mismatches
                .push(format!("{path}: keel answered {got:?}"));
        }
    }
    Ok(())
}

#[test]
fn gateway_answers_as_etcds_does() -> Result<()> {
    let dir = TempDir::new("gateway-diff")?;
    let mut pair = Pair::start(&dir)?;
    pair.run(&kv_steps())?;
    watch_session(&mut pair)?;
    pair.run(&lease_steps())?;
    pair.run(&cluster_and_maintenance_steps())?;
    health_with_alarm(&mut pair)?;
    pair.run(&auth_lock_election_steps())?;
    unimplemented_streams(&mut pair)?;
    http_steps(&mut pair)?;
    pair.unimplemented.dedup();
    eprintln!(
        "routes keel answers Unimplemented (checked for etcd's JSON error shape only): {:?}",
        pair.unimplemented
    );
    assert!(
        pair.mismatches.is_empty(),
        "{} answers differ from etcd 3.4.23's:\n{}",
        pair.mismatches.len(),
        pair.mismatches.join("\n")
    );
    Ok(())
}

/// The python3-etcd3gw script: put, get, delete, a lease with a key on it, a watch.
const ETCD3GW_SCRIPT: &str = r#"
import sys, threading
from etcd3gw.client import Etcd3Client
c = Etcd3Client(host="127.0.0.1", port=int(sys.argv[1]))
assert c.put("gw/a", "1"), "put"
assert c.get("gw/a") == [b"1"] or c.get("gw/a") == ["1"], c.get("gw/a")
lease = c.lease(ttl=30)
assert c.put("gw/leased", "v", lease=lease), "leased put"
assert lease.ttl() > 0, "lease ttl"
assert lease.refresh() > 0, "keepalive"
keys = [k for k in lease.keys()]
assert len(keys) == 1, keys
events, cancel = c.watch("gw/w")
got = []
def reader():
    for e in events:
        got.append(e)
        if len(got) == 2:
            break
t = threading.Thread(target=reader, daemon=True); t.start()
import time; time.sleep(0.5)
c.put("gw/w", "x"); c.delete("gw/w")
t.join(10)
cancel()
assert len(got) == 2, got
assert got[0]["kv"]["value"] in (b"x", "x"), got
assert got[1].get("type") == "DELETE", got
assert c.delete("gw/a"), "delete"
assert c.get("gw/a") == [], "deleted"
assert lease.revoke(), "revoke"
assert c.get("gw/leased") == [], "revoked with its lease"
print("etcd3gw ok")
"#;

#[test]
fn python_etcd3gw_works_against_keel() -> Result<()> {
    require_python_module("etcd3gw", "python3-etcd3gw")?;
    let dir = TempDir::new("gateway-etcd3gw")?;
    let keel = Server::start_etcd_style(
        "keel",
        &keel_bin(),
        "default",
        &dir.path().join("keel"),
        Ports::pick(),
        &[],
    )?;
    wait_healthy(keel.ports.client)?;
    let out = run_python(ETCD3GW_SCRIPT, &[keel.ports.client.to_string()])?;
    assert!(
        out.contains("etcd3gw ok"),
        "etcd3gw script did not finish: {out}"
    );
    Ok(())
}

/// A member of a two-member cluster whose other member never starts has no leader: keel's
/// `/health` answers 503 `{"health":"false"}` as etcd 3.4's health check does without a
/// leader. (Not compared with a live etcd: etcd 3.4 serves nothing on its client port before
/// it has published itself through a leader, so the request would hang.)
#[test]
fn health_is_false_without_a_leader() -> Result<()> {
    let dir = TempDir::new("gateway-health")?;
    let ports = Ports::pick();
    let data_dir = dir.path().join("keel");
    let mut args = common::etcd_flags("default", &data_dir, ports);
    for arg in args.iter_mut() {
        if arg.starts_with("--initial-cluster=") {
            *arg = format!(
                "--initial-cluster=default={},ghost=http://127.0.0.1:{}",
                ports.peer_url(),
                common::free_port()
            );
        }
    }
    let log = data_dir.with_extension("log");
    let keel = Server::start("keel", &keel_bin(), &args, ports, &log)?;
    let answer = request(keel.ports.client, "GET", "/health", b"")?;
    assert_eq!(
        answer,
        Answer {
            status: 503,
            content_type: "text/plain; charset=utf-8".into(),
            body: "{\"health\":\"false\"}\n".into(),
        },
        "keel without a leader"
    );
    Ok(())
}
