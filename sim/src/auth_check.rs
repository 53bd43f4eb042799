//! Auth safety: no request is served with permissions its user did not have where it took
//! effect, and no request is refused with `permission denied` while its user had the
//! permission throughout.
//!
//! # What is recorded ([`AuthLog`])
//!
//! * **Auth changes** ([`AuthChange`]), made one at a time by one actor (`src/auth.rs`: the
//!   setup, then the churn client): each attempt with its invocation and completion times and
//!   an outcome — *applied* (acknowledged, with the response header's KV revision), *no
//!   effect* (a certain refusal: `user name not found`, `permission is not granted to the
//!   role`, ...), or *in doubt* (timed out, connection lost).
//! * **Auth clients' operations** ([`AuthOp`]): the user, the keys and the access each needs
//!   (read, write), and the outcome — *served* (with the header revision, and whether it
//!   wrote), *denied* (`etcdserver: permission denied`), another refusal, or in doubt.
//!
//! # The order between auth changes and KV operations
//!
//! Auth changes make no KV revision, but every response header carries the store's revision
//! when the member answered, and keel answers a write or an auth change right after applying
//! it. So with positions `(revision, kind, sequence)`:
//!
//! * an acknowledged write (put, txn with puts) with header revision `W` took effect at
//!   `(W, 0)`: exactly the log entry that made revision `W`;
//! * an applied auth change with header revision `H` took effect at `(H, 1, seq)`: after the
//!   entry that made `H`, before the one that makes `H + 1`; changes sharing `H` apply in the
//!   actor's order (`seq`), since it waits for each answer before the next request;
//! * a read (range, serializable or not) with header revision `R` was checked and served
//!   against the state of some applied index whose store revision was `R`: anywhere strictly
//!   between `(R, 0)` and `(R + 1, 0)`, before or after the auth changes with `H = R`.
//!
//! Keel checks a write at apply against the auth store of its log index (a request whose
//! token was resolved at an older auth revision is refused with `revision of auth store is
//! old`), and a read when it is served; so a served request must have had its permission at
//! its position.
//!
//! # Uncertain changes, and why the checker has no false positives
//!
//! The auth state is a set of facts ([`Fact`]: user exists, user has role, role exists, a
//! role's permission on a prefix); each change sets some of them. For each fact and position
//! the checker computes the values it *may* have had:
//!
//! * the value of the last applied change before the position (or the initial one), plus
//! * the value of every applied change between the ends of a read's span, plus
//! * the value of every *in-doubt* change invoked after the last applied change before it
//!   (its lower bound) and below the position's end: a timed-out request may still be in a
//!   log, or a delayed forward, and be applied at any later index, even after changes made
//!   later — or never. Applied changes that may have been refused at apply (a role grant
//!   for a deleted user) are treated the same way.
//!
//! A served request fails the check only if **no** combination of possible values grants it
//! (each fact is taken at its most permissive possible value, which over-approximates what
//! the user could have had). A `permission denied` fails it only if **every** possible value
//! of every fact of some one role grants it at every instant of the request's real-time
//! window (computed the same way from the changes' times: the last change acknowledged
//! before the invocation, and every change invoked before the completion).
//! Other refusals (`invalid auth token`, `revision of auth store is old`, ...) are never
//! wrong: the client re-authenticates and retries, as etcd's client does.
//!
//! Refusals of writes are checked on any cluster: keel checks a write only at apply, as
//! etcd 3.4 does (it used to check it on arrival too, against the receiving member's applied
//! state, which may lag a change another member already acknowledged: this check found a
//! member restarting behind the others refusing a write its user had just been granted).
//! Refusals of linearizable reads are
//! checked on any cluster (a read is checked when served, after its ReadIndex round, so the
//! serving member has applied every change acknowledged before the read was sent);
//! serializable reads are never (they may be served by a lagging member).
//!
//! # Worked example
//! ```text
//! change #4 revoke role r0.g0 from u0   applied, header rev 40    -> position (40, 1, 4)
//! op: u0 put ka0/k1                     served, header rev 41     -> position (41, 0)
//!   Has(u0, r0.g0) may be only {false} at (41, 0), and no other role of u0 grants ka0/:
//!   VIOLATION: served without permission.
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};

pub use crate::auth_token_check::{AuthLogin, LoginOutcome};
use crate::check::{Failure, FailureKind};

/// Permission bits: read.
pub const READ: u8 = 1;
/// Permission bits: write.
pub const WRITE: u8 = 2;

/// An auth change the churn (or the setup) makes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// UserAdd (the user starts with no roles).
    UserAdd(String),
    /// UserDelete (its roles go with it).
    UserDelete(String),
    /// UserGrantRole(user, role).
    GrantRole(String, String),
    /// UserRevokeRole(user, role).
    RevokeRole(String, String),
    /// RoleAdd.
    RoleAdd(String),
    /// RoleDelete (revoked from every user, its permissions gone).
    RoleDelete(String),
    /// RoleGrantPermission(role, prefix, bits): a prefix permission of type `bits`.
    GrantPerm(String, String, u8),
    /// RoleRevokePermission(role, prefix).
    RevokePerm(String, String),
    /// UserChangePassword(user, which): the user's password becomes its `which`th
    /// (`crate::auth::password_v`); the user's tokens are invalidated, as in etcd 3.4.
    ChangePassword(String, u8),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::UserAdd(u) => write!(f, "user add {u}"),
            Change::UserDelete(u) => write!(f, "user delete {u}"),
            Change::GrantRole(u, r) => write!(f, "user grant-role {u} {r}"),
            Change::RevokeRole(u, r) => write!(f, "user revoke-role {u} {r}"),
            Change::RoleAdd(r) => write!(f, "role add {r}"),
            Change::RoleDelete(r) => write!(f, "role delete {r}"),
            Change::GrantPerm(r, p, bits) => {
                write!(f, "role grant-permission {r} {} {p}*", perm_name(*bits))
            }
            Change::RevokePerm(r, p) => write!(f, "role revoke-permission {r} {p}*"),
            Change::ChangePassword(u, which) => write!(f, "user passwd {u} #{which}"),
        }
    }
}

fn perm_name(bits: u8) -> &'static str {
    match bits {
        READ => "read",
        WRITE => "write",
        _ => "readwrite",
    }
}

/// How an auth change attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Acknowledged; the response header's revision.
    Applied(i64),
    /// Certainly refused: no effect.
    NoEffect(String),
    /// Unknown: it may take effect at any later index, or never.
    InDoubt(String),
}

/// One auth change attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChange {
    /// The change.
    pub change: Change,
    /// Simulated ns at invocation.
    pub invoke_ns: u64,
    /// At completion.
    pub complete_ns: u64,
    /// The outcome.
    pub outcome: ChangeOutcome,
}

impl fmt::Display for AuthChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "auth [{:.3}s..{:.3}s] {} => {:?}",
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
            self.change,
            self.outcome
        )
    }
}

/// How an auth client's operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpOutcome {
    /// Served: the header revision, and whether it wrote (made that revision).
    Served {
        /// The response header's revision.
        revision: i64,
        /// Whether the operation made `revision` (a put or a txn with puts).
        wrote: bool,
    },
    /// Refused with `etcdserver: permission denied`.
    Denied,
    /// Refused otherwise, or unknown: nothing to check.
    Other(String),
}

/// One operation of an auth client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOp {
    /// The client.
    pub client: usize,
    /// The user its token names.
    pub user: String,
    /// The member it talked to.
    pub member: usize,
    /// What it did, for messages.
    pub what: String,
    /// `(prefix, bits)`: each access the request needs (keys live under one prefix each).
    pub needs: Vec<(String, u8)>,
    /// A serializable read (may be served by a lagging member).
    pub serializable: bool,
    /// Simulated ns at invocation.
    pub invoke_ns: u64,
    /// At completion.
    pub complete_ns: u64,
    /// The outcome.
    pub outcome: OpOutcome,
    /// The header revision of the login that issued the token the request carried.
    pub login_rev: Option<i64>,
}

impl fmt::Display for AuthOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a{} as {} → n{} [{:.3}s..{:.3}s] {} => {:?}",
            self.client,
            self.user,
            self.member + 1,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
            self.what,
            self.outcome
        )
    }
}

/// What an [`AuthLog`] holds.
#[derive(Debug, Default)]
struct Records {
    changes: Vec<AuthChange>,
    ops: Vec<AuthOp>,
    logins: Vec<AuthLogin>,
}

/// The auth changes, auth clients' operations and logins of a run.
#[derive(Debug, Clone, Default)]
pub struct AuthLog(Arc<Mutex<Records>>);

impl AuthLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an auth change attempt (in the actor's order).
    pub fn change(&self, c: AuthChange) {
        self.lock().changes.push(c);
    }

    /// Records an auth client's operation.
    pub fn op(&self, op: AuthOp) {
        self.lock().ops.push(op);
    }

    /// Records an auth client's login.
    pub fn login(&self, login: AuthLogin) {
        self.lock().logins.push(login);
    }

    /// The changes and operations recorded so far.
    pub fn records(&self) -> (Vec<AuthChange>, Vec<AuthOp>) {
        let r = self.lock();
        (r.changes.clone(), r.ops.clone())
    }

    /// The logins recorded so far.
    pub fn logins(&self) -> Vec<AuthLogin> {
        self.lock().logins.clone()
    }
}

/// One fact of the auth state; values are 0/1, or permission bits for [`Fact::Perm`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fact {
    /// The user exists.
    UserExists(String),
    /// The user has the role.
    HasRole(String, String),
    /// The role exists.
    RoleExists(String),
    /// The role's permission bits on the prefix.
    Perm(String, String),
    /// Which of its passwords the user has (`UserAdd` gives it the first, 0).
    Password(String),
}

/// A position in the apply order: `(revision, 0)` a write, `(revision, 1, seq)` an auth
/// change (see the module doc).
type Pos = (i64, u8, usize);

/// When a change may have set a fact.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// At this position, certainly (acknowledged).
    At(Pos),
    /// At some position after this one, or never (in doubt); `None`: after the start.
    After(Option<Pos>),
}

/// One change's effect on one fact: when, and the value it sets, with the change's real
/// times and its index in the log (for evidence).
#[derive(Debug, Clone, Copy)]
struct Effect {
    timing: Timing,
    value: u8,
    invoke_ns: u64,
    complete_ns: u64,
    change: usize,
}

/// The facts each change sets, over the universe of users, roles and prefixes of the run.
fn effects_of(
    c: &Change,
    users: &BTreeSet<String>,
    prefixes: &BTreeSet<String>,
    roles: &BTreeSet<String>,
) -> Vec<(Fact, u8)> {
    let s = |x: &String| x.clone();
    match c {
        Change::UserAdd(u) => vec![(Fact::UserExists(s(u)), 1), (Fact::Password(s(u)), 0)],
        Change::ChangePassword(u, which) => vec![(Fact::Password(s(u)), *which)],
        Change::UserDelete(u) => std::iter::once((Fact::UserExists(s(u)), 0))
            .chain(roles.iter().map(|r| (Fact::HasRole(s(u), s(r)), 0)))
            .collect(),
        Change::GrantRole(u, r) => vec![(Fact::HasRole(s(u), s(r)), 1)],
        Change::RevokeRole(u, r) => vec![(Fact::HasRole(s(u), s(r)), 0)],
        Change::RoleAdd(r) => vec![(Fact::RoleExists(s(r)), 1)],
        Change::RoleDelete(r) => std::iter::once((Fact::RoleExists(s(r)), 0))
            .chain(users.iter().map(|u| (Fact::HasRole(s(u), s(r)), 0)))
            .chain(prefixes.iter().map(|p| (Fact::Perm(s(r), s(p)), 0)))
            .collect(),
        Change::GrantPerm(r, p, bits) => vec![(Fact::Perm(s(r), s(p)), *bits)],
        Change::RevokePerm(r, p) => vec![(Fact::Perm(s(r), s(p)), 0)],
    }
}

/// The run's auth changes as per-fact timelines.
struct Model {
    changes: Vec<AuthChange>,
    facts: BTreeMap<Fact, Vec<Effect>>,
    roles: BTreeSet<String>,
}

impl Model {
    fn new(changes: &[AuthChange], ops: &[AuthOp]) -> Model {
        let (mut users, mut roles, mut prefixes) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for c in changes {
            match &c.change {
                Change::UserAdd(u) | Change::UserDelete(u) | Change::ChangePassword(u, _) => {
                    users.insert(u.clone());
                }
                Change::GrantRole(u, r) | Change::RevokeRole(u, r) => {
                    users.insert(u.clone());
                    roles.insert(r.clone());
                }
                Change::RoleAdd(r) | Change::RoleDelete(r) => {
                    roles.insert(r.clone());
                }
                Change::GrantPerm(r, p, _) | Change::RevokePerm(r, p) => {
                    roles.insert(r.clone());
                    prefixes.insert(p.clone());
                }
            }
        }
        prefixes.extend(
            ops.iter()
                .flat_map(|o| o.needs.iter().map(|(p, _)| p.clone())),
        );
        let mut facts: BTreeMap<Fact, Vec<Effect>> = BTreeMap::new();
        let mut last_applied: Option<Pos> = None;
        for (i, c) in changes.iter().enumerate() {
            let timing = match c.outcome {
                ChangeOutcome::Applied(rev) => Timing::At((rev, 1, i)),
                ChangeOutcome::InDoubt(_) => Timing::After(last_applied),
                ChangeOutcome::NoEffect(_) => continue,
            };
            for (fact, value) in effects_of(&c.change, &users, &prefixes, &roles) {
                facts.entry(fact).or_default().push(Effect {
                    timing,
                    value,
                    invoke_ns: c.invoke_ns,
                    complete_ns: c.complete_ns,
                    change: i,
                });
            }
            if let Timing::At(p) = timing {
                last_applied = Some(p);
            }
        }
        Model {
            changes: changes.to_vec(),
            facts,
            roles,
        }
    }

    /// The values `fact` may have had somewhere in the position span `[lo, hi]` (a point when
    /// equal), and the changes that gave them.
    fn possible(&self, fact: &Fact, lo: Pos, hi: Pos) -> (BTreeSet<u8>, Vec<usize>) {
        let mut values = BTreeSet::new();
        let mut why = Vec::new();
        let effects = self.facts.get(fact).map(Vec::as_slice).unwrap_or_default();
        let before = effects
            .iter()
            .rfind(|e| matches!(e.timing, Timing::At(p) if p < lo));
        values.insert(before.map_or(0, |e| e.value));
        why.extend(before.map(|e| e.change));
        for e in effects {
            let counts = match e.timing {
                Timing::At(p) => lo <= p && p <= hi,
                Timing::After(lower) => lower.is_none_or(|l| l < hi),
            };
            if counts {
                values.insert(e.value);
                why.push(e.change);
            }
        }
        (values, why)
    }

    /// The same over the real-time window `[t1, t2]`.
    fn possible_rt(&self, fact: &Fact, t1: u64, t2: u64) -> BTreeSet<u8> {
        let effects = self.facts.get(fact).map(Vec::as_slice).unwrap_or_default();
        let before = effects
            .iter()
            .rfind(|e| matches!(e.timing, Timing::At(_)) && e.complete_ns < t1);
        let mut values: BTreeSet<u8> = std::iter::once(before.map_or(0, |e| e.value)).collect();
        for e in effects {
            let counts = match e.timing {
                Timing::At(_) => e.complete_ns >= t1 && e.invoke_ns <= t2,
                Timing::After(_) => e.invoke_ns <= t2,
            };
            if counts {
                values.insert(e.value);
            }
        }
        values
    }

    /// Whether some possible state in `[lo, hi]` lets `user` access `prefix` with `bit`; if
    /// not, the changes that decided it.
    fn maybe_allowed(
        &self,
        user: &str,
        prefix: &str,
        bit: u8,
        lo: Pos,
        hi: Pos,
    ) -> Result<(), Vec<usize>> {
        let mut why = Vec::new();
        let (exists, w) = self.possible(&Fact::UserExists(user.into()), lo, hi);
        why.extend(w);
        if !exists.contains(&1) {
            return Err(why);
        }
        for r in &self.roles {
            let (has, w1) = self.possible(&Fact::HasRole(user.into(), r.clone()), lo, hi);
            let (role, w2) = self.possible(&Fact::RoleExists(r.clone()), lo, hi);
            let (perm, w3) = self.possible(&Fact::Perm(r.clone(), prefix.into()), lo, hi);
            if has.contains(&1) && role.contains(&1) && perm.iter().any(|v| v & bit != 0) {
                return Ok(());
            }
            // Evidence: how the user lost (or never got) each role it ever had.
            why.extend(w1.iter().copied());
            if has.contains(&1) {
                why.extend(w2.into_iter().chain(w3));
            }
        }
        Err(why)
    }

    /// Whether every possible state over `[t1, t2]` lets `user` access `prefix` with `bit`
    /// through one role; the role.
    fn surely_allowed(
        &self,
        user: &str,
        prefix: &str,
        bit: u8,
        t1: u64,
        t2: u64,
    ) -> Option<String> {
        let only_one = |v: BTreeSet<u8>| v.len() == 1 && v.contains(&1);
        if !only_one(self.possible_rt(&Fact::UserExists(user.into()), t1, t2)) {
            return None;
        }
        self.roles.iter().find_map(|r| {
            let has = only_one(self.possible_rt(&Fact::HasRole(user.into(), r.clone()), t1, t2));
            let role = only_one(self.possible_rt(&Fact::RoleExists(r.clone()), t1, t2));
            let perm = self.possible_rt(&Fact::Perm(r.clone(), prefix.into()), t1, t2);
            (has && role && perm.iter().all(|v| v & bit != 0)).then(|| r.clone())
        })
    }

    fn evidence(&self, op: &AuthOp, changes: &[usize]) -> Vec<String> {
        let set: BTreeSet<usize> = changes.iter().copied().collect();
        let mut lines: Vec<String> = set
            .iter()
            .rev()
            .take(6)
            .rev()
            .map(|&i| format!("#{i} {}", self.changes[i]))
            .collect();
        lines.push(op.to_string());
        lines
    }
}

/// Checks the run's auth log (see the module doc); `one_member`: also check `permission
/// denied` answers to writes (reads' are checked on any cluster). At most one failure per
/// direction, the first.
pub fn check_auth(changes: &[AuthChange], ops: &[AuthOp], one_member: bool) -> Vec<Failure> {
    let model = Model::new(changes, ops);
    let served = ops
        .iter()
        .find_map(|op| served_without_permission(&model, op));
    let refused = ops
        .iter()
        .filter(|op| op.outcome == OpOutcome::Denied && !op.serializable)
        .filter(|op| one_member || op.needs.iter().all(|(_, bits)| bits & WRITE == 0))
        .find_map(|op| refused_with_permission(&model, op));
    served.into_iter().chain(refused).collect()
}

/// Each single access `op` needs: (prefix, one permission bit).
fn accesses(op: &AuthOp) -> impl Iterator<Item = (&str, u8)> {
    op.needs.iter().flat_map(|(prefix, bits)| {
        [READ, WRITE]
            .into_iter()
            .filter(move |b| bits & b != 0)
            .map(move |b| (prefix.as_str(), b))
    })
}

/// A served `op` no possible auth state at its position allowed, as a failure.
fn served_without_permission(model: &Model, op: &AuthOp) -> Option<Failure> {
    let OpOutcome::Served { revision, wrote } = op.outcome else {
        return None;
    };
    let (lo, hi) = if wrote {
        ((revision, 0, 0), (revision, 0, 0))
    } else {
        ((revision, 0, usize::MAX), (revision + 1, 0, 0))
    };
    accesses(op).find_map(|(prefix, bit)| {
        let why = model.maybe_allowed(&op.user, prefix, bit, lo, hi).err()?;
        Some(Failure::new(
            FailureKind::AuthServedWithoutPermission,
            format!(
                "{} was served at revision {revision} without {} permission on {prefix}* at \
                 its apply point",
                op.user,
                perm_name(bit)
            ),
            model.evidence(op, &why),
        ))
    })
}

/// A `permission denied` to `op` while one role surely granted each access it needed
/// throughout, as a failure.
fn refused_with_permission(model: &Model, op: &AuthOp) -> Option<Failure> {
    let roles: Vec<String> = accesses(op)
        .map(|(prefix, bit)| {
            model.surely_allowed(&op.user, prefix, bit, op.invoke_ns, op.complete_ns)
        })
        .collect::<Option<_>>()?;
    Some(Failure::new(
        FailureKind::AuthRefusedWithPermission,
        format!(
            "{} was refused with permission denied though roles {roles:?} granted what it \
             needed throughout the request",
            op.user
        ),
        vec![op.to_string()],
    ))
}

#[cfg(test)]
#[path = "auth_check_tests.rs"]
mod tests;
