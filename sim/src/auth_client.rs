//! Auth mode's KV clients: client `i` logs in (simple token) as user `u{i % USERS}` and does
//! puts, linearizable and serializable gets, prefix ranges, two-key txns, watch
//! creations on a prefix (closed once answered), and lease grants, puts with a lease and
//! lease revokes (`src/auth_lease.rs`), mostly inside
//! its user's prefix and sometimes in another's, while the churn (`src/auth.rs`) changes who
//! may do what. A token the server no longer accepts (`invalid auth token`, `revision of auth
//! store is old`, `user name not found`) makes the client log in again, as etcd's client
//! does; a login refused (the user is deleted, or its password changed: the client tries the
//! other of its two passwords next) is retried after a pause. Logins go into the log too,
//! and each operation carries the revision of the login that issued its token.
//!
//! Each operation goes into the run's [`AuthLog`] (with the access it needs) for
//! `src/auth_check.rs`, and every put, get and txn also into the KV history, so the
//! linearizability checker explains every revision and checks the reads; prefix ranges are
//! not in the KV history (reads need not be).

use std::time::Duration;

use keel_proto::etcdserverpb::auth_client::AuthClient;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::request_op::Request as ReqOp;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use crate::auth::{
    certainly_refused, lease_space, login, needs_login, password_v, prefix, user, with_token, USERS,
};
use crate::auth_check::{AuthLog, AuthLogin, AuthOp, LoginOutcome, OpOutcome, READ, WRITE};
use crate::auth_lease::{self, AuthLease};
use crate::cluster::Cluster;
use crate::history::{prefix_end, Entry, KeyValue, Op, OpResult, Outcome};
use crate::nemesis::SeedRng;
use crate::workload::{Ctx, OP_TIMEOUT, THINK_MS_MAX};

/// History client ids of the auth clients start here.
pub const AUTH_HISTORY_CLIENT_BASE: usize = 6000;
/// Keys per prefix.
const KEYS_PER_PREFIX: u64 = 3;

/// One auth client.
struct AuthKvClient {
    ctx: Ctx,
    log: AuthLog,
    id: usize,
    user: usize,
    endpoints: Vec<String>,
    member: usize,
    rng: SeedRng,
    conn: Option<Conn>,
    token: Option<String>,
    /// The header revision of the login that issued `token`.
    login_rev: Option<i64>,
    /// Which of its passwords the client believes its user has (it tries the other when a
    /// login is refused).
    password: u8,
    serial: u64,
    /// The lease it attaches keys to, if any.
    lease: Option<AuthLease>,
    leases_granted: u64,
}

/// One member's clients.
type Conn = (
    KvClient<Channel>,
    AuthClient<Channel>,
    WatchClient<Channel>,
    LeaseClient<Channel>,
);

/// What one operation does: the KV-history op (none for prefix ranges), the access it
/// needs, and the request.
enum Request {
    Put(String, String),
    Get(String, bool),
    Range(String),
    Txn(Vec<(String, String)>),
    /// Create a watch on the prefix, then close it.
    Watch(String),
    /// Put `(key, value)` attached to lease `id`.
    LeasePut(String, String, i64),
    /// Revoke lease `id` (one with keys, all known).
    LeaseRevoke(i64),
}

impl AuthKvClient {
    async fn connect(&mut self) -> Option<Conn> {
        if self.conn.is_none() {
            let e = self.endpoints[self.member].clone();
            let both = async {
                Some((
                    KvClient::connect(e.clone()).await.ok()?,
                    AuthClient::connect(e.clone()).await.ok()?,
                    WatchClient::connect(e.clone()).await.ok()?,
                    LeaseClient::connect(e).await.ok()?,
                ))
            };
            self.conn = tokio::time::timeout(OP_TIMEOUT, both).await.ok().flatten();
            if self.conn.is_none() {
                self.next_member();
            }
        }
        self.conn.clone()
    }

    fn next_member(&mut self) {
        self.conn = None;
        self.member = (self.member + 1) % self.endpoints.len();
    }

    fn key(&mut self) -> (String, String) {
        let n = if self.rng.chance(2, 3) {
            self.user
        } else {
            self.rng.index(USERS)
        };
        let p = prefix(n);
        let k = format!("{p}k{}", self.rng.below(KEYS_PER_PREFIX));
        (p, k)
    }

    fn next_request(&mut self) -> (Request, Vec<(String, u8)>) {
        self.serial += 1;
        let value = format!("a{}-{}", self.id, self.serial);
        let (p, k) = self.key();
        match self.rng.below(9) {
            0..=2 => (Request::Put(k, value), vec![(p, WRITE)]),
            3 | 4 => (Request::Get(k, false), vec![(p, READ)]),
            5 => (Request::Get(k, true), vec![(p, READ)]),
            6 => (Request::Range(p.clone()), vec![(p, READ)]),
            7 => (Request::Watch(p.clone()), vec![(p, READ)]),
            _ => {
                let (p2, k2) = self.key();
                if k2 == k {
                    return (Request::Put(k, value), vec![(p, WRITE)]);
                }
                let kvs = vec![(k, format!("{value}a")), (k2, format!("{value}b"))];
                (Request::Txn(kvs), vec![(p, WRITE), (p2, WRITE)])
            }
        }
    }

    /// The next lease operation: a put with the current lease, or its revoke once it has
    /// enough keys; `None` when there is no usable lease (then one is granted).
    async fn lease_request(
        &mut self,
        leases: &mut LeaseClient<Channel>,
    ) -> Option<(Request, Vec<(String, u8)>)> {
        let Some(lease) = self.lease.as_mut().filter(|l| l.usable()) else {
            self.grant_lease(leases).await;
            return None;
        };
        let needs = vec![(lease_space(lease.space), WRITE)];
        if lease.revocable() && (lease.full() || self.rng.chance(1, 3)) {
            let id = lease.id;
            self.lease = None;
            return Some((Request::LeaseRevoke(id), needs));
        }
        self.serial += 1;
        let value = format!("a{}-{}", self.id, self.serial);
        Some((Request::LeasePut(lease.next_key(), value, lease.id), needs))
    }

    /// Grants a fresh lease in its user's space or (one time in three) another's; a lease it
    /// had is left to expire.
    async fn grant_lease(&mut self, leases: &mut LeaseClient<Channel>) {
        let space = match self.rng.chance(2, 3) {
            true => self.user,
            false => self.rng.index(USERS),
        };
        self.leases_granted += 1;
        let id = auth_lease::lease_id(space, self.id, self.leases_granted);
        let granted = auth_lease::grant(leases, self.token.as_deref(), id).await;
        self.ctx.trace.record(format!(
            "auth lease a{} grant {id:016x}: {granted:?}",
            self.id
        ));
        self.lease = None;
        match granted {
            Ok(()) => self.lease = Some(AuthLease::new(id, space)),
            Err(s) if needs_login(&s) => self.token = None,
            Err(s) if !certainly_refused(&s) => self.next_member(),
            Err(_) => {}
        }
    }

    /// One round: log in if needed, then one operation.
    async fn round(&mut self) {
        let Some((mut kv, mut auth, mut watch, mut leases)) = self.connect().await else {
            return;
        };
        if self.token.is_none() && !self.login(&mut auth).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
        let (request, needs) = match self.rng.chance(1, 4) {
            true => match self.lease_request(&mut leases).await {
                Some(r) => r,
                None => return,
            },
            false => self.next_request(),
        };
        let invoke_ns = self.ctx.now_ns();
        let invoke_seq = self.ctx.history.tick();
        let token = self.token.as_deref();
        let answer = match &request {
            Request::Watch(p) => create_watch(&mut watch, token, p).await,
            Request::LeaseRevoke(id) => auth_lease::revoke(&mut leases, token, *id).await,
            _ => execute(&mut kv, token, &request).await,
        };
        if let (Request::LeasePut(_, _, id), Some(lease)) = (&request, self.lease.as_mut()) {
            if lease.id == *id {
                let refused = answer.as_ref().err().is_some_and(certainly_refused);
                lease.attach_ended(answer.is_ok(), refused);
            }
        }
        self.record(request, needs, invoke_ns, invoke_seq, answer);
    }

    /// Logs in with the password the client believes its user has (the other one next time
    /// if refused), recorded; whether it has a token now.
    async fn login(&mut self, auth: &mut AuthClient<Channel>) -> bool {
        let (name, which) = (user(self.user), self.password);
        let invoke_ns = self.ctx.now_ns();
        let answer = login(auth, &name, &password_v(self.user, which)).await;
        let outcome = match &answer {
            Ok((_, rev)) => LoginOutcome::Served(*rev),
            Err(s) => LoginOutcome::Other(s.message().to_string()),
        };
        let l = AuthLogin {
            client: self.id,
            user: name,
            password: which,
            invoke_ns,
            complete_ns: self.ctx.now_ns(),
            outcome,
        };
        self.ctx.trace.record(format!("auth {l}"));
        self.log.login(l);
        match answer {
            Ok((t, rev)) => {
                self.token = Some(t);
                self.login_rev = Some(rev);
                true
            }
            Err(s) => {
                if s.message().contains("authentication failed") {
                    self.password = 1 - which; // changed, or the user re-added
                }
                if !certainly_refused(&s) {
                    self.next_member();
                }
                false
            }
        }
    }

    fn record(
        &mut self,
        request: Request,
        needs: Vec<(String, u8)>,
        invoke_ns: u64,
        invoke_seq: u64,
        answer: Result<OpResult, Status>,
    ) {
        // A revoke of a lease with keys deletes them: a write, in no KV-history op.
        let revokes = matches!(request, Request::LeaseRevoke(_));
        let (op, what, serializable) = match request {
            Request::Put(key, value) => (Some(Op::Put { key, value }), None, false),
            Request::Get(key, serializable) => {
                (Some(Op::Get { key, serializable }), None, serializable)
            }
            Request::Range(p) => (None, Some(format!("range {p}*")), false),
            // Created against the member's applied auth store, which may lag: as a
            // serializable read.
            Request::Watch(p) => (None, Some(format!("watch {p}*")), true),
            Request::Txn(kvs) => (Some(Op::MultiPut { kvs }), None, false),
            Request::LeasePut(key, value, lease) => {
                (Some(Op::LeasePut { key, value, lease }), None, false)
            }
            Request::LeaseRevoke(id) => (None, Some(format!("lease revoke {id:016x}")), false),
        };
        let what = what.unwrap_or_else(|| op.as_ref().map(|o| o.to_string()).unwrap_or_default());
        let is_write = op.as_ref().is_some_and(|o| o.is_write()) || revokes;
        let (outcome, auth_outcome) = match answer {
            Ok(r) => {
                let served = OpOutcome::Served {
                    revision: r.revision(),
                    wrote: is_write,
                };
                (Outcome::Ok(r), served)
            }
            Err(s) => {
                let why = format!("{:?}: {}", s.code(), s.message());
                if needs_login(&s) {
                    self.token = None;
                } else if !certainly_refused(&s) {
                    self.next_member();
                }
                let denied = s.message().contains("permission denied");
                let auth_outcome = if denied {
                    OpOutcome::Denied
                } else {
                    OpOutcome::Other(why.clone())
                };
                if is_write && !certainly_refused(&s) {
                    (Outcome::Info(why), auth_outcome)
                } else {
                    (Outcome::Fail(why), auth_outcome)
                }
            }
        };
        let complete_ns = self.ctx.now_ns();
        let op_record = AuthOp {
            client: self.id,
            user: user(self.user),
            member: self.member,
            what,
            needs,
            serializable,
            invoke_ns,
            complete_ns,
            outcome: auth_outcome,
            login_rev: self.login_rev,
        };
        self.ctx.trace.record(format!("auth op {op_record}"));
        self.log.op(op_record);
        if let Some(op) = op {
            self.ctx.history.push(Entry {
                index: 0,
                client: AUTH_HISTORY_CLIENT_BASE + self.id,
                member: self.member,
                op,
                invoke_ns,
                complete_ns,
                invoke_seq,
                complete_seq: 0,
                outcome,
            });
        }
    }
}

fn put_op(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// Creates a watch on `p*` and closes it: its revision if created; a cancel is refused with
/// its reason.
async fn create_watch(
    watch: &mut WatchClient<Channel>,
    token: Option<&str>,
    p: &str,
) -> Result<OpResult, Status> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: p.as_bytes().to_vec().into(),
            range_end: prefix_end(p).into_bytes().into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(create)
        .await
        .map_err(|_| Status::internal("watch request channel closed"))?;
    let call = watch.watch(with_token(ReceiverStream::new(rx), token));
    let first = async { call.await?.into_inner().message().await };
    let Some(r) = tokio::time::timeout(OP_TIMEOUT, first)
        .await
        .map_err(|_| Status::deadline_exceeded("timeout"))??
    else {
        return Err(Status::unavailable("watch stream ended"));
    };
    let revision = r.header.map_or(0, |h| h.revision);
    match (r.created, r.canceled) {
        (true, false) => Ok(OpResult::Read {
            revision,
            kvs: Vec::new(),
        }),
        // A permission refusal, as etcd words it: "rpc error: code = PermissionDenied desc =
        // etcdserver: permission denied".
        (_, true) if r.cancel_reason.contains("permission denied") => {
            Err(Status::permission_denied(r.cancel_reason))
        }
        _ => Err(Status::unknown(format!(
            "watch not created: {}",
            r.cancel_reason
        ))),
    }
}

/// Runs `request` (not a watch) within the op timeout.
async fn execute(
    kv: &mut KvClient<Channel>,
    token: Option<&str>,
    request: &Request,
) -> Result<OpResult, Status> {
    match tokio::time::timeout(OP_TIMEOUT, execute_kv(kv, token, request)).await {
        Ok(answer) => answer,
        Err(_) => Err(Status::deadline_exceeded("timeout")),
    }
}

async fn execute_kv(
    kv: &mut KvClient<Channel>,
    token: Option<&str>,
    request: &Request,
) -> Result<OpResult, Status> {
    let write = |revision| OpResult::Write {
        revision,
        succeeded: true,
        deleted: 0,
    };
    let read = |key: &str, end: Option<String>, serializable| RangeRequest {
        key: key.as_bytes().to_vec().into(),
        range_end: end.map(|e| e.into_bytes().into()).unwrap_or_default(),
        serializable,
        ..Default::default()
    };
    let range = match request {
        Request::Put(k, v) => {
            let r = kv.put(with_token(put_op(k, v), token)).await?.into_inner();
            return Ok(write(r.header.map_or(0, |h| h.revision)));
        }
        Request::LeasePut(k, v, lease) => {
            let put = PutRequest {
                lease: *lease,
                ..put_op(k, v)
            };
            let r = kv.put(with_token(put, token)).await?.into_inner();
            return Ok(write(r.header.map_or(0, |h| h.revision)));
        }
        Request::LeaseRevoke(_) => {
            return Err(Status::internal("a lease revoke goes to the Lease service"))
        }
        Request::Txn(kvs) => {
            let success = kvs
                .iter()
                .map(|(k, v)| RequestOp {
                    request: Some(ReqOp::RequestPut(put_op(k, v))),
                })
                .collect();
            let txn = TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            };
            let r = kv.txn(with_token(txn, token)).await?.into_inner();
            return Ok(write(r.header.map_or(0, |h| h.revision)));
        }
        Request::Get(k, serializable) => read(k, None, *serializable),
        Request::Range(p) | Request::Watch(p) => read(p, Some(prefix_end(p)), false),
    };
    let r = kv.range(with_token(range, token)).await?.into_inner();
    let kvs = r
        .kvs
        .iter()
        .map(|kv| KeyValue {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            version: kv.version,
        })
        .collect();
    Ok(OpResult::Read {
        revision: r.header.map_or(0, |h| h.revision),
        kvs,
    })
}

/// Spawns `clients` auth clients on the cluster's client node; they stop at `until`.
pub fn spawn_auth_clients(
    cluster: &Cluster,
    ctx: &Ctx,
    log: &AuthLog,
    clients: usize,
    seed: u64,
    until: tokio::time::Instant,
) -> Vec<madsim::task::JoinHandle<()>> {
    let endpoints = cluster.endpoints();
    (0..clients)
        .map(|id| {
            let mut c = AuthKvClient {
                ctx: ctx.clone(),
                log: log.clone(),
                id,
                user: id % USERS,
                member: id % endpoints.len(),
                endpoints: endpoints.clone(),
                rng: SeedRng::new(seed, 0xA0_7C11 + id as u64),
                conn: None,
                token: None,
                login_rev: None,
                password: 0,
                serial: 0,
                lease: None,
                leases_granted: 0,
            };
            cluster.client_node.spawn(async move {
                while tokio::time::Instant::now() < until {
                    let think = c.rng.between(0, THINK_MS_MAX);
                    tokio::time::sleep(Duration::from_millis(think)).await;
                    c.round().await;
                }
            })
        })
        .collect()
}
