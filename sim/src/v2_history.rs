//! The v2 clients' history: what each v2 operation asked (`/v2/keys` over HTTP) and what it
//! got back, with the times it was invoked and completed. Checked by [`crate::v2_check`].
//!
//! Every answer of etcd's v2 store carries the store's global index (`X-Etcd-Index`): a
//! write's answer names the index it made (its node's `modifiedIndex`), a read's or a store
//! error's the index the store stood at. Those indexes are what the checker works with.

use std::fmt;
use std::sync::{Arc, Mutex};

/// A key's state as an answer shows it: its value and `modifiedIndex`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeState {
    /// The value.
    pub value: String,
    /// The index of the write that set it.
    pub modified: u64,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.value, self.modified)
    }
}

/// What a compare-and-swap or compare-and-delete compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compare {
    /// `prevIndex=N`: the key's `modifiedIndex` is N (N > 0; 0 means no compare in etcd).
    Index(u64),
    /// `prevValue=V`: the key's value is V (non-empty).
    Value(String),
}

impl Compare {
    /// Whether `state` passes the compare (etcd's `Compare`).
    pub fn holds(&self, state: &NodeState) -> bool {
        match self {
            Compare::Index(i) => state.modified == *i,
            Compare::Value(v) => state.value == *v,
        }
    }
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compare::Index(i) => write!(f, "prevIndex={i}"),
            Compare::Value(v) => write!(f, "prevValue={v}"),
        }
    }
}

/// One v2 operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum V2Op {
    /// `PUT value=V`.
    Set {
        /// The key.
        key: String,
        /// The value (unique in the run).
        value: String,
    },
    /// `PUT value=V prevExist=false`.
    Create {
        /// The key.
        key: String,
        /// The value (unique in the run).
        value: String,
    },
    /// `PUT value=V prevIndex=N` or `prevValue=W`.
    Cas {
        /// The key.
        key: String,
        /// The compare.
        compare: Compare,
        /// The value (unique in the run).
        value: String,
    },
    /// `DELETE prevIndex=N` or `prevValue=W`.
    Cad {
        /// The key.
        key: String,
        /// The compare.
        compare: Compare,
    },
    /// `DELETE`.
    Delete {
        /// The key.
        key: String,
    },
    /// `GET`, with `quorum=true` (linearizable) or without (served from the member's store:
    /// possibly stale, so checked against the index it names but not in real time).
    Get {
        /// The key.
        key: String,
        /// `quorum=true`.
        quorum: bool,
    },
}

impl V2Op {
    /// The key it touches.
    pub fn key(&self) -> &str {
        match self {
            V2Op::Set { key, .. }
            | V2Op::Create { key, .. }
            | V2Op::Cas { key, .. }
            | V2Op::Cad { key, .. }
            | V2Op::Delete { key }
            | V2Op::Get { key, .. } => key,
        }
    }

    /// Whether it writes (goes through the log).
    pub fn is_write(&self) -> bool {
        !matches!(self, V2Op::Get { .. })
    }

    /// The value it writes, if it writes one.
    pub fn value(&self) -> Option<&str> {
        match self {
            V2Op::Set { value, .. } | V2Op::Create { value, .. } | V2Op::Cas { value, .. } => {
                Some(value)
            }
            _ => None,
        }
    }
}

impl fmt::Display for V2Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V2Op::Set { key, value } => write!(f, "set {key}={value}"),
            V2Op::Create { key, value } => write!(f, "create {key}={value} prevExist=false"),
            V2Op::Cas {
                key,
                compare,
                value,
            } => write!(f, "cas {key}={value} {compare}"),
            V2Op::Cad { key, compare } => write!(f, "cad {key} {compare}"),
            V2Op::Delete { key } => write!(f, "delete {key}"),
            V2Op::Get { key, quorum } => write!(f, "get {key} quorum={quorum}"),
        }
    }
}

/// How a v2 operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Outcome {
    /// A 2xx answer: `X-Etcd-Index`, the node (a read's key or a write's new node) and the
    /// write's `prevNode`.
    Ok {
        /// `X-Etcd-Index`.
        index: u64,
        /// `node` (value and `modifiedIndex`; `None` for a delete's).
        node: Option<NodeState>,
        /// `prevNode`, if the answer has one.
        prev: Option<NodeState>,
    },
    /// One of the store's errors (100 key not found, 101 compare failed, 105 key exists),
    /// with the index the store stood at when it decided: a certain outcome, in the order.
    Error {
        /// etcd's `errorCode`.
        code: u32,
        /// The error's `index`.
        index: u64,
    },
    /// Certainly no effect (a read that failed, a write refused before the log).
    Fail(String),
    /// A write that may or may not have taken effect (timeout, connection lost, raft error).
    InDoubt(String),
}

impl fmt::Display for V2Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V2Outcome::Ok { index, node, prev } => {
                write!(f, "ok index={index}")?;
                if let Some(n) = node {
                    write!(f, " node={n}")?;
                }
                if let Some(p) = prev {
                    write!(f, " prev={p}")?;
                }
                Ok(())
            }
            V2Outcome::Error { code, index } => write!(f, "error {code} index={index}"),
            V2Outcome::Fail(why) => write!(f, "fail ({why})"),
            V2Outcome::InDoubt(why) => write!(f, "info ({why})"),
        }
    }
}

/// One recorded v2 operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Entry {
    /// Its place in the log (completion order).
    pub seq: usize,
    /// The v2 client.
    pub client: usize,
    /// The member it asked.
    pub member: usize,
    /// What it asked.
    pub op: V2Op,
    /// Simulated ns since the run began, when it was sent.
    pub invoke_ns: u64,
    /// When its answer (or the timeout) came.
    pub complete_ns: u64,
    /// How it ended.
    pub outcome: V2Outcome,
}

impl fmt::Display for V2Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#v{} v2c{}→n{} [{:.3}s..{:.3}s] {} => {}",
            self.seq,
            self.client,
            self.member + 1,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
            self.op,
            self.outcome
        )
    }
}

/// The v2 operations of a run, shared by its v2 clients.
#[derive(Debug, Clone, Default)]
pub struct V2Log(Arc<Mutex<Vec<V2Entry>>>);

impl V2Log {
    /// Records `entry` (its `seq` is set here) and returns it as recorded.
    pub fn push(&self, mut entry: V2Entry) -> V2Entry {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        entry.seq = log.len();
        log.push(entry.clone());
        entry
    }

    /// Every entry so far, in completion order.
    pub fn entries(&self) -> Vec<V2Entry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
