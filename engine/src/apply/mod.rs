//! Applying etcd requests to the MVCC store, with etcd 3.4's semantics (`etcdserver/apply.go`,
//! `api/v3rpc/key.go`).
//!
//! Two kinds of functions:
//! - `check_*`: stateless validation done *before* proposing, as etcd's gRPC layer does
//!   (empty key, too many ops, duplicate keys in a txn, ...). A request that fails here never
//!   reaches the log. [`txn`] relies on [`check_txn`] having passed.
//! - [`range`], [`put`], [`delete_range`], [`txn`], [`compact`], [`hash_kv`]: run on committed
//!   entries (or, for reads, on the applied state). Each response's `header` carries only
//!   `revision`; the node fills `cluster_id`, `member_id` and `raft_term` (of the top-level
//!   response only: etcd leaves nested headers as they are here). The events a write made
//!   (for watchers) are left in the store: take them with [`Store::take_events`] after each
//!   applied entry; the next write replaces them. A failed write leaves none.
//!
//! ```
//! use bytes::Bytes;
//! use keel_engine::apply::{self, NoLeases};
//! use keel_engine::mvcc::Store;
//! use keel_proto::etcdserverpb::{PutRequest, RangeRequest};
//! let mut store = Store::default();
//! let put = PutRequest { key: Bytes::from("k"), value: Bytes::from("v"), ..Default::default() };
//! apply::check_put(&put).unwrap();
//! let response = apply::put(&mut store, &put, &NoLeases).unwrap();
//! assert_eq!(response.header.unwrap().revision, 2);
//! assert_eq!(store.take_events().len(), 1);
//! let get = RangeRequest { key: Bytes::from("k"), ..Default::default() };
//! let got = apply::range(&store, &get).unwrap();
//! assert_eq!((got.count, got.kvs[0].version), (1, 1));
//! ```

use std::cmp::Ordering;
use std::collections::BTreeSet;

use bytes::Bytes;
use keel_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_proto::etcdserverpb::request_op::Request;
use keel_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest,
    HashKvResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest,
};

use crate::error::Error;
use crate::mvcc::{KeyRange, KeyValue, RangeOptions, Store, WriteTxn};

mod txn;
pub use txn::{txn, txn_is_read_only};

/// etcd's default `--max-txn-ops`.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;

/// Answers whether a lease exists: the node passes its [`crate::lease::Leases`]; tests of the
/// appliers alone pass [`NoLeases`], under which any non-zero lease is `LeaseNotFound` (as etcd
/// answers for an unknown lease).
pub trait LeaseLookup {
    /// True if lease `id` exists.
    fn exists(&self, id: i64) -> bool;
}

/// A [`LeaseLookup`] that knows no lease.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLeases;

impl LeaseLookup for NoLeases {
    fn exists(&self, _id: i64) -> bool {
        false
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Validation before proposing (etcd's v3rpc checks).
// ---------------------------------------------------------------------------------------------

/// Checks a range request: the key must not be empty.
pub fn check_range(req: &RangeRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Checks a put: non-empty key; `ignore_value` with no value; `ignore_lease` with no lease.
pub fn check_put(req: &PutRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// Checks a delete: the key must not be empty.
pub fn check_delete_range(req: &DeleteRangeRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Checks a compaction. etcd checks nothing before proposing (the revision is judged when
/// applied); kept for symmetry so the node can call one check per request kind.
pub fn check_compaction(_req: &CompactionRequest) -> Result<(), Error> {
    Ok(())
}

/// Checks a txn as etcd 3.4 does, in etcd's order:
///
/// 1. `TooManyOps` if the compares, the success ops or the failure ops number more than
///    `txn_ops_max`; a nested txn is held to `txn_ops_max` minus the largest of those three
///    counts of its parent.
/// 2. `EmptyKey` for a compare or op with an empty key; `KeyNotFound` for an op with no
///    request set; put checks as in [`check_put`] (recursively, success ops before failure).
/// 3. `DuplicateKey`, per branch (success, then failure), by etcd's `checkIntervals`: a put
///    may not hit a key another put of the branch writes or a delete of the branch covers.
///    Nested txns count too, with etcd's quirks kept: the success and failure puts of one
///    nested txn may share keys; a nested put is checked only against deletes of the parent
///    level and of nested txns *before* it; a delete's `range_end` of `"\0"` (meaning "to the
///    end") covers no key here.
///
/// ```
/// use bytes::Bytes;
/// use keel_engine::apply::check_txn;
/// use keel_engine::error::Error;
/// use keel_proto::etcdserverpb::{request_op::Request, DeleteRangeRequest, PutRequest};
/// use keel_proto::etcdserverpb::{RequestOp, TxnRequest};
/// let put = |k: &'static str| RequestOp { request: Some(Request::RequestPut(PutRequest {
///     key: Bytes::from(k), ..Default::default() })) };
/// let del = |k: &'static str, end: &'static str| RequestOp {
///     request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
///         key: Bytes::from(k), range_end: Bytes::from(end), ..Default::default() })) };
/// let txn = |success: Vec<RequestOp>| TxnRequest { success, ..Default::default() };
/// assert_eq!(check_txn(&txn(vec![put("a"), put("a")]), 128), Err(Error::DuplicateKey));
/// assert_eq!(check_txn(&txn(vec![put("b"), del("a", "c")]), 128), Err(Error::DuplicateKey));
/// assert_eq!(check_txn(&txn(vec![put("b"), del("a", "\0")]), 128), Ok(())); // etcd 3.4
/// assert_eq!(check_txn(&txn(vec![put("a"), put("b")]), 1), Err(Error::TooManyOps));
/// ```
pub fn check_txn(req: &TxnRequest, txn_ops_max: usize) -> Result<(), Error> {
    check_txn_request(req, txn_ops_max)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn_request(req: &TxnRequest, txn_ops_max: usize) -> Result<(), Error> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > txn_ops_max {
        return Err(Error::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_request_op(op, txn_ops_max - ops)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, txn_ops_max: usize) -> Result<(), Error> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete_range(r),
        Some(Request::RequestTxn(r)) => check_txn_request(r, txn_ops_max),
        None => Err(Error::KeyNotFound),
    }
}

/// A delete's key interval as etcd's `checkIntervals` sees it: a point for an empty
/// `range_end`, else `[key, range_end)` taken literally (so `"\0"` covers nothing).
#[derive(Clone, Copy, Debug)]
struct DeleteInterval<'r> {
    start: &'r [u8],
    end: Option<&'r [u8]>,
}

impl DeleteInterval<'_> {
    fn covers(&self, key: &[u8]) -> bool {
        match self.end {
            None => self.start == key,
            Some(end) => self.start <= key && key < end,
        }
    }
}

type PutsAndDeletes<'r> = (BTreeSet<&'r [u8]>, Vec<DeleteInterval<'r>>);

fn covered(deletes: &[DeleteInterval<'_>], key: &[u8]) -> bool {
    deletes.iter().any(|d| d.covers(key))
}

/// etcd 3.4's `checkIntervals` for one branch; returns the branch's puts and deletes.
fn check_intervals(ops: &[RequestOp]) -> Result<PutsAndDeletes<'_>, Error> {
    let mut deletes: Vec<DeleteInterval<'_>> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(DeleteInterval {
                start: &d.key,
                end: (!d.range_end.is_empty()).then_some(&d.range_end[..]),
            }),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = check_intervals(&nested.success)?;
        let (puts_else, deletes_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || covered(&deletes, key) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(key);
        }
        for key in &puts_else {
            // then/else are mutually exclusive: sharing a key with puts_then is fine.
            if (puts.contains(key) && !puts_then.contains(key)) || covered(&deletes, key) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(key);
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key[..]) || covered(&deletes, &put.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(&put.key);
    }
    Ok((puts, deletes))
}

// ---------------------------------------------------------------------------------------------
// Reads.
// ---------------------------------------------------------------------------------------------

/// Serves a range request at the store's state (etcd's `applierV3backend.Range`):
///
/// - `key`/`range_end` as in [`KeyRange::from_wire`]; `revision` ≤ 0 is the current one;
///   `Compacted` below the compaction revision, `FutureRev` above the current one.
/// - `count` is every key in the range at that revision, before `limit` and the min/max filters.
/// - With a sort order or a min/max filter every key is fetched, filtered, sorted (stable),
///   then cut to `limit` (`more` set if something was cut). Without them `limit + 1` keys are
///   fetched, to learn `more`. A sort target other than KEY with order NONE sorts ascending
///   (but, as in etcd, still fetches only `limit + 1` keys first).
/// - `keys_only` empties values; `count_only` returns no kvs; `serializable` changes nothing
///   here (the node decides where a read is served).
pub fn range(store: &Store, req: &RangeRequest) -> Result<RangeResponse, Error> {
    let sorts_or_filters = req.sort_order != SortOrder::None as i32
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let fetch_limit = match req.limit {
        _ if sorts_or_filters => 0,
        limit if limit > 0 => limit.saturating_add(1),
        limit => limit,
    };
    let options = RangeOptions {
        limit: fetch_limit,
        revision: req.revision,
        count_only: req.count_only,
    };
    let result = store.range(KeyRange::from_wire(&req.key, &req.range_end), &options)?;
    let mut kvs = result.kvs;
    kvs.retain(|kv| passes_filters(req, kv));
    sort_kvs(req, &mut kvs);
    let mut more = false;
    if let Ok(limit) = usize::try_from(req.limit) {
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    if req.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
    }
    Ok(RangeResponse {
        header: header(result.revision),
        kvs,
        more,
        count: result.count,
    })
}

fn passes_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    !((req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision)
        || (req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision)
        || (req.max_create_revision != 0 && kv.create_revision > req.max_create_revision)
        || (req.min_create_revision != 0 && kv.create_revision < req.min_create_revision))
}

fn sort_kvs(req: &RangeRequest, kvs: &mut [KeyValue]) {
    let target = SortTarget::try_from(req.sort_target);
    let mut order = SortOrder::try_from(req.sort_order);
    if req.sort_target != SortTarget::Key as i32 && order == Ok(SortOrder::None) {
        order = Ok(SortOrder::Ascend);
    }
    let compare: fn(&KeyValue, &KeyValue) -> Ordering = match target {
        Ok(SortTarget::Key) => |a, b| a.key.cmp(&b.key),
        Ok(SortTarget::Version) => |a, b| a.version.cmp(&b.version),
        Ok(SortTarget::Create) => |a, b| a.create_revision.cmp(&b.create_revision),
        Ok(SortTarget::Mod) => |a, b| a.mod_revision.cmp(&b.mod_revision),
        Ok(SortTarget::Value) => |a, b| a.value.cmp(&b.value),
        Err(_) => return, // etcd has no sorter for an unknown target
    };
    match order {
        Ok(SortOrder::Ascend) => kvs.sort_by(compare),
        Ok(SortOrder::Descend) => kvs.sort_by(|a, b| compare(b, a)),
        Ok(SortOrder::None) | Err(_) => {}
    }
}

/// Serves a hash request (etcd's `HashKV`): see [`Store::hash_kv`].
pub fn hash_kv(store: &Store, req: &HashKvRequest) -> Result<HashKvResponse, Error> {
    let hash = store.hash_kv(req.revision)?;
    Ok(HashKvResponse {
        header: header(hash.revision),
        hash: hash.hash,
        compact_revision: hash.compact_revision,
        hash_revision: hash.hashed_revision,
    })
}

// ---------------------------------------------------------------------------------------------
// Writes.
// ---------------------------------------------------------------------------------------------

/// Applies a put (etcd's `applierV3backend.Put`): `LeaseNotFound` for an unknown non-zero
/// lease, then `KeyNotFound` if `ignore_value`/`ignore_lease` is set and the key does not
/// exist (nothing changes on error). `ignore_value` keeps the old value, `ignore_lease` the
/// old lease; `prev_kv` returns the state before.
pub fn put(
    store: &mut Store,
    req: &PutRequest,
    leases: &dyn LeaseLookup,
) -> Result<PutResponse, Error> {
    store.set_applied_events(Vec::new());
    if req.lease != 0 && !leases.exists(req.lease) {
        return Err(Error::LeaseNotFound);
    }
    let mut txn = store.write();
    let response = put_in(&mut txn, req)?;
    let events = txn.end().events;
    store.set_applied_events(events);
    Ok(response)
}

fn put_in(txn: &mut WriteTxn<'_>, req: &PutRequest) -> Result<PutResponse, Error> {
    let needs_prev = req.ignore_value || req.ignore_lease || req.prev_kv;
    let prev = if needs_prev {
        txn.store().kv_at(&req.key, 0)
    } else {
        None
    };
    let (mut value, mut lease) = (req.value.clone(), req.lease);
    if req.ignore_value || req.ignore_lease {
        let Some(prev) = &prev else {
            return Err(Error::KeyNotFound);
        };
        if req.ignore_value {
            value = prev.value.clone();
        }
        if req.ignore_lease {
            lease = prev.lease;
        }
    }
    let revision = txn.put(&req.key, value, lease);
    Ok(PutResponse {
        header: header(revision),
        prev_kv: prev.filter(|_| req.prev_kv),
    })
}

/// Applies a delete (etcd's `applierV3backend.DeleteRange`): `deleted` counts the keys
/// removed, `prev_kvs` (when asked) holds them as they were. Deleting nothing keeps the
/// revision.
pub fn delete_range(
    store: &mut Store,
    req: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Error> {
    store.set_applied_events(Vec::new());
    let mut txn = store.write();
    let response = delete_in(&mut txn, req)?;
    let events = txn.end().events;
    store.set_applied_events(events);
    Ok(response)
}

fn delete_in(
    txn: &mut WriteTxn<'_>,
    req: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Error> {
    let range = KeyRange::from_wire(&req.key, &req.range_end);
    let prev_kvs = if req.prev_kv {
        txn.range(range, &RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let deleted = txn.delete_range(range);
    Ok(DeleteRangeResponse {
        header: header(txn.revision()),
        deleted,
        prev_kvs,
    })
}

/// Applies a compaction (etcd's `applierV3backend.Compaction`); synchronous here, so
/// `physical` changes nothing. Errors as [`Store::compact`].
pub fn compact(store: &mut Store, req: &CompactionRequest) -> Result<CompactionResponse, Error> {
    store.compact(req.revision)?;
    Ok(CompactionResponse {
        header: header(store.current_revision()),
    })
}
