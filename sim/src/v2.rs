//! v2 clients: etcd's v2 keys API over HTTP/1.1, as curl or python-etcd speak it, against
//! the members' `/v2/keys` (served under madsim by the server's own v2 handler over madsim's
//! TCP; see `server/src/gateway/sim.rs`). Each client sets, reads (`quorum=true`, and plain
//! reads the checker does not hold to real time), compares-and-swaps on `prevIndex` and
//! `prevValue`, compares-and-deletes, creates with `prevExist=false` and deletes, on
//! [`V2_KEYS`] keys, during the fault phase. Every operation goes into the run's [`V2Log`]
//! with its times and outcome, checked by [`crate::v2_check::check_v2`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::cluster::{Cluster, CLIENT_PORT};
use crate::nemesis::SeedRng;
use crate::v2_history::{Compare, NodeState, V2Entry, V2Log, V2Op, V2Outcome};
use crate::workload::{Ctx, OP_TIMEOUT, THINK_MS_MAX};

/// Keys the v2 clients share (`/v2sim/k0` …).
pub const V2_KEYS: u64 = 3;
/// The v2 client id of the harness's final reads.
pub const V2_FINAL_CLIENT: usize = 999;

/// One HTTP/1.1 connection to a member.
struct Conn {
    send: SendRequest<Full<Bytes>>,
}

async fn open(addr: SocketAddr) -> Option<Conn> {
    let connect = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(Conn { send })
    };
    tokio::time::timeout(OP_TIMEOUT, connect)
        .await
        .ok()
        .flatten()
}

fn key_path(key: &str) -> String {
    format!("/v2/keys/{key}")
}

/// The HTTP request for `op` (form bodies as etcdctl sends them).
fn request(op: &V2Op, addr: SocketAddr) -> Option<Request<Full<Bytes>>> {
    let compare = |c: &Compare| match c {
        Compare::Index(i) => format!("prevIndex={i}"),
        Compare::Value(v) => format!("prevValue={v}"),
    };
    let (method, uri, form) = match op {
        V2Op::Get { key, quorum } => {
            let q = if *quorum { "?quorum=true" } else { "" };
            (Method::GET, format!("{}{q}", key_path(key)), None)
        }
        V2Op::Set { key, value } => (Method::PUT, key_path(key), Some(format!("value={value}"))),
        V2Op::Create { key, value } => (
            Method::PUT,
            key_path(key),
            Some(format!("value={value}&prevExist=false")),
        ),
        V2Op::Cas {
            key,
            compare: c,
            value,
        } => (
            Method::PUT,
            key_path(key),
            Some(format!("value={value}&{}", compare(c))),
        ),
        V2Op::Cad { key, compare: c } => (
            Method::DELETE,
            format!("{}?{}", key_path(key), compare(c)),
            None,
        ),
        V2Op::Delete { key } => (Method::DELETE, key_path(key), None),
    };
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(HOST, addr.to_string());
    let built = match form {
        Some(form) => builder
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form))),
        None => builder.body(Full::new(Bytes::new())),
    };
    built.ok()
}

/// A node of an answer's JSON (`node` or `prevNode`) with a value.
fn node_state(v: &serde_json::Value) -> Option<NodeState> {
    Some(NodeState {
        value: v.get("value")?.as_str()?.to_string(),
        modified: v.get("modifiedIndex")?.as_u64()?,
    })
}

/// Sends `op` and reads the whole answer: (status, `X-Etcd-Index`, body).
async fn exchange(
    conn: &mut Conn,
    op: &V2Op,
    addr: SocketAddr,
) -> Result<(u16, Option<u64>, Bytes), String> {
    let req = request(op, addr).ok_or("request not built")?;
    conn.send.ready().await.map_err(|e| e.to_string())?;
    let resp = conn
        .send
        .send_request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("x-etcd-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, index, body.to_bytes()))
}

/// What an answer means for the history.
fn outcome(op: &V2Op, status: u16, index: Option<u64>, body: &[u8]) -> V2Outcome {
    let unsure = |why: String| {
        if op.is_write() {
            V2Outcome::InDoubt(why)
        } else {
            V2Outcome::Fail(why)
        }
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return unsure(format!("HTTP {status}: {}", String::from_utf8_lossy(body)));
    };
    if let Some(code) = json.get("errorCode").and_then(|c| c.as_u64()) {
        let at = json.get("index").and_then(|i| i.as_u64()).or(index);
        return match (code, at) {
            // The store's own refusals, decided at apply (or at the read): certain.
            (100 | 101 | 105, Some(index)) => V2Outcome::Error {
                code: code as u32,
                index,
            },
            _ => unsure(format!("error {code}: {}", json)),
        };
    }
    match (status, index) {
        (200..=299, Some(index)) => V2Outcome::Ok {
            index,
            node: json.get("node").and_then(node_state),
            prev: json.get("prevNode").and_then(node_state),
        },
        _ => unsure(format!("HTTP {status} without an index")),
    }
}

/// Runs `op` on `conn` within the timeout; the outcome and whether the connection is still
/// good.
async fn run(conn: &mut Conn, op: &V2Op, addr: SocketAddr) -> (V2Outcome, bool) {
    match tokio::time::timeout(OP_TIMEOUT, exchange(conn, op, addr)).await {
        Ok(Ok((status, index, body))) => (outcome(op, status, index, &body), true),
        Ok(Err(e)) if op.is_write() => (V2Outcome::InDoubt(e), false),
        Ok(Err(e)) => (V2Outcome::Fail(e), false),
        Err(_) if op.is_write() => (V2Outcome::InDoubt("timeout".into()), false),
        Err(_) => (V2Outcome::Fail("timeout".into()), false),
    }
}

/// v2 client `id`'s state.
struct V2Client {
    ctx: Ctx,
    log: V2Log,
    id: usize,
    member: usize,
    addr: SocketAddr,
    rng: SeedRng,
    serial: u64,
    /// What it last learned of each key.
    seen: Vec<Option<NodeState>>,
    /// The highest index it has seen.
    index: u64,
    conn: Option<Conn>,
}

fn v2_key(i: u64) -> String {
    format!("v2sim/k{i}")
}

impl V2Client {
    fn value(&mut self) -> String {
        self.serial += 1;
        format!("v2c{}-{}", self.id, self.serial)
    }

    /// A compare on what the client last saw of key `k` (sometimes on a guess).
    fn compare(&mut self, k: u64, by_value: bool) -> Compare {
        match &self.seen[k as usize] {
            Some(s) if by_value => Compare::Value(s.value.clone()),
            Some(s) if !self.rng.chance(1, 8) => Compare::Index(s.modified),
            _ if by_value => Compare::Value(format!("v2c{}-{}", self.id, self.serial)),
            _ => Compare::Index(1 + self.rng.below(self.index.max(1))),
        }
    }

    fn next_op(&mut self) -> V2Op {
        let k = self.rng.below(V2_KEYS);
        let key = v2_key(k);
        match self.rng.below(100) {
            0..=19 => V2Op::Set {
                key,
                value: self.value(),
            },
            20..=39 => V2Op::Get { key, quorum: true },
            40..=47 => V2Op::Get { key, quorum: false },
            48..=62 => V2Op::Cas {
                key,
                compare: self.compare(k, false),
                value: self.value(),
            },
            63..=72 => V2Op::Cas {
                key,
                compare: self.compare(k, true),
                value: self.value(),
            },
            73..=79 => V2Op::Cad {
                key,
                compare: self.compare(k, false),
            },
            80..=84 => V2Op::Cad {
                key,
                compare: self.compare(k, true),
            },
            85..=92 => V2Op::Create {
                key,
                value: self.value(),
            },
            _ => V2Op::Delete { key },
        }
    }

    /// Remembers what an answer showed of its key.
    fn learn(&mut self, op: &V2Op, outcome: &V2Outcome) {
        let k: usize = op
            .key()
            .rsplit('k')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let Some(slot) = self.seen.get_mut(k) else {
            return;
        };
        match outcome {
            V2Outcome::Ok { index, node, .. } => {
                self.index = self.index.max(*index);
                *slot = match op {
                    V2Op::Get { .. } => node.clone(),
                    V2Op::Delete { .. } | V2Op::Cad { .. } => None,
                    _ => op.value().map(|v| NodeState {
                        value: v.to_string(),
                        modified: *index,
                    }),
                };
            }
            V2Outcome::Error { code: 100, index } => {
                self.index = self.index.max(*index);
                *slot = None;
            }
            _ => {}
        }
    }

    /// One operation, recorded.
    async fn step(&mut self) {
        if self.conn.is_none() {
            self.conn = open(self.addr).await;
        }
        let Some(mut conn) = self.conn.take() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        };
        let op = self.next_op();
        let invoke_ns = self.ctx.now_ns();
        let (outcome, good) = run(&mut conn, &op, self.addr).await;
        if good {
            self.conn = Some(conn);
        }
        self.learn(&op, &outcome);
        record(
            &self.ctx,
            &self.log,
            self.id,
            self.member,
            op,
            invoke_ns,
            outcome,
        );
    }
}

fn record(
    ctx: &Ctx,
    log: &V2Log,
    client: usize,
    member: usize,
    op: V2Op,
    invoke_ns: u64,
    outcome: V2Outcome,
) -> V2Entry {
    let entry = log.push(V2Entry {
        seq: 0,
        client,
        member,
        op,
        invoke_ns,
        complete_ns: ctx.now_ns(),
        outcome,
    });
    ctx.trace.record(format!("v2 {entry}"));
    entry
}

fn member_addr(cluster: &Cluster, i: usize) -> SocketAddr {
    SocketAddr::new(cluster.members[i].ip, CLIENT_PORT)
}

/// Spawns `clients` v2 clients on the cluster's client node (client `c` asks member
/// `c % n`); they stop at `until`. Their operations go into `log`.
pub fn spawn_v2_clients(
    cluster: &Cluster,
    ctx: &Ctx,
    log: &V2Log,
    clients: usize,
    seed: u64,
    until: tokio::time::Instant,
) -> Vec<madsim::task::JoinHandle<()>> {
    (0..clients)
        .map(|id| {
            let member = id % cluster.members.len();
            let mut c = V2Client {
                ctx: ctx.clone(),
                log: log.clone(),
                id,
                member,
                addr: member_addr(cluster, member),
                rng: SeedRng::new(seed, 0x7632 + id as u64),
                serial: 0,
                seen: vec![None; V2_KEYS as usize],
                index: 0,
                conn: None,
            };
            cluster.client_node.spawn(async move {
                while tokio::time::Instant::now() < until {
                    let think = c.rng.between(0, THINK_MS_MAX);
                    tokio::time::sleep(Duration::from_millis(think)).await;
                    c.step().await;
                }
            })
        })
        .collect()
}

/// After the liveness phase: a quorum read of every v2 key through each member in turn (up
/// to `attempts` tries a key), recorded, so that an acknowledged write lost by then shows.
pub async fn final_v2_reads(cluster: &Cluster, ctx: &Ctx, log: &V2Log, attempts: usize) {
    for k in 0..V2_KEYS {
        for attempt in 0..attempts {
            let member = attempt % cluster.members.len();
            let addr = member_addr(cluster, member);
            let (ctx2, log2) = (ctx.clone(), log.clone());
            let task = cluster.client_node.spawn(async move {
                let mut conn = open(addr).await?;
                let op = V2Op::Get {
                    key: v2_key(k),
                    quorum: true,
                };
                let invoke_ns = ctx2.now_ns();
                let (outcome, _) = run(&mut conn, &op, addr).await;
                let e = record(
                    &ctx2,
                    &log2,
                    V2_FINAL_CLIENT,
                    member,
                    op,
                    invoke_ns,
                    outcome,
                );
                Some(matches!(
                    e.outcome,
                    V2Outcome::Ok { .. } | V2Outcome::Error { .. }
                ))
            });
            if task.await.ok().flatten() == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
