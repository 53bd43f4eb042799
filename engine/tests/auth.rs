//! etcd's auth, driven sans-I/O: the auth store changes through the log so every member
//! agrees; a login (Authenticate) is an entry, so its token works on every member; requests
//! are checked when they arrive and again when applied, so a permission revoked in between
//! is honoured (`revision of auth store is old`); tokens expire by the driver's clock; the
//! store survives a snapshot and a restart, and snapshots from before auth existed load.

mod common;

use common::{put, range, Cluster, TestConfig};
use keel_engine::error::Error;
use keel_engine::node::{Input, Request, Response};
use keel_engine::state_snapshot::{
    decode_known, encode_sections, SECTION_ALARMS, SECTION_AUTH, SECTION_LEASES, SECTION_MEMBERS,
    SECTION_MVCC,
};
use keel_proto::authpb::{permission::Type, Permission};
use keel_proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
};
use keel_proto::keelpb::InternalAuthenticate;

/// Ticks a request may take before the test gives up on it.
const TICKS_MAX: usize = 60;

fn ok(c: &mut Cluster, on: u64, request: Request) -> Response {
    c.request(on, request, TICKS_MAX)
        .unwrap_or_else(|e| panic!("setup request failed: {e}"))
}

/// root (with the root role) and alice (readwrite on `foo`), auth enabled; through the
/// cluster's own (unchecked) requests.
fn setup(c: &mut Cluster, on: u64) {
    let user = |name: &str| {
        Request::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "$2b$04$not-checked-here".into(),
            ..Default::default()
        })
    };
    ok(c, on, user("root"));
    ok(c, on, user("alice"));
    ok(
        c,
        on,
        Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
    );
    let perm = Permission {
        perm_type: Type::Readwrite as i32,
        key: "foo".into(),
        range_end: Default::default(),
    };
    let grant = AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: Some(perm),
    };
    ok(c, on, Request::RoleGrantPermission(grant));
    for (user, role) in [("root", "root"), ("alice", "r")] {
        let r = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        ok(c, on, Request::UserGrantRole(r));
    }
    ok(c, on, Request::AuthEnable(AuthEnableRequest {}));
}

/// Logs `name` in on member `on` (the server checked the password): its token.
fn login(c: &mut Cluster, on: u64, name: &str) -> String {
    let revision = c.node(on).auth().revision();
    let r = InternalAuthenticate {
        name: name.into(),
        simple_token: "abcdefghijklmnop".into(),
        checked_revision: revision,
    };
    match ok(c, on, Request::Authenticate(r)) {
        Response::Authenticate(a) => a.token,
        other => panic!("expected a token, got {other:?}"),
    }
}

/// Sends a client's request with its token to member `on` and waits for the reply.
fn as_client(
    c: &mut Cluster,
    on: u64,
    token: u64,
    auth_token: Option<&str>,
    request: Request,
) -> Result<Response, Error> {
    let auth_token = auth_token.map(|t| t.to_string().into());
    c.node_mut(on).step(Input::AuthRequest {
        token,
        request,
        auth_token,
    });
    c.tick_until(TICKS_MAX, |c| c.has_reply(token));
    c.take_reply(token)
}

#[test]
fn a_login_is_replicated_so_its_token_works_on_every_member() {
    let mut c = Cluster::new(&[1, 2, 3], |id| {
        TestConfig::new(id, &[1, 2, 3]).seed(id * 11)
    });
    c.tick_until(TICKS_MAX, |c| c.leader().is_some());
    let leader = c.the_leader();
    setup(&mut c, leader);
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).expect("one");
    let token = login(&mut c, follower, "alice");
    assert!(
        token.starts_with("abcdefghijklmnop."),
        "prefix.index, as etcd's"
    );
    c.settle();
    for (i, on) in [1u64, 2, 3].into_iter().enumerate() {
        let t = 100 + i as u64;
        let got = as_client(&mut c, on, t, Some(&token), range("foo", true));
        assert!(got.is_ok(), "member {on} knows the token: {got:?}");
        let denied = as_client(&mut c, on, t + 10, Some(&token), range("bar", true));
        assert_eq!(denied, Err(Error::PermissionDenied), "member {on}");
    }
    let anonymous = as_client(&mut c, leader, 200, None, put("foo", "x"));
    assert_eq!(anonymous, Err(Error::UserEmpty));
    let bogus = as_client(&mut c, leader, 201, Some("nope.1"), put("foo", "x"));
    assert_eq!(bogus, Err(Error::InvalidAuthToken));
    let unchecked = c.request(leader, put("bar", "x"), TICKS_MAX);
    assert!(
        unchecked.is_ok(),
        "the cluster's own requests are not checked"
    );
}

#[test]
fn a_permission_revoked_between_arrival_and_apply_is_honoured() {
    let mut c = Cluster::single(TestConfig::new(1, &[1]));
    setup(&mut c, 1);
    let token = login(&mut c, 1, "alice");
    assert!(as_client(&mut c, 1, 100, Some(&token), put("foo", "1")).is_ok());
    // The revoke is proposed first; the put arrives while the revoke is not yet applied, so
    // its arrival check passes; at apply the store is newer than the put's caller.
    let revoke = AuthRoleRevokePermissionRequest {
        role: "r".into(),
        key: "foo".into(),
        range_end: Default::default(),
    };
    c.node_mut(1).step(Input::Request {
        token: 101,
        request: Request::RoleRevokePermission(revoke),
    });
    c.node_mut(1).step(Input::AuthRequest {
        token: 102,
        request: put("foo", "2"),
        auth_token: Some(token.clone().into()),
    });
    c.tick_until(TICKS_MAX, |c| c.has_reply(101) && c.has_reply(102));
    assert!(c.take_reply(101).is_ok(), "revoked");
    assert_eq!(c.take_reply(102), Err(Error::AuthOldRevision));
    assert_eq!(
        as_client(&mut c, 1, 103, Some(&token), put("foo", "3")),
        Err(Error::PermissionDenied),
        "checked afresh: the permission is gone"
    );
}

#[test]
fn tokens_expire_by_the_drivers_clock() {
    let mut c = Cluster::single(TestConfig::new(1, &[1]));
    setup(&mut c, 1);
    let token = login(&mut c, 1, "alice");
    // 100 ms ticks, etcd's default TTL of 300 s, restarted by each use.
    c.ticks(2_000);
    assert!(as_client(&mut c, 1, 100, Some(&token), range("foo", true)).is_ok());
    c.ticks(2_000);
    assert!(as_client(&mut c, 1, 101, Some(&token), range("foo", true)).is_ok());
    c.ticks(3_001);
    assert_eq!(
        as_client(&mut c, 1, 102, Some(&token), range("foo", true)),
        Err(Error::InvalidAuthToken)
    );
}

#[test]
fn the_auth_store_survives_a_snapshot_and_a_restart_and_older_snapshots_load() {
    let cfg = TestConfig::new(1, &[1]).snapshot_count(10);
    let mut c = Cluster::single(cfg.clone());
    setup(&mut c, 1);
    for i in 0..12 {
        ok(&mut c, 1, put(&format!("k{i}"), "v"));
    }
    let disk = c.disks[&1].clone();
    let snapshot = disk.snapshot.clone().expect("a snapshot was saved");
    let sections = decode_known(&snapshot.data).expect("decodes");
    assert!(
        sections.contains_key(&SECTION_AUTH),
        "the snapshot carries auth"
    );
    let before = c.node(1).auth().clone();

    let restarted = Cluster::single_from(cfg.clone(), disk.clone());
    assert_eq!(
        restarted.node(1).auth(),
        &before,
        "the same store after restart"
    );
    assert!(restarted.node(1).auth().is_enabled());

    // A snapshot written before the auth section existed: an empty, disabled store.
    let mut older = disk;
    let data = encode_sections(&[
        (SECTION_MVCC, sections[&SECTION_MVCC]),
        (SECTION_LEASES, sections[&SECTION_LEASES]),
        (SECTION_MEMBERS, sections[&SECTION_MEMBERS]),
        (SECTION_ALARMS, sections[&SECTION_ALARMS]),
    ]);
    let mut old_snapshot = snapshot;
    old_snapshot.data = data.into();
    older.snapshot = Some(old_snapshot);
    let index = older
        .snapshot
        .as_ref()
        .map_or(0, |s| s.get_metadata().index);
    older.entries.retain(|e| e.index > index);
    let from_older = Cluster::single_from(cfg, older);
    assert!(!from_older.node(1).auth().is_enabled());
    assert!(from_older.node(1).auth().user_names().is_empty());
}
