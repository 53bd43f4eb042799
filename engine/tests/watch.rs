//! Watches through the node: create, live events, catch-up from MVCC, compaction, filters,
//! prev_kv, fragments, progress, cancellation and slow consumers — every response checked.

mod common;

use common::{watch_counts, Cluster, TestConfig, CLUSTER_ID};
use keel_engine::node::Request;
use keel_engine::watch::{WatchInput, STREAM_WINDOW};
use keel_proto::etcdserverpb::request_op::Request as Op;
use keel_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchResponse,
};
use keel_proto::mvccpb::event::EventType;

const MEMBER: u64 = 0x11;

/// A request in a one-member cluster is answered before any tick.
const SOLO_TICKS: usize = 1;

/// A one-member cluster, settled.
fn start() -> Cluster {
    start_with(|cfg| cfg)
}

/// A one-member cluster with the watch settings `settings` adds, settled.
fn start_with(settings: impl FnOnce(TestConfig) -> TestConfig) -> Cluster {
    Cluster::single(settings(TestConfig::new(MEMBER, &[MEMBER]).seed(7)))
}

/// Sends `request`; it must succeed.
fn request(h: &mut Cluster, request: Request) {
    h.ok_on_leader(request, SOLO_TICKS);
}

fn put(h: &mut Cluster, key: &str, value: &str) {
    request(h, common::put(key, value));
}

fn delete(h: &mut Cluster, key: &str) {
    request(h, common::delete(key));
}

/// Opens a watch on `stream`.
fn watch(h: &mut Cluster, stream: u64, request: WatchCreateRequest) {
    h.watch_input(MEMBER, WatchInput::Create { stream, request });
}

fn input(h: &mut Cluster, input: WatchInput) {
    h.watch_input(MEMBER, input);
}

fn revision(h: &Cluster) -> i64 {
    h.node(MEMBER).store().current_revision()
}

fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_owned().into(),
        range_end: end.to_owned().into(),
        start_revision: start,
        ..Default::default()
    }
}

/// (type, key, value, mod revision) of every event of the responses, in order.
fn events(responses: &[WatchResponse]) -> Vec<(&'static str, String, String, i64)> {
    responses
        .iter()
        .flat_map(|r| r.events.iter())
        .map(|e| {
            let kv = e.kv.clone().expect("event kv");
            let kind = if e.r#type == EventType::Delete as i32 {
                "delete"
            } else {
                "put"
            };
            (
                kind,
                String::from_utf8(kv.key.to_vec()).expect("utf8"),
                String::from_utf8(kv.value.to_vec()).expect("utf8"),
                kv.mod_revision,
            )
        })
        .collect()
}

fn ev(kind: &'static str, key: &str, value: &str, rev: i64) -> (&'static str, String, String, i64) {
    (kind, key.to_owned(), value.to_owned(), rev)
}

#[test]
fn a_watch_from_now_gets_created_then_each_change_in_its_range() {
    let mut h = start();
    put(&mut h, "a", "0"); // rev 2
    watch(&mut h, 1, create("a", "", 0));
    let created = h.take_watch(1);
    assert_eq!(created.len(), 1);
    assert!(created[0].created);
    assert_eq!(created[0].watch_id, 0);
    let header = created[0].header.expect("header");
    assert_eq!(
        (header.revision, header.member_id, header.cluster_id),
        (2, MEMBER, CLUSTER_ID)
    );
    put(&mut h, "a", "1"); // 3
    put(&mut h, "b", "x"); // 4: not watched
    delete(&mut h, "a"); // 5
    let got = h.take_watch(1);
    assert_eq!(
        events(&got),
        vec![ev("put", "a", "1", 3), ev("delete", "a", "", 5)]
    );
    assert!(got.iter().all(|r| r.watch_id == 0 && !r.created));
    assert_eq!(got[0].header.as_ref().map(|h| h.revision), Some(3));
    assert_eq!(got[1].header.as_ref().map(|h| h.revision), Some(5));
}

#[test]
fn prefix_and_from_key_ranges_and_filters() {
    let mut h = start();
    watch(&mut h, 1, create("p/", "p0", 0)); // prefix p/
    watch(
        &mut h,
        1,
        WatchCreateRequest {
            filters: vec![0], // NOPUT
            ..create("m", "\0", 0)
        },
    );
    watch(
        &mut h,
        1,
        WatchCreateRequest {
            filters: vec![1], // NODELETE
            ..create("p/a", "", 0)
        },
    );
    let created = h.take_watch(1);
    let ids: Vec<i64> = created.iter().map(|r| r.watch_id).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    put(&mut h, "p/a", "1"); // 2
    put(&mut h, "o", "1"); // 3
    delete(&mut h, "p/a"); // 4
    put(&mut h, "z", "1"); // 5
    delete(&mut h, "z"); // 6
    let got = h.take_watch(1);
    let of = |id: i64| {
        let rs: Vec<WatchResponse> = got.iter().filter(|r| r.watch_id == id).cloned().collect();
        events(&rs)
    };
    assert_eq!(
        of(0),
        vec![ev("put", "p/a", "1", 2), ev("delete", "p/a", "", 4)]
    );
    // From "m" on, deletes only: "p/a" deleted at 4, "z" deleted at 6.
    assert_eq!(
        of(1),
        vec![ev("delete", "p/a", "", 4), ev("delete", "z", "", 6)]
    );
    assert_eq!(of(2), vec![ev("put", "p/a", "1", 2)]);
}

#[test]
fn a_historical_start_catches_up_from_mvcc_then_goes_live_without_gaps() {
    let mut h = start();
    for i in 0..2500 {
        put(&mut h, &format!("k{}", i % 7), &format!("v{i}"));
    }
    // revisions 2..=2501
    watch(
        &mut h,
        1,
        WatchCreateRequest {
            prev_kv: true,
            ..create("k", "l", 2)
        },
    );
    // Catch-up happens in bounded batches, one per step: ticks drive the rest.
    for _ in 0..10 {
        h.tick();
    }
    put(&mut h, "k3", "live");
    let got = h.take_watch(1);
    assert!(got[0].created);
    let evs = events(&got[1..]);
    assert_eq!(evs.len(), 2501);
    for (i, e) in evs.iter().enumerate().take(2500) {
        assert_eq!(e.3, i as i64 + 2, "revision order without gaps");
        assert_eq!(e.2, format!("v{i}"));
    }
    assert_eq!(evs[2500], ev("put", "k3", "live", 2502));
    // prev_kv: the previous version of the same key; none for a creation.
    let all: Vec<_> = got[1..].iter().flat_map(|r| r.events.iter()).collect();
    assert!(all[0].prev_kv.is_none());
    let e = all[10].clone();
    let prev = e.prev_kv.expect("prev kv");
    assert_eq!(prev.mod_revision, e.kv.expect("kv").mod_revision - 7);
    // No response holds more than 1000 revisions.
    for r in &got[1..] {
        let revs: Vec<i64> = events(std::slice::from_ref(r))
            .iter()
            .map(|e| e.3)
            .collect();
        assert!(revs.last().unwrap_or(&0) - revs.first().unwrap_or(&0) < 1000);
    }
}

#[test]
fn a_txn_revision_arrives_in_one_response() {
    let mut h = start();
    watch(&mut h, 1, create("a", "\0", 0));
    h.take_watch(1);
    let put = |k: &str| RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: k.to_owned().into(),
            value: "t".into(),
            ..Default::default()
        })),
    };
    request(
        &mut h,
        Request::Txn(TxnRequest {
            success: vec![put("a1"), put("a2"), put("a3")],
            ..Default::default()
        }),
    );
    let got = h.take_watch(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].events.len(), 3);
}

#[test]
fn a_compacted_start_is_cancelled_with_the_compact_revision() {
    let mut h = start();
    for i in 0..10 {
        put(&mut h, "a", &i.to_string());
    } // revs 2..=11
    request(
        &mut h,
        Request::Compaction(CompactionRequest {
            revision: 6,
            physical: false,
        }),
    );
    watch(&mut h, 1, create("a", "", 3));
    let got = h.take_watch(1);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].created && !got[0].canceled);
    assert!(got[1].canceled);
    assert_eq!(got[1].compact_revision, 6);
    assert_eq!(got[1].watch_id, got[0].watch_id);
    assert!(got[1].events.is_empty());
    // The watch is gone: later changes are not sent to it.
    put(&mut h, "a", "x");
    assert!(h.take_watch(1).is_empty());
}

#[test]
fn a_start_at_the_compaction_revision_sees_the_delete_there() {
    let mut h = start();
    put(&mut h, "a", "1"); // 2
    delete(&mut h, "a"); // 3
    put(&mut h, "b", "1"); // 4
    request(
        &mut h,
        Request::Compaction(CompactionRequest {
            revision: 3,
            physical: false,
        }),
    );
    watch(&mut h, 1, create("a", "c", 3));
    let got = h.take_watch(1);
    assert_eq!(
        events(&got),
        vec![ev("delete", "a", "", 3), ev("put", "b", "1", 4)]
    );
}

/// The simulator's `watch-skip-compaction-boundary` bug drops exactly the delete at the
/// compaction revision (etcd #19179). Bugs exist only in simulation builds, so this runs
/// under `--cfg madsim` (scripts/test).
#[cfg(madsim)]
#[test]
fn the_skip_compaction_boundary_bug_drops_that_delete() {
    let mut h = start_with(TestConfig::bug_skip_compaction_boundary);
    put(&mut h, "a", "1");
    delete(&mut h, "a");
    put(&mut h, "b", "1");
    request(
        &mut h,
        Request::Compaction(CompactionRequest {
            revision: 3,
            physical: false,
        }),
    );
    watch(&mut h, 1, create("a", "c", 3));
    assert_eq!(events(&h.take_watch(1)), vec![ev("put", "b", "1", 4)]);
}

#[test]
fn create_errors_cancel_and_ids_follow_etcd() {
    let mut h = start();
    watch(&mut h, 1, create("b", "a", 0));
    let got = h.take_watch(1);
    assert!(got[0].created && got[0].canceled);
    assert_eq!(got[0].watch_id, -1);
    assert_eq!(got[0].cancel_reason, "mvcc: watcher range is empty");

    watch(
        &mut h,
        1,
        WatchCreateRequest {
            watch_id: 5,
            ..create("a", "", 0)
        },
    );
    watch(
        &mut h,
        1,
        WatchCreateRequest {
            watch_id: 5,
            ..create("b", "", 0)
        },
    );
    let got = h.take_watch(1);
    assert_eq!(got[0].watch_id, 5);
    assert!(got[1].canceled);
    assert_eq!(
        got[1].cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // Auto ids skip taken ones; ids are per stream.
    watch(&mut h, 1, create("c", "", 0));
    watch(&mut h, 2, create("c", "", 0));
    assert_eq!(h.take_watch(1)[0].watch_id, 0);
    assert_eq!(h.take_watch(2)[0].watch_id, 0);

    input(
        &mut h,
        WatchInput::Cancel {
            stream: 1,
            watch_id: 5,
        },
    );
    let got = h.take_watch(1);
    assert_eq!(got.len(), 1);
    assert!(got[0].canceled && got[0].watch_id == 5);
    // Unknown ids are ignored, like etcd.
    input(
        &mut h,
        WatchInput::Cancel {
            stream: 1,
            watch_id: 99,
        },
    );
    assert!(h.take_watch(1).is_empty());
    put(&mut h, "a", "after cancel");
    assert!(h.take_watch(1).is_empty());
}

#[test]
fn progress_requests_answer_with_the_current_revision_once_synced() {
    let mut h = start();
    put(&mut h, "a", "1");
    watch(&mut h, 1, create("a", "", 0));
    h.take_watch(1);
    input(&mut h, WatchInput::Progress { stream: 1 });
    let got = h.take_watch(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].watch_id, -1);
    assert!(got[0].events.is_empty());
    assert_eq!(
        got[0].header.as_ref().map(|x| x.revision),
        Some(revision(&h))
    );
}

#[test]
fn progress_notify_reaches_idle_watchers_each_interval() {
    let mut h = start_with(|cfg| cfg.progress_interval_ms(1000));
    watch(
        &mut h,
        1,
        WatchCreateRequest {
            progress_notify: true,
            ..create("a", "", 0)
        },
    );
    watch(&mut h, 1, create("a", "", 0)); // did not ask
    h.take_watch(1);
    for _ in 0..25 {
        h.tick();
    }
    let got = h.take_watch(1);
    assert!(got.len() >= 2, "{got:?}");
    assert!(got.iter().all(|r| r.watch_id == 0 && r.events.is_empty()));
}

#[test]
fn fragments_split_a_large_revision_only_when_asked() {
    let mut h = start_with(|cfg| cfg.fragment_bytes(300));
    watch(
        &mut h,
        1,
        WatchCreateRequest {
            fragment: true,
            ..create("a", "\0", 0)
        },
    );
    watch(&mut h, 2, create("a", "\0", 0));
    h.take_watch(1);
    h.take_watch(2);
    let ops: Vec<RequestOp> = (0..10)
        .map(|i| RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: format!("a{i}").into(),
                value: vec![b'x'; 100].into(),
                ..Default::default()
            })),
        })
        .collect();
    request(
        &mut h,
        Request::Txn(TxnRequest {
            success: ops,
            ..Default::default()
        }),
    );
    let frag = h.take_watch(1);
    assert!(frag.len() > 1);
    assert!(frag[..frag.len() - 1].iter().all(|r| r.fragment));
    assert!(!frag[frag.len() - 1].fragment);
    assert_eq!(events(&frag).len(), 10);
    let whole = h.take_watch(2);
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].events.len(), 10);
}

#[test]
fn a_slow_stream_falls_behind_alone_and_catches_up_without_loss() {
    let mut h = start();
    watch(&mut h, 1, create("a", "", 0)); // the slow one
    watch(&mut h, 2, create("a", "", 0));
    h.take_watch(1);
    h.take_watch(2);
    let writes = STREAM_WINDOW as usize + 500;
    let mut fast = Vec::new();
    for i in 0..writes {
        put(&mut h, "a", &i.to_string());
        // Stream 2's client reads as it goes.
        let read = h.take_watch(2);
        input(
            &mut h,
            WatchInput::Credit {
                stream: 2,
                responses: read.len() as u32,
            },
        );
        fast.extend(read);
    }
    // Stream 1 never returned credit: it got exactly a window's worth (less the created).
    let slow = h.take_watch(1);
    assert_eq!(slow.len(), STREAM_WINDOW as usize - 1);
    assert_eq!(watch_counts(h.node(MEMBER)).unsynced, 1);
    // Stream 2 got everything, one response per write.
    assert_eq!(events(&fast).len(), writes);
    // Credit returns: the slow watcher catches up from MVCC, in order, no duplicates.
    let mut all = slow;
    for _ in 0..20 {
        input(
            &mut h,
            WatchInput::Credit {
                stream: 1,
                responses: STREAM_WINDOW,
            },
        );
        all.extend(h.take_watch(1));
    }
    let evs = events(&all);
    assert_eq!(evs.len(), writes);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.2, i.to_string());
        assert_eq!(e.3, i as i64 + 2);
    }
    assert_eq!(watch_counts(h.node(MEMBER)).unsynced, 0);
    put(&mut h, "a", "live");
    assert_eq!(
        events(&h.take_watch(1)),
        vec![ev("put", "a", "live", writes as i64 + 2)]
    );
}

#[test]
fn a_slow_watcher_overtaken_by_compaction_is_cancelled_not_skipped() {
    let mut h = start();
    watch(&mut h, 1, create("a", "", 0));
    h.take_watch(1);
    for i in 0..(STREAM_WINDOW as usize + 10) {
        put(&mut h, "a", &i.to_string());
    }
    let got = h.take_watch(1);
    let last_seen = events(&got).last().map(|e| e.3).expect("some events");
    let rev = revision(&h);
    request(
        &mut h,
        Request::Compaction(CompactionRequest {
            revision: rev,
            physical: false,
        }),
    );
    input(
        &mut h,
        WatchInput::Credit {
            stream: 1,
            responses: STREAM_WINDOW,
        },
    );
    let got = h.take_watch(1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].canceled);
    assert_eq!(got[0].compact_revision, rev);
    assert!(last_seen < rev);
}

#[test]
fn closing_a_stream_frees_its_watchers() {
    let mut h = start();
    for s in 1..=3 {
        for k in 0..100 {
            watch(
                &mut h,
                s,
                create(&format!("k{k}"), "", if k % 2 == 0 { 0 } else { 1 }),
            );
        }
    }
    assert_eq!(watch_counts(h.node(MEMBER)).watchers, 300);
    h.take_watch(2);
    input(&mut h, WatchInput::Close { stream: 2 });
    assert_eq!(watch_counts(h.node(MEMBER)).watchers, 200);
    assert_eq!(watch_counts(h.node(MEMBER)).streams, 2);
    h.take_watch(1);
    h.take_watch(3);
    put(&mut h, "k4", "v");
    assert_eq!(h.take_watch(1).len(), 1);
    assert_eq!(h.take_watch(3).len(), 1);
    assert!(h.take_watch(2).is_empty());
}

#[path = "watch/model.rs"]
mod model;
