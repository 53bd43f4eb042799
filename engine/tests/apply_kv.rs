//! etcd 3.4 apply semantics, case by case. Cases marked "etcd:" were run against etcd 3.4.23
//! (started with `--max-txn-ops 4`, driven through its JSON gateway) and the outcome is
//! encoded here.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use keel_engine::apply::{self, check_txn, LeaseLookup, NoLeases};
use keel_engine::error::Error;
use keel_engine::mvcc::Store;
use keel_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_proto::etcdserverpb::request_op::Request;
use keel_proto::etcdserverpb::response_op::Response;
use keel_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, TxnResponse,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    }
}

fn put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(k, v))),
    }
}

fn del(k: &str, end: &str) -> RequestOp {
    let req = DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    };
    RequestOp {
        request: Some(Request::RequestDeleteRange(req)),
    }
}

fn get(k: &str, revision: i64) -> RequestOp {
    let req = RangeRequest {
        key: b(k),
        revision,
        ..Default::default()
    };
    RequestOp {
        request: Some(Request::RequestRange(req)),
    }
}

fn nested(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(TxnRequest {
            compare,
            success,
            failure,
        })),
    }
}

fn txn_req(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        success,
        ..Default::default()
    }
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        key: b(k),
        target: target as i32,
        result: result as i32,
        target_union: Some(union),
        ..Default::default()
    }
}

fn do_put(store: &mut Store, k: &str, v: &str) -> i64 {
    let applied = apply::put(store, &put_req(k, v), &NoLeases).unwrap();
    applied.header.unwrap().revision
}

fn do_txn(store: &mut Store, req: &TxnRequest) -> Result<TxnResponse, Error> {
    check_txn(req, 128)?;
    apply::txn(store, req, &NoLeases)
}

// --- check_txn -------------------------------------------------------------------------------

#[test]
fn duplicate_key_rules_match_etcd_3_4() {
    let dup = Err(Error::DuplicateKey);
    let cases: Vec<(&str, TxnRequest, Result<(), Error>)> = vec![
        // etcd: range_end "\0" is taken literally by checkIntervals and covers nothing.
        (
            "put b + del a from-key",
            txn_req(vec![put("b", "1"), del("a", "\0")]),
            Ok(()),
        ),
        (
            "put b + del [a, c)",
            txn_req(vec![put("b", "1"), del("a", "c")]),
            dup,
        ),
        (
            "del x then put x",
            txn_req(vec![del("x", ""), put("x", "1")]),
            dup,
        ),
        (
            "put x then del x",
            txn_req(vec![put("x", "1"), del("x", "")]),
            dup,
        ),
        // etcd: a nested put is checked only against deletes of nested txns before it.
        (
            "nested put, then nested del",
            txn_req(vec![
                nested(vec![], vec![put("n", "1")], vec![]),
                nested(vec![], vec![del("n", "")], vec![]),
            ]),
            Ok(()),
        ),
        (
            "nested del, then nested put",
            txn_req(vec![
                nested(vec![], vec![del("n", "")], vec![]),
                nested(vec![], vec![put("n", "1")], vec![]),
            ]),
            dup,
        ),
        (
            "then and else of one nested txn share a key",
            txn_req(vec![nested(
                vec![],
                vec![put("m", "1")],
                vec![put("m", "2")],
            )]),
            Ok(()),
        ),
        (
            "two nested txns put the same key",
            txn_req(vec![
                nested(vec![], vec![put("m", "1")], vec![]),
                nested(vec![], vec![], vec![put("m", "2")]),
            ]),
            dup,
        ),
        (
            "put twice",
            txn_req(vec![put("p", "1"), put("p", "2")]),
            dup,
        ),
        (
            "overlapping deletes",
            txn_req(vec![del("a", "z"), del("b", "c")]),
            Ok(()),
        ),
        (
            "parent put vs nested delete",
            txn_req(vec![
                put("q", "1"),
                nested(vec![], vec![del("a", "z")], vec![]),
            ]),
            dup,
        ),
        (
            "success and failure are separate branches",
            TxnRequest {
                success: vec![put("k", "1")],
                failure: vec![put("k", "2")],
                ..Default::default()
            },
            Ok(()),
        ),
    ];
    for (name, req, want) in cases {
        assert_eq!(check_txn(&req, 128), want, "{name}");
    }
}

#[test]
fn too_many_ops_rules_match_etcd_3_4() {
    // etcd: --max-txn-ops 4; a nested txn may have at most 4 - (parent's op count) ops.
    let too_many = Err(Error::TooManyOps);
    let nested2 = || nested(vec![], vec![put("q3", ""), put("q4", "")], vec![]);
    let cases: Vec<(&str, TxnRequest, Result<(), Error>)> = vec![
        (
            "nested 2 under 3",
            txn_req(vec![put("q1", ""), put("q2", ""), nested2()]),
            too_many,
        ),
        (
            "nested 1 under 3",
            txn_req(vec![
                put("q1", ""),
                put("q2", ""),
                nested(vec![], vec![put("q3", "")], vec![]),
            ]),
            Ok(()),
        ),
        (
            "4 ops",
            txn_req((0..4).map(|i| put(&format!("k{i}"), "")).collect()),
            Ok(()),
        ),
        (
            "5 ops",
            txn_req((0..5).map(|i| put(&format!("k{i}"), "")).collect()),
            too_many,
        ),
        (
            "nested 2 under 2",
            txn_req(vec![put("q1", ""), nested2()]),
            Ok(()),
        ),
        (
            "5 compares",
            TxnRequest {
                compare: vec![
                    cmp(
                        "a",
                        CompareTarget::Version,
                        CompareResult::Equal,
                        TargetUnion::Version(0)
                    );
                    5
                ],
                ..Default::default()
            },
            too_many,
        ),
        (
            "3 compares bound a nested txn with 2 ops",
            TxnRequest {
                compare: vec![
                    cmp(
                        "a",
                        CompareTarget::Version,
                        CompareResult::Equal,
                        TargetUnion::Version(0)
                    );
                    3
                ],
                success: vec![nested2()],
                ..Default::default()
            },
            too_many,
        ),
        (
            "empty compare key",
            TxnRequest {
                compare: vec![Compare::default()],
                ..Default::default()
            },
            Err(Error::EmptyKey),
        ),
        (
            "empty op",
            txn_req(vec![RequestOp::default()]),
            Err(Error::KeyNotFound),
        ),
        (
            "empty put key",
            txn_req(vec![put("", "x")]),
            Err(Error::EmptyKey),
        ),
        (
            "nested ignore_value with value",
            txn_req(vec![nested(
                vec![],
                vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b("k"),
                        value: b("v"),
                        ignore_value: true,
                        ..Default::default()
                    })),
                }],
                vec![],
            )]),
            Err(Error::ValueProvided),
        ),
    ];
    for (name, req, want) in cases {
        assert_eq!(check_txn(&req, 4), want, "{name}");
    }
}

#[test]
fn single_request_checks() {
    assert_eq!(
        apply::check_range(&RangeRequest::default()),
        Err(Error::EmptyKey)
    );
    assert_eq!(
        apply::check_delete_range(&DeleteRangeRequest::default()),
        Err(Error::EmptyKey)
    );
    let mut req = put_req("k", "v");
    req.ignore_value = true;
    assert_eq!(apply::check_put(&req), Err(Error::ValueProvided));
    let mut req = put_req("k", "");
    req.ignore_lease = true;
    req.lease = 5;
    assert_eq!(apply::check_put(&req), Err(Error::LeaseProvided));
    assert_eq!(apply::check_put(&put_req("", "v")), Err(Error::EmptyKey));
}

// --- range -----------------------------------------------------------------------------------

/// s/1 version 3 ("c3"), s/2 version 1 ("a"), s/3 version 2 ("d2"), s/4 version 1 ("b").
fn sort_fixture() -> Store {
    let mut store = Store::default();
    let req = txn_req(vec![
        put("s/1", "c"),
        put("s/2", "a"),
        put("s/3", "d"),
        put("s/4", "b"),
    ]);
    do_txn(&mut store, &req).unwrap(); // 2
    do_txn(
        &mut store,
        &txn_req(vec![put("s/1", "c2"), put("s/3", "d2")]),
    )
    .unwrap(); // 3
    do_put(&mut store, "s/1", "c3"); // 4
    store
}

fn sorted(store: &Store, req: RangeRequest) -> (Vec<String>, i64, bool) {
    let req = RangeRequest {
        key: b("s/"),
        range_end: b("s0"),
        ..req
    };
    let resp = apply::range(store, &req).unwrap();
    let keys = resp
        .kvs
        .iter()
        .map(|kv| format!("{}:{}", String::from_utf8_lossy(&kv.key), kv.version))
        .collect();
    (keys, resp.count, resp.more)
}

#[test]
fn range_sort_limit_and_filters_match_etcd() {
    let store = sort_fixture();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let version = SortTarget::Version as i32;
    // etcd: target VERSION, order NONE, limit 2 → fetch 3 by key, sort ascending, cut to 2.
    let req = RangeRequest {
        sort_target: version,
        limit: 2,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&["s/2:1", "s/3:2"]), 4, true));
    // etcd: order ASCEND fetches everything first.
    let ascend = SortOrder::Ascend as i32;
    let req = RangeRequest {
        sort_target: version,
        sort_order: ascend,
        limit: 2,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&["s/2:1", "s/4:1"]), 4, true));
    // etcd: DESCEND; ties keep key order (we sort stably).
    let descend = SortOrder::Descend as i32;
    let req = RangeRequest {
        sort_target: version,
        sort_order: descend,
        ..Default::default()
    };
    assert_eq!(
        sorted(&store, req),
        (s(&["s/1:3", "s/3:2", "s/2:1", "s/4:1"]), 4, false)
    );
    let value = SortTarget::Value as i32;
    let req = RangeRequest {
        sort_target: value,
        sort_order: descend,
        limit: 3,
        ..Default::default()
    };
    assert_eq!(
        sorted(&store, req),
        (s(&["s/3:2", "s/1:3", "s/4:1"]), 4, true)
    );
    let req = RangeRequest {
        sort_order: descend,
        limit: 2,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&["s/4:1", "s/3:2"]), 4, true));
    // etcd: count is taken before the filters; `more` after them.
    let req = RangeRequest {
        min_mod_revision: 4,
        limit: 1,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&["s/1:3"]), 4, false));
    let req = RangeRequest {
        max_mod_revision: 2,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&["s/2:1", "s/4:1"]), 4, false));
    let req = RangeRequest {
        max_create_revision: 2,
        limit: 1,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&["s/1:3"]), 4, true));
    let req = RangeRequest {
        min_create_revision: 3,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&[]), 4, false));
    let req = RangeRequest {
        limit: 1,
        ..Default::default()
    };
    assert_eq!(sorted(&store, req), (s(&["s/1:3"]), 4, true));
    let req = RangeRequest {
        limit: 4,
        ..Default::default()
    };
    assert_eq!(
        sorted(&store, req),
        (s(&["s/1:3", "s/2:1", "s/3:2", "s/4:1"]), 4, false)
    );
    // etcd: keys_only drops values; count_only returns no kvs but the count.
    let req = RangeRequest {
        key: b("s/"),
        range_end: b("s0"),
        keys_only: true,
        ..Default::default()
    };
    assert!(apply::range(&store, &req)
        .unwrap()
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty()));
    let req = RangeRequest {
        count_only: true,
        limit: 1,
        ..req
    };
    let resp = apply::range(&store, &req).unwrap();
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (0, 4, false));
}

#[test]
fn range_key_forms_and_revisions() {
    let mut store = Store::default();
    do_put(&mut store, "a", "1"); // 2
    do_put(&mut store, "b", "1"); // 3
    do_put(&mut store, "\u{7f}", "1"); // 4
    let count = |store: &Store, key: &str, end: &str, revision: i64| {
        let req = RangeRequest {
            key: b(key),
            range_end: b(end),
            revision,
            ..Default::default()
        };
        apply::range(store, &req).map(|r| (r.count, r.header.unwrap().revision))
    };
    assert_eq!(count(&store, "a", "", 0), Ok((1, 4)));
    assert_eq!(count(&store, "a", "\0", 0), Ok((3, 4)));
    assert_eq!(count(&store, "\0", "\0", 0), Ok((3, 4))); // everything
    assert_eq!(count(&store, "b", "a", 0), Ok((0, 4))); // inverted: empty
    assert_eq!(count(&store, "a", "\0", 2), Ok((1, 4))); // header is the current revision
    assert_eq!(count(&store, "a", "\0", -5), Ok((3, 4))); // etcd: negative = current
    assert_eq!(count(&store, "a", "\0", 5), Err(Error::FutureRev));
    apply::compact(
        &mut store,
        &CompactionRequest {
            revision: 3,
            physical: true,
        },
    )
    .unwrap();
    assert_eq!(count(&store, "a", "\0", 3), Ok((2, 4))); // etcd: reading at the compaction rev works
    assert_eq!(count(&store, "a", "\0", 2), Err(Error::Compacted));
}

// --- put / delete ----------------------------------------------------------------------------

struct Leases(Vec<i64>);

impl LeaseLookup for Leases {
    fn exists(&self, id: i64) -> bool {
        self.0.contains(&id)
    }
}

#[test]
fn put_flags_match_etcd() {
    let mut store = Store::default();
    let leases = Leases(vec![7]);
    let flags = |ignore_value, ignore_lease, lease| PutRequest {
        key: b("k"),
        lease,
        ignore_value,
        ignore_lease,
        prev_kv: true,
        ..Default::default()
    };
    // etcd: on a missing key, ignore_value and ignore_lease are KeyNotFound, but an unknown
    // lease is reported first.
    assert_eq!(
        apply::put(&mut store, &flags(true, false, 0), &leases),
        Err(Error::KeyNotFound)
    );
    assert_eq!(
        apply::put(&mut store, &flags(false, true, 0), &leases),
        Err(Error::KeyNotFound)
    );
    assert_eq!(
        apply::put(&mut store, &flags(true, false, 5), &leases),
        Err(Error::LeaseNotFound)
    );
    assert_eq!(store.current_revision(), 1);
    let first = PutRequest {
        key: b("k"),
        value: b("v1"),
        lease: 7,
        ..Default::default()
    };
    apply::put(&mut store, &first, &leases).unwrap(); // 2
                                                      // ignore_value keeps the value, takes the new lease (0).
    let applied = apply::put(&mut store, &flags(true, false, 0), &leases).unwrap(); // 3
    let prev = applied.prev_kv.unwrap();
    assert_eq!((prev.value, prev.lease, prev.version), (b("v1"), 7, 1));
    let kv = store.kv_at(b"k", 0).unwrap();
    assert_eq!(
        (kv.value, kv.lease, kv.version, kv.create_revision),
        (b("v1"), 0, 2, 2)
    );
    // ignore_lease keeps the lease, takes the new value.
    apply::put(
        &mut store,
        &PutRequest {
            key: b("k"),
            value: b("v2"),
            lease: 7,
            ..Default::default()
        },
        &leases,
    )
    .unwrap(); // 4
    let req = PutRequest {
        key: b("k"),
        value: b("v3"),
        ignore_lease: true,
        ..Default::default()
    };
    let applied = apply::put(&mut store, &req, &leases).unwrap(); // 5
    assert_eq!(applied.prev_kv, None); // not asked for
    let kv = store.kv_at(b"k", 0).unwrap();
    assert_eq!(
        (kv.value.clone(), kv.lease, kv.mod_revision),
        (b("v3"), 7, 5)
    );
    assert_eq!(store.take_events()[0].kv.as_ref().unwrap(), &kv);
    assert_eq!(applied.header.unwrap().revision, 5);
    // NoLeases: any lease is unknown.
    let req = PutRequest {
        key: b("x"),
        lease: 1,
        ..Default::default()
    };
    assert_eq!(
        apply::put(&mut store, &req, &NoLeases),
        Err(Error::LeaseNotFound)
    );
}

#[test]
fn delete_range_matches_etcd() {
    let mut store = Store::default();
    do_put(&mut store, "a", "1"); // 2
    do_put(&mut store, "b", "2"); // 3
                                  // etcd: deleting nothing keeps the revision and reports it.
    let req = DeleteRangeRequest {
        key: b("zz"),
        ..Default::default()
    };
    let applied = apply::delete_range(&mut store, &req).unwrap();
    assert_eq!((applied.deleted, applied.header.unwrap().revision), (0, 3));
    assert!(store.take_events().is_empty());
    let req = DeleteRangeRequest {
        key: b("a"),
        range_end: b("\0"),
        prev_kv: true,
    };
    let applied = apply::delete_range(&mut store, &req).unwrap();
    assert_eq!((applied.deleted, applied.header.unwrap().revision), (2, 4));
    let prev: Vec<_> = applied.prev_kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(prev, [b("1"), b("2")]);
    let kinds: Vec<_> = store.take_events().iter().map(|e| e.r#type).collect();
    assert_eq!(kinds, [1, 1]);
}

// --- txn -------------------------------------------------------------------------------------

#[test]
fn compares_match_etcd() {
    let mut store = sort_fixture();
    let all = |c: Compare| Compare {
        range_end: b("s0"),
        ..c
    };
    let holds = |store: &mut Store, c: Compare| {
        let req = TxnRequest {
            compare: vec![c],
            ..Default::default()
        };
        do_txn(store, &req).unwrap().succeeded
    };
    use CompareResult::*;
    use CompareTarget as T;
    // etcd: a VALUE compare on a missing key fails, even NOT_EQUAL.
    assert!(!holds(
        &mut store,
        cmp("nokey", T::Value, NotEqual, TargetUnion::Value(b("x")))
    ));
    // etcd: other targets compare a missing key as zero.
    assert!(holds(
        &mut store,
        cmp("nokey", T::Version, Equal, TargetUnion::Version(0))
    ));
    assert!(holds(
        &mut store,
        cmp("nokey", T::Create, Less, TargetUnion::CreateRevision(1))
    ));
    // etcd: over a range, every key must satisfy the compare.
    assert!(!holds(
        &mut store,
        all(cmp("s/", T::Version, Greater, TargetUnion::Version(1)))
    ));
    let one = Compare {
        range_end: b("s/2"),
        ..cmp("s/1", T::Version, Greater, TargetUnion::Version(1))
    };
    assert!(holds(&mut store, one));
    assert!(holds(
        &mut store,
        all(cmp("s/", T::Mod, Less, TargetUnion::ModRevision(5)))
    ));
    assert!(holds(
        &mut store,
        all(cmp("s/", T::Lease, Equal, TargetUnion::Lease(0)))
    ));
    assert!(holds(
        &mut store,
        cmp("s/1", T::Value, Equal, TargetUnion::Value(b("c3")))
    ));
    assert!(holds(
        &mut store,
        cmp("s/1", T::Value, Greater, TargetUnion::Value(b("c2")))
    ));
    // etcd: a union that does not match the target compares against zero.
    assert!(holds(
        &mut store,
        cmp("s/1", T::Mod, Greater, TargetUnion::Version(100))
    ));
    // etcd: range_end "\0" means every key from key on.
    assert!(holds(
        &mut store,
        Compare {
            range_end: b("\0"),
            ..cmp("s/", T::Create, Equal, TargetUnion::CreateRevision(2))
        }
    ));
}

#[test]
fn txn_is_one_revision_and_reads_its_writes() {
    let mut store = Store::default();
    do_put(&mut store, "a", "0"); // 2
    let req = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b("0")),
        )],
        success: vec![
            get("a", 0),
            put("a", "1"),
            get("a", 0),
            del("zz", ""),
            put("b", "1"),
        ],
        failure: vec![],
    };
    let resp = do_txn(&mut store, &req).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    let revs: Vec<i64> = resp
        .responses
        .iter()
        .map(|r| match r.response.as_ref().unwrap() {
            Response::ResponseRange(r) => r.header.unwrap().revision,
            Response::ResponsePut(r) => r.header.unwrap().revision,
            Response::ResponseDeleteRange(r) => r.header.unwrap().revision,
            Response::ResponseTxn(r) => r.header.unwrap().revision,
        })
        .collect();
    // etcd: a range before the txn's first write reports the old revision.
    assert_eq!(revs, [2, 3, 3, 3, 3]);
    let Some(Response::ResponseRange(after)) = &resp.responses[2].response else {
        panic!()
    };
    assert_eq!(after.kvs[0].value, b("1"));
    assert_eq!(store.current_revision(), 3);
    let subs: Vec<i64> = store
        .events(3, 3, 10)
        .unwrap()
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(subs, [3, 3]);
    // A read-only txn keeps the revision.
    let resp = do_txn(&mut store, &txn_req(vec![get("a", 0)])).unwrap();
    assert_eq!(resp.header.unwrap().revision, 3);
}

#[test]
fn nested_txn_compares_see_the_state_before_the_txn() {
    // etcd: the nested compare (version of nc > 0) is false although the outer txn put nc
    // first; the nested failure branch runs and sees the put. Nested headers are empty.
    let mut store = Store::default();
    let inner = nested(
        vec![cmp(
            "nc",
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        )],
        vec![get("nc", 0)],
        vec![get("nc", 0)],
    );
    let resp = do_txn(&mut store, &txn_req(vec![put("nc", "1"), inner])).unwrap();
    let Some(Response::ResponseTxn(inner)) = &resp.responses[1].response else {
        panic!()
    };
    assert!(!inner.succeeded);
    assert_eq!(inner.header, Some(Default::default()));
    let Some(Response::ResponseRange(seen)) = &inner.responses[0].response else {
        panic!()
    };
    assert_eq!((seen.count, seen.header.unwrap().revision), (1, 2));
}

#[test]
fn failing_txn_changes_nothing() {
    let mut store = Store::default();
    for i in 0..5 {
        do_put(&mut store, &format!("k{i}"), "v"); // 2..=6
    }
    apply::compact(
        &mut store,
        &CompactionRequest {
            revision: 4,
            physical: false,
        },
    )
    .unwrap();
    let before = store.hash_kv(0).unwrap();
    let ignore = |k: &str| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b(k),
            ignore_value: true,
            ..Default::default()
        })),
    };
    let leased = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b("l"),
            lease: 9,
            ..Default::default()
        })),
    };
    let cases: Vec<(TxnRequest, Error)> = vec![
        // etcd: a compacted or future range in the chosen branch fails the whole txn.
        (
            txn_req(vec![put("u1", "x"), get("k0", 3)]),
            Error::Compacted,
        ),
        (
            txn_req(vec![put("u1", "x"), get("k0", 7)]),
            Error::FutureRev,
        ),
        (
            txn_req(vec![put("u1", "x"), ignore("missing")]),
            Error::KeyNotFound,
        ),
        (
            txn_req(vec![put("u1", "x"), leased.clone()]),
            Error::LeaseNotFound,
        ),
        // etcd: put checks run before range checks.
        (txn_req(vec![get("k0", 7), leased]), Error::LeaseNotFound),
        (
            txn_req(vec![
                nested(vec![], vec![put("u2", "")], vec![]),
                ignore("missing2"),
            ]),
            Error::KeyNotFound,
        ),
    ];
    for (req, want) in cases {
        assert_eq!(do_txn(&mut store, &req).map(|_| ()), Err(want));
        assert_eq!(store.hash_kv(0).unwrap(), before);
    }
    // The unchosen branch is not checked.
    let req = TxnRequest {
        failure: vec![get("k0", 3)],
        success: vec![put("ok", "")],
        ..Default::default()
    };
    assert!(do_txn(&mut store, &req).unwrap().succeeded);
}

#[test]
fn compaction_and_hash_responses() {
    let mut store = Store::default();
    do_put(&mut store, "a", "1");
    do_put(&mut store, "a", "2"); // 3
                                  // etcd: compact(0) works once on a fresh store; the header is the current revision.
    let resp = apply::compact(
        &mut store,
        &CompactionRequest {
            revision: 2,
            physical: false,
        },
    )
    .unwrap();
    assert_eq!(resp.header.unwrap().revision, 3);
    let again = apply::compact(
        &mut store,
        &CompactionRequest {
            revision: 2,
            physical: false,
        },
    );
    assert_eq!(again, Err(Error::Compacted));
    let future = apply::compact(
        &mut store,
        &CompactionRequest {
            revision: 9,
            physical: false,
        },
    );
    assert_eq!(future, Err(Error::FutureRev));
    let resp = apply::hash_kv(&store, &HashKvRequest { revision: 0 }).unwrap();
    assert_eq!(
        (
            resp.compact_revision,
            resp.hash_revision,
            resp.header.unwrap().revision
        ),
        (2, 3, 3)
    );
    assert_eq!(
        apply::hash_kv(&store, &HashKvRequest { revision: 2 }),
        Err(Error::Compacted)
    );
}

#[test]
fn ignore_value_after_a_from_key_delete_fails_cleanly() {
    // etcd 3.4.23 *panics* on these ("unexpected error during txn: etcdserver: key not
    // found"): checkIntervals lets a put through after a delete with range_end "\0", checkPut
    // looks at the state before the txn, and the put then misses its key while applying.
    // keel answers KeyNotFound and changes nothing.
    let mut store = Store::default();
    do_put(&mut store, "d", "1");
    let ignore_d = || RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b("d"),
            ignore_value: true,
            ..Default::default()
        })),
    };
    let before = store.hash_kv(0).unwrap();
    let cases = [
        txn_req(vec![del("a", "\0"), ignore_d()]),
        txn_req(vec![
            del("a", "\0"),
            nested(vec![], vec![ignore_d()], vec![]),
        ]),
        txn_req(vec![
            nested(vec![], vec![del("c", "\0")], vec![]),
            ignore_d(),
        ]),
    ];
    for req in cases {
        assert_eq!(check_txn(&req, 128), Ok(()), "etcd's checks let it through");
        assert_eq!(do_txn(&mut store, &req), Err(Error::KeyNotFound));
        assert_eq!(store.hash_kv(0).unwrap(), before);
    }
    // Without the earlier delete it works, keeping the value.
    do_txn(&mut store, &txn_req(vec![del("a", "b"), ignore_d()])).unwrap();
    assert_eq!(store.kv_at(b"d", 0).unwrap().value, b("1"));
}

#[test]
fn read_only_txns() {
    assert!(apply::txn_is_read_only(&txn_req(vec![get("a", 0)])));
    assert!(apply::txn_is_read_only(&TxnRequest::default()));
    let nested_put = nested(vec![], vec![get("a", 0)], vec![put("a", "1")]);
    assert!(!apply::txn_is_read_only(&txn_req(vec![
        get("a", 0),
        nested_put
    ])));
    let failure_delete = TxnRequest {
        failure: vec![del("a", "")],
        ..Default::default()
    };
    assert!(!apply::txn_is_read_only(&failure_delete));
}
