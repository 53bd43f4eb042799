//! The differential harness: how a step's answers from etcd and keel are compared, and the
//! pair of servers a session runs against.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{post, request, Answer};
use crate::common::{keel_bin, require_on_path, Ports, Server, TempDir};

/// How a step's answers are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Status, content type and normalized body identical.
    Same,
    /// As `Same`, with these fields' values masked too.
    SameMasking(&'static [&'static str]),
    /// As `Same`, but the `members` list in any order (etcd sorts by member id; ids are
    /// random, so two clusters' lists need not be in the same order).
    SameMembersAnyOrder,
    /// Status identical, and both bodies JSON errors with the same `code`.
    SameCode,
    /// keel answers a well-formed JSON Unimplemented error (501, code 12); or, if it does not
    /// (the service has been implemented since), the same as etcd.
    UnimplementedOrSame,
    /// Only keel is asked; it must answer this status with a JSON error of this gRPC code.
    KeelOnly(u16, i32),
}

/// One request of the session.
pub struct Step {
    pub path: &'static str,
    pub body: String,
    pub check: Check,
    /// Stores this JSON pointer of the answer under this placeholder, for later bodies.
    pub capture: Option<(&'static str, &'static str)>,
}

pub fn step(path: &'static str, body: &str, check: Check) -> Step {
    Step {
        path,
        body: body.to_string(),
        check,
        capture: None,
    }
}

pub fn same(path: &'static str, body: &str) -> Step {
    step(path, body, Check::Same)
}

pub fn unimplemented(path: &'static str, body: &str) -> Step {
    step(path, body, Check::UnimplementedOrSame)
}

/// Fields whose values differ between any two clusters, replaced by their name.
pub const VOLATILE: &[&str] = &[
    "cluster_id",
    "member_id",
    "raft_term",
    "leader",
    "raftIndex",
    "raftTerm",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
    "hash",
    "ID",
    "memberID",
];

/// `"name":"123"` and `"name":123` become `"name":"<name>"` for every [`VOLATILE`] name, and
/// this server's ports become `CLIENT` and `PEER`.
pub fn normalize(text: &str, ports: Ports) -> String {
    let mut out = text
        .replace(&format!("127.0.0.1:{}", ports.client), "127.0.0.1:CLIENT")
        .replace(&format!("127.0.0.1:{}", ports.peer), "127.0.0.1:PEER");
    for name in VOLATILE {
        out = mask_field(&out, name);
    }
    out
}

pub fn mask_field(text: &str, name: &str) -> String {
    let key = format!("\"{name}\":");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&key) {
        let value_start = at + key.len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let quoted = value.starts_with('"');
        let digits_from = usize::from(quoted);
        let digits = value[digits_from..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let end = digits_from + digits + usize::from(quoted);
        if digits > 0 && (!quoted || value[digits_from + digits..].starts_with('"')) {
            out.push_str(&format!("\"<{name}>\""));
            rest = &value[end..];
        } else {
            rest = value;
        }
    }
    out.push_str(rest);
    out
}

/// The answer as a JSON value with its `members` list sorted (None if not JSON).
pub fn members_sorted(text: &str) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    if let Some(serde_json::Value::Array(members)) = v.get_mut("members") {
        members.sort_by_key(|m| m.to_string());
    }
    Some(v)
}

/// The `code` of a JSON error answer.
pub fn error_code(answer: &Answer) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
    v.get("code")
        .or_else(|| v.get("error").and_then(|e| e.get("grpc_code")))
        .and_then(serde_json::Value::as_i64)
}

/// keel's JSON for a method it does not implement: 501 and
/// `{"error":M,"message":M,"code":12}`, or a stream's `{"error":{"grpc_code":12,...}}`.
pub fn is_unimplemented(answer: &Answer) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(answer.body.trim_end()) else {
        return false;
    };
    let unary = v.get("code").and_then(|c| c.as_i64()) == Some(12)
        && v.get("error").is_some_and(|e| e.is_string())
        && v.get("message") == v.get("error");
    let streamed = v
        .get("error")
        .and_then(|e| e.get("grpc_code"))
        .and_then(|c| c.as_i64())
        == Some(12);
    answer.status == 501 && answer.content_type == "application/json" && (unary || streamed)
}

pub struct Pair {
    pub etcd: Server,
    pub keel: Server,
    /// Captured values, per server: placeholder → JSON text.
    pub captured: [BTreeMap<&'static str, String>; 2],
    pub mismatches: Vec<String>,
    pub unimplemented: Vec<&'static str>,
}

impl Pair {
    pub fn start(dir: &TempDir) -> Result<Pair> {
        let etcd_bin = require_on_path("etcd")?;
        let etcd = Server::start_etcd_style(
            "etcd",
            &etcd_bin,
            "default",
            &dir.path().join("etcd"),
            Ports::pick(),
            &[],
        )?;
        let keel = Server::start_etcd_style(
            "keel",
            &keel_bin(),
            "default",
            &dir.path().join("keel"),
            Ports::pick(),
            &[],
        )?;
        let pair = Pair {
            etcd,
            keel,
            captured: [BTreeMap::new(), BTreeMap::new()],
            mismatches: Vec::new(),
            unimplemented: Vec::new(),
        };
        for server in [&pair.etcd, &pair.keel] {
            wait_healthy(server.ports.client)?;
        }
        Ok(pair)
    }

    pub fn body_for(&self, which: usize, body: &str) -> String {
        let mut out = body.to_string();
        for (placeholder, value) in &self.captured[which] {
            out = out.replace(placeholder, value);
        }
        // A capture that never came (keel does not implement the call yet).
        for placeholder in ["{MEMBER}", "{LEADER}", "{SELF}"] {
            out = out.replace(placeholder, "{}");
        }
        out
    }

    pub fn ask(&mut self, which: usize, s: &Step) -> Result<Answer> {
        let port = [&self.etcd, &self.keel][which].ports.client;
        let answer = post(port, s.path, &self.body_for(which, &s.body))
            .with_context(|| format!("{} {}", ["etcd", "keel"][which], s.path))?;
        if let Some((placeholder, pointer)) = s.capture {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer.body) {
                if let Some(found) = v.pointer(pointer) {
                    self.captured[which].insert(placeholder, found.to_string());
                }
            }
        }
        Ok(answer)
    }

    pub fn run(&mut self, steps: &[Step]) -> Result<()> {
        for s in steps {
            if let Check::KeelOnly(status, code) = s.check {
                let keel = self.ask(1, s)?;
                if keel.status != status || error_code(&keel) != Some(code.into()) {
                    self.mismatches.push(format!(
                        "{} {}: keel answered {keel:?}, expected {status} with code {code}",
                        s.path, s.body
                    ));
                }
                continue;
            }
            let etcd = self.ask(0, s)?;
            let keel = self.ask(1, s)?;
            self.compare(s, &etcd, &keel);
        }
        Ok(())
    }

    pub fn compare(&mut self, s: &Step, etcd: &Answer, keel: &Answer) {
        let check = match s.check {
            Check::UnimplementedOrSame if is_unimplemented(keel) => {
                self.unimplemented.push(s.path);
                return;
            }
            Check::UnimplementedOrSame => Check::Same,
            other => other,
        };
        let (etcd_text, keel_text) = (
            normalize(&etcd.body, self.etcd.ports),
            normalize(&keel.body, self.keel.ports),
        );
        let same_head = etcd.status == keel.status && etcd.content_type == keel.content_type;
        let ok = match check {
            Check::SameMasking(fields) => {
                let mask = |t: &str| fields.iter().fold(t.to_string(), |t, f| mask_field(&t, f));
                same_head && mask(&etcd_text) == mask(&keel_text)
            }
            Check::SameMembersAnyOrder => {
                same_head && members_sorted(&etcd_text) == members_sorted(&keel_text)
            }
            Check::SameCode => {
                etcd.status == keel.status
                    && error_code(etcd).is_some()
                    && error_code(etcd) == error_code(keel)
            }
            _ => same_head && etcd_text == keel_text,
        };
        if !ok {
            self.mismatches.push(format!(
                "{} {} ({check:?}):\n  etcd {} {} {}\n  keel {} {} {}",
                s.path,
                s.body.chars().take(200).collect::<String>(),
                etcd.status,
                etcd.content_type,
                normalize(&etcd.body, self.etcd.ports),
                keel.status,
                keel.content_type,
                normalize(&keel.body, self.keel.ports),
            ));
        }
    }
}

pub fn wait_healthy(port: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(a) = request(port, "GET", "/health", b"") {
            if a.status == 200 {
                return Ok(());
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "port {port}: /health not true within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
