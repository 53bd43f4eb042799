//! One-line renderings of operations for explanations.
use std::fmt::Write;

use crate::history::{
    Compare, CompareResult, CompareTarget, Operand, Operation, Outcome, Request, RequestOp,
    Response,
};

fn range_text(key: &str, end: Option<&str>) -> String {
    match end {
        None | Some("") => key.to_string(),
        Some("\0") => format!("[{key}, end)"),
        Some(e) => format!("[{key}, {e})"),
    }
}

fn compare_text(c: &Compare) -> String {
    let target = match c.target {
        CompareTarget::Value => "value",
        CompareTarget::Version => "version",
        CompareTarget::Create => "create",
        CompareTarget::Mod => "mod",
    };
    let op = match c.result {
        CompareResult::Equal => "=",
        CompareResult::NotEqual => "!=",
        CompareResult::Greater => ">",
        CompareResult::Less => "<",
    };
    let operand = match &c.operand {
        Operand::Int(n) => n.to_string(),
        Operand::Str(s) => format!("{s:?}"),
    };
    format!("{target}({}) {op} {operand}", c.key)
}

fn op_text(op: &RequestOp) -> String {
    match op {
        RequestOp::Put(p) => format!("put {}={}", p.key, p.value),
        RequestOp::Range(r) => format!("get {}", range_text(&r.key, r.range_end.as_deref())),
        RequestOp::Delete(d) => format!("delete {}", range_text(&d.key, d.range_end.as_deref())),
    }
}

fn ops_text(ops: &[RequestOp]) -> String {
    if ops.is_empty() {
        return "-".to_string();
    }
    ops.iter().map(op_text).collect::<Vec<_>>().join("; ")
}

/// `put x=1`, `get x`, `txn if mod(x) = 5 then put x=2 else -`, ...
pub fn request_text(req: &Request) -> String {
    match req {
        Request::Put(p) => format!("put {}={}", p.key, p.value),
        Request::Get(g) => {
            let s = if g.serializable {
                " (serializable)"
            } else {
                ""
            };
            format!("get {}{s}", g.key)
        }
        Request::Range(r) => {
            let mut s = format!("range {}", range_text(&r.key, r.range_end.as_deref()));
            if let Some(rev) = r.revision.filter(|r| *r > 0) {
                let _ = write!(s, " at rev {rev}");
            }
            if r.serializable {
                s.push_str(" (serializable)");
            }
            s
        }
        Request::Delete(d) => format!("delete {}", range_text(&d.key, d.range_end.as_deref())),
        Request::Txn(t) => {
            let cmps: Vec<String> = t.compares.iter().map(compare_text).collect();
            format!(
                "txn if {} then {} else {}",
                if cmps.is_empty() {
                    "true".to_string()
                } else {
                    cmps.join(" and ")
                },
                ops_text(&t.success),
                ops_text(&t.failure)
            )
        }
        Request::Compact(c) => format!("compact {}", c.revision),
    }
}

/// `rev 6`, `rev 7, saw [x=1@5 (create 2, version 2)]`, `rev 8, succeeded`, ...
pub fn response_text(resp: &Response) -> String {
    match resp {
        Response::Put(p) => format!("rev {}", p.revision),
        Response::Range(r) => {
            let kvs: Vec<String> = r.kvs.iter().map(|kv| kv.to_string()).collect();
            format!("rev {}, saw [{}]", r.revision, kvs.join(", "))
        }
        Response::Delete(d) => format!("rev {}, deleted {}", d.revision, d.deleted),
        Response::Txn(t) => format!(
            "rev {}, {}",
            t.revision,
            if t.succeeded { "succeeded" } else { "failed" }
        ),
        Response::Compact(c) => format!("rev {}", c.revision),
    }
}

/// ` saw x=1, y=2` for a range (` saw nothing` if empty); empty for other responses.
pub fn seen_text(resp: &Response) -> String {
    let Response::Range(r) = resp else {
        return String::new();
    };
    if r.kvs.is_empty() {
        return " saw nothing".to_string();
    }
    let kvs: Vec<String> = r
        .kvs
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    format!(" saw {}", kvs.join(", "))
}

/// `p1 put x=2 -> ok rev 6 [t 10..12]`.
pub fn operation_text(op: &Operation) -> String {
    let outcome = match &op.outcome {
        Outcome::Ok(r) => format!("ok {}", response_text(r)),
        Outcome::Fail(e) => format!("fail ({})", e.as_deref().unwrap_or("-")),
        Outcome::Info(e) => format!("info ({})", e.as_deref().unwrap_or("no completion")),
    };
    let end = op
        .complete_time
        .map_or_else(|| "never".to_string(), |t| t.to_string());
    format!(
        "p{} {} -> {} [t {}..{}]",
        op.process,
        request_text(&op.request),
        outcome,
        op.invoke_time,
        end
    )
}

/// `p1's put x=2`.
pub fn who(op: &Operation) -> String {
    format!("p{}'s {}", op.process, request_text(&op.request))
}
