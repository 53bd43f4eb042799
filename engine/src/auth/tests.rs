//! The auth store's rules, permission checks and tokens.

use bytes::Bytes;
use keel_proto::authpb::{permission::Type, Permission};
use keel_proto::etcdserverpb::{
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_proto::keelpb::raft_request::Request as LogRequest;

use super::*;
use crate::error::Error;
use crate::lease::Leases;

fn perm(t: Type, key: &str, end: &str) -> Permission {
    Permission {
        perm_type: t as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
    }
}

fn hash() -> Bytes {
    Bytes::from_static(b"$2b$10$hash")
}

/// root (with the root role), alice with role r (readwrite foo, read prefix bar/, write
/// [x, z), read from y), enabled.
fn store() -> AuthStore {
    let mut a = AuthStore::default();
    a.user_add("root", hash(), false).expect("root");
    a.user_grant_role("root", ROOT)
        .expect("root role before it exists");
    a.user_add("alice", hash(), false).expect("alice");
    a.role_add("r").expect("r");
    a.role_grant_permission("r", perm(Type::Readwrite, "foo", ""))
        .expect("grant");
    a.role_grant_permission("r", perm(Type::Read, "bar/", "bar0"))
        .expect("grant");
    a.role_grant_permission("r", perm(Type::Write, "x", "z"))
        .expect("grant");
    a.role_grant_permission("r", perm(Type::Read, "y", "\0"))
        .expect("grant");
    a.user_grant_role("alice", "r").expect("grant role");
    a.enable().expect("root exists with its role");
    a
}

fn as_user(a: &AuthStore, name: &str) -> AuthInfo {
    AuthInfo {
        username: name.into(),
        revision: a.revision(),
    }
}

#[test]
fn enable_needs_root_with_the_root_role() {
    let mut a = AuthStore::default();
    assert_eq!(a.revision(), 1, "etcd starts at revision 1");
    assert_eq!(a.enable(), Err(Error::RootUserNotExist));
    a.user_add("root", hash(), false).expect("root");
    assert_eq!(a.enable(), Err(Error::RootRoleNotExist));
    a.user_grant_role("root", ROOT).expect("grant");
    let before = a.revision();
    assert_eq!(a.enable(), Ok(()));
    assert_eq!(
        a.revision(),
        before,
        "enable does not move the revision (etcd 3.4)"
    );
    assert_eq!(a.enable(), Ok(()), "enabling twice is no error");
    a.disable();
    assert!(!a.is_enabled());
    assert_eq!(a.revision(), before + 1, "disable does");
}

#[test]
fn root_is_protected_while_enabled() {
    let mut a = store();
    assert_eq!(a.user_delete(ROOT), Err(Error::InvalidAuthMgmt));
    assert_eq!(
        a.role_delete(ROOT),
        Err(Error::InvalidAuthMgmt),
        "refused before it is even looked up, as in etcd"
    );
    a.role_add(ROOT).expect("root role");
    assert_eq!(a.role_delete(ROOT), Err(Error::InvalidAuthMgmt));
    assert_eq!(a.user_revoke_role(ROOT, ROOT), Err(Error::InvalidAuthMgmt));
    a.disable();
    assert_eq!(a.user_revoke_role(ROOT, ROOT), Ok(()));
    assert_eq!(a.role_delete(ROOT), Ok(()));
    assert_eq!(a.user_delete(ROOT), Ok(()));
}

#[test]
fn users_and_roles_follow_etcds_rules() {
    let mut a = AuthStore::default();
    assert_eq!(a.user_add("", hash(), false), Err(Error::UserEmpty));
    assert_eq!(a.role_add(""), Err(Error::RoleEmpty));
    a.user_add("u", hash(), false).expect("u");
    assert_eq!(a.user_add("u", hash(), false), Err(Error::UserAlreadyExist));
    a.role_add("r").expect("r");
    assert_eq!(a.role_add("r"), Err(Error::RoleAlreadyExist));
    assert_eq!(a.user_grant_role("v", "r"), Err(Error::UserNotFound));
    assert_eq!(a.user_grant_role("u", "nope"), Err(Error::RoleNotFound));
    a.user_grant_role("u", "r").expect("grant");
    let rev = a.revision();
    a.user_grant_role("u", "r").expect("again");
    assert_eq!(a.revision(), rev, "granting a held role changes nothing");
    assert_eq!(a.user_revoke_role("u", "x"), Err(Error::RoleNotGranted));
    assert_eq!(
        a.role_revoke_permission("r", b"k", b""),
        Err(Error::PermissionNotGranted)
    );
    a.role_delete("r").expect("delete");
    assert!(a.user("u").expect("u").roles.is_empty(), "taken from users");
    a.user_add("nopw", hash(), true).expect("no-password user");
    assert!(
        a.user("nopw").expect("nopw").password.is_empty(),
        "no hash kept"
    );
    assert_eq!(a.user_names(), vec!["nopw".to_string(), "u".to_string()]);
}

#[test]
fn grants_keep_etcds_order_and_update_in_place() {
    let mut a = AuthStore::default();
    a.role_add("r").expect("r");
    for p in [
        perm(Type::Read, "m", ""),
        perm(Type::Read, "a", "c"),
        perm(Type::Write, "m", "n"),
        perm(Type::Write, "a", "c"),
    ] {
        a.role_grant_permission("r", p).expect("grant");
    }
    let keys: Vec<_> = a
        .role("r")
        .expect("r")
        .key_permission
        .iter()
        .map(|p| (p.key.clone(), p.range_end.clone(), p.perm_type))
        .collect();
    assert_eq!(
        keys.len(),
        3,
        "the same (key, range_end) is updated, not added"
    );
    assert_eq!(keys[0].0, Bytes::from_static(b"a"));
    assert_eq!(keys[0].2, Type::Write as i32, "updated in place");
    assert_eq!(keys[1].1, Bytes::from_static(b""), "m then m..n");
}

#[test]
fn permissions_cover_keys_ranges_prefixes_and_from_key() {
    let a = store();
    let alice = as_user(&a, "alice");
    let ok = |k: &str, e: &str, p: Perm| a.check(Some(&alice), k.as_bytes(), e.as_bytes(), p);
    assert_eq!(ok("foo", "", Perm::Read), Ok(()));
    assert_eq!(ok("foo", "", Perm::Write), Ok(()));
    assert_eq!(
        ok("foo", "fop", Perm::Read),
        Err(Error::PermissionDenied),
        "a key is no range"
    );
    assert_eq!(ok("bar/1", "", Perm::Read), Ok(()));
    assert_eq!(ok("bar/", "bar0", Perm::Read), Ok(()), "the whole prefix");
    assert_eq!(ok("bar/1", "", Perm::Write), Err(Error::PermissionDenied));
    assert_eq!(ok("x", "", Perm::Write), Ok(()));
    assert_eq!(ok("x", "z", Perm::Write), Ok(()));
    assert_eq!(
        ok("z", "", Perm::Write),
        Err(Error::PermissionDenied),
        "end exclusive"
    );
    assert_eq!(ok("x", "", Perm::Read), Err(Error::PermissionDenied));
    assert_eq!(ok("y", "\0", Perm::Read), Ok(()), "from-key");
    assert_eq!(ok("zzz", "", Perm::Read), Ok(()));
    assert_eq!(ok("a", "\0", Perm::Read), Err(Error::PermissionDenied));
    let root = as_user(&a, ROOT);
    assert_eq!(
        a.check(Some(&root), b"", b"\0", Perm::Write),
        Ok(()),
        "root: all"
    );
    assert_eq!(
        a.check(None, b"foo", b"", Perm::Read),
        Err(Error::UserEmpty)
    );
    let nobody = as_user(&a, "nobody");
    assert_eq!(
        a.check(Some(&nobody), b"foo", b"", Perm::Read),
        Err(Error::PermissionDenied)
    );
    assert_eq!(a.check_admin(Some(&alice)), Err(Error::PermissionDenied));
    assert_eq!(a.check_admin(Some(&nobody)), Err(Error::UserNotFound));
    assert_eq!(a.check_admin(Some(&root)), Ok(()));
}

#[test]
fn a_change_since_the_token_was_read_is_an_old_revision() {
    let mut a = store();
    let alice = as_user(&a, "alice");
    assert_eq!(a.check(Some(&alice), b"foo", b"", Perm::Read), Ok(()));
    a.role_revoke_permission("r", b"foo", b"").expect("revoke");
    assert_eq!(
        a.check(Some(&alice), b"foo", b"", Perm::Read),
        Err(Error::AuthOldRevision),
        "checked at apply with the revision captured at arrival"
    );
    let fresh = as_user(&a, "alice");
    assert_eq!(
        a.check(Some(&fresh), b"foo", b"", Perm::Read),
        Err(Error::PermissionDenied)
    );
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

#[test]
fn txns_are_checked_whole_with_nested_ones() {
    let a = store();
    let alice = as_user(&a, "alice");
    let leases = Leases::new(2, 1);
    let put = |k: &str| {
        op(request_op::Request::RequestPut(PutRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            ..Default::default()
        }))
    };
    let get = |k: &str| {
        op(request_op::Request::RequestRange(RangeRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            ..Default::default()
        }))
    };
    let check = |t: TxnRequest| check_request(&a, &leases, Some(&alice), &LogRequest::Txn(t));
    let allowed = TxnRequest {
        compare: vec![Compare {
            key: Bytes::from_static(b"foo"),
            ..Default::default()
        }],
        success: vec![put("x")],
        failure: vec![get("bar/1")],
    };
    assert_eq!(check(allowed.clone()), Ok(()));
    let bad_compare = TxnRequest {
        compare: vec![Compare {
            key: Bytes::from_static(b"x"),
            ..Default::default()
        }],
        ..allowed.clone()
    };
    assert_eq!(
        check(bad_compare),
        Err(Error::PermissionDenied),
        "compares need read"
    );
    let bad_failure = TxnRequest {
        failure: vec![put("bar/1")],
        ..allowed.clone()
    };
    assert_eq!(
        check(bad_failure),
        Err(Error::PermissionDenied),
        "either branch"
    );
    let nested = TxnRequest {
        success: vec![op(request_op::Request::RequestTxn(TxnRequest {
            success: vec![put("zz")],
            ..Default::default()
        }))],
        ..allowed
    };
    assert_eq!(
        check(nested),
        Err(Error::PermissionDenied),
        "nested ops too"
    );
    assert_eq!(
        check_request(&a, &leases, None, &LogRequest::Put(PutRequest::default())),
        Ok(()),
        "the cluster's own entries are not checked"
    );
}

#[test]
fn section_round_trips() {
    let a = store();
    let bytes = a.encode_section();
    assert_eq!(AuthStore::decode_section(&bytes), Ok(a));
    assert!(AuthStore::decode_section(&[]).is_ok(), "an empty table");
    assert!(AuthStore::decode_section(&[0xff, 0xff]).is_err());
}

#[test]
fn tokens_expire_after_their_ttl_without_use() {
    let mut t = SimpleTokens::new(1000);
    t.assign("tok.1".into(), "alice", 0);
    assert!(t.is_empty(), "no tokens while auth is disabled");
    t.enable();
    t.assign("tok.1".into(), "alice", 0);
    t.assign("tok.2".into(), "bob", 0);
    assert_eq!(t.info("tok.1", 900).as_deref(), Some("alice"));
    t.expire(1500);
    assert_eq!(
        t.info("tok.1", 1500).as_deref(),
        Some("alice"),
        "use restarted its TTL"
    );
    assert_eq!(t.info("tok.2", 1500), None, "expired");
    t.invalidate_user("alice");
    assert_eq!(t.info("tok.1", 1500), None, "invalidated");
    t.assign("tok.3".into(), "carol", 2000);
    t.disable();
    assert!(t.is_empty(), "disable forgets every token");
    t.check_invariants();
}

#[test]
fn a_used_token_expires_its_ttl_after_the_last_use() {
    let mut t = SimpleTokens::new(1000);
    t.enable();
    t.assign("tok.1".into(), "alice", 0);
    for now in [100, 600, 999, 1500, 2400] {
        assert_eq!(t.info("tok.1", now).as_deref(), Some("alice"), "at {now}");
        t.check_invariants();
    }
    t.expire(3399);
    assert_eq!(t.len(), 1, "alive until 1000 ms after its last use (2400)");
    t.check_invariants();
    t.expire(3400);
    assert!(t.is_empty(), "gone 1000 ms after its last use");
    t.check_invariants();
}

#[test]
fn resolved_permissions_follow_every_change() {
    let mut a = store();
    a.check_invariants();
    let alice = |a: &AuthStore| as_user(a, "alice");
    assert!(a.check(Some(&alice(&a)), b"foo", b"", Perm::Write).is_ok());
    a.role_revoke_permission("r", b"foo", b"").expect("revoke");
    a.check_invariants();
    assert_eq!(
        a.check(Some(&alice(&a)), b"foo", b"", Perm::Write),
        Err(Error::PermissionDenied),
        "a revoked permission is gone at once"
    );
    a.role_add("w").expect("w");
    a.role_grant_permission("w", perm(Type::Write, "foo", "fop"))
        .expect("grant");
    a.user_grant_role("alice", "w").expect("grant role");
    a.check_invariants();
    assert!(a.check(Some(&alice(&a)), b"foo", b"", Perm::Write).is_ok());
    a.role_delete("w").expect("delete role");
    a.check_invariants();
    assert!(a.check(Some(&alice(&a)), b"foo", b"", Perm::Write).is_err());
    a.user_revoke_role("alice", "r").expect("revoke role");
    a.check_invariants();
    assert!(a.check(Some(&alice(&a)), b"x", b"", Perm::Write).is_err());
    a.user_delete("alice").expect("delete");
    a.check_invariants();
    let decoded = AuthStore::decode_section(&a.encode_section()).expect("decodes");
    decoded.check_invariants();
}
