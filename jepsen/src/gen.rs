//! Random histories from a correct sequential model, with optional injected faults: the
//! checker's own test and benchmark material.
//!
//! Each client runs one operation at a time: it thinks, invokes, and completes after a random
//! latency. Every operation takes effect at a random instant strictly inside its window, and the
//! model applies operations in the order of those instants, so the history is linearizable by
//! construction. An in-doubt (`info`) operation takes effect or not (a coin), and its client then
//! continues as a new process, as in Jepsen. A fault, if asked for, corrupts one response so the
//! history is certainly not linearizable.
use std::collections::BinaryHeap;

use keel_rng::SplitMix64;

use crate::history::{
    Compare, History, KeyValue, Operation, Outcome, RangeRequest, Request, RequestOp, Response,
    Revision,
};
use crate::model::{mutates, Model};

/// A deterministic generator: keel's one SplitMix64 ([`keel_rng`]), drawing bounded numbers
/// by remainder.
#[derive(Clone, Debug)]
pub struct Rng(SplitMix64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n`; `n == 0` is treated as 1 (the draw is still taken, and gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below_modulo(n.max(1))
    }
    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts and linearizable gets of one key (Porcupine's etcd model).
    SingleKey,
    /// Puts, gets, ranges, reads at past revisions, deletes, CAS and multi-key txns,
    /// compactions and serializable gets over several keys.
    Store,
}

/// A fault that makes a history not linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A read returns the state (and header) of a revision older than a write that completed
    /// before the read was invoked.
    StaleRead,
    /// A read returns a key's previous version although an acknowledged write replaced it.
    LostWrite,
    /// An acknowledged write reports the revision of an earlier one.
    DuplicateRevision,
    /// A read returns a value nobody wrote.
    PhantomValue,
    /// A client's read reports a revision below one it saw before.
    RevisionBackwards,
    /// A multi-key range misses one live key (as if half of a txn were applied); only the
    /// replay can see this one.
    MissingKey,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 6] = [
        Fault::StaleRead,
        Fault::LostWrite,
        Fault::DuplicateRevision,
        Fault::PhantomValue,
        Fault::RevisionBackwards,
        Fault::MissingKey,
    ];
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Number of operations.
    pub ops: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys (Store workload).
    pub keys: usize,
    /// Operations with unknown outcome, per thousand.
    pub info_per_mille: u32,
    /// Writes that certainly fail, per thousand.
    pub fail_per_mille: u32,
    /// Longest latency, in time units (the shortest is 2).
    pub latency_max: u64,
    /// The workload.
    pub workload: Workload,
    /// At most one injected fault.
    pub fault: Option<Fault>,
    /// The seed.
    pub seed: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            ops: 1000,
            clients: 10,
            keys: 5,
            info_per_mille: 10,
            fail_per_mille: 10,
            latency_max: 100,
            workload: Workload::Store,
            fault: None,
            seed: 1,
        }
    }
}

/// A generated history.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The history.
    pub history: History,
    /// The injected fault, if one could be placed: (fault, process, invoke time) of the op.
    pub injected: Option<(Fault, u64, u64)>,
}

struct Planned {
    process: u64,
    invoke: u64,
    complete: u64,
    point: u64,
    info: bool,
    fail: bool,
}

/// Schedules the operations' windows: clients take turns by time.
fn plan(cfg: &GenConfig, rng: &mut Rng) -> Vec<Planned> {
    let clients = cfg.clients.max(1) as u64;
    let mut heap: BinaryHeap<std::cmp::Reverse<(u64, u64, u64)>> = (0..clients)
        .map(|c| std::cmp::Reverse((rng.below(10), c, c)))
        .collect();
    let mut out = Vec::with_capacity(cfg.ops);
    while out.len() < cfg.ops {
        let Some(std::cmp::Reverse((t, client, process))) = heap.pop() else {
            break;
        };
        let invoke = t;
        let complete = invoke + 2 + rng.below(cfg.latency_max.max(1));
        let point = invoke + 1 + rng.below(complete - invoke - 1);
        let info = rng.chance(cfg.info_per_mille);
        let fail = !info && rng.chance(cfg.fail_per_mille);
        out.push(Planned {
            process,
            invoke,
            complete,
            point,
            info,
            fail,
        });
        let next_process = if info { process + clients } else { process };
        heap.push(std::cmp::Reverse((
            complete + 1 + rng.below(10),
            client,
            next_process,
        )));
    }
    out
}

struct Gen<'c> {
    cfg: &'c GenConfig,
    rng: Rng,
    model: Model,
    next_value: u64,
    /// (completion time, revision) of acknowledged writes applied so far.
    acked: Vec<(u64, Revision)>,
    /// Revisions made by acknowledged writes.
    acked_revisions: std::collections::HashSet<Revision>,
    injected: Option<(Fault, u64, u64)>,
}

impl Gen<'_> {
    fn key(&mut self) -> String {
        match self.cfg.workload {
            Workload::SingleKey => "x".to_string(),
            Workload::Store => format!("k{}", self.rng.below(self.cfg.keys.max(1) as u64)),
        }
    }

    fn value(&mut self, process: u64) -> String {
        self.next_value += 1;
        format!("v{}-p{process}", self.next_value)
    }

    /// A request chosen at the instant it takes effect (so CAS guards can be current).
    fn request(&mut self, process: u64) -> Request {
        let key = self.key();
        if self.cfg.workload == Workload::SingleKey {
            return if self.rng.chance(500) {
                Request::put(&key, &self.value(process))
            } else {
                Request::get(&key)
            };
        }
        let roll = self.rng.below(100);
        match roll {
            0..=29 => Request::put(&key, &self.value(process)),
            30..=54 => Request::get(&key),
            55..=61 => Request::range("k", "l"),
            62..=67 => {
                let low = self.model.compacted().max(1);
                let span = (self.model.revision() - low + 1).max(1) as u64;
                Request::get_at(&key, low + self.rng.below(span) as i64)
            }
            68..=72 => Request::delete(&key),
            73..=84 => {
                let m = self.model.current(&key).map_or(0, |e| e.mod_revision);
                let guard = if self.rng.chance(700) {
                    m
                } else {
                    m.saturating_sub(1)
                };
                let v = self.value(process);
                Request::txn(
                    vec![Compare::mod_eq(&key, guard)],
                    vec![RequestOp::put(&key, &v)],
                    vec![RequestOp::get(&key)],
                )
            }
            85..=92 => {
                let other = self.key();
                let (a, b) = (self.value(process), self.value(process));
                Request::txn(
                    vec![],
                    vec![RequestOp::put(&key, &a), RequestOp::put(&other, &b)],
                    vec![],
                )
            }
            93..=94 => {
                let low = self.model.compacted() + 1;
                let top = self.model.revision().saturating_sub(5).max(low);
                Request::compact(low + self.rng.below((top - low + 1).max(1) as u64) as i64)
            }
            _ => Request::Get(crate::history::GetRequest {
                key,
                serializable: true,
            }),
        }
    }

    fn take_effect(&mut self, p: &Planned) -> Operation {
        let request = self.request(p.process);
        let mut op = Operation {
            id: 0,
            process: p.process,
            invoke_time: p.invoke,
            complete_time: Some(p.complete),
            request,
            outcome: Outcome::Info(Some("timeout".to_string())),
        };
        let writes = crate::model::may_mutate(&op.request);
        if p.fail && writes {
            op.outcome = Outcome::Fail(Some("injected".to_string()));
            return op;
        }
        if p.info && self.rng.chance(500) {
            return op; // in doubt, and never took effect
        }
        let applied = self.model.apply(&op.request);
        if p.info {
            return op; // in doubt, took effect
        }
        op.outcome = match applied {
            Ok((resp, _)) => {
                if mutates(&resp) {
                    self.acked.push((p.complete, resp.revision()));
                    self.acked_revisions.insert(resp.revision());
                }
                Outcome::Ok(resp)
            }
            Err(e) => Outcome::Fail(Some(e.to_string())),
        };
        if self.injected.is_none() {
            self.inject_at_generation(&mut op);
        }
        op
    }

    /// Stale reads and lost writes need the model's past; they are made as the read happens.
    fn inject_at_generation(&mut self, op: &mut Operation) {
        let Some(fault) = self.cfg.fault else { return };
        let (Request::Get(g), Outcome::Ok(Response::Range(_))) = (&op.request, &op.outcome) else {
            return;
        };
        if g.serializable {
            return;
        }
        let key = g.key.clone();
        let resp = match fault {
            Fault::StaleRead => {
                let w = self
                    .acked
                    .iter()
                    .filter(|(t, _)| *t < op.invoke_time)
                    .map(|x| x.1)
                    .max();
                let Some(w) = w.filter(|w| *w > self.model.compacted().max(1)) else {
                    return;
                };
                let past = RangeRequest {
                    revision: Some(w - 1),
                    ..RangeRequest::single(&key)
                };
                let Ok(mut r) = self.model.range(&past) else {
                    return;
                };
                r.revision = w - 1;
                r
            }
            Fault::LostWrite => {
                let Some(e) = self.model.current(&key) else {
                    return;
                };
                if !self.acked_revisions.contains(&e.mod_revision) || e.version < 2 {
                    return;
                }
                let past = RangeRequest {
                    revision: Some(e.mod_revision - 1),
                    ..RangeRequest::single(&key)
                };
                let Ok(mut r) = self.model.range(&past) else {
                    return;
                };
                if r.kvs.is_empty() {
                    return;
                }
                r.revision = self.model.revision();
                r
            }
            _ => return,
        };
        op.outcome = Outcome::Ok(Response::Range(resp));
        self.injected = Some((fault, op.process, op.invoke_time));
    }
}

/// Faults made after the fact, by editing one operation.
fn inject_after(ops: &mut [Operation], fault: Fault, start: usize) -> Option<(u64, u64)> {
    let n = ops.len();
    for i in (start..n).chain(0..start) {
        let found = match fault {
            Fault::DuplicateRevision => duplicate_revision(ops, i),
            Fault::PhantomValue => phantom(&mut ops[i]),
            Fault::RevisionBackwards => backwards(ops, i),
            Fault::MissingKey => missing_key(&mut ops[i]),
            _ => false,
        };
        if found {
            return Some((ops[i].process, ops[i].invoke_time));
        }
    }
    None
}

fn duplicate_revision(ops: &mut [Operation], i: usize) -> bool {
    let Some(Response::Put(p)) = ops[i].ok() else {
        return false;
    };
    let mine = p.revision;
    // The acknowledged write with the revision just below.
    let prev = ops
        .iter()
        .filter_map(|o| o.ok().filter(|r| mutates(r)).map(|r| r.revision()))
        .filter(|r| *r < mine)
        .max();
    let Some(prev) = prev else { return false };
    if let Outcome::Ok(Response::Put(p)) = &mut ops[i].outcome {
        p.revision = prev;
    }
    true
}

fn missing_key(op: &mut Operation) -> bool {
    let Request::Range(q) = &op.request else {
        return false;
    };
    if q.range_end.is_none() || q.serializable {
        return false;
    }
    if let Outcome::Ok(Response::Range(r)) = &mut op.outcome {
        if r.kvs.len() >= 2 {
            r.kvs.remove(0);
            r.count -= 1;
            return true;
        }
    }
    false
}

fn phantom(op: &mut Operation) -> bool {
    if let Outcome::Ok(Response::Range(r)) = &mut op.outcome {
        if let Some(kv) = r.kvs.first_mut() {
            kv.value = "phantom".to_string();
            return true;
        }
    }
    false
}

fn backwards(ops: &mut [Operation], i: usize) -> bool {
    let Some(Response::Range(_)) = ops[i].ok() else {
        return false;
    };
    if ops[i].request.is_serializable() {
        return false;
    }
    let process = ops[i].process;
    let before = ops[..i]
        .iter()
        .rev()
        .find(|o| o.process == process && o.ok().is_some())
        .and_then(|o| o.ok().map(|r| r.revision()));
    let Some(seen) = before.filter(|r| *r > 1) else {
        return false;
    };
    if let Outcome::Ok(Response::Range(r)) = &mut ops[i].outcome {
        r.revision = seen - 1;
        r.kvs.retain(|kv: &KeyValue| kv.mod_revision < seen - 1);
        r.count = r.kvs.len() as i64;
    }
    true
}

/// Generates a history.
pub fn generate(cfg: &GenConfig) -> Generated {
    let mut rng = Rng::new(cfg.seed);
    let mut planned = plan(cfg, &mut rng);
    planned.sort_by_key(|p| p.point);
    let mut g = Gen {
        cfg,
        rng,
        model: Model::new(1),
        next_value: 0,
        acked: Vec::new(),
        acked_revisions: std::collections::HashSet::new(),
        injected: None,
    };
    let mut ops: Vec<Operation> = planned.iter().map(|p| g.take_effect(p)).collect();
    ops.sort_by_key(|o| o.invoke_time);
    let mut injected = g.injected;
    if let (Some(fault), None) = (cfg.fault, injected) {
        let start = ops.len() / 2;
        injected = inject_after(&mut ops, fault, start).map(|(p, t)| (fault, p, t));
    }
    Generated {
        history: History::from_operations(&ops),
        injected,
    }
}
