use super::*;

fn change(change: Change, at_ms: u64, outcome: ChangeOutcome) -> AuthChange {
    AuthChange {
        change,
        invoke_ns: at_ms * 1_000_000,
        complete_ns: (at_ms + 5) * 1_000_000,
        outcome,
    }
}

fn applied(c: Change, at_ms: u64, rev: i64) -> AuthChange {
    change(c, at_ms, ChangeOutcome::Applied(rev))
}

fn s(x: &str) -> String {
    x.to_string()
}

/// u0 with role r0 (readwrite on ka0/), all applied at revision 1.
fn setup() -> Vec<AuthChange> {
    vec![
        applied(Change::RoleAdd(s("r0")), 0, 1),
        applied(Change::GrantPerm(s("r0"), s("ka0/"), READ | WRITE), 1, 1),
        applied(Change::UserAdd(s("u0")), 2, 1),
        applied(Change::GrantRole(s("u0"), s("r0")), 3, 1),
    ]
}

fn op(needs: u8, at_ms: u64, outcome: OpOutcome) -> AuthOp {
    AuthOp {
        client: 0,
        user: s("u0"),
        member: 0,
        what: s("put ka0/k1"),
        needs: vec![(s("ka0/"), needs)],
        serializable: false,
        invoke_ns: at_ms * 1_000_000,
        complete_ns: (at_ms + 5) * 1_000_000,
        outcome,
        login_rev: None,
    }
}

fn put_at(rev: i64, at_ms: u64) -> AuthOp {
    op(
        WRITE,
        at_ms,
        OpOutcome::Served {
            revision: rev,
            wrote: true,
        },
    )
}

fn read_at(rev: i64, at_ms: u64) -> AuthOp {
    op(
        READ,
        at_ms,
        OpOutcome::Served {
            revision: rev,
            wrote: false,
        },
    )
}

fn kinds(f: &[Failure]) -> Vec<FailureKind> {
    f.iter().map(|f| f.kind).collect()
}

#[test]
fn permitted_requests_pass() {
    let ops = vec![put_at(2, 10), read_at(2, 20), put_at(3, 30)];
    assert!(check_auth(&setup(), &ops, true).is_empty());
}

#[test]
fn a_put_after_an_earlier_revoke_is_caught() {
    let mut changes = setup();
    changes.push(applied(Change::RevokeRole(s("u0"), s("r0")), 40, 5));
    // Applied at revision 5: the put that made revision 5 came before it; 6 after.
    assert!(check_auth(&changes, &[put_at(5, 38)], false).is_empty());
    let f = check_auth(&changes, &[put_at(6, 38)], false);
    assert_eq!(kinds(&f), vec![FailureKind::AuthServedWithoutPermission]);
    assert!(
        f[0].evidence.iter().any(|l| l.contains("revoke-role")),
        "{f:?}"
    );
}

#[test]
fn a_read_at_the_revoke_revision_may_precede_it() {
    let mut changes = setup();
    changes.push(applied(Change::RevokePerm(s("r0"), s("ka0/")), 40, 5));
    assert!(check_auth(&changes, &[read_at(5, 41)], false).is_empty());
    assert!(!check_auth(&changes, &[read_at(6, 41)], false).is_empty());
    assert!(!check_auth(&changes, &[read_at(6, 41)], false).is_empty());
}

#[test]
fn user_delete_and_role_delete_take_everything() {
    let mut changes = setup();
    changes.push(applied(Change::UserDelete(s("u0")), 40, 5));
    changes.push(applied(Change::UserAdd(s("u0")), 50, 5));
    // Re-added, but with no roles.
    assert!(!check_auth(&changes, &[put_at(6, 60)], false).is_empty());
    let mut changes = setup();
    changes.push(applied(Change::RoleDelete(s("r0")), 40, 5));
    changes.push(applied(Change::RoleAdd(s("r0")), 50, 5));
    changes.push(applied(Change::GrantRole(s("u0"), s("r0")), 55, 5));
    // The role is back and granted, but without its permission.
    assert!(!check_auth(&changes, &[put_at(6, 60)], false).is_empty());
}

#[test]
fn an_in_doubt_grant_may_apply_any_time_later() {
    let mut changes = setup();
    changes.push(applied(Change::RevokeRole(s("u0"), s("r0")), 40, 5));
    changes.push(change(
        Change::GrantRole(s("u0"), s("r0")),
        50,
        ChangeOutcome::InDoubt(s("timeout")),
    ));
    changes.push(applied(Change::RevokeRole(s("u0"), s("r0")), 60, 7));
    // The in-doubt grant may float past the second revoke: no false positive.
    assert!(check_auth(&changes, &[put_at(9, 70)], false).is_empty());
}

#[test]
fn an_in_doubt_grant_takes_effect_only_after_its_lower_bound() {
    let mut changes = setup();
    changes.push(applied(Change::RevokeRole(s("u0"), s("r0")), 40, 5));
    changes.push(applied(Change::RoleAdd(s("other")), 45, 8));
    changes.push(change(
        Change::GrantRole(s("u0"), s("r0")),
        50,
        ChangeOutcome::InDoubt(s("timeout")),
    ));
    // Invoked after the change applied at revision 8: it cannot explain a put at 6.
    assert!(!check_auth(&changes, &[put_at(6, 42)], false).is_empty());
    assert!(check_auth(&changes, &[put_at(9, 60)], false).is_empty());
}

#[test]
fn a_refused_request_is_wrong_only_with_permission_throughout() {
    let mut changes = setup();
    assert_eq!(
        kinds(&check_auth(
            &changes,
            &[op(WRITE, 20, OpOutcome::Denied)],
            true
        )),
        vec![FailureKind::AuthRefusedWithPermission]
    );
    // Not checked when refusals are off (several members).
    assert!(check_auth(&changes, &[op(WRITE, 20, OpOutcome::Denied)], false).is_empty());
    // A revoke that overlaps the request explains the refusal, as does one in doubt.
    changes.push(applied(Change::RevokePerm(s("r0"), s("ka0/")), 18, 3));
    assert!(check_auth(&changes, &[op(WRITE, 20, OpOutcome::Denied)], true).is_empty());
    let mut changes = setup();
    changes.push(change(
        Change::UserDelete(s("u0")),
        10,
        ChangeOutcome::InDoubt(s("timeout")),
    ));
    assert!(check_auth(&changes, &[op(WRITE, 20, OpOutcome::Denied)], true).is_empty());
    // A read-only permission does not cover a write.
    let mut changes = setup();
    changes.push(applied(Change::GrantPerm(s("r0"), s("ka0/"), READ), 10, 2));
    assert!(check_auth(&changes, &[op(WRITE, 20, OpOutcome::Denied)], true).is_empty());
    assert!(!check_auth(&changes, &[put_at(3, 20)], true).is_empty());
}

#[test]
fn certain_refusals_of_changes_change_nothing() {
    let mut changes = setup();
    changes.push(change(
        Change::RevokeRole(s("u0"), s("r0")),
        40,
        ChangeOutcome::NoEffect(s("role is not granted to the user")),
    ));
    assert!(check_auth(&changes, &[put_at(9, 50)], true).is_empty());
}
