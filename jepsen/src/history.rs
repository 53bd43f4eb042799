//! Client histories: what every simulated or real run of keel records, one event per line.
//!
//! # Format (JSON lines)
//!
//! An operation is an invocation followed (maybe) by a completion of the same `process`:
//!
//! ```text
//! {"process":3,"type":"invoke","f":"put","time":1000,"req":{"key":"x","value":"1"}}
//! {"process":3,"type":"ok","f":"put","time":2000,"resp":{"revision":2},"error":null}
//! ```
//!
//! - `process`: a client id; a process has at most one operation in flight.
//! - `type`: `invoke`, `ok`, `fail` (certainly did not take effect) or `info` (outcome unknown:
//!   it may take effect at any later point, or never). An invocation with no completion by the end
//!   of the history counts as `info`.
//! - `f`: `put`, `get`, `range`, `delete`, `txn` or `compact`.
//! - `time`: monotonic nanoseconds; only the order of times matters (real-time order).
//! - `req` on invocations, `resp` on `ok` completions, `error` (a string or null) on completions.
//!
//! Requests and responses follow etcd's KV API (keys and values as UTF-8 strings):
//!
//! | f | req | resp |
//! |---|---|---|
//! | put | `{key, value, prev_kv?}` | `{revision, prev_kv?}` |
//! | get | `{key, serializable?}` | `{revision, kvs, count, more}` |
//! | range | `{key, range_end?, serializable?, revision?, limit?}` | `{revision, kvs, count, more}` |
//! | delete | `{key, range_end?, prev_kv?}` | `{revision, deleted, prev_kvs?}` |
//! | txn | `{compares, success, failure}` | `{revision, succeeded, responses}` |
//! | compact | `{revision}` | `{revision}` |
//!
//! A `kv` is `{key, value, create_revision, mod_revision, version}`. A compare is
//! `{key, target: "value"|"version"|"create"|"mod", result: "equal"|"not_equal"|"greater"|"less",
//! operand}` where `operand` is a string for `value` and an integer otherwise. Txn ops and their
//! responses are tagged by kind: `{"put":{...}}`, `{"range":{...}}`, `{"delete":{...}}`.
//! `range_end` follows etcd: absent means the single key, `"\u0000"` means every key `>= key`.
//! Every response's `revision` is etcd's header revision: for a write that changed the store it
//! is the write's own (mod) revision; for anything else it is the store revision observed.
//! Errors such as `compacted` and `future_rev` are `fail` completions with that `error`.
//!
//! # Building histories in tests
//!
//! ```
//! use keel_jepsen::history::{History, Request, Response, KeyValue};
//! let h = History::builder()
//!     .invoke(1, Request::put("x", "1"))
//!     .ok(1, Response::put(2))
//!     .invoke(2, Request::get("x"))
//!     .ok(2, Response::range(2, vec![KeyValue::new("x", "1", 2, 2, 1)]))
//!     .build();
//! let text = h.to_jsonl();
//! assert_eq!(History::from_jsonl(&text).unwrap(), h);
//! ```
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A store revision (etcd's `int64` main revision).
pub type Revision = i64;
/// A client id.
pub type ProcessId = u64;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A key-value pair as etcd's `mvccpb.KeyValue` returns it (lease omitted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Revision of the put that created this generation of the key.
    pub create_revision: Revision,
    /// Revision of the last put to the key.
    pub mod_revision: Revision,
    /// Number of puts to the key since its creation (1 after the first).
    pub version: i64,
}

impl KeyValue {
    /// A key-value pair.
    pub fn new(key: &str, value: &str, create: Revision, modr: Revision, version: i64) -> Self {
        KeyValue {
            key: key.to_string(),
            value: value.to_string(),
            create_revision: create,
            mod_revision: modr,
            version,
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}@{} (create {}, version {})",
            self.key, self.value, self.mod_revision, self.create_revision, self.version
        )
    }
}

/// `put {key, value, prev_kv}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Ask for the previous key-value pair.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prev_kv: bool,
}

/// `get {key, serializable}`: a range over one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    /// The key.
    pub key: String,
    /// Serializable (possibly stale) rather than linearizable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub serializable: bool,
}

/// `range {key, range_end, serializable, revision, limit}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key.
    pub key: String,
    /// End of the range, exclusive; absent: the single key; `"\0"`: every key `>= key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// Serializable (possibly stale) rather than linearizable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub serializable: bool,
    /// Read at this past revision (absent or 0: the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    /// Return at most this many kvs (absent or 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// `delete {key, range_end, prev_kv}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// First key.
    pub key: String,
    /// End of the range, as in [`RangeRequest::range_end`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// Ask for the deleted key-value pairs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prev_kv: bool,
}

/// What a compare looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    /// The value (operand is a string).
    Value,
    /// The version (0 if absent).
    Version,
    /// The create revision (0 if absent).
    Create,
    /// The mod revision (0 if absent).
    Mod,
}

/// How a compare compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareResult {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// A compare's operand: a string for `value`, an integer otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Operand {
    /// For version, create and mod.
    Int(i64),
    /// For value.
    Str(String),
}

/// One txn guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// What to look at.
    pub target: CompareTarget,
    /// How to compare.
    pub result: CompareResult,
    /// What to compare with.
    pub operand: Operand,
}

impl Compare {
    /// `target(key) <result> operand` for an integer target.
    pub fn int(key: &str, target: CompareTarget, result: CompareResult, operand: i64) -> Self {
        Compare {
            key: key.to_string(),
            target,
            result,
            operand: Operand::Int(operand),
        }
    }
    /// `mod(key) == rev`: the usual CAS guard.
    pub fn mod_eq(key: &str, rev: Revision) -> Self {
        Compare::int(key, CompareTarget::Mod, CompareResult::Equal, rev)
    }
    /// `version(key) == version`.
    pub fn version_eq(key: &str, version: i64) -> Self {
        Compare::int(key, CompareTarget::Version, CompareResult::Equal, version)
    }
    /// `value(key) == value`.
    pub fn value_eq(key: &str, value: &str) -> Self {
        Compare {
            key: key.to_string(),
            target: CompareTarget::Value,
            result: CompareResult::Equal,
            operand: Operand::Str(value.to_string()),
        }
    }
}

/// An operation inside a txn branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    /// A put.
    Put(PutRequest),
    /// A range.
    Range(RangeRequest),
    /// A delete.
    Delete(DeleteRequest),
}

impl RequestOp {
    /// `put key value` inside a txn.
    pub fn put(key: &str, value: &str) -> Self {
        RequestOp::Put(PutRequest {
            key: key.to_string(),
            value: value.to_string(),
            prev_kv: false,
        })
    }
    /// `get key` inside a txn.
    pub fn get(key: &str) -> Self {
        RequestOp::Range(RangeRequest::single(key))
    }
    /// `delete key` inside a txn.
    pub fn delete(key: &str) -> Self {
        RequestOp::Delete(DeleteRequest {
            key: key.to_string(),
            range_end: None,
            prev_kv: false,
        })
    }
}

/// `txn {compares, success, failure}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Guards, all of which must hold for `success` to run.
    #[serde(default)]
    pub compares: Vec<Compare>,
    /// Run when every compare holds.
    #[serde(default)]
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    #[serde(default)]
    pub failure: Vec<RequestOp>,
}

/// `compact {revision}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRequest {
    /// Compact away every revision below this one.
    pub revision: Revision,
}

impl RangeRequest {
    /// A linearizable range over one key.
    pub fn single(key: &str) -> Self {
        RangeRequest {
            key: key.to_string(),
            range_end: None,
            serializable: false,
            revision: None,
            limit: None,
        }
    }
}

/// The kind of operation, the `f` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// put
    Put,
    /// get
    Get,
    /// range
    Range,
    /// delete
    Delete,
    /// txn
    Txn,
    /// compact
    Compact,
}

impl Function {
    /// The name used in `f`.
    pub fn name(self) -> &'static str {
        match self {
            Function::Put => "put",
            Function::Get => "get",
            Function::Range => "range",
            Function::Delete => "delete",
            Function::Txn => "txn",
            Function::Compact => "compact",
        }
    }
}

/// A request (the `req` of an invocation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// put
    Put(PutRequest),
    /// get
    Get(GetRequest),
    /// range
    Range(RangeRequest),
    /// delete
    Delete(DeleteRequest),
    /// txn
    Txn(TxnRequest),
    /// compact
    Compact(CompactRequest),
}

impl Request {
    /// `put key value`.
    pub fn put(key: &str, value: &str) -> Self {
        Request::Put(PutRequest {
            key: key.to_string(),
            value: value.to_string(),
            prev_kv: false,
        })
    }
    /// Linearizable `get key`.
    pub fn get(key: &str) -> Self {
        Request::Get(GetRequest {
            key: key.to_string(),
            serializable: false,
        })
    }
    /// Linearizable `range [key, end)` (`end` as in [`RangeRequest::range_end`]).
    pub fn range(key: &str, end: &str) -> Self {
        Request::Range(RangeRequest {
            key: key.to_string(),
            range_end: Some(end.to_string()),
            serializable: false,
            revision: None,
            limit: None,
        })
    }
    /// Linearizable `get key` at a past revision.
    pub fn get_at(key: &str, revision: Revision) -> Self {
        Request::Range(RangeRequest {
            revision: Some(revision),
            ..RangeRequest::single(key)
        })
    }
    /// `delete key`.
    pub fn delete(key: &str) -> Self {
        Request::Delete(DeleteRequest {
            key: key.to_string(),
            range_end: None,
            prev_kv: false,
        })
    }
    /// `txn`.
    pub fn txn(compares: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Self {
        Request::Txn(TxnRequest {
            compares,
            success,
            failure,
        })
    }
    /// `compact revision`.
    pub fn compact(revision: Revision) -> Self {
        Request::Compact(CompactRequest { revision })
    }
    /// The `f` of this request.
    pub fn function(&self) -> Function {
        match self {
            Request::Put(_) => Function::Put,
            Request::Get(_) => Function::Get,
            Request::Range(_) => Function::Range,
            Request::Delete(_) => Function::Delete,
            Request::Txn(_) => Function::Txn,
            Request::Compact(_) => Function::Compact,
        }
    }
    /// A get, as the range it is.
    pub fn as_range(&self) -> Option<RangeRequest> {
        match self {
            Request::Get(g) => Some(RangeRequest {
                serializable: g.serializable,
                ..RangeRequest::single(&g.key)
            }),
            Request::Range(r) => Some(r.clone()),
            _ => None,
        }
    }
    /// True for a serializable get or range (allowed to be stale).
    pub fn is_serializable(&self) -> bool {
        match self {
            Request::Get(g) => g.serializable,
            Request::Range(r) => r.serializable,
            _ => false,
        }
    }
}

/// `{revision, prev_kv}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// Header revision: the put's mod revision.
    #[serde(default)]
    pub revision: Revision,
    /// The previous pair, if asked for and present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

/// `{revision, kvs, count, more}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// Header revision: the store revision observed.
    #[serde(default)]
    pub revision: Revision,
    /// The pairs, in key order.
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range (before `limit`).
    #[serde(default)]
    pub count: i64,
    /// More keys exist beyond `limit`.
    #[serde(default)]
    pub more: bool,
}

/// `{revision, deleted, prev_kvs}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// Header revision: the delete's revision if it deleted anything, else the one observed.
    #[serde(default)]
    pub revision: Revision,
    /// Number of keys deleted.
    #[serde(default)]
    pub deleted: i64,
    /// The deleted pairs, if asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prev_kvs: Vec<KeyValue>,
}

/// One response inside a txn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseOp {
    /// For a put.
    Put(PutResponse),
    /// For a range.
    Range(RangeResponse),
    /// For a delete.
    Delete(DeleteResponse),
}

/// `{revision, succeeded, responses}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Header revision: the txn's revision if it changed the store, else the one observed.
    #[serde(default)]
    pub revision: Revision,
    /// Whether every compare held.
    pub succeeded: bool,
    /// One per op of the branch that ran.
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

/// `{revision}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactResponse {
    /// Header revision: the store revision when the compaction applied.
    #[serde(default)]
    pub revision: Revision,
}

/// A response (the `resp` of an `ok` completion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// put
    Put(PutResponse),
    /// get or range
    Range(RangeResponse),
    /// delete
    Delete(DeleteResponse),
    /// txn
    Txn(TxnResponse),
    /// compact
    Compact(CompactResponse),
}

impl Response {
    /// A put's response.
    pub fn put(revision: Revision) -> Self {
        Response::Put(PutResponse {
            revision,
            prev_kv: None,
        })
    }
    /// A get's or range's response without limit: `count` is the number of kvs.
    pub fn range(revision: Revision, kvs: Vec<KeyValue>) -> Self {
        let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
        Response::Range(RangeResponse {
            revision,
            kvs,
            count,
            more: false,
        })
    }
    /// A delete's response.
    pub fn delete(revision: Revision, deleted: i64) -> Self {
        Response::Delete(DeleteResponse {
            revision,
            deleted,
            prev_kvs: Vec::new(),
        })
    }
    /// A txn's response.
    pub fn txn(revision: Revision, succeeded: bool, responses: Vec<ResponseOp>) -> Self {
        Response::Txn(TxnResponse {
            revision,
            succeeded,
            responses,
        })
    }
    /// A compaction's response.
    pub fn compact(revision: Revision) -> Self {
        Response::Compact(CompactResponse { revision })
    }
    /// The header revision.
    pub fn revision(&self) -> Revision {
        match self {
            Response::Put(r) => r.revision,
            Response::Range(r) => r.revision,
            Response::Delete(r) => r.revision,
            Response::Txn(r) => r.revision,
            Response::Compact(r) => r.revision,
        }
    }
    /// Whether this response matches a request of kind `f`.
    pub fn fits(&self, f: Function) -> bool {
        matches!(
            (self, f),
            (Response::Put(_), Function::Put)
                | (Response::Range(_), Function::Get | Function::Range)
                | (Response::Delete(_), Function::Delete)
                | (Response::Txn(_), Function::Txn)
                | (Response::Compact(_), Function::Compact)
        )
    }
}

impl ResponseOp {
    /// A put's response inside a txn.
    pub fn put(revision: Revision) -> Self {
        ResponseOp::Put(PutResponse {
            revision,
            prev_kv: None,
        })
    }
    /// A range's response inside a txn.
    pub fn range(revision: Revision, kvs: Vec<KeyValue>) -> Self {
        let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
        ResponseOp::Range(RangeResponse {
            revision,
            kvs,
            count,
            more: false,
        })
    }
    /// A delete's response inside a txn.
    pub fn delete(revision: Revision, deleted: i64) -> Self {
        ResponseOp::Delete(DeleteResponse {
            revision,
            deleted,
            prev_kvs: Vec::new(),
        })
    }
}

/// What an event says: an invocation, or one of the three completions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventBody {
    /// The client sent this request.
    Invoke(Request),
    /// It succeeded with this response.
    Ok(Response),
    /// It certainly did not take effect.
    Fail {
        /// Why (e.g. `compacted`, `future_rev`).
        error: Option<String>,
    },
    /// Unknown outcome: it may take effect at any later point, or never.
    Info {
        /// Why (e.g. `timeout`).
        error: Option<String>,
    },
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEvent", into = "RawEvent")]
pub struct Event {
    /// The client.
    pub process: ProcessId,
    /// The kind of operation.
    pub f: Function,
    /// Monotonic nanoseconds.
    pub time: u64,
    /// What happened.
    pub body: EventBody,
}

impl Event {
    /// `process` invokes `req` at `time`.
    pub fn invoke(process: ProcessId, time: u64, req: Request) -> Self {
        Event {
            process,
            f: req.function(),
            time,
            body: EventBody::Invoke(req),
        }
    }
    /// `process`'s op of kind `f` succeeds at `time` with `resp`.
    pub fn ok(process: ProcessId, f: Function, time: u64, resp: Response) -> Self {
        Event {
            process,
            f,
            time,
            body: EventBody::Ok(resp),
        }
    }
    /// `process`'s op of kind `f` certainly did not take effect (`error`: why).
    pub fn fail(process: ProcessId, f: Function, time: u64, error: &str) -> Self {
        Event {
            process,
            f,
            time,
            body: EventBody::Fail {
                error: Some(error.to_string()),
            },
        }
    }
    /// `process`'s op of kind `f` has an unknown outcome (`error`: why, e.g. `timeout`).
    pub fn info(process: ProcessId, f: Function, time: u64, error: &str) -> Self {
        Event {
            process,
            f,
            time,
            body: EventBody::Info {
                error: Some(error.to_string()),
            },
        }
    }
    /// This event as one JSON line (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The wire shape of an [`Event`].
#[derive(Serialize, Deserialize)]
struct RawEvent {
    process: ProcessId,
    #[serde(rename = "type")]
    kind: String,
    f: Function,
    time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    req: Option<serde_json::Value>,
    // Completions always carry `resp` and `error` (null when absent); invocations carry
    // neither: `Absent` is skipped, `Value(None)` is written as null.
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    resp: Field<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    error: Field<String>,
}

/// A field that is absent, null, or a value.
#[derive(Default)]
enum Field<T> {
    #[default]
    Absent,
    Value(Option<T>),
}

impl<T> Field<T> {
    fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
    fn into_option(self) -> Option<T> {
        match self {
            Field::Absent => None,
            Field::Value(v) => v,
        }
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Absent | Field::Value(None) => s.serialize_none(),
            Field::Value(Some(v)) => v.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Field::Value(Option::<T>::deserialize(d)?))
    }
}

fn to_value<T: Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

impl From<Event> for RawEvent {
    fn from(e: Event) -> RawEvent {
        let done = |resp, error| (Field::Value(resp), Field::Value(error));
        let (kind, req, (resp, error)) = match &e.body {
            EventBody::Invoke(r) => ("invoke", request_value(r), (Field::Absent, Field::Absent)),
            EventBody::Ok(r) => ("ok", None, done(response_value(r), None)),
            EventBody::Fail { error } => ("fail", None, done(None, error.clone())),
            EventBody::Info { error } => ("info", None, done(None, error.clone())),
        };
        RawEvent {
            process: e.process,
            kind: kind.to_string(),
            f: e.f,
            time: e.time,
            req,
            resp,
            error,
        }
    }
}

fn request_value(r: &Request) -> Option<serde_json::Value> {
    match r {
        Request::Put(x) => to_value(x),
        Request::Get(x) => to_value(x),
        Request::Range(x) => to_value(x),
        Request::Delete(x) => to_value(x),
        Request::Txn(x) => to_value(x),
        Request::Compact(x) => to_value(x),
    }
}

fn response_value(r: &Response) -> Option<serde_json::Value> {
    match r {
        Response::Put(x) => to_value(x),
        Response::Range(x) => to_value(x),
        Response::Delete(x) => to_value(x),
        Response::Txn(x) => to_value(x),
        Response::Compact(x) => to_value(x),
    }
}

fn parse_request(f: Function, v: serde_json::Value) -> Result<Request, serde_json::Error> {
    Ok(match f {
        Function::Put => Request::Put(serde_json::from_value(v)?),
        Function::Get => Request::Get(serde_json::from_value(v)?),
        Function::Range => Request::Range(serde_json::from_value(v)?),
        Function::Delete => Request::Delete(serde_json::from_value(v)?),
        Function::Txn => Request::Txn(serde_json::from_value(v)?),
        Function::Compact => Request::Compact(serde_json::from_value(v)?),
    })
}

fn parse_response(f: Function, v: serde_json::Value) -> Result<Response, serde_json::Error> {
    Ok(match f {
        Function::Put => Response::Put(serde_json::from_value(v)?),
        Function::Get | Function::Range => Response::Range(serde_json::from_value(v)?),
        Function::Delete => Response::Delete(serde_json::from_value(v)?),
        Function::Txn => Response::Txn(serde_json::from_value(v)?),
        Function::Compact => Response::Compact(serde_json::from_value(v)?),
    })
}

impl TryFrom<RawEvent> for Event {
    type Error = String;
    fn try_from(raw: RawEvent) -> Result<Event, String> {
        let f = raw.f;
        let body = match raw.kind.as_str() {
            "invoke" => {
                let req = raw.req.ok_or("invoke without req")?;
                EventBody::Invoke(parse_request(f, req).map_err(|e| format!("req: {e}"))?)
            }
            "ok" => {
                let resp = raw.resp.into_option().ok_or("ok without resp")?;
                EventBody::Ok(parse_response(f, resp).map_err(|e| format!("resp: {e}"))?)
            }
            "fail" => EventBody::Fail {
                error: raw.error.into_option(),
            },
            "info" => EventBody::Info {
                error: raw.error.into_option(),
            },
            other => return Err(format!("unknown type {other:?}")),
        };
        Ok(Event {
            process: raw.process,
            f,
            time: raw.time,
            body,
        })
    }
}

/// Why a history could not be read or paired.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A line is not a valid event.
    #[error("line {line}: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A process invoked while it had an operation in flight.
    #[error(
        "event {index}: process {process} invoked while its op from event {open} is in flight"
    )]
    Overlap {
        /// Event index.
        index: usize,
        /// The process.
        process: ProcessId,
        /// Event index of the open invocation.
        open: usize,
    },
    /// A completion with no open invocation.
    #[error("event {index}: process {process} completed an op it never invoked")]
    Orphan {
        /// Event index.
        index: usize,
        /// The process.
        process: ProcessId,
    },
    /// A completion whose `f` or response does not match its invocation.
    #[error("event {index}: process {process} completed {got} but invoked {want}")]
    Mismatch {
        /// Event index.
        index: usize,
        /// The process.
        process: ProcessId,
        /// What the invocation said.
        want: &'static str,
        /// What the completion said.
        got: &'static str,
    },
    /// Time went backwards in the file.
    #[error("event {index}: time {time} is before the previous event's {prev}")]
    TimeBackwards {
        /// Event index.
        index: usize,
        /// This event's time.
        time: u64,
        /// The previous event's time.
        prev: u64,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect with this response.
    Ok(Response),
    /// It certainly did not take effect.
    Fail(Option<String>),
    /// Unknown; also an invocation never completed.
    Info(Option<String>),
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Index of this operation in [`History::operations`].
    pub id: usize,
    /// The client.
    pub process: ProcessId,
    /// Invocation time.
    pub invoke_time: u64,
    /// Completion time; `None` if it never completed.
    pub complete_time: Option<u64>,
    /// What was asked.
    pub request: Request,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// The `ok` response, if any.
    pub fn ok(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Ok(r) => Some(r),
            _ => None,
        }
    }
}

/// A client history: events in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The events, in the order they happened.
    pub events: Vec<Event>,
}

impl History {
    /// A builder for tests.
    pub fn builder() -> HistoryBuilder {
        HistoryBuilder::default()
    }

    /// Reads JSON lines (blank lines ignored).
    pub fn from_jsonl(text: &str) -> Result<History, HistoryError> {
        let mut events = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let e = serde_json::from_str(line).map_err(|source| HistoryError::Parse {
                line: i + 1,
                source,
            })?;
            events.push(e);
        }
        Ok(History { events })
    }

    /// Writes JSON lines, one event per line, each ending in a newline.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            // Serializing our own types into a String cannot fail.
            if let Ok(line) = serde_json::to_string(e) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// The events of `ops`, ordered by time (an invocation before a completion at the same
    /// time; otherwise in the order given). Operations with no completion time get none.
    pub fn from_operations(ops: &[Operation]) -> History {
        let mut keyed: Vec<(u64, u8, usize, Event)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            let f = op.request.function();
            let invoke = Event {
                process: op.process,
                f,
                time: op.invoke_time,
                body: EventBody::Invoke(op.request.clone()),
            };
            keyed.push((op.invoke_time, 1, i, invoke));
            let Some(t) = op.complete_time else { continue };
            let body = match &op.outcome {
                Outcome::Ok(r) => EventBody::Ok(r.clone()),
                Outcome::Fail(e) => EventBody::Fail { error: e.clone() },
                Outcome::Info(e) => EventBody::Info { error: e.clone() },
            };
            keyed.push((
                t,
                0,
                i,
                Event {
                    process: op.process,
                    f,
                    time: t,
                    body,
                },
            ));
        }
        // Completions first at equal times: a process's next invocation may share the time.
        keyed.sort_by_key(|k| (k.0, k.1, k.2));
        History {
            events: keyed.into_iter().map(|k| k.3).collect(),
        }
    }

    /// Pairs invocations with completions, in order of invocation. An invocation with no
    /// completion becomes an `Info` operation with no completion time.
    pub fn operations(&self) -> Result<Vec<Operation>, HistoryError> {
        let mut ops: Vec<Operation> = Vec::new();
        let mut open: HashMap<ProcessId, (usize, usize)> = HashMap::new(); // process -> (op, event)
        let mut prev_time = 0;
        for (index, e) in self.events.iter().enumerate() {
            if e.time < prev_time {
                return Err(HistoryError::TimeBackwards {
                    index,
                    time: e.time,
                    prev: prev_time,
                });
            }
            prev_time = e.time;
            if let EventBody::Invoke(req) = &e.body {
                if let Some(&(_, ev)) = open.get(&e.process) {
                    return Err(HistoryError::Overlap {
                        index,
                        process: e.process,
                        open: ev,
                    });
                }
                open.insert(e.process, (ops.len(), index));
                ops.push(Operation {
                    id: ops.len(),
                    process: e.process,
                    invoke_time: e.time,
                    complete_time: None,
                    request: req.clone(),
                    outcome: Outcome::Info(None),
                });
                continue;
            }
            let (op_id, _) = open.remove(&e.process).ok_or(HistoryError::Orphan {
                index,
                process: e.process,
            })?;
            let op = &mut ops[op_id];
            let want = op.request.function();
            let fits = match &e.body {
                EventBody::Ok(r) => r.fits(want),
                _ => true,
            };
            if e.f != want || !fits {
                return Err(HistoryError::Mismatch {
                    index,
                    process: e.process,
                    want: want.name(),
                    got: e.f.name(),
                });
            }
            op.complete_time = Some(e.time);
            op.outcome = match &e.body {
                EventBody::Ok(r) => Outcome::Ok(r.clone()),
                EventBody::Fail { error } => Outcome::Fail(error.clone()),
                EventBody::Info { error } => Outcome::Info(error.clone()),
                EventBody::Invoke(_) => Outcome::Info(None),
            };
        }
        Ok(ops)
    }
}

/// Builds a [`History`] for tests: each event is stamped with the current time, which then
/// advances by one; [`HistoryBuilder::at`] sets it.
#[derive(Clone, Debug, Default)]
pub struct HistoryBuilder {
    events: Vec<Event>,
    time: u64,
    open: HashMap<ProcessId, Function>,
}

impl HistoryBuilder {
    /// The next event happens at `time` (must not go backwards).
    pub fn at(mut self, time: u64) -> Self {
        self.time = time;
        self
    }

    fn push(mut self, process: ProcessId, f: Function, body: EventBody) -> Self {
        self.events.push(Event {
            process,
            f,
            time: self.time,
            body,
        });
        self.time += 1;
        self
    }

    /// `process` invokes `req`.
    pub fn invoke(mut self, process: ProcessId, req: Request) -> Self {
        let f = req.function();
        self.open.insert(process, f);
        self.push(process, f, EventBody::Invoke(req))
    }

    fn close(&mut self, process: ProcessId, fallback: Function) -> Function {
        self.open.remove(&process).unwrap_or(fallback)
    }

    /// `process`'s op succeeds with `resp`.
    pub fn ok(mut self, process: ProcessId, resp: Response) -> Self {
        let fallback = match &resp {
            Response::Put(_) => Function::Put,
            Response::Range(_) => Function::Range,
            Response::Delete(_) => Function::Delete,
            Response::Txn(_) => Function::Txn,
            Response::Compact(_) => Function::Compact,
        };
        let f = self.close(process, fallback);
        self.push(process, f, EventBody::Ok(resp))
    }

    /// `process`'s op certainly did not take effect.
    pub fn fail(mut self, process: ProcessId, error: &str) -> Self {
        let f = self.close(process, Function::Put);
        let error = Some(error.to_string());
        self.push(process, f, EventBody::Fail { error })
    }

    /// `process`'s op has an unknown outcome.
    pub fn info(mut self, process: ProcessId) -> Self {
        let f = self.close(process, Function::Put);
        let error = Some("timeout".to_string());
        self.push(process, f, EventBody::Info { error })
    }

    /// The history.
    pub fn build(self) -> History {
        History {
            events: self.events,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn jsonl_round_trip_every_kind() {
        let txn = Request::txn(
            vec![Compare::mod_eq("x", 2), Compare::value_eq("y", "a")],
            vec![RequestOp::put("x", "2"), RequestOp::get("y")],
            vec![RequestOp::delete("x")],
        );
        let h = History::builder()
            .invoke(1, Request::put("x", "1"))
            .ok(1, Response::put(2))
            .invoke(2, Request::range("a", "\0"))
            .invoke(3, txn)
            .ok(
                2,
                Response::range(2, vec![KeyValue::new("x", "1", 2, 2, 1)]),
            )
            .ok(
                3,
                Response::txn(
                    3,
                    true,
                    vec![ResponseOp::put(3), ResponseOp::range(3, vec![])],
                ),
            )
            .invoke(1, Request::delete("x"))
            .info(1)
            .invoke(4, Request::compact(2))
            .fail(4, "compacted")
            .invoke(5, Request::get_at("x", 2))
            .build();
        let text = h.to_jsonl();
        assert_eq!(History::from_jsonl(&text).unwrap(), h);
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"process":1,"type":"invoke","f":"put","time":0,"req":{"key":"x","value":"1"}}"#
        );
        let second = text.lines().nth(1).unwrap();
        assert_eq!(
            second,
            r#"{"process":1,"type":"ok","f":"put","time":1,"resp":{"revision":2},"error":null}"#
        );
        let ops = h.operations().unwrap();
        assert_eq!(ops.len(), 6);
        assert_eq!(ops[5].complete_time, None);
        assert_eq!(ops[3].outcome, Outcome::Info(Some("timeout".into())));
    }

    #[test]
    fn parses_the_documented_lines() {
        let text = r#"
{"process":3,"type":"invoke","f":"put","time":1000,"req":{"key":"x","value":"1"}}
{"process":3,"type":"ok","f":"put","time":2000,"resp":{"revision":2},"error":null}
{"process":1,"type":"invoke","f":"txn","time":2100,"req":{"compares":[{"key":"x","target":"mod","result":"equal","operand":2}],"success":[{"put":{"key":"x","value":"2"}}],"failure":[]}}
{"process":1,"type":"info","f":"txn","time":2200,"resp":null,"error":"timeout"}
"#;
        let h = History::from_jsonl(text).unwrap();
        let ops = h.operations().unwrap();
        assert_eq!(ops[0].ok(), Some(&Response::put(2)));
        assert!(matches!(ops[1].request, Request::Txn(_)));
        assert_eq!(ops[1].outcome, Outcome::Info(Some("timeout".into())));
    }

    #[test]
    fn rejects_overlap_and_orphans() {
        let h = History::builder()
            .invoke(1, Request::get("x"))
            .invoke(1, Request::get("x"))
            .build();
        assert!(matches!(h.operations(), Err(HistoryError::Overlap { .. })));
        let h = History::builder().ok(1, Response::put(2)).build();
        assert!(matches!(h.operations(), Err(HistoryError::Orphan { .. })));
        let h = History::builder()
            .invoke(1, Request::get("x"))
            .ok(1, Response::put(2))
            .build();
        assert!(matches!(h.operations(), Err(HistoryError::Mismatch { .. })));
    }
}
