use keel_proto::keelpb::{V2Request, V2Response};
use proptest::prelude::*;

use super::error::*;
use super::*;

const NOW: i64 = 1_800_000_000 * 1_000_000_000;
const SEC: i64 = 1_000_000_000;

fn req(method: &str, path: &str) -> V2Request {
    V2Request {
        method: method.into(),
        path: path.into(),
        time: NOW,
        ..V2Request::default()
    }
}

fn put(s: &mut V2Store, path: &str, value: &str) -> V2Response {
    s.apply(&V2Request {
        val: value.into(),
        ..req("PUT", path)
    })
}

fn code(r: &V2Response) -> Option<u32> {
    r.error.as_ref().map(|e| e.code)
}

fn value(r: &V2Response) -> Option<String> {
    r.event.as_ref()?.node.as_ref()?.value.clone()
}

#[test]
fn set_get_and_indexes() {
    let mut s = V2Store::default();
    let r = put(&mut s, "/testdir/testkey", "Hello world");
    let e = r.event.expect("set answers an event");
    assert_eq!(e.action, "set", "action");
    let n = e.node.expect("node");
    assert_eq!((n.created_index, n.modified_index), (1, 1), "indexes");
    assert_eq!(e.etcd_index, 1, "etcd index");
    let got = s.read(&req("GET", "/testdir/testkey"));
    assert_eq!(value(&got).as_deref(), Some("Hello world"), "get");
    let r = put(&mut s, "/testdir/testkey", "again");
    let e = r.event.expect("event");
    assert_eq!(
        e.prev_node.and_then(|p| p.value).as_deref(),
        Some("Hello world")
    );
    let dir = s
        .read(&req("GET", "/testdir"))
        .event
        .expect("dir")
        .node
        .expect("node");
    assert!(dir.dir, "testdir is a directory");
    assert_eq!(dir.created_index, 1, "created with the first key");
    assert_eq!(dir.nodes.len(), 1, "one child");
    let missing = s.read(&req("GET", "/nope"));
    assert_eq!(code(&missing), Some(KEY_NOT_FOUND), "missing");
    assert_eq!(missing.error.expect("error").cause, "/nope", "cause");
    let through_file = s.read(&req("GET", "/testdir/testkey/x"));
    assert_eq!(code(&through_file), Some(NOT_DIR), "a key is not a dir");
}

#[test]
fn create_update_and_exists() {
    let mut s = V2Store::default();
    let mk = |s: &mut V2Store| {
        s.apply(&V2Request {
            val: "v".into(),
            prev_exist: Some(false),
            ..req("PUT", "/a")
        })
    };
    assert!(mk(&mut s).event.is_some(), "first mk");
    let again = mk(&mut s);
    assert_eq!(code(&again), Some(NODE_EXIST), "second mk");
    assert_eq!(again.error.expect("error").index, 1, "error index");
    let upd = s.apply(&V2Request {
        val: "w".into(),
        prev_exist: Some(true),
        ..req("PUT", "/a")
    });
    assert_eq!(upd.event.expect("update").action, "update", "update");
    let upd_missing = s.apply(&V2Request {
        prev_exist: Some(true),
        ..req("PUT", "/b")
    });
    assert_eq!(code(&upd_missing), Some(KEY_NOT_FOUND), "update of nothing");
}

#[test]
fn directories() {
    let mut s = V2Store::default();
    let mkdir = s.apply(&V2Request {
        dir: true,
        prev_exist: Some(false),
        ..req("PUT", "/d")
    });
    assert!(mkdir.event.expect("mkdir").node.expect("n").dir, "a dir");
    put(&mut s, "/d/k", "v");
    let rmdir = s.apply(&V2Request {
        dir: true,
        ..req("DELETE", "/d")
    });
    assert_eq!(
        code(&rmdir),
        Some(DIR_NOT_EMPTY),
        "rmdir of a non-empty dir"
    );
    let rm_as_file = s.apply(&req("DELETE", "/d"));
    assert_eq!(code(&rm_as_file), Some(NOT_FILE), "rm of a dir");
    let rm_all = s.apply(&V2Request {
        recursive: true,
        ..req("DELETE", "/d")
    });
    let e = rm_all.event.expect("recursive delete");
    assert!(e.node.expect("n").dir, "deleted a dir");
    assert_eq!(
        code(&s.read(&req("GET", "/d/k"))),
        Some(KEY_NOT_FOUND),
        "gone"
    );
    assert_eq!(
        code(&s.apply(&req("DELETE", "/"))),
        Some(ROOT_READ_ONLY),
        "root"
    );
    let setdir_over_dir = {
        s.apply(&V2Request {
            dir: true,
            ..req("PUT", "/e")
        });
        s.apply(&V2Request {
            dir: true,
            ..req("PUT", "/e")
        })
    };
    assert_eq!(code(&setdir_over_dir), Some(NOT_FILE), "set over a dir");
}

#[test]
fn compare_and_swap_and_delete() {
    let mut s = V2Store::default();
    put(&mut s, "/k", "one");
    let bad = s.apply(&V2Request {
        val: "two".into(),
        prev_value: "zero".into(),
        ..req("PUT", "/k")
    });
    assert_eq!(code(&bad), Some(TEST_FAILED), "wrong prevValue");
    assert_eq!(bad.error.expect("e").cause, "[zero != one]", "cause");
    let bad_index = s.apply(&V2Request {
        val: "two".into(),
        prev_index: 7,
        ..req("PUT", "/k")
    });
    assert_eq!(bad_index.error.expect("e").cause, "[7 != 1]", "index cause");
    let ok = s.apply(&V2Request {
        val: "two".into(),
        prev_index: 1,
        prev_value: "one".into(),
        ..req("PUT", "/k")
    });
    assert_eq!(ok.event.expect("cas").action, "compareAndSwap", "cas");
    let cad_bad = s.apply(&V2Request {
        prev_value: "one".into(),
        ..req("DELETE", "/k")
    });
    assert_eq!(code(&cad_bad), Some(TEST_FAILED), "cad");
    let cad = s.apply(&V2Request {
        prev_value: "two".into(),
        ..req("DELETE", "/k")
    });
    assert_eq!(cad.event.expect("cad").action, "compareAndDelete", "cad ok");
    assert_eq!(s.index(), 3, "only successes move the index");
}

#[test]
fn in_order_keys_are_named_by_the_index() {
    let mut s = V2Store::default();
    for job in ["a", "b", "c"] {
        s.apply(&V2Request {
            val: job.into(),
            ..req("POST", "/queue")
        });
    }
    let list = s.read(&V2Request {
        sorted: true,
        ..req("GET", "/queue")
    });
    let nodes = list.event.expect("list").node.expect("n").nodes;
    let keys: Vec<_> = nodes.iter().map(|n| n.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/queue/00000000000000000001",
            "/queue/00000000000000000002",
            "/queue/00000000000000000003"
        ],
        "in order"
    );
}

#[test]
fn ttls_expire_through_sync() {
    let mut s = V2Store::default();
    let r = s.apply(&V2Request {
        val: "v".into(),
        expiration: NOW + 2 * SEC,
        ..req("PUT", "/t")
    });
    let n = r.event.expect("set").node.expect("n");
    assert_eq!(
        (n.ttl, n.expiration),
        (2, NOW + 2 * SEC),
        "ttl in the answer"
    );
    assert_eq!(s.earliest_expiration(), NOW + 2 * SEC, "scheduled");
    s.apply(&V2Request {
        time: NOW + SEC,
        ..req("SYNC", "")
    });
    assert!(s.read(&req("GET", "/t")).event.is_some(), "not yet");
    s.take_events();
    s.apply(&V2Request {
        time: NOW + 2 * SEC,
        ..req("SYNC", "")
    });
    assert_eq!(
        code(&s.read(&req("GET", "/t"))),
        Some(KEY_NOT_FOUND),
        "expired"
    );
    let events = s.take_events();
    assert_eq!(events.len(), 1, "one expire event");
    assert_eq!(events[0].action, "expire", "expire");
    assert_eq!(s.earliest_expiration(), 0, "nothing scheduled");
    // An update without a TTL makes a key permanent, as in etcd.
    s.apply(&V2Request {
        expiration: NOW + SEC,
        ..req("PUT", "/u")
    });
    s.apply(&V2Request {
        prev_exist: Some(true),
        ..req("PUT", "/u")
    });
    assert_eq!(s.earliest_expiration(), 0, "update dropped the TTL");
    s.check_invariants();
}

#[test]
fn refresh_keeps_the_value_and_wakes_no_one() {
    let mut s = V2Store::default();
    put(&mut s, "/r", "keep");
    s.take_events();
    let r = s.apply(&V2Request {
        refresh: Some(true),
        prev_exist: Some(true),
        expiration: NOW + 5 * SEC,
        ..req("PUT", "/r")
    });
    let e = r.event.expect("refresh");
    assert!(e.refresh, "marked");
    assert_eq!(
        e.node.expect("n").value.as_deref(),
        Some("keep"),
        "value kept"
    );
    assert!(s.take_events().is_empty(), "no wake-up");
    let wait = s.read(&V2Request {
        wait: true,
        since: 2,
        ..req("GET", "/r")
    });
    assert!(
        wait.event.is_none() && wait.error.is_none(),
        "a refresh is skipped"
    );
}

#[test]
fn waits_and_the_cleared_history() {
    let mut s = V2Store::default();
    put(&mut s, "/w/a", "1");
    put(&mut s, "/x", "2");
    let wait = |s: &mut V2Store, path: &str, recursive: bool, since: u64| {
        s.read(&V2Request {
            wait: true,
            recursive,
            since,
            ..req("GET", path)
        })
    };
    let hit = wait(&mut s, "/w", true, 1).event.expect("recursive hit");
    assert_eq!(hit.node.expect("n").key, "/w/a", "the child's change");
    assert_eq!(hit.etcd_index, 2, "answered with the current index");
    assert!(
        wait(&mut s, "/w", false, 1).event.is_none(),
        "not recursive"
    );
    let pending = wait(&mut s, "/x", false, 0);
    assert!(pending.event.is_none() && pending.error.is_none(), "waits");
    assert_eq!(pending.index, 2, "from the current index");
    for i in 0..HISTORY_CAPACITY {
        put(&mut s, "/y", &i.to_string());
    }
    let cleared = wait(&mut s, "/x", false, 2);
    let err = cleared.error.expect("cleared");
    assert_eq!(err.code, EVENT_INDEX_CLEARED, "401");
    assert_eq!(
        err.cause, "the requested history has been cleared [3/2]",
        "cause"
    );
    // A deleted directory wakes a wait on a key under it.
    put(&mut s, "/z/k", "v");
    let since = s.index() + 1;
    s.apply(&V2Request {
        recursive: true,
        ..req("DELETE", "/z")
    });
    assert!(
        wait(&mut s, "/z/k", false, since).event.is_some(),
        "dir delete seen"
    );
}

#[test]
fn hidden_keys_are_not_listed() {
    let mut s = V2Store::default();
    put(&mut s, "/h/_secret", "x");
    put(&mut s, "/h/open", "y");
    let nodes = s
        .read(&req("GET", "/h"))
        .event
        .expect("e")
        .node
        .expect("n")
        .nodes;
    assert_eq!(nodes.len(), 1, "hidden left out");
    assert!(
        s.read(&req("GET", "/h/_secret")).event.is_some(),
        "but readable"
    );
}

fn op() -> impl Strategy<Value = V2Request> {
    let path = prop::sample::select(vec!["/a", "/a/b", "/a/c", "/d", "/d/e/f", "/"]);
    let method = prop::sample::select(vec!["PUT", "POST", "DELETE", "SYNC"]);
    (method, path, any::<u8>(), 0u64..6, 0i64..4).prop_map(|(m, p, bits, idx, t)| V2Request {
        method: m.into(),
        path: p.into(),
        val: format!("v{}", bits % 3),
        dir: bits & 4 != 0,
        recursive: bits & 8 != 0,
        prev_exist: match bits % 3 {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        },
        prev_index: if bits & 16 != 0 { idx } else { 0 },
        prev_value: if bits & 32 != 0 {
            "v1".into()
        } else {
            String::new()
        },
        refresh: (bits & 64 != 0).then_some(true),
        expiration: if bits & 128 != 0 { NOW + t * SEC } else { 0 },
        time: NOW + t * SEC,
        ..V2Request::default()
    })
}

proptest! {
    #[test]
    fn random_ops_keep_invariants_and_round_trip(ops in prop::collection::vec(op(), 1..60)) {
        let mut s = V2Store::default();
        let mut replica = V2Store::default();
        let mut last = 0;
        for r in &ops {
            let a = s.apply(r);
            let b = replica.apply(r);
            prop_assert_eq!(&a, &b, "two members apply alike");
            prop_assert!(s.index() >= last, "the index never goes back");
            if r.method != "SYNC" {
                prop_assert_eq!(a.event.is_some(), s.index() == last + 1, "one index per change");
            }
            last = s.index();
            s.check_invariants();
        }
        let bytes = s.encode_section();
        let back = V2Store::decode_section(&bytes).expect("decodes");
        prop_assert_eq!(back.encode_section(), bytes, "round trip");
        back.check_invariants();
    }
}
