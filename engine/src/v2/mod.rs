//! etcd's v2 keys API store, pure and deterministic: a tree of directories and keys with a
//! global index, TTLs, compare-and-swap/delete, in-order keys and the 1000-event history
//! waits are served from. It is replicated state, next to and separate from the v3 keyspace
//! (v2 keys are invisible to v3 and the reverse, as in etcd 3.4).
//!
//! Writes (`PUT`, `POST`, `DELETE`) come through the raft log as `keelpb.V2Request` entries;
//! reads (`GET`, `HEAD`, waits) are served from the applied store. The engine has no clock:
//! a request carries the requesting server's time (`time`) and, for a TTL, the expiration it
//! computed from it, as etcd's HTTP layer computes `Expiration`. Expiry goes through raft as
//! in etcd: the leader's server proposes a `SYNC` with its time once a TTL has run out, and
//! every member removes the expired nodes when it applies that entry, at the same index.
//!
//! Applied changes are kept in the history ([`history`]) and handed out with
//! [`V2Store::take_events`] for the server's waiting clients; the section codec
//! ([`section`]) puts the tree and the history into state snapshots.

pub mod error;
mod history;
pub mod section;
mod store;
mod tree;

#[cfg(test)]
mod tests;

use keel_proto::keelpb::{V2Request, V2Response};

pub use history::HISTORY_CAPACITY;
pub use store::V2Store;
pub use tree::clean;

/// etcd's store counters, in the order of etcd's `/v2/stats/store` (without `watchers`,
/// which the server counts).
pub const STATS_FIELDS: [&str; 15] = [
    "getsSuccess",
    "getsFail",
    "setsSuccess",
    "setsFail",
    "deleteSuccess",
    "deleteFail",
    "updateSuccess",
    "updateFail",
    "createSuccess",
    "createFail",
    "compareAndSwapSuccess",
    "compareAndSwapFail",
    "compareAndDeleteSuccess",
    "compareAndDeleteFail",
    "expireCount",
];

/// This member's store counters (soft state, as etcd's are).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct V2Stats(pub [u64; 15]);

impl V2Stats {
    fn count(&mut self, op: usize, ok: bool) {
        let i = 2 * op + usize::from(!ok);
        self.0[i] = self.0[i].saturating_add(1);
    }
}

const GET: usize = 0;
const SET: usize = 1;
const DELETE: usize = 2;
const UPDATE: usize = 3;
const CREATE: usize = 4;
const CAS: usize = 5;
const CAD: usize = 6;
const EXPIRE: usize = 14;

impl V2Store {
    /// Applies a write entry (etcd's `applierV2store`).
    pub fn apply(&mut self, r: &V2Request) -> V2Response {
        let (op, result) = match r.method.as_str() {
            "POST" => (
                CREATE,
                self.create_new(&r.path, r.dir, &r.val, true, r.expiration, r.time),
            ),
            "PUT" => self.put(r),
            "DELETE" if r.prev_index > 0 || !r.prev_value.is_empty() => (
                CAD,
                self.compare_and_delete(&r.path, &r.prev_value, r.prev_index, r.time),
            ),
            "DELETE" => (DELETE, self.delete(&r.path, r.dir, r.recursive, r.time)),
            "SYNC" => {
                let expired = self.delete_expired(r.time) as u64;
                self.stats.0[EXPIRE] = self.stats.0[EXPIRE].saturating_add(expired);
                return self.response(None, None);
            }
            other => {
                let cause = format!("unknown v2 method {other}");
                let err = error::error(error::RAFT_INTERNAL, cause, self.index);
                return self.response(None, Some(err));
            }
        };
        self.stats.count(op, result.is_ok());
        match result {
            Ok(e) => self.response(Some(e), None),
            Err(e) => self.response(None, Some(e)),
        }
    }

    /// etcd's PUT: create, update, compare-and-swap or set, by `prevExist` and the
    /// comparisons.
    fn put(&mut self, r: &V2Request) -> (usize, store::Outcome) {
        let refresh = r.refresh.unwrap_or(false);
        let compares = r.prev_index > 0 || !r.prev_value.is_empty();
        match r.prev_exist {
            Some(true) if !compares => (
                UPDATE,
                self.update(&r.path, &r.val, r.expiration, refresh, r.time),
            ),
            Some(false) => (
                CREATE,
                self.create_new(&r.path, r.dir, &r.val, false, r.expiration, r.time),
            ),
            _ if compares => (
                CAS,
                self.compare_and_swap(
                    &r.path,
                    &r.prev_value,
                    r.prev_index,
                    &r.val,
                    r.expiration,
                    refresh,
                    r.time,
                ),
            ),
            _ => (
                SET,
                self.set(&r.path, r.dir, &r.val, r.expiration, refresh, r.time),
            ),
        }
    }

    /// Serves a read: `GET`/`HEAD` (a wait when `wait`), `EXPIRY` (the earliest expiration,
    /// in `index`) or `STATS` (the counters, in `stats`). A wait with nothing in the history
    /// yet answers neither an event nor an error; the server then waits for the next change
    /// after `index`.
    pub fn read(&mut self, r: &V2Request) -> V2Response {
        match r.method.as_str() {
            "GET" | "HEAD" if r.wait => match self.watch(&r.path, r.recursive, r.since) {
                Ok(e) => self.response(e, None),
                Err(e) => self.response(None, Some(e)),
            },
            "GET" | "HEAD" => {
                let result = self.get(&r.path, r.recursive, r.time);
                self.stats.count(GET, result.is_ok());
                match result {
                    Ok(e) => self.response(Some(e), None),
                    Err(e) => self.response(None, Some(e)),
                }
            }
            "EXPIRY" => V2Response {
                index: u64::try_from(self.earliest_expiration()).unwrap_or(0),
                ..V2Response::default()
            },
            "STATS" => V2Response {
                index: self.index,
                stats: self.stats.0.to_vec(),
                ..V2Response::default()
            },
            other => {
                let cause = format!("unknown v2 method {other}");
                let err = error::error(error::RAFT_INTERNAL, cause, self.index);
                self.response(None, Some(err))
            }
        }
    }

    fn response(
        &self,
        event: Option<keel_proto::keelpb::V2Event>,
        error: Option<keel_proto::keelpb::V2Error>,
    ) -> V2Response {
        V2Response {
            header: None,
            event: event.map(Box::new),
            error,
            index: self.index,
            stats: Vec::new(),
            raft_index: 0,
        }
    }

    /// What must always hold: every TTL names a node with that expiration, and every node
    /// with an expiration has its TTL; indexes never pass the store's.
    pub fn check_invariants(&self) {
        let mut seen = 0;
        let mut stack = vec![("/".to_string(), &self.root)];
        while let Some((path, n)) = stack.pop() {
            assert!(
                n.created <= self.index && n.modified <= self.index,
                "v2 node {path} is ahead of the index {}",
                self.index
            );
            if n.expiration != 0 {
                seen += 1;
                assert!(
                    self.ttls.contains(&(n.expiration, path.clone())),
                    "v2 node {path} expires but is not scheduled"
                );
            }
            if let Some(children) = n.children() {
                stack.extend(children.iter().map(|(k, c)| (tree::join(&path, k), c)));
            }
        }
        assert_eq!(seen, self.ttls.len(), "v2 TTL schedule names missing nodes");
    }
}
