//! What the Lock and Election services share: etcd 3.4's client-side concurrency recipe
//! (`clientv3/concurrency`: sessions, waiting for deletes), run in-process over this member's
//! own KV, Lease and Watch calls, as etcd's `v3lock` and `v3election` servers run it over an
//! in-process client.
//!
//! etcd's servers return the recipe's errors as plain Go errors, so every failure reaches the
//! client as gRPC `Unknown` with etcd's text (`etcdserver: requested lease not found`,
//! `election: no leader`, ...); [`recipe_status`] does the same.
//!
//! Waiting never polls: a waiter watches the one key ahead of it ([`KeyWatch`]) and asks
//! again only when that key is deleted. A waiter whose client goes away is dropped by tonic,
//! which drops its watch (closing its stream in the engine); [`Cleanup`] then does what etcd
//! does for a cancelled wait.

use bytes::Bytes;
use keel_engine::apply;
use keel_engine::error::Error;
use keel_engine::watch::{StreamId, WatchInput};
use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchResponse,
};
use keel_proto::mvccpb::event::EventType;
use keel_proto::mvccpb::KeyValue;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::Status;

use super::Services;
use crate::driver::{Handle, WatchMessage};
use crate::status::to_status;

/// The TTL etcd's concurrency sessions grant when the request names no lease (lease 0).
pub const SESSION_TTL_S: i64 = 60;

/// A recipe failure as etcd's lock and election servers return it: gRPC `Unknown`, etcd's
/// text.
pub fn recipe_status(e: Error) -> Status {
    Status::unknown(e.to_string())
}

/// `prefix` followed by `lease` in lower-case hex, as Go's `%x` prints an int64 (a negative
/// lease gets a minus sign).
pub fn lease_key(prefix: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    Bytes::from(key)
}

/// The range end that covers every key starting with `prefix` (clientv3's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented and the rest
/// cut; `"\0"` (to the end of the keyspace) when every byte is 0xff.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(at) => {
            let mut end = prefix[..=at].to_vec();
            end[at] += 1;
            Bytes::from(end)
        }
        None => Bytes::from_static(b"\0"),
    }
}

/// `name` + `/`: the prefix under which a lock's or an election's keys live.
pub fn name_prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
}

/// The oldest (`Ascend`) or newest (`Descend`) key by create revision under `prefix`, up to
/// `max_create_revision` (0: any): clientv3's `WithFirstCreate` / `WithLastCreate`.
pub fn by_create(prefix: &Bytes, order: SortOrder, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

/// The compare `create_revision(key) == revision`.
pub fn created_at(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

/// A txn op putting `value` at `key` bound to `lease`.
pub fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    let put = PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    };
    RequestOp {
        request: Some(request_op::Request::RequestPut(put)),
    }
}

/// A txn op reading `range`.
pub fn range_op(range: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range)),
    }
}

/// A txn op deleting `key`.
pub fn delete_op(key: &Bytes) -> RequestOp {
    let delete = DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    };
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(delete)),
    }
}

/// The range answer of a txn's `at`th op, if that op was a range.
pub fn range_answer(txn: &TxnResponse, at: usize) -> Option<&RangeResponse> {
    match txn.responses.get(at)?.response.as_ref()? {
        response_op::Response::ResponseRange(r) => Some(r),
        _ => None,
    }
}

/// The first key of the `at`th range answer of a txn; an error if there is none (the recipe's
/// txns read keys their compares proved present).
pub fn first_kv(txn: &TxnResponse, at: usize) -> Result<KeyValue, Status> {
    range_answer(txn, at)
        .and_then(|r| r.kvs.first().cloned())
        .ok_or_else(|| Status::internal("the recipe's txn read no key where one must be"))
}

impl Services {
    /// The recipe's txn, checked as the KV service checks one.
    pub(super) async fn recipe_txn(&self, txn: TxnRequest) -> Result<TxnResponse, Status> {
        apply::check_txn(&txn, self.max_txn_ops).map_err(recipe_status)?;
        self.recipe_fits(txn.encoded_len())?;
        self.handle
            .call_as(self.caller.clone(), txn)
            .await
            .map_err(recipe_status)
    }

    /// The recipe's (linearizable) range.
    pub(super) async fn recipe_range(&self, range: RangeRequest) -> Result<RangeResponse, Status> {
        apply::check_range(&range).map_err(recipe_status)?;
        self.handle
            .call_as(self.caller.clone(), range)
            .await
            .map_err(recipe_status)
    }

    /// Deletes `key`, as etcd's Unlock and a cancelled lock wait do.
    pub(super) async fn recipe_delete(
        &self,
        key: Bytes,
    ) -> Result<keel_proto::etcdserverpb::DeleteRangeResponse, Status> {
        let delete = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        apply::check_delete_range(&delete).map_err(recipe_status)?;
        self.recipe_fits(delete.encoded_len())?;
        self.handle
            .call_as(self.caller.clone(), delete)
            .await
            .map_err(recipe_status)
    }

    fn recipe_fits(&self, encoded_len: usize) -> Result<(), Status> {
        if encoded_len > self.max_request_bytes {
            return Err(recipe_status(Error::RequestTooLarge));
        }
        Ok(())
    }

    /// The lease of etcd's concurrency session for a request naming `lease`: that lease, or
    /// with 0 a fresh one of [`SESSION_TTL_S`] (etcd's sessions grant one, and orphan it: it
    /// is never kept alive nor revoked by the server).
    pub(super) async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let grant = LeaseGrantRequest {
            ttl: SESSION_TTL_S,
            id: 0,
        };
        let granted = self
            .handle
            .call_as(self.caller.clone(), grant)
            .await
            .map_err(recipe_status)?;
        Ok(granted.id)
    }

    /// etcd serves no Lock or Election call on a learner (its interceptor refuses them before
    /// they reach the recipe, with the interceptor's own code).
    pub(super) async fn refuse_on_learner(&self) -> Result<(), Status> {
        if self.handle.status().await.map_err(to_status)?.is_learner {
            return Err(to_status(Error::NotSupportedForLearner));
        }
        Ok(())
    }

    /// Waits until no key under `prefix` created at or before `max_create_revision` is left
    /// (clientv3's `waitDeletes`): watches the newest such key until it is deleted, then asks
    /// again. Returns the header of the read that found none.
    pub(super) async fn wait_deletes(
        &self,
        prefix: &Bytes,
        max_create_revision: i64,
    ) -> Result<Option<ResponseHeader>, Status> {
        loop {
            let range = by_create(prefix, SortOrder::Descend, max_create_revision);
            let found = self.recipe_range(range).await?;
            let Some(last) = found.kvs.first() else {
                return Ok(found.header);
            };
            let revision = found.header.as_ref().map_or(0, |h| h.revision);
            self.wait_delete(last.key.clone(), revision).await?;
        }
    }

    /// Waits until `key` is deleted, watching it from `revision` (clientv3's `waitDelete`).
    async fn wait_delete(&self, key: Bytes, revision: i64) -> Result<(), Status> {
        let watch = WatchCreateRequest {
            key,
            start_revision: revision,
            ..Default::default()
        };
        let mut watch = KeyWatch::open(&self.handle, watch).await?;
        loop {
            let response = watch.next().await?;
            let deleted = response
                .events
                .iter()
                .any(|e| e.r#type == EventType::Delete as i32);
            if deleted {
                return Ok(());
            }
        }
    }
}

/// One watch over this member's watch hub, read in-process. Dropping it closes its stream, so
/// the engine forgets the watcher.
pub struct KeyWatch {
    handle: Handle,
    stream: StreamId,
    responses: mpsc::Receiver<WatchMessage>,
}

impl KeyWatch {
    /// Opens a stream and creates `request`'s watch on it.
    pub async fn open(handle: &Handle, request: WatchCreateRequest) -> Result<KeyWatch, Status> {
        let (stream, responses) = handle.watch_open().await.map_err(recipe_status)?;
        // From here on, dropping the watch closes the stream.
        let watch = KeyWatch {
            handle: handle.clone(),
            stream,
            responses,
        };
        let create = WatchInput::Create { stream, request };
        handle.watch(create).await.map_err(recipe_status)?;
        Ok(watch)
    }

    /// The next response carrying events. A cancelled watch is clientv3's error for it
    /// (`WatchResponse.Err`): compacted, or the cancel reason; a stream the server ended is
    /// etcd's "lost watcher" error.
    pub async fn next(&mut self) -> Result<WatchResponse, Status> {
        loop {
            let response = match self.responses.recv().await {
                Some(Ok(response)) => response,
                Some(Err(reason)) => return Err(Status::unknown(reason)),
                None => return Err(recipe_status(Error::Stopped)),
            };
            // Every response read is credit back: the engine never holds one for us.
            self.handle.watch_control(WatchInput::Credit {
                stream: self.stream,
                responses: 1,
            });
            if response.compact_revision != 0 {
                return Err(recipe_status(Error::Compacted));
            }
            if response.canceled {
                if response.cancel_reason.is_empty() {
                    return Err(recipe_status(Error::FutureRev));
                }
                return Err(Status::unknown(response.cancel_reason));
            }
            if !response.events.is_empty() {
                return Ok(response);
            }
        }
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.handle.watch_control(WatchInput::Close {
            stream: self.stream,
        });
    }
}

/// What etcd does when a wait is cut short by its caller going away.
#[derive(Debug, Clone)]
pub enum Undo {
    /// Delete the key (a lock waiter's `Unlock`).
    Delete(Bytes),
    /// Delete the key if it is still the one created at this revision (an election
    /// candidate's `Resign`).
    Resign(Bytes, i64),
}

/// Runs an [`Undo`] if dropped while armed: tonic drops a call's future when its client
/// goes away, so this is where a cancelled wait is cleaned up (in a task of its own, since
/// a destructor cannot wait).
pub struct Cleanup {
    armed: Option<(Services, Undo)>,
}

impl Cleanup {
    /// Armed with `undo`.
    pub fn arm(services: &Services, undo: Undo) -> Cleanup {
        Cleanup {
            armed: Some((services.clone(), undo)),
        }
    }

    /// The wait ended by itself: nothing to do on drop.
    pub fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some((services, undo)) = self.armed.take() {
            tokio::spawn(async move {
                let outcome = services.undo(undo.clone()).await;
                if let Err(e) = outcome {
                    tracing::warn!(?undo, error = %e.message(), "cleaning up a cancelled wait");
                }
            });
        }
    }
}

impl Services {
    /// Carries out `undo` now.
    pub(super) async fn undo(&self, undo: Undo) -> Result<Option<ResponseHeader>, Status> {
        match undo {
            Undo::Delete(key) => Ok(self.recipe_delete(key).await?.header),
            Undo::Resign(key, revision) => {
                let txn = TxnRequest {
                    compare: vec![created_at(&key, revision)],
                    success: vec![delete_op(&key)],
                    failure: Vec::new(),
                };
                Ok(self.recipe_txn(txn).await?.header)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_print_as_go_does() {
        assert_eq!(&lease_key(b"l/", 0x694d_7d3a)[..], b"l/694d7d3a");
        assert_eq!(&lease_key(b"l/", -26)[..], b"l/-1a");
        assert_eq!(&lease_key(b"", 0)[..], b"0");
    }

    #[test]
    fn prefix_ends_are_clientv3s() {
        assert_eq!(&prefix_end(b"a/")[..], b"a0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
        assert_eq!(&name_prefix(b"")[..], b"/");
    }
}
