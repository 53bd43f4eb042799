//! The `register` workload: clients doing gets, puts and compare-and-set txns on a small key
//! space (the `txn` workload: gets, and multi-key transactions of gets and puts, half of them
//! guarded). Most reads are linearizable; a share are serializable and marked as such in the
//! history (the checker lets them be stale). Client `c` talks to member `c % n`.
//!
//! With a stale-read probe, every read is sent serializable, and recorded as linearizable when
//! the nemesis has cut its member off from a majority at the time of the invocation (marked
//! serializable otherwise); while its member is cut off, a client only reads. A member cut off by a partition answers from its stale state, so
//! the checker must call the history invalid; with no partition the same probe passes. That
//! proves the partition isolates and the checker sees it.
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_rng::SplitMix64;

use super::member::channel;
use super::partition::CutOff;
use super::recorder::{Done, Recorder};
use crate::history::{
    Compare, CompareResult, CompareTarget, GetRequest, ProcessId, RangeRequest, Request, RequestOp,
    Response,
};

/// Keys of the workload: `r0 .. r{KEYS-1}`.
pub const KEYS: u64 = 5;
/// A client gives up on one request after this long.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// One client's settings.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// The client's number (its first process id).
    pub id: u64,
    /// Number of clients (process ids step by this after an in-doubt operation).
    pub clients: u64,
    /// The member it talks to.
    pub member: usize,
    /// The run's seed.
    pub seed: u64,
    /// The stale-read probe: which members the partition has cut off.
    pub stale_probe: Option<CutOff>,
    /// The `txn` workload: mostly multi-key transactions.
    pub multi_key: bool,
}

struct Gen {
    rng: SplitMix64,
    id: u64,
    next_value: u64,
    last_seen: Vec<Option<String>>,
    member: usize,
    stale_probe: Option<CutOff>,
    multi_key: bool,
}

fn key(k: u64) -> String {
    format!("r{k}")
}

fn get(key: &str, serializable: bool) -> Request {
    Request::Get(GetRequest {
        key: key.to_string(),
        serializable,
    })
}

impl Gen {
    /// The next request, and the request as the history records it.
    fn next(&mut self) -> (Request, Request) {
        let k = self.rng.below(KEYS);
        let key = key(k);
        let roll = self.rng.below(100);
        self.next_value += 1;
        let value = format!("c{}-{}", self.id, self.next_value);
        if self.multi_key {
            let req = match roll {
                0..=29 => get(&key, roll >= 25),
                _ => self.multi_key_txn(k, roll),
            };
            return (req.clone(), req);
        }
        if let Some(cut) = &self.stale_probe {
            // A cut-off member's clients only read while it is cut off: a write there would
            // block for the whole timeout, and the probe needs many reads in each window.
            if cut.is_cut_off(self.member) {
                return (get(&key, true), get(&key, false));
            }
        }
        let req = match roll {
            0..=29 => Request::put(&key, &value),
            30..=59 if self.stale_probe.is_some() => return (get(&key, true), get(&key, true)),
            30..=49 => get(&key, false),
            50..=59 => get(&key, true),
            _ => {
                let guard = match &self.last_seen[k as usize] {
                    Some(v) => Compare::value_eq(&key, v),
                    None => Compare::int(&key, CompareTarget::Create, CompareResult::Equal, 0),
                };
                Request::txn(vec![guard], vec![RequestOp::put(&key, &value)], vec![])
            }
        };
        (req.clone(), req)
    }

    /// The `txn` workload's transactions: two to four gets and puts on distinct keys, half of
    /// them guarded by the value last seen of the first key (reading it on failure).
    fn multi_key_txn(&mut self, first: u64, roll: u64) -> Request {
        let n = 2 + self.rng.below(3);
        let mut ops = Vec::new();
        for j in 0..n {
            let key = key((first + j) % KEYS);
            if self.rng.below(2) == 0 {
                ops.push(RequestOp::get(&key));
            } else {
                self.next_value += 1;
                ops.push(RequestOp::put(
                    &key,
                    &format!("c{}-{}", self.id, self.next_value),
                ));
            }
        }
        let key0 = key(first);
        if roll < 65 {
            return Request::txn(vec![], ops, vec![]);
        }
        let guard = match &self.last_seen[first as usize] {
            Some(v) => Compare::value_eq(&key0, v),
            None => Compare::int(&key0, CompareTarget::Create, CompareResult::Equal, 0),
        };
        Request::txn(vec![guard], ops, vec![RequestOp::get(&key0)])
    }

    fn observe(&mut self, req: &Request, resp: &Response) {
        if let (Request::Get(g), Response::Range(r)) = (req, resp) {
            let k = g.key[1..].parse::<usize>().unwrap_or(0);
            if let Some(slot) = self.last_seen.get_mut(k) {
                *slot = r.kvs.first().map(|kv| kv.value.clone());
            }
        }
    }
}

/// Runs one client until `until`.
pub async fn client(rec: Recorder, spec: ClientSpec, until: Instant) {
    let mut gen = Gen {
        rng: SplitMix64::for_stream(spec.seed, 0x5E61_0000 + spec.id),
        id: spec.id,
        next_value: 0,
        last_seen: vec![None; KEYS as usize],
        member: spec.member,
        stale_probe: spec.stale_probe.clone(),
        multi_key: spec.multi_key,
    };
    let Ok(ch) = channel(spec.member, OP_TIMEOUT) else {
        return;
    };
    let mut kv = KvClient::new(ch);
    let mut process: ProcessId = spec.id;
    while Instant::now() < until {
        let think = gen.rng.below(10);
        tokio::time::sleep(Duration::from_millis(think)).await;
        let (req, recorded) = gen.next();
        match rec.op(&mut kv, process, &req, recorded, OP_TIMEOUT).await {
            Done::Ok(resp) => gen.observe(&req, &resp),
            Done::Fail => tokio::time::sleep(Duration::from_millis(50)).await,
            Done::Info => process += spec.clients,
        }
    }
}

/// The final reads: a linearizable range over the whole key space from every member, as
/// processes no client used. Returns how many succeeded.
pub async fn final_reads(rec: &Recorder, n: usize, first_process: ProcessId) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let Ok(ch) = channel(i, OP_TIMEOUT) else {
            continue;
        };
        let mut kv = KvClient::new(ch);
        let req = Request::Range(RangeRequest {
            range_end: Some("s".to_string()),
            ..RangeRequest::single("r")
        });
        let process = first_process + i as u64;
        let done = rec.op(&mut kv, process, &req, req.clone(), OP_TIMEOUT * 4);
        if matches!(done.await, Done::Ok(_)) {
            ok += 1;
        }
    }
    ok
}
