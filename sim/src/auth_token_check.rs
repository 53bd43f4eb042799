//! Auth safety beyond permissions: logins and tokens across password changes.
//!
//! * **Tokens outlive no invalidation.** etcd 3.4 invalidates a user's simple tokens when it
//!   applies a `UserChangePassword` or a `UserDelete` of that user. A request served with a
//!   token issued by a login at header revision `L` fails the check if an acknowledged
//!   password change or delete of its user, with header revision `H`, certainly lies between
//!   the login and the request: `L < H` (the login applied before `(L + 1, 0)`, the change at
//!   `(H, 1, _)`) and `H < W` for a write at `(W, 0)`, `H < R` for a read (or a watch) served
//!   at revision `R` (positions as in `src/auth_check.rs`). Changes in doubt, or sharing a
//!   revision with the login or the request, never fail it.
//! * **Logins use a password the user had.** A login accepted with the user's `which`th
//!   password (`crate::auth::password_v`) fails the check if no possible value of the user's
//!   password over the login's real-time window is `which`: the last change acknowledged
//!   before the invocation, every acknowledged change overlapping the window, every change
//!   in doubt invoked before its completion. (A login is a log entry applied within its
//!   window, and keel, as etcd, refuses it at apply if the auth store changed since the
//!   password was checked.)

use crate::auth_check::{AuthChange, AuthOp, Change, ChangeOutcome, OpOutcome};
use crate::check::{Failure, FailureKind};
use std::fmt;

/// How a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// A token was issued; the response header's revision.
    Served(i64),
    /// Refused, or unknown: nothing to check.
    Other(String),
}

/// One login of an auth client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLogin {
    /// The client.
    pub client: usize,
    /// The user.
    pub user: String,
    /// Which of the user's passwords it sent.
    pub password: u8,
    /// Simulated ns at invocation.
    pub invoke_ns: u64,
    /// At completion.
    pub complete_ns: u64,
    /// The outcome.
    pub outcome: LoginOutcome,
}

impl fmt::Display for AuthLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a{} login {} with password #{} [{:.3}s..{:.3}s] => {:?}",
            self.client,
            self.user,
            self.password,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
            self.outcome
        )
    }
}

/// Whether `c` invalidates `user`'s tokens.
fn invalidates(c: &Change, user: &str) -> bool {
    matches!(c, Change::ChangePassword(u, _) | Change::UserDelete(u) if u == user)
}

/// The first request served with a token that an earlier change had invalidated.
pub fn check_tokens(changes: &[AuthChange], ops: &[AuthOp]) -> Option<Failure> {
    ops.iter().find_map(|op| {
        let (OpOutcome::Served { revision, .. }, Some(login)) = (&op.outcome, op.login_rev) else {
            return None;
        };
        let (i, c) = changes.iter().enumerate().find(|(_, c)| {
            let ChangeOutcome::Applied(h) = c.outcome else {
                return false;
            };
            invalidates(&c.change, &op.user) && login < h && h < *revision
        })?;
        Some(Failure::new(
            FailureKind::AuthTokenOutlivedInvalidation,
            format!(
                "{} was served at revision {revision} with a token from a login at revision \
                 {login}, though change #{i} invalidated the user's tokens in between",
                op.user
            ),
            vec![format!("#{i} {c}"), op.to_string()],
        ))
    })
}

/// The passwords `user` may have had at some instant of `[t1, t2]` (see the module doc).
fn possible_passwords(changes: &[AuthChange], user: &str, t1: u64, t2: u64) -> Vec<u8> {
    let value = |c: &Change| match c {
        Change::UserAdd(u) if u == user => Some(0),
        Change::ChangePassword(u, which) if u == user => Some(*which),
        _ => None,
    };
    let mut before = 0;
    let mut values = Vec::new();
    for c in changes {
        let Some(v) = value(&c.change) else {
            continue;
        };
        match c.outcome {
            ChangeOutcome::Applied(_) if c.complete_ns < t1 => before = v,
            ChangeOutcome::Applied(_) if c.invoke_ns <= t2 => values.push(v),
            ChangeOutcome::InDoubt(_) if c.invoke_ns <= t2 => values.push(v),
            _ => {}
        }
    }
    values.push(before);
    values
}

/// The first login accepted with a password its user could not have had.
pub fn check_logins(changes: &[AuthChange], logins: &[AuthLogin]) -> Option<Failure> {
    logins.iter().find_map(|l| {
        let LoginOutcome::Served(_) = l.outcome else {
            return None;
        };
        let possible = possible_passwords(changes, &l.user, l.invoke_ns, l.complete_ns);
        if possible.contains(&l.password) {
            return None;
        }
        let evidence = changes
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(&c.change, Change::ChangePassword(u, _) if *u == l.user))
            .filter(|(_, c)| c.invoke_ns <= l.complete_ns)
            .map(|(i, c)| format!("#{i} {c}"))
            .rev()
            .take(4)
            .collect::<Vec<_>>();
        let mut evidence: Vec<String> = evidence.into_iter().rev().collect();
        evidence.push(l.to_string());
        Some(Failure::new(
            FailureKind::AuthLoginWithWrongPassword,
            format!(
                "{} logged in with password #{} though only {possible:?} were possible",
                l.user, l.password
            ),
            evidence,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(change: Change, at_ms: u64, rev: i64) -> AuthChange {
        AuthChange {
            change,
            invoke_ns: at_ms * 1_000_000,
            complete_ns: (at_ms + 5) * 1_000_000,
            outcome: ChangeOutcome::Applied(rev),
        }
    }

    fn put(rev: i64, login_rev: i64) -> AuthOp {
        AuthOp {
            client: 0,
            user: "u0".into(),
            member: 0,
            what: "put ka0/k1".into(),
            needs: Vec::new(),
            serializable: false,
            invoke_ns: 0,
            complete_ns: 0,
            outcome: OpOutcome::Served {
                revision: rev,
                wrote: true,
            },
            login_rev: Some(login_rev),
        }
    }

    #[test]
    fn a_token_served_after_its_users_password_changed_fails() {
        let changes = vec![applied(Change::ChangePassword("u0".into(), 1), 10, 5)];
        let f = check_tokens(&changes, &[put(6, 4)]).expect("caught");
        assert_eq!(f.kind, FailureKind::AuthTokenOutlivedInvalidation);
        // Same revision as the login or the request: the order is unknown, no failure.
        assert!(check_tokens(&changes, &[put(6, 5)]).is_none(), "login at 5");
        assert!(check_tokens(&changes, &[put(5, 4)]).is_none(), "put at 5");
        // Another user's change, or a login after it: no failure.
        let other = vec![applied(Change::ChangePassword("u1".into(), 1), 10, 5)];
        assert!(check_tokens(&other, &[put(6, 4)]).is_none(), "another user");
        assert!(
            check_tokens(&changes, &[put(8, 6)]).is_none(),
            "a fresh token"
        );
    }

    fn login(password: u8, at_ms: u64) -> AuthLogin {
        AuthLogin {
            client: 0,
            user: "u0".into(),
            password,
            invoke_ns: at_ms * 1_000_000,
            complete_ns: (at_ms + 5) * 1_000_000,
            outcome: LoginOutcome::Served(3),
        }
    }

    #[test]
    fn a_login_with_a_password_changed_before_it_fails() {
        let changes = vec![
            applied(Change::UserAdd("u0".into()), 0, 1),
            applied(Change::ChangePassword("u0".into(), 1), 10, 2),
        ];
        assert!(check_logins(&changes, &[login(0, 5)]).is_none(), "before");
        assert!(
            check_logins(&changes, &[login(0, 12)]).is_none(),
            "overlaps"
        );
        assert!(
            check_logins(&changes, &[login(1, 12)]).is_none(),
            "overlaps"
        );
        assert!(check_logins(&changes, &[login(1, 20)]).is_none(), "after");
        let f = check_logins(&changes, &[login(0, 20)]).expect("old password after");
        assert_eq!(f.kind, FailureKind::AuthLoginWithWrongPassword);
        let mut doubt = changes.clone();
        doubt.push(AuthChange {
            outcome: ChangeOutcome::InDoubt("timeout".into()),
            ..applied(Change::ChangePassword("u0".into(), 0), 15, 0)
        });
        assert!(check_logins(&doubt, &[login(0, 20)]).is_none(), "in doubt");
    }
}
