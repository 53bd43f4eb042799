//! Auth mode (`--auth`): the admin side. Before the faults, as root: the root user and role,
//! [`USERS`] users `u0..` each with a role `uN.g0` holding readwrite on its own prefix
//! `kaN/` and on its own lease key space [`lease_space`], then auth enable. During the faults, one *churn* client changes the auth state:
//! grants and revokes role permissions (on its own prefix or another user's, read, write or
//! readwrite), revokes a user's role and replaces it by a fresh one (role delete, role add,
//! permission, grant), changes users' passwords (between their two, [`password_v`]),
//! deletes users and adds them back. After the faults, auth disable, so
//! the liveness probes and the final read run as before.
//!
//! Every change attempt goes into the run's [`AuthLog`] with its outcome (applied with its
//! header revision, certainly refused, or in doubt), in order: the churn waits for each
//! answer before the next request. `src/auth_check.rs` explains how the checker orders them
//! against the auth clients' operations (`src/auth_client.rs`).

use std::time::Duration;

use keel_proto::authpb::permission::Type as PermType;
use keel_proto::authpb::Permission;
use keel_proto::etcdserverpb::auth_client::AuthClient;
use keel_proto::etcdserverpb::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::auth_check::{AuthChange, AuthLog, Change, ChangeOutcome, READ, WRITE};
use crate::check::{Failure, FailureKind};
use crate::history::prefix_end;
use crate::nemesis::SeedRng;
use crate::workload::{Ctx, OP_TIMEOUT};

/// Users (and prefixes) of auth mode.
pub const USERS: usize = 3;
/// The root user's password.
const ROOT_PASSWORD: &str = "root-pw";

/// User `n`'s name.
pub fn user(n: usize) -> String {
    format!("u{n}")
}

/// User `n`'s password (its first: the one `UserAdd` gives it).
pub fn password(n: usize) -> String {
    password_v(n, 0)
}

/// User `n`'s `which`th password (0 or 1; the churn changes between them).
pub fn password_v(n: usize, which: u8) -> String {
    match which {
        0 => format!("pw-u{n}"),
        _ => format!("pw-u{n}-{which}"),
    }
}

/// The prefix user `n` starts with readwrite access to: inside the `k*` key space, so the
/// final read and the acknowledged-write check cover its keys.
pub fn prefix(n: usize) -> String {
    format!("ka{n}/")
}

/// User `n`'s lease key space: the keys of the leases whose ids [`crate::auth_lease`] gives
/// to `n`'s space (`lease/00aN…`), inside the lease key space, so the linearizability
/// checker covers their puts and the deletions their revokes and expiries make.
pub fn lease_space(n: usize) -> String {
    crate::auth_lease::space_prefix(n)
}

/// The prefixes user `n` starts with readwrite access to.
fn own_prefixes(n: usize) -> [String; 2] {
    [prefix(n), lease_space(n)]
}

/// A request carrying `token` (etcd's `token` metadata), if any.
pub fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(value) = token.and_then(|t| t.parse().ok()) {
        req.metadata_mut().insert("token", value);
    }
    req
}

/// Whether an error certainly means the request had no effect: refused on arrival or at
/// apply with an auth or request error, or NOSPACE.
pub fn certainly_refused(status: &Status) -> bool {
    crate::alarm::is_no_space(status)
        || matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::Unauthenticated
        )
}

/// Whether a client must log in again: its token is gone (user deleted, member restarted,
/// token expired) or older than the auth store.
pub fn needs_login(status: &Status) -> bool {
    let m = status.message();
    m.contains("invalid auth token")
        || m.contains("revision of auth store is old")
        || m.contains("user name is empty")
        || m.contains("user name not found")
}

/// Authenticates `name`, within the op timeout: the token and the response header's
/// revision.
pub async fn login(
    auth: &mut AuthClient<Channel>,
    name: &str,
    pw: &str,
) -> Result<(String, i64), Status> {
    let req = AuthenticateRequest {
        name: name.to_string(),
        password: pw.to_string(),
    };
    match tokio::time::timeout(OP_TIMEOUT, auth.authenticate(req)).await {
        Ok(r) => {
            let r = r?.into_inner();
            Ok((r.token, r.header.map_or(0, |h| h.revision)))
        }
        Err(_) => Err(Status::deadline_exceeded("timeout")),
    }
}

/// Sends one change; the response header's revision.
async fn send(
    auth: &mut AuthClient<Channel>,
    token: Option<&str>,
    change: &Change,
) -> Result<i64, Status> {
    let rev = |h: Option<ResponseHeader>| h.map_or(0, |h| h.revision);
    let perm = |role: &str, p: &str, bits: u8| AuthRoleGrantPermissionRequest {
        name: role.to_string(),
        perm: Some(Permission {
            perm_type: match bits {
                READ => PermType::Read,
                WRITE => PermType::Write,
                _ => PermType::Readwrite,
            } as i32,
            key: p.as_bytes().to_vec().into(),
            range_end: prefix_end(p).into_bytes().into(),
        }),
    };
    Ok(match change {
        Change::UserAdd(u) => {
            let n: usize = u[1..].parse().unwrap_or(0);
            let req = AuthUserAddRequest {
                name: u.clone(),
                password: if u == "root" {
                    ROOT_PASSWORD.to_string()
                } else {
                    password(n)
                },
                ..Default::default()
            };
            rev(auth
                .user_add(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::UserDelete(u) => {
            let req = AuthUserDeleteRequest { name: u.clone() };
            rev(auth
                .user_delete(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::GrantRole(u, r) => {
            let req = AuthUserGrantRoleRequest {
                user: u.clone(),
                role: r.clone(),
            };
            rev(auth
                .user_grant_role(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::RevokeRole(u, r) => {
            let req = AuthUserRevokeRoleRequest {
                name: u.clone(),
                role: r.clone(),
            };
            rev(auth
                .user_revoke_role(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::RoleAdd(r) => {
            let req = AuthRoleAddRequest { name: r.clone() };
            rev(auth
                .role_add(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::RoleDelete(r) => {
            let req = AuthRoleDeleteRequest { role: r.clone() };
            rev(auth
                .role_delete(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::GrantPerm(r, p, bits) => {
            let req = perm(r, p, *bits);
            rev(auth
                .role_grant_permission(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::ChangePassword(u, which) => {
            let req = AuthUserChangePasswordRequest {
                name: u.clone(),
                password: password_v(u[1..].parse().unwrap_or(0), *which),
                ..Default::default()
            };
            rev(auth
                .user_change_password(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
        Change::RevokePerm(r, p) => {
            let req = AuthRoleRevokePermissionRequest {
                role: r.clone(),
                key: p.as_bytes().to_vec().into(),
                range_end: prefix_end(p).into_bytes().into(),
            };
            rev(auth
                .role_revoke_permission(with_token(req, token))
                .await?
                .into_inner()
                .header)
        }
    })
}

/// What the churn believes of one user (only to choose sensible changes; the checker never
/// trusts it).
#[derive(Debug, Clone)]
struct Slot {
    exists: bool,
    /// The user's current role, `uN.gK`, and whether it is granted.
    role: String,
    generation: u64,
    granted: bool,
    /// Which of its passwords the user has.
    password: u8,
}

/// The admin: root's connection and token, and the churn's beliefs.
pub struct Admin {
    ctx: Ctx,
    log: AuthLog,
    endpoints: Vec<String>,
    member: usize,
    conn: Option<AuthClient<Channel>>,
    token: Option<String>,
    rng: SeedRng,
    slots: Vec<Slot>,
    /// A member said auth is not enabled (after auth disable was sent).
    seen_disabled: bool,
}

impl Admin {
    /// The admin of a run, talking to member 0 first.
    pub fn new(ctx: &Ctx, log: &AuthLog, endpoints: Vec<String>, seed: u64) -> Admin {
        Admin {
            ctx: ctx.clone(),
            log: log.clone(),
            endpoints,
            member: 0,
            conn: None,
            token: None,
            rng: SeedRng::new(seed, 0xA07_C4A2),
            slots: (0..USERS)
                .map(|n| Slot {
                    exists: true,
                    role: format!("{}.g0", user(n)),
                    generation: 0,
                    granted: true,
                    password: 0,
                })
                .collect(),
            seen_disabled: false,
        }
    }

    async fn conn(&mut self) -> Option<AuthClient<Channel>> {
        if self.conn.is_none() {
            let endpoint = self.endpoints[self.member].clone();
            self.conn = tokio::time::timeout(OP_TIMEOUT, AuthClient::connect(endpoint))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if self.conn.is_none() {
            self.next_member();
        }
        self.conn.clone()
    }

    fn next_member(&mut self) {
        self.conn = None;
        self.member = (self.member + 1) % self.endpoints.len();
    }

    /// One attempt at `change`, recorded. `None`: no connection (nothing sent).
    async fn attempt(&mut self, change: Change) -> Option<ChangeOutcome> {
        let mut auth = self.conn().await?;
        let invoke_ns = self.ctx.now_ns();
        let sent =
            tokio::time::timeout(OP_TIMEOUT, send(&mut auth, self.token.as_deref(), &change)).await;
        let outcome = match sent {
            Ok(Ok(rev)) => ChangeOutcome::Applied(rev),
            Ok(Err(s)) if certainly_refused(&s) => {
                if needs_login(&s) {
                    self.token = None;
                }
                ChangeOutcome::NoEffect(s.message().to_string())
            }
            Ok(Err(s)) => ChangeOutcome::InDoubt(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => ChangeOutcome::InDoubt("timeout".to_string()),
        };
        if matches!(outcome, ChangeOutcome::InDoubt(_)) {
            self.next_member();
        }
        let c = AuthChange {
            change,
            invoke_ns,
            complete_ns: self.ctx.now_ns(),
            outcome: outcome.clone(),
        };
        self.ctx.trace.record(format!("{c}"));
        self.log.change(c);
        Some(outcome)
    }

    /// Logs root in if it has no token; whether it has one.
    async fn root_login(&mut self) -> bool {
        if self.token.is_some() {
            return true;
        }
        let Some(mut auth) = self.conn().await else {
            return false;
        };
        match login(&mut auth, "root", ROOT_PASSWORD).await {
            Ok((t, _)) => self.token = Some(t),
            Err(s) => {
                self.ctx
                    .trace
                    .record(format!("auth root login failed: {}", s.message()));
                // A disable in doubt took effect (the member that says so applied it).
                self.seen_disabled |= s.message().contains("authentication is not enabled");
                if !certainly_refused(&s) {
                    self.next_member();
                }
            }
        }
        self.token.is_some()
    }

    /// Tries `change` (in the setup, auth still off) until it is applied or certainly
    /// refused (or `deadline`); whether it was applied (or found done: `already exists` after an attempt in doubt).
    async fn until_done(&mut self, change: Change, deadline: tokio::time::Instant) -> bool {
        while tokio::time::Instant::now() < deadline {
            match self.attempt(change.clone()).await {
                Some(ChangeOutcome::Applied(_)) => return true,
                Some(ChangeOutcome::NoEffect(why)) if why.contains("already exists") => {
                    return true
                }
                Some(ChangeOutcome::NoEffect(_)) => return false,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Root, the users and their first roles, auth enable, root's login. Runs before the
    /// faults; `Err` says what failed.
    pub async fn setup(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut plan = vec![
            Change::UserAdd("root".into()),
            Change::RoleAdd("root".into()),
            Change::GrantRole("root".into(), "root".into()),
        ];
        for n in 0..USERS {
            let role = format!("{}.g0", user(n));
            plan.push(Change::RoleAdd(role.clone()));
            for p in own_prefixes(n) {
                plan.push(Change::GrantPerm(role.clone(), p, READ | WRITE));
            }
            plan.push(Change::UserAdd(user(n)));
            plan.push(Change::GrantRole(user(n), role));
        }
        for change in plan {
            if !self.until_done(change.clone(), deadline).await {
                return Err(format!("auth setup: {change} failed"));
            }
        }
        while tokio::time::Instant::now() < deadline {
            if let Some(mut auth) = self.conn().await {
                let enable =
                    tokio::time::timeout(OP_TIMEOUT, auth.auth_enable(AuthEnableRequest {})).await;
                if matches!(enable, Ok(Ok(_))) {
                    self.ctx.trace.record("auth enabled".to_string());
                    if self.root_login().await {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("auth setup: auth enable or root's login failed".to_string())
    }

    /// Auth disable (root), tried until `deadline`.
    pub async fn disable(&mut self, deadline: tokio::time::Instant) -> Result<(), String> {
        let mut last = String::new();
        self.seen_disabled = false;
        while tokio::time::Instant::now() < deadline {
            if self.root_login().await {
                if let Some(mut auth) = self.conn().await {
                    let req = with_token(AuthDisableRequest {}, self.token.as_deref());
                    match tokio::time::timeout(OP_TIMEOUT, auth.auth_disable(req)).await {
                        Ok(Ok(_)) => {
                            self.ctx.trace.record("auth disabled".to_string());
                            return Ok(());
                        }
                        Ok(Err(s)) => {
                            last = s.message().to_string();
                            if needs_login(&s) {
                                self.token = None;
                            } else {
                                self.next_member();
                            }
                        }
                        Err(_) => self.next_member(),
                    }
                }
            }
            if self.seen_disabled {
                let what = "auth disabled (by an attempt in doubt)";
                self.ctx.trace.record(what.to_string());
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "auth disable did not succeed after the faults healed ({last})"
        ))
    }

    /// The churn: one change (or one role replacement) every 20–100 ms until `until`.
    pub async fn churn(&mut self, until: tokio::time::Instant) {
        while tokio::time::Instant::now() < until {
            let think = self.rng.between(20, 100);
            tokio::time::sleep(Duration::from_millis(think)).await;
            if !self.root_login().await {
                continue;
            }
            let n = self.rng.index(USERS);
            self.change_slot(n).await;
        }
    }

    /// One random change to user `n`'s auth state.
    async fn change_slot(&mut self, n: usize) {
        let slot = self.slots[n].clone();
        let whose = match self.rng.chance(2, 3) {
            true => n,
            false => self.rng.index(USERS),
        };
        let target = match self.rng.chance(1, 3) {
            true => lease_space(whose),
            false => prefix(whose),
        };
        if !slot.exists {
            // Add the user back with its current role.
            if self.applied(Change::UserAdd(user(n))).await {
                self.slots[n].exists = true;
                self.slots[n].granted = false;
                self.slots[n].password = 0;
            }
            return;
        }
        match self.rng.below(7) {
            0 | 1 => {
                let bits = [READ, WRITE, READ | WRITE][self.rng.index(3)];
                self.applied(Change::GrantPerm(slot.role, target, bits))
                    .await;
            }
            2 => {
                self.applied(Change::RevokePerm(slot.role, target)).await;
            }
            3 if slot.granted => {
                self.replace_role(n).await;
            }
            3 => {
                if self.applied(Change::GrantRole(user(n), slot.role)).await {
                    self.slots[n].granted = true;
                }
            }
            4 => {
                if self.applied(Change::RevokeRole(user(n), slot.role)).await {
                    self.slots[n].granted = false;
                }
            }
            6 => {
                let which = 1 - slot.password;
                if self.applied(Change::ChangePassword(user(n), which)).await {
                    self.slots[n].password = which;
                }
            }
            _ => {
                if self.applied(Change::UserDelete(user(n))).await {
                    self.slots[n].exists = false;
                    self.slots[n].granted = false;
                }
            }
        }
    }

    /// Revokes user `n`'s role, deletes it, and grants a fresh one with readwrite on the
    /// user's prefix and lease key space (fresh names: a delayed grant of an old role cannot bring it back).
    async fn replace_role(&mut self, n: usize) {
        let old = self.slots[n].role.clone();
        self.applied(Change::RevokeRole(user(n), old.clone())).await;
        self.applied(Change::RoleDelete(old)).await;
        let generation = self.slots[n].generation + 1;
        let role = format!("{}.g{generation}", user(n));
        self.slots[n].generation = generation;
        self.slots[n].role = role.clone();
        self.slots[n].granted = false;
        if !self.applied(Change::RoleAdd(role.clone())).await {
            return;
        }
        for p in own_prefixes(n) {
            self.applied(Change::GrantPerm(role.clone(), p, READ | WRITE))
                .await;
        }
        if self.applied(Change::GrantRole(user(n), role)).await {
            self.slots[n].granted = true;
        }
    }

    /// One attempt; whether it was applied.
    async fn applied(&mut self, change: Change) -> bool {
        matches!(self.attempt(change).await, Some(ChangeOutcome::Applied(_)))
    }
}

/// Auth mode's setup, on the client node, before the faults: the admin for the churn, or
/// the failure.
pub async fn setup(
    cluster: &crate::cluster::Cluster,
    ctx: &Ctx,
    log: &AuthLog,
    seed: u64,
) -> Result<Admin, Failure> {
    let mut admin = Admin::new(ctx, log, cluster.endpoints(), seed);
    let task = cluster.client_node.spawn(async move {
        let done = admin.setup().await;
        (admin, done)
    });
    match task.await {
        Ok((admin, Ok(()))) => Ok(admin),
        Ok((_, Err(why))) => Err(Failure::new(FailureKind::AuthSetup, why, Vec::new())),
        Err(e) => Err(Failure::new(
            FailureKind::AuthSetup,
            format!("the auth setup task failed: {e}"),
            Vec::new(),
        )),
    }
}

/// Runs the churn on the client node until `until`; the admin comes back for auth disable.
pub fn spawn_churn(
    cluster: &crate::cluster::Cluster,
    mut admin: Admin,
    until: tokio::time::Instant,
) -> madsim::task::JoinHandle<Admin> {
    cluster.client_node.spawn(async move {
        admin.churn(until).await;
        admin
    })
}

/// Auth disable after the faults healed, on the client node, tried until `deadline`.
pub async fn disable(
    cluster: &crate::cluster::Cluster,
    mut admin: Admin,
    deadline: tokio::time::Instant,
) -> Option<Failure> {
    let task = cluster
        .client_node
        .spawn(async move { admin.disable(deadline).await });
    match task.await {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(Failure::new(FailureKind::AuthSetup, why, Vec::new())),
        Err(e) => Some(Failure::new(
            FailureKind::AuthSetup,
            format!("the auth disable task failed: {e}"),
            Vec::new(),
        )),
    }
}
