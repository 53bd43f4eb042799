//! Differential test against real etcd 3.4.23.
//!
//! A seeded generator produces a random workload (puts with every flag, ranges with every
//! option and revision kind, deletes, txns with compares over every target and nested txns,
//! compactions, and some invalid requests). Each request's response is written in a canonical
//! one-line form; `apply_etcd_trace.expected` holds the lines etcd itself produced for the
//! same requests, and keel must produce the very same lines.
//!
//! To regenerate the fixture (needs `etcd` and `python3`):
//! ```text
//! KEEL_ETCD_TRACE_WRITE=/tmp/trace.jsonl cargo test -p keel-engine --test apply_etcd_trace
//! python3 engine/tests/apply_etcd_trace.py /tmp/trace.jsonl > engine/tests/apply_etcd_trace.expected
//! ```
//! (`/tmp/trace.jsonl.keel` then holds keel's lines; with `KEEL_ETCD_TRACE_SEED=n` other seeds
//! can be compared ad hoc: `diff <(python3 ... /tmp/trace.jsonl) /tmp/trace.jsonl.keel`.)
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use bytes::Bytes;
use keel_engine::apply::{self, NoLeases, TXN_OPS_MAX_DEFAULT};
use keel_engine::error::Error;
use keel_engine::mvcc::{KeyValue, Store};
use keel_engine::rng::SplitMix64;
use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_proto::etcdserverpb::request_op::Request;
use keel_proto::etcdserverpb::response_op::Response;
use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, TxnResponse,
};

const SEED: u64 = 0x6b65656c;
const REQUESTS: usize = 1500;

/// Deterministic randomness from a seed: keel's SplitMix64, bounded by remainder.
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below_modulo(n)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: [&str; 8] = ["a", "a/1", "a/2", "b", "c", "d", "e", "\u{7f}"];
const ENDS: [&str; 7] = ["", "", "", "\0", "b", "a0", "d"];
const VALUES: [&str; 5] = ["", "x", "y", "zz", "hello"];

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

enum Req {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

struct Gen<'s> {
    rng: Rng,
    store: &'s Store,
}

impl Gen<'_> {
    fn revision(&mut self) -> i64 {
        let current = self.store.current_revision();
        let compacted = self.store.compact_revision().max(0);
        match self.rng.below(6) {
            0 => current + 1,
            1 => compacted - 1,
            2 => compacted,
            3 => compacted + self.rng.below((current - compacted + 1) as u64) as i64,
            _ => 0,
        }
    }

    fn range(&mut self) -> RangeRequest {
        let mut req = RangeRequest {
            key: b(self.rng.pick(&KEYS)),
            range_end: b(self.rng.pick(&ENDS)),
            ..Default::default()
        };
        if self.rng.chance(40) {
            req.revision = self.revision();
        }
        if self.rng.chance(40) {
            req.limit = self.rng.below(4) as i64;
        }
        if self.rng.chance(40) {
            req.sort_order = self.rng.below(3) as i32;
            req.sort_target = self.rng.below(5) as i32;
        }
        if self.rng.chance(15) {
            let current = self.store.current_revision().max(2) as u64;
            let r = self.rng.below(current) as i64;
            match self.rng.below(4) {
                0 => req.min_mod_revision = r,
                1 => req.max_mod_revision = r,
                2 => req.min_create_revision = r,
                _ => req.max_create_revision = r,
            }
        }
        req.keys_only = self.rng.chance(10);
        req.count_only = self.rng.chance(10);
        if self.rng.chance(2) {
            req.key = Bytes::new();
        }
        req
    }

    fn put(&mut self) -> PutRequest {
        let mut req = PutRequest {
            key: b(self.rng.pick(&KEYS)),
            value: b(self.rng.pick(&VALUES)),
            prev_kv: self.rng.chance(30),
            ..Default::default()
        };
        if self.rng.chance(8) {
            req.ignore_value = true;
            if self.rng.chance(80) {
                req.value = Bytes::new();
            }
        }
        if self.rng.chance(5) {
            req.ignore_lease = true;
        }
        if self.rng.chance(3) {
            req.lease = 1;
        }
        req
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: b(self.rng.pick(&KEYS)),
            range_end: b(self.rng.pick(&ENDS)),
            prev_kv: self.rng.chance(40),
        }
    }

    fn compare(&mut self) -> Compare {
        let target = self.rng.below(5) as i32;
        let small = self.rng.below(6) as i64;
        let union = match target {
            0 => TargetUnion::Version(small),
            1 => TargetUnion::CreateRevision(small),
            2 => TargetUnion::ModRevision(small * 3),
            3 => TargetUnion::Value(b(self.rng.pick(&VALUES))),
            _ => TargetUnion::Lease(0),
        };
        Compare {
            result: self.rng.below(4) as i32,
            target,
            key: b(self.rng.pick(&KEYS)),
            range_end: if self.rng.chance(30) {
                b(self.rng.pick(&ENDS))
            } else {
                Bytes::new()
            },
            target_union: Some(union),
        }
    }

    fn ops(&mut self, depth: u32) -> Vec<RequestOp> {
        let n = self.rng.below(4);
        (0..n)
            .map(|_| {
                let request = match self.rng.below(if depth < 2 { 5 } else { 3 }) {
                    0 => Request::RequestRange(self.range()),
                    1 => Request::RequestPut(self.put()),
                    2 => Request::RequestDeleteRange(self.delete()),
                    _ => Request::RequestTxn(self.txn(depth + 1)),
                };
                RequestOp {
                    request: Some(request),
                }
            })
            .collect()
    }

    fn txn(&mut self, depth: u32) -> TxnRequest {
        let compares = self.rng.below(3);
        TxnRequest {
            compare: (0..compares).map(|_| self.compare()).collect(),
            success: self.ops(depth),
            failure: self.ops(depth),
        }
    }

    fn request(&mut self) -> Req {
        match self.rng.below(20) {
            0..=6 => Req::Put(self.put()),
            7..=10 => Req::Range(self.range()),
            11..=12 => Req::Delete(self.delete()),
            13..=18 => Req::Txn(self.txn(0)),
            _ => {
                let current = self.store.current_revision();
                let compacted = self.store.compact_revision();
                let revision = match self.rng.below(4) {
                    0 => compacted.max(0),
                    1 => current + 1,
                    _ => compacted.max(0) + 1 + self.rng.below(4) as i64,
                };
                Req::Compact(CompactionRequest {
                    revision,
                    physical: false,
                })
            }
        }
    }
}

// --- canonical response lines (apply_etcd_trace.py writes the same) --------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kv(kv: &KeyValue) -> String {
    format!(
        "{}:{}:{}:{}:{}:{}",
        hex(&kv.key),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        hex(&kv.value),
        kv.lease
    )
}

fn kvs(list: &[KeyValue]) -> String {
    list.iter().map(kv).collect::<Vec<_>>().join(",")
}

fn range_line(r: &RangeResponse) -> String {
    let rev = r.header.map_or(0, |h| h.revision);
    format!("R {rev} {} {} [{}]", r.count, u8::from(r.more), kvs(&r.kvs))
}

fn txn_line(t: &TxnResponse) -> String {
    let rev = t.header.map_or(0, |h| h.revision);
    let mut out = format!("T {rev} {} {{", u8::from(t.succeeded));
    for (i, op) in t.responses.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let line = match &op.response {
            Some(Response::ResponseRange(r)) => range_line(r),
            Some(Response::ResponsePut(p)) => {
                put_line(p.header.map_or(0, |h| h.revision), p.prev_kv.as_ref())
            }
            Some(Response::ResponseDeleteRange(d)) => {
                format!(
                    "D {} {} [{}]",
                    d.header.map_or(0, |h| h.revision),
                    d.deleted,
                    kvs(&d.prev_kvs)
                )
            }
            Some(Response::ResponseTxn(t)) => txn_line(t),
            None => "N".to_string(),
        };
        out.push_str(&line);
    }
    out.push('}');
    out
}

fn put_line(rev: i64, prev: Option<&KeyValue>) -> String {
    format!("P {rev} {}", prev.map_or("-".to_string(), kv))
}

fn err_line(e: Error) -> String {
    format!("E {} {e}", e.code() as i32)
}

fn execute(store: &mut Store, req: &Req) -> String {
    let result = match req {
        Req::Range(r) => apply::check_range(r)
            .and_then(|()| apply::range(store, r))
            .map(|r| range_line(&r)),
        Req::Put(r) => apply::check_put(r)
            .and_then(|()| apply::put(store, r, &NoLeases))
            .map(|a| put_line(a.header.map_or(0, |h| h.revision), a.prev_kv.as_ref())),
        Req::Delete(r) => apply::check_delete_range(r)
            .and_then(|()| apply::delete_range(store, r))
            .map(|a| {
                let d = a;
                format!(
                    "D {} {} [{}]",
                    d.header.map_or(0, |h| h.revision),
                    d.deleted,
                    kvs(&d.prev_kvs)
                )
            }),
        Req::Txn(r) => apply::check_txn(r, TXN_OPS_MAX_DEFAULT)
            .and_then(|()| apply::txn(store, r, &NoLeases))
            .map(|a| txn_line(&a)),
        Req::Compact(r) => {
            apply::compact(store, r).map(|c| format!("C {}", c.header.map_or(0, |h| h.revision)))
        }
    };
    result.unwrap_or_else(err_line)
}

// --- the etcd gateway's JSON, for the fixture writer ------------------------------------------

fn b64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn json_range(r: &RangeRequest) -> String {
    format!(
        "{{\"key\":\"{}\",\"range_end\":\"{}\",\"limit\":{},\"revision\":{},\"sort_order\":\"{}\",\
         \"sort_target\":\"{}\",\"keys_only\":{},\"count_only\":{},\"min_mod_revision\":{},\
         \"max_mod_revision\":{},\"min_create_revision\":{},\"max_create_revision\":{}}}",
        b64(&r.key),
        b64(&r.range_end),
        r.limit,
        r.revision,
        SortOrder::try_from(r.sort_order).unwrap().as_str_name(),
        SortTarget::try_from(r.sort_target).unwrap().as_str_name(),
        r.keys_only,
        r.count_only,
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision
    )
}

fn json_put(r: &PutRequest) -> String {
    format!(
        "{{\"key\":\"{}\",\"value\":\"{}\",\"lease\":{},\"prev_kv\":{},\"ignore_value\":{},\"ignore_lease\":{}}}",
        b64(&r.key),
        b64(&r.value),
        r.lease,
        r.prev_kv,
        r.ignore_value,
        r.ignore_lease
    )
}

fn json_delete(r: &DeleteRangeRequest) -> String {
    format!(
        "{{\"key\":\"{}\",\"range_end\":\"{}\",\"prev_kv\":{}}}",
        b64(&r.key),
        b64(&r.range_end),
        r.prev_kv
    )
}

fn json_ops(ops: &[RequestOp]) -> String {
    let items: Vec<String> = ops
        .iter()
        .map(|op| match &op.request {
            Some(Request::RequestRange(r)) => format!("{{\"request_range\":{}}}", json_range(r)),
            Some(Request::RequestPut(r)) => format!("{{\"request_put\":{}}}", json_put(r)),
            Some(Request::RequestDeleteRange(r)) => {
                format!("{{\"request_delete_range\":{}}}", json_delete(r))
            }
            Some(Request::RequestTxn(r)) => format!("{{\"request_txn\":{}}}", json_txn(r)),
            None => "{}".to_string(),
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn json_txn(r: &TxnRequest) -> String {
    let compares: Vec<String> = r
        .compare
        .iter()
        .map(|c| {
            let union = match c.target_union.as_ref().unwrap() {
                TargetUnion::Version(v) => format!("\"version\":{v}"),
                TargetUnion::CreateRevision(v) => format!("\"create_revision\":{v}"),
                TargetUnion::ModRevision(v) => format!("\"mod_revision\":{v}"),
                TargetUnion::Value(v) => format!("\"value\":\"{}\"", b64(v)),
                TargetUnion::Lease(v) => format!("\"lease\":{v}"),
            };
            format!(
                "{{\"result\":\"{}\",\"target\":\"{}\",\"key\":\"{}\",\"range_end\":\"{}\",{union}}}",
                CompareResult::try_from(c.result).unwrap().as_str_name(),
                CompareTarget::try_from(c.target).unwrap().as_str_name(),
                b64(&c.key),
                b64(&c.range_end)
            )
        })
        .collect();
    format!(
        "{{\"compare\":[{}],\"success\":{},\"failure\":{}}}",
        compares.join(","),
        json_ops(&r.success),
        json_ops(&r.failure)
    )
}

fn json_line(req: &Req) -> String {
    match req {
        Req::Range(r) => format!("range {}", json_range(r)),
        Req::Put(r) => format!("put {}", json_put(r)),
        Req::Delete(r) => format!("deleterange {}", json_delete(r)),
        Req::Txn(r) => format!("txn {}", json_txn(r)),
        Req::Compact(r) => format!("compaction {{\"revision\":{}}}", r.revision),
    }
}

#[test]
fn keel_answers_like_etcd() {
    let mut store = Store::default();
    // Ad-hoc runs with other seeds: KEEL_ETCD_TRACE_SEED=n (with KEEL_ETCD_TRACE_WRITE).
    let seed = std::env::var("KEEL_ETCD_TRACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut rng = Rng(SplitMix64::new(seed.unwrap_or(SEED)));
    // KEEL_ETCD_TRACE_EVENTS: leave compactions out and also write every event (for a watch
    // diff against etcd from revision 1).
    let no_compaction = std::env::var("KEEL_ETCD_TRACE_EVENTS").is_ok();
    let mut lines = Vec::with_capacity(REQUESTS);
    let mut requests = String::new();
    for _ in 0..REQUESTS {
        let mut gen = Gen { rng, store: &store };
        let req = gen.request();
        rng = gen.rng;
        if no_compaction && matches!(req, Req::Compact(_)) {
            continue;
        }
        writeln!(requests, "{}", json_line(&req)).unwrap();
        lines.push(execute(&mut store, &req));
    }
    if let Ok(path) = std::env::var("KEEL_ETCD_TRACE_WRITE") {
        write_trace(&path, &requests, &lines);
        if no_compaction {
            let events = store
                .events(1, store.current_revision(), usize::MAX)
                .unwrap();
            let events: Vec<String> = events
                .iter()
                .map(|e| {
                    let kind = if e.r#type == 1 { "DELETE" } else { "PUT" };
                    format!("{kind} {}", kv(e.kv.as_ref().unwrap()))
                })
                .collect();
            write_trace(&format!("{path}.events"), "", &events);
        }
        return;
    }
    let expected = include_str!("apply_etcd_trace.expected");
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(expected.len(), lines.len(), "fixture length");
    for (i, (want, got)) in expected.iter().zip(&lines).enumerate() {
        assert_eq!(
            got,
            want,
            "request {i}: {}",
            requests.lines().nth(i).unwrap_or("")
        );
    }
}

/// Writes the trace for apply_etcd_trace.py, and keel's own lines next to it. The engine's
/// no-I/O rule is about the engine; this test tool writes files by design.
#[allow(clippy::disallowed_methods)]
fn write_trace(path: &str, requests: &str, lines: &[String]) {
    std::fs::write(format!("{path}.keel"), lines.join("\n") + "\n").unwrap();
    std::fs::write(path, requests).unwrap();
}
