//! Txn: etcd's `applierV3backend.Txn` and `isTxnReadonly` (see [`txn`]).

use std::cmp::Ordering;

use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::request_op::Request;
use keel_proto::etcdserverpb::response_op::Response;
use keel_proto::etcdserverpb::{
    Compare, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

use crate::error::Error;
use crate::mvcc::{KeyRange, Store, WriteTxn};

use super::{delete_in, header, put_in, range, LeaseLookup};

/// True if no branch of the txn, nested ones included, writes (etcd's `isTxnReadonly`): such
/// a txn may be served like a range, without going through the log.
pub fn txn_is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
            Some(Request::RequestTxn(nested)) => txn_is_read_only(nested),
            Some(Request::RequestRange(_)) | None => true,
        })
}

/// Applies a txn (etcd's `applierV3backend.Txn`), which must have passed [`super::check_txn`]:
///
/// 1. Evaluates the compares of the txn and of every nested txn on the chosen paths against
///    the state *before* the txn (as etcd does) and picks success or failure.
/// 2. Checks the chosen ops before changing anything: puts (`KeyNotFound` for
///    `ignore_value`/`ignore_lease` on a missing key, `LeaseNotFound`), then ranges
///    (`FutureRev`, `Compacted`). A failing txn changes nothing.
/// 3. Applies the chosen ops in order in one write txn (one revision); ranges see earlier
///    writes of the txn.
///
/// A compare is true when every key in its range satisfies it. On no key at all, a VALUE
/// compare is false and the others compare against 0.
pub fn txn(
    store: &mut Store,
    req: &TxnRequest,
    leases: &dyn LeaseLookup,
) -> Result<TxnResponse, Error> {
    store.set_applied_events(Vec::new());
    let mut path = Vec::new();
    compare_path(store, req, &mut path);
    let mut effects = Vec::new();
    walk_chosen(req, &path, &mut 0, &mut |op| {
        check_put_op(store, op, leases, &mut effects)
    })?;
    walk_chosen(req, &path, &mut 0, &mut |op| check_range_op(store, op))?;
    let mut write = store.write();
    let mut response = apply_txn(&mut write, req, &path, &mut 0)?;
    let outcome = write.end();
    response.header = header(outcome.revision);
    store.set_applied_events(outcome.events);
    Ok(response)
}

/// Pre-order list of compare outcomes: this txn's, then those of nested txns on its chosen
/// branch (etcd's `compareToPath`).
fn compare_path(store: &Store, req: &TxnRequest, path: &mut Vec<bool>) {
    let succeeded = req.compare.iter().all(|c| compare_holds(store, c));
    path.push(succeeded);
    for op in chosen_ops(req, succeeded) {
        if let Some(Request::RequestTxn(nested)) = &op.request {
            compare_path(store, nested, path);
        }
    }
}

fn chosen_ops(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn next_outcome(path: &[bool], cursor: &mut usize) -> bool {
    assert!(
        *cursor < path.len(),
        "compare path shorter than the txn tree"
    );
    let succeeded = path[*cursor];
    *cursor += 1;
    succeeded
}

/// Calls `check` on every non-txn op of the chosen paths, in order.
fn walk_chosen<'r>(
    req: &'r TxnRequest,
    path: &[bool],
    cursor: &mut usize,
    check: &mut dyn FnMut(&'r RequestOp) -> Result<(), Error>,
) -> Result<(), Error> {
    let succeeded = next_outcome(path, cursor);
    for op in chosen_ops(req, succeeded) {
        match &op.request {
            Some(Request::RequestTxn(nested)) => walk_chosen(nested, path, cursor, check)?,
            _ => check(op)?,
        }
    }
    Ok(())
}

/// What the ops before the one being checked did, in order: lets a put with
/// `ignore_value`/`ignore_lease` be checked against the state it will really see.
enum Effect<'r> {
    Put(&'r [u8]),
    Delete(KeyRange<'r>),
}

/// Whether `key` exists after `effects`, applied to `store`.
fn exists_after(store: &Store, effects: &[Effect<'_>], key: &[u8]) -> bool {
    for effect in effects.iter().rev() {
        match effect {
            Effect::Put(put) if *put == key => return true,
            Effect::Delete(range) if range.contains(key) => return false,
            _ => {}
        }
    }
    store.kv_at(key, 0).is_some()
}

/// etcd's `checkPut`, with one deliberate difference: etcd checks `ignore_value` against the
/// state before the txn, so a delete earlier in the same txn that removes the key (possible
/// when its `range_end` is `"\0"`, which `checkIntervals` lets through) makes etcd 3.4.23
/// panic while applying ("unexpected error during txn: etcdserver: key not found"). keel
/// checks against the state the put will see and answers `KeyNotFound`, changing nothing.
fn check_put_op<'r>(
    store: &Store,
    op: &'r RequestOp,
    leases: &dyn LeaseLookup,
    effects: &mut Vec<Effect<'r>>,
) -> Result<(), Error> {
    match &op.request {
        Some(Request::RequestPut(put)) => {
            let needs_key = put.ignore_value || put.ignore_lease;
            if needs_key && !exists_after(store, effects, &put.key) {
                return Err(Error::KeyNotFound);
            }
            if put.lease != 0 && !leases.exists(put.lease) {
                return Err(Error::LeaseNotFound);
            }
            effects.push(Effect::Put(&put.key));
        }
        Some(Request::RequestDeleteRange(delete)) => {
            effects.push(Effect::Delete(KeyRange::from_wire(
                &delete.key,
                &delete.range_end,
            )));
        }
        _ => {}
    }
    Ok(())
}

fn check_range_op(store: &Store, op: &RequestOp) -> Result<(), Error> {
    let Some(Request::RequestRange(range)) = &op.request else {
        return Ok(());
    };
    if range.revision == 0 {
        return Ok(());
    }
    if range.revision > store.current_revision() {
        return Err(Error::FutureRev);
    }
    if range.revision < store.compact_revision() {
        return Err(Error::Compacted);
    }
    Ok(())
}

fn apply_txn(
    write: &mut WriteTxn<'_>,
    req: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
) -> Result<TxnResponse, Error> {
    let succeeded = next_outcome(path, cursor);
    let ops = chosen_ops(req, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                Some(Response::ResponseRange(range(write.store(), r)?))
            }
            Some(Request::RequestPut(r)) => Some(Response::ResponsePut(put_in(write, r)?)),
            Some(Request::RequestDeleteRange(r)) => {
                Some(Response::ResponseDeleteRange(delete_in(write, r)?))
            }
            Some(Request::RequestTxn(r)) => {
                Some(Response::ResponseTxn(apply_txn(write, r, path, cursor)?))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    // Nested txn responses keep an empty header, as etcd's do; the caller sets the top one.
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

/// True if every key in the compare's range satisfies it (etcd's `applyCompare`).
fn compare_holds(store: &Store, c: &Compare) -> bool {
    let mut any = false;
    for (_, key_index) in store
        .index()
        .range(KeyRange::from_wire(&c.key, &c.range_end))
    {
        let Some(found) = key_index.current() else {
            continue;
        };
        any = true;
        let kv = CompareKv {
            value: &found.entry.value,
            version: found.version,
            create_revision: found.created.main,
            mod_revision: found.entry.revision.main,
            lease: found.entry.lease,
        };
        if !compare_kv(c, &kv) {
            return false;
        }
    }
    if any {
        return true;
    }
    // No key: a VALUE compare always fails (a missing value cannot be told from an empty one
    // on the wire); the others compare against zero.
    c.target != CompareTarget::Value as i32 && compare_kv(c, &CompareKv::default())
}

#[derive(Default)]
struct CompareKv<'a> {
    value: &'a [u8],
    version: i64,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

fn compare_kv(c: &Compare, kv: &CompareKv<'_>) -> bool {
    let int = |want: Option<i64>, have: i64| have.cmp(&want.unwrap_or(0));
    let union = c.target_union.as_ref();
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want = match union {
                Some(TargetUnion::Value(v)) => &v[..],
                _ => &[],
            };
            kv.value.cmp(want)
        }
        Ok(CompareTarget::Version) => int(
            match union {
                Some(TargetUnion::Version(v)) => Some(*v),
                _ => None,
            },
            kv.version,
        ),
        Ok(CompareTarget::Create) => int(
            match union {
                Some(TargetUnion::CreateRevision(v)) => Some(*v),
                _ => None,
            },
            kv.create_revision,
        ),
        Ok(CompareTarget::Mod) => int(
            match union {
                Some(TargetUnion::ModRevision(v)) => Some(*v),
                _ => None,
            },
            kv.mod_revision,
        ),
        Ok(CompareTarget::Lease) => int(
            match union {
                Some(TargetUnion::Lease(v)) => Some(*v),
                _ => None,
            },
            kv.lease,
        ),
        Err(_) => Ordering::Equal, // etcd: unknown target leaves the result at 0
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true, // etcd: unknown result is true
    }
}
