//! The recorded history of a run: every client operation with its invocation and completion
//! times and outcome (ok / fail / info, Jepsen's vocabulary).
//!
//! * **ok**: the operation took effect, with this result.
//! * **fail**: it certainly did not take effect (a read that errored, a write etcd rejected
//!   before raft).
//! * **info**: unknown (a write that timed out or lost its connection): it may take effect at
//!   any time after its invocation, or never.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_jepsen::history as jh;

/// A client operation on the workload's key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put `value` at `key`.
    Put {
        /// The key.
        key: String,
        /// A value no other operation writes.
        value: String,
    },
    /// Range over one key.
    Get {
        /// The key.
        key: String,
        /// Serializable (local) rather than linearizable.
        serializable: bool,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
    /// Range over the whole key space.
    Range {
        /// Serializable (local) rather than linearizable.
        serializable: bool,
    },
    /// Txn: if `key`'s value is `expect` (`None`: the key is absent), put `value`.
    Cas {
        /// The key.
        key: String,
        /// The expected value.
        expect: Option<String>,
        /// The new value.
        value: String,
    },
    /// Txn without compares putting several keys at one revision.
    MultiPut {
        /// `(key, value)` pairs, distinct keys.
        kvs: Vec<(String, String)>,
    },
    /// Put `value` at `key` attached to lease `lease` (a key of the lease key space, see
    /// [`crate::lease_check`]; each such key is written once).
    LeasePut {
        /// The key.
        key: String,
        /// A value no other operation writes.
        value: String,
        /// The lease id.
        lease: i64,
    },
    /// The deletion of lease `lease`'s keys (every key under `prefix`) by its revoke or
    /// expiry. Never sent by a client: the harness adds one per granted lease, in doubt
    /// (`info`) from the grant's invocation on, because a revoke or an expiry deletes the
    /// lease's keys at a revision no acknowledged operation reports, at most once, and
    /// perhaps never.
    LeaseKeysGone {
        /// The lease id.
        lease: i64,
        /// Every key of the lease starts with this.
        prefix: String,
    },
    /// Compact away every revision below `revision`.
    Compact {
        /// The compaction revision.
        revision: i64,
    },
}

impl Op {
    /// Whether the operation may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. } | Op::Range { .. })
    }

    /// Whether the operation touches only the lease key space (not the workload's `k*` keys).
    pub fn is_lease_op(&self) -> bool {
        matches!(self, Op::LeasePut { .. } | Op::LeaseKeysGone { .. })
            || matches!(self, Op::Get { key, .. } if crate::lease_check::is_lease_key(key))
    }

    /// Whether the operation is a serializable (possibly stale) read.
    pub fn is_serializable(&self) -> bool {
        matches!(
            self,
            Op::Get {
                serializable: true,
                ..
            } | Op::Range { serializable: true }
        )
    }
}

/// One key as a read saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The revision that created this generation of the key.
    pub create_revision: i64,
    /// Puts since its creation.
    pub version: i64,
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// Put / MultiPut / Delete / Cas: the header revision; `succeeded` is the Cas branch
    /// taken (true for the others); `deleted` counts deleted keys (Delete only).
    Write {
        /// The response header's revision.
        revision: i64,
        /// Whether a Cas took its success branch (always true otherwise).
        succeeded: bool,
        /// Keys deleted (Delete only).
        deleted: i64,
    },
    /// Get / Range: the header revision and the keys found.
    Read {
        /// The response header's revision.
        revision: i64,
        /// The keys found, in key order.
        kvs: Vec<KeyValue>,
    },
}

impl OpResult {
    /// The response header's revision.
    pub fn revision(&self) -> i64 {
        match self {
            OpResult::Write { revision, .. } | OpResult::Read { revision, .. } => *revision,
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect with this result.
    Ok(OpResult),
    /// It certainly did not take effect.
    Fail(String),
    /// It may or may not take effect.
    Info(String),
}

/// One completed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the history (completion order).
    pub index: usize,
    /// The client (a Jepsen process; a client that saw `info` keeps its number).
    pub client: usize,
    /// The member it talked to.
    pub member: usize,
    /// The operation.
    pub op: Op,
    /// Simulated nanoseconds since the run began, at invocation.
    pub invoke_ns: u64,
    /// At completion.
    pub complete_ns: u64,
    /// Position of the invocation among all events of the run (see [`History::tick`]).
    pub invoke_seq: u64,
    /// Position of the completion.
    pub complete_seq: u64,
    /// The outcome.
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = |s: bool| if s { "serializable" } else { "linearizable" };
        match self {
            Op::Put { key, value } => write!(f, "put {key}={value}"),
            Op::Get { key, serializable } => write!(f, "get {key} ({})", mode(*serializable)),
            Op::Delete { key } => write!(f, "delete {key}"),
            Op::Range { serializable } => write!(f, "range k* ({})", mode(*serializable)),
            Op::Cas { key, expect, value } => write!(
                f,
                "cas {key}: {} -> {value}",
                expect.as_deref().unwrap_or("<absent>")
            ),
            Op::MultiPut { kvs } => {
                let parts: Vec<String> = kvs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "txn put {}", parts.join(" "))
            }
            Op::LeasePut { key, value, lease } => write!(f, "put {key}={value} lease={lease:x}"),
            Op::LeaseKeysGone { lease, prefix } => {
                write!(f, "lease {lease:x} revoked or expired: delete {prefix}*")
            }
            Op::Compact { revision } => write!(f, "compact {revision}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(OpResult::Write {
                revision,
                succeeded,
                deleted,
            }) => write!(
                f,
                "ok rev={revision}{}{}",
                if *succeeded { "" } else { " (compare failed)" },
                if *deleted > 0 {
                    format!(" deleted={deleted}")
                } else {
                    String::new()
                }
            ),
            Outcome::Ok(OpResult::Read { revision, kvs }) => {
                let parts: Vec<String> = kvs
                    .iter()
                    .map(|kv| format!("{}={}@{}", kv.key, kv.value, kv.mod_revision))
                    .collect();
                write!(f, "ok rev={revision} [{}]", parts.join(" "))
            }
            Outcome::Fail(why) => write!(f, "fail ({why})"),
            Outcome::Info(why) => write!(f, "info ({why})"),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} c{}→n{} [{:.3}s..{:.3}s] {} => {}",
            self.index,
            self.client,
            self.member + 1,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
            self.op,
            self.outcome
        )
    }
}

/// A shared, append-only history.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: Arc<Mutex<Vec<Entry>>>,
    seq: Arc<AtomicU64>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next position in the order of events. madsim runs every task on one thread, so
    /// this is the exact order in which invocations and completions happened.
    pub fn tick(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends a completed operation (its index and completion position are assigned here)
    /// and returns it.
    pub fn push(&self, mut entry: Entry) -> Entry {
        entry.complete_seq = self.tick();
        let mut entries = self.lock();
        entry.index = entries.len();
        entries.push(entry.clone());
        entry
    }

    /// Every entry so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }
}

fn jepsen_request(op: &Op) -> jh::Request {
    match op {
        Op::Put { key, value } => jh::Request::put(key, value),
        Op::Get { key, serializable } => jh::Request::Get(jh::GetRequest {
            key: key.clone(),
            serializable: *serializable,
        }),
        Op::Delete { key } => jh::Request::delete(key),
        Op::Range { serializable } => jh::Request::Range(jh::RangeRequest {
            range_end: Some("l".to_string()),
            serializable: *serializable,
            ..jh::RangeRequest::single("k")
        }),
        Op::Cas { key, expect, value } => {
            let compare = match expect {
                Some(v) => jh::Compare::value_eq(key, v),
                None => {
                    jh::Compare::int(key, jh::CompareTarget::Create, jh::CompareResult::Equal, 0)
                }
            };
            jh::Request::txn(vec![compare], vec![jh::RequestOp::put(key, value)], vec![])
        }
        Op::MultiPut { kvs } => {
            let puts = kvs.iter().map(|(k, v)| jh::RequestOp::put(k, v)).collect();
            jh::Request::txn(vec![], puts, vec![])
        }
        Op::LeasePut { key, value, .. } => jh::Request::put(key, value),
        Op::LeaseKeysGone { prefix, .. } => jh::Request::Delete(jh::DeleteRequest {
            key: prefix.clone(),
            range_end: Some(prefix_end(prefix)),
            prev_kv: false,
        }),
        Op::Compact { revision } => jh::Request::compact(*revision),
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`), for a
/// prefix whose last byte is below 0xff.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    match bytes.last_mut() {
        Some(last) if *last < 0x7f => *last += 1,
        _ => panic!("prefix_end: {prefix:?} must end in an ASCII byte below 0x7f"),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn jepsen_response(op: &Op, result: &OpResult) -> jh::Response {
    let revision = result.revision();
    match (op, result) {
        (_, OpResult::Read { kvs, .. }) => {
            let kvs = kvs
                .iter()
                .map(|kv| {
                    jh::KeyValue::new(
                        &kv.key,
                        &kv.value,
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                    )
                })
                .collect();
            jh::Response::range(revision, kvs)
        }
        (Op::Put { .. }, _) => jh::Response::put(revision),
        (Op::Delete { .. }, OpResult::Write { deleted, .. }) => {
            jh::Response::delete(revision, *deleted)
        }
        (Op::Cas { .. }, OpResult::Write { succeeded, .. }) => {
            let responses = if *succeeded {
                vec![jh::ResponseOp::put(revision)]
            } else {
                vec![]
            };
            jh::Response::txn(revision, *succeeded, responses)
        }
        (Op::MultiPut { kvs }, _) => {
            let responses = kvs.iter().map(|_| jh::ResponseOp::put(revision)).collect();
            jh::Response::txn(revision, true, responses)
        }
        (Op::LeaseKeysGone { .. }, OpResult::Write { deleted, .. }) => {
            jh::Response::delete(revision, *deleted)
        }
        (Op::Compact { .. }, _) => jh::Response::compact(revision),
        (_, OpResult::Write { .. }) => jh::Response::put(revision),
    }
}

/// The history in keel-jepsen's format: one invocation and one completion per entry, in the
/// order they happened.
pub fn to_jepsen(entries: &[Entry]) -> jh::History {
    let mut events: Vec<(u64, jh::Event)> = Vec::with_capacity(2 * entries.len());
    for e in entries {
        let request = jepsen_request(&e.op);
        let f = request.function();
        let process = e.client as jh::ProcessId;
        events.push((
            e.invoke_seq,
            jh::Event {
                process,
                f,
                time: e.invoke_ns,
                body: jh::EventBody::Invoke(request),
            },
        ));
        let body = match &e.outcome {
            Outcome::Ok(r) => jh::EventBody::Ok(jepsen_response(&e.op, r)),
            Outcome::Fail(why) => jh::EventBody::Fail {
                error: Some(why.clone()),
            },
            Outcome::Info(why) => jh::EventBody::Info {
                error: Some(why.clone()),
            },
        };
        events.push((
            e.complete_seq,
            jh::Event {
                process,
                f,
                time: e.complete_ns,
                body,
            },
        ));
    }
    events.sort_by_key(|(seq, _)| *seq);
    jh::History {
        events: events.into_iter().map(|(_, e)| e).collect(),
    }
}
