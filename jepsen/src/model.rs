//! etcd's KV semantics as a sequential state machine: the model the checker replays and the
//! generator runs.
//!
//! The store keeps every version of every key, so a range can read at a past revision. A write
//! that changes something takes the next revision; one that changes nothing (a delete of no key,
//! a txn whose branch only reads) leaves the revision alone. Starting at revision 1:
//!
//! ```text
//! put x=a      -> rev 2: x=a (create 2, mod 2, version 1)
//! put x=b      -> rev 3: x=b (create 2, mod 3, version 2)
//! delete y     -> deleted 0, rev stays 3
//! delete x     -> rev 4: x gone; a range at revision 3 still sees x=b
//! put x=c      -> rev 5: x=c (create 5, mod 5, version 1), a new generation
//! compact 4    -> ranges at revision < 4 now fail with `compacted`
//! ```
//!
//! Every change can be undone ([`Model::undo`]), which is what lets the checker backtrack.
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use crate::history::{
    CompareResult, CompareTarget, DeleteRequest, DeleteResponse, KeyValue, Operand, PutRequest,
    PutResponse, RangeRequest, RangeResponse, Request, RequestOp, Response, ResponseOp, Revision,
    TxnRequest, TxnResponse,
};

/// etcd's errors a request can meet in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The revision asked for has been compacted.
    #[error("compacted")]
    Compacted,
    /// The revision asked for is in the future.
    #[error("future_rev")]
    FutureRev,
}

/// The live state of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The value.
    pub value: String,
    /// Revision that created this generation.
    pub create_revision: Revision,
    /// Revision of the last put.
    pub mod_revision: Revision,
    /// Puts since creation.
    pub version: i64,
}

#[derive(Clone, Debug)]
struct Version {
    revision: Revision,
    entry: Option<Entry>, // None: a tombstone
}

/// What to do to take one [`Model::apply`] back.
#[derive(Clone, Debug)]
pub struct Undo {
    revision: Revision,
    compacted: Revision,
    pushed: Vec<String>,
}

impl Undo {
    /// The keys the undone change wrote (a key twice if written twice).
    pub fn keys(&self) -> &[String] {
        &self.pushed
    }
}

/// The store: key → versions, the current and the compacted revision.
#[derive(Clone, Debug)]
pub struct Model {
    keys: BTreeMap<String, Vec<Version>>,
    revision: Revision,
    compacted: Revision,
    hash: u64,
}

fn entry_hash(key: &str, e: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    e.hash(&mut h);
    h.finish()
}

/// Whether `key` lies in etcd's range `[start, end)` (`end` absent: just `start`; `"\0"`: no end).
pub fn in_range(key: &str, start: &str, end: Option<&str>) -> bool {
    match end {
        None | Some("") => key == start,
        Some("\0") => key >= start,
        Some(end) => key >= start && key < end,
    }
}

impl Model {
    /// An empty store at `revision` (etcd starts at 1).
    pub fn new(revision: Revision) -> Self {
        Model {
            keys: BTreeMap::new(),
            revision,
            compacted: 0,
            hash: 0,
        }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The compacted revision (0: never compacted).
    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    /// A hash of the live state (keys and entries), kept up to date incrementally.
    pub fn state_hash(&self) -> u64 {
        self.hash
    }

    /// The live entry of `key`.
    pub fn current(&self, key: &str) -> Option<&Entry> {
        self.keys.get(key)?.last()?.entry.as_ref()
    }

    fn at(versions: &[Version], rev: Revision) -> Option<&Entry> {
        let n = versions.partition_point(|v| v.revision <= rev);
        versions.get(n.checked_sub(1)?)?.entry.as_ref()
    }

    fn set(&mut self, key: &str, entry: Option<Entry>, revision: Revision, undo: &mut Undo) {
        if let Some(old) = self.current(key) {
            self.hash ^= entry_hash(key, old);
        }
        if let Some(new) = &entry {
            self.hash ^= entry_hash(key, new);
        }
        let versions = self.keys.entry(key.to_string()).or_default();
        versions.push(Version { revision, entry });
        undo.pushed.push(key.to_string());
    }

    /// Takes back an [`Model::apply`]; undos must come back in reverse order.
    pub fn undo(&mut self, undo: Undo) {
        for key in undo.pushed.iter().rev() {
            if let Some(new) = self.current(key) {
                self.hash ^= entry_hash(key, new);
            }
            let versions = self.keys.get_mut(key.as_str());
            let popped = versions.and_then(|v| v.pop());
            assert!(popped.is_some(), "undo of a version never pushed: {key}");
            if let Some(old) = self.current(key) {
                self.hash ^= entry_hash(key, old);
            }
        }
        self.revision = undo.revision;
        self.compacted = undo.compacted;
    }

    fn kv(key: &str, e: &Entry) -> KeyValue {
        KeyValue::new(key, &e.value, e.create_revision, e.mod_revision, e.version)
    }

    /// Live pairs in the range at `rev`, in key order.
    fn scan(&self, start: &str, end: Option<&str>, rev: Revision) -> Vec<KeyValue> {
        let mut out = Vec::new();
        for (key, versions) in self.keys.range(start.to_string()..) {
            if !in_range(key, start, end) {
                if end.is_none() || end == Some("") {
                    break;
                }
                if let Some(e) = end {
                    if e != "\0" && key.as_str() >= e {
                        break;
                    }
                }
                continue;
            }
            if let Some(e) = Self::at(versions, rev) {
                out.push(Self::kv(key, e));
            }
        }
        out
    }

    /// Evaluates a range (reads nothing but the state).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ModelError> {
        let rev = match req.revision {
            None | Some(0) => self.revision,
            Some(r) if r > self.revision => return Err(ModelError::FutureRev),
            Some(r) if r < self.compacted => return Err(ModelError::Compacted),
            Some(r) => r,
        };
        let mut kvs = self.scan(&req.key, req.range_end.as_deref(), rev);
        let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
        let mut more = false;
        if let Some(limit) = req.limit.filter(|l| *l > 0) {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            more = kvs.len() > limit;
            kvs.truncate(limit);
        }
        Ok(RangeResponse {
            revision: self.revision,
            kvs,
            count,
            more,
        })
    }

    /// Whether every compare holds now.
    pub fn compares_hold(&self, txn: &TxnRequest) -> bool {
        txn.compares.iter().all(|c| {
            let e = self.current(&c.key);
            let ord = match (&c.target, &c.operand, e) {
                (CompareTarget::Value, Operand::Str(s), Some(e)) => e.value.as_str().cmp(s),
                (CompareTarget::Value, _, _) => return false,
                (t, Operand::Int(n), e) => {
                    let have = match (t, e) {
                        (_, None) => 0,
                        (CompareTarget::Version, Some(e)) => e.version,
                        (CompareTarget::Create, Some(e)) => e.create_revision,
                        (_, Some(e)) => e.mod_revision,
                    };
                    have.cmp(n)
                }
                (_, Operand::Str(_), _) => return false,
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        })
    }

    fn put(&mut self, req: &PutRequest, rev: Revision, undo: &mut Undo) -> PutResponse {
        let prev = self.current(&req.key).cloned();
        let entry = match &prev {
            Some(p) => Entry {
                value: req.value.clone(),
                create_revision: p.create_revision,
                mod_revision: rev,
                version: p.version + 1,
            },
            None => Entry {
                value: req.value.clone(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            },
        };
        self.set(&req.key, Some(entry), rev, undo);
        PutResponse {
            revision: rev,
            prev_kv: prev.filter(|_| req.prev_kv).map(|p| Self::kv(&req.key, &p)),
        }
    }

    fn delete(&mut self, req: &DeleteRequest, rev: Revision, undo: &mut Undo) -> DeleteResponse {
        let gone = self.scan(&req.key, req.range_end.as_deref(), self.revision.max(rev));
        for kv in &gone {
            self.set(&kv.key, None, rev, undo);
        }
        DeleteResponse {
            revision: rev,
            deleted: i64::try_from(gone.len()).unwrap_or(i64::MAX),
            prev_kvs: if req.prev_kv { gone } else { Vec::new() },
        }
    }

    fn txn(&mut self, req: &TxnRequest, undo: &mut Undo) -> TxnResponse {
        let succeeded = self.compares_hold(req);
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let next = self.revision + 1;
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                RequestOp::Put(p) => ResponseOp::Put(self.put(p, next, undo)),
                RequestOp::Delete(d) => ResponseOp::Delete(self.delete(d, next, undo)),
                RequestOp::Range(r) => {
                    let inner = RangeRequest {
                        revision: None,
                        ..r.clone()
                    };
                    // A range inside a txn sees the txn's own writes so far.
                    let kvs = self.scan(&inner.key, inner.range_end.as_deref(), next);
                    let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
                    ResponseOp::Range(RangeResponse {
                        revision: next,
                        kvs,
                        count,
                        more: false,
                    })
                }
            });
        }
        let revision = if undo.pushed.is_empty() {
            self.revision
        } else {
            next
        };
        for r in &mut responses {
            match r {
                ResponseOp::Put(p) => p.revision = revision,
                ResponseOp::Range(p) => p.revision = revision,
                ResponseOp::Delete(p) => p.revision = revision,
            }
        }
        TxnResponse {
            revision,
            succeeded,
            responses,
        }
    }

    /// Applies a request; returns etcd's response and how to undo it. A request that changes
    /// nothing still returns an [`Undo`] (an empty one).
    pub fn apply(&mut self, req: &Request) -> Result<(Response, Undo), ModelError> {
        let mut undo = Undo {
            revision: self.revision,
            compacted: self.compacted,
            pushed: Vec::new(),
        };
        let next = self.revision + 1;
        let resp = match req {
            Request::Put(p) => Response::Put(self.put(p, next, &mut undo)),
            Request::Get(_) | Request::Range(_) => {
                let r = req.as_range().ok_or(ModelError::FutureRev)?;
                Response::Range(self.range(&r)?)
            }
            Request::Delete(d) => {
                let mut resp = self.delete(d, next, &mut undo);
                if resp.deleted == 0 {
                    resp.revision = self.revision;
                }
                Response::Delete(resp)
            }
            Request::Txn(t) => Response::Txn(self.txn(t, &mut undo)),
            Request::Compact(c) => {
                if c.revision <= self.compacted {
                    return Err(ModelError::Compacted);
                }
                if c.revision > self.revision {
                    return Err(ModelError::FutureRev);
                }
                self.compacted = c.revision;
                Response::compact(self.revision)
            }
        };
        if !undo.pushed.is_empty() {
            self.revision = next;
        }
        Ok((resp, undo))
    }
}

/// Whether an `ok` response says the store changed (and so took a revision of its own).
pub fn mutates(resp: &Response) -> bool {
    match resp {
        Response::Put(_) => true,
        Response::Delete(d) => d.deleted > 0,
        Response::Txn(t) => t.responses.iter().any(|r| match r {
            ResponseOp::Put(_) => true,
            ResponseOp::Delete(d) => d.deleted > 0,
            ResponseOp::Range(_) => false,
        }),
        Response::Range(_) | Response::Compact(_) => false,
    }
}

/// Whether a request could change the store if applied.
pub fn may_mutate(req: &Request) -> bool {
    match req {
        Request::Put(_) | Request::Delete(_) => true,
        Request::Txn(t) => t
            .success
            .iter()
            .chain(&t.failure)
            .any(|op| !matches!(op, RequestOp::Range(_))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_worked_example() {
        let mut m = Model::new(1);
        let (r, _) = m.apply(&Request::put("x", "a")).unwrap();
        assert_eq!(r, Response::put(2));
        m.apply(&Request::put("x", "b")).unwrap();
        let (r, u) = m.apply(&Request::delete("y")).unwrap();
        assert_eq!(r, Response::delete(3, 0));
        assert!(u.pushed.is_empty());
        let h3 = m.state_hash();
        let (r, u) = m.apply(&Request::delete("x")).unwrap();
        assert_eq!(r, Response::delete(4, 1));
        let at3 = m.range(&RangeRequest {
            revision: Some(3),
            ..RangeRequest::single("x")
        });
        assert_eq!(at3.unwrap().kvs, vec![KeyValue::new("x", "b", 2, 3, 2)]);
        m.undo(u);
        assert_eq!(m.state_hash(), h3);
        assert_eq!(m.revision(), 3);
        m.apply(&Request::delete("x")).unwrap();
        m.apply(&Request::put("x", "c")).unwrap();
        assert_eq!(m.current("x").unwrap().create_revision, 5);
        m.apply(&Request::compact(4)).unwrap();
        let old = RangeRequest {
            revision: Some(3),
            ..RangeRequest::single("x")
        };
        assert_eq!(m.range(&old), Err(ModelError::Compacted));
    }

    #[test]
    fn txn_cas_and_ranges() {
        let mut m = Model::new(1);
        m.apply(&Request::put("a", "1")).unwrap();
        m.apply(&Request::put("b", "2")).unwrap();
        let cas = Request::txn(
            vec![crate::history::Compare::mod_eq("a", 2)],
            vec![RequestOp::put("a", "3"), RequestOp::get("a")],
            vec![RequestOp::get("a")],
        );
        let (r, _) = m.apply(&cas).unwrap();
        let Response::Txn(t) = r else { panic!() };
        assert!(t.succeeded);
        assert_eq!(t.revision, 4);
        let (r, _) = m.apply(&cas).unwrap();
        let Response::Txn(t) = r else { panic!() };
        assert!(!t.succeeded);
        assert_eq!(t.revision, 4);
        let all = m.range(&RangeRequest {
            range_end: Some("\0".into()),
            limit: Some(1),
            ..RangeRequest::single("a")
        });
        let all = all.unwrap();
        assert_eq!((all.count, all.more, all.kvs.len()), (2, true, 1));
    }
}
