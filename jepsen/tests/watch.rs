//! The watch checker: valid streams are accepted; each known-bad stream is rejected with the
//! right kind, naming the watch, revision and records involved.
#![allow(clippy::unwrap_used)]
use keel_jepsen::history::{
    History, HistoryBuilder, KeyValue, Request, RequestOp, Response, ResponseOp,
};
use keel_jepsen::watch::{
    check_watches, check_watches_with, Filter, WatchEvent, WatchLog, WatchLogBuilder, WatchOptions,
    WatchRequest, WatchVerdict, WatchViolation, WatchViolationKind as Kind,
};

#[path = "watch/generated.rs"]
mod generated;

fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue::new(key, value, create, modr, version)
}

/// The base history, times 0..=9:
/// rev 2 put x=a; rev 3 put y=b; rev 4 put x=c; rev 5 delete y; rev 6 txn put x=d, y=e.
fn base() -> HistoryBuilder {
    History::builder()
        .invoke(1, Request::put("x", "a"))
        .ok(1, Response::put(2))
        .invoke(1, Request::put("y", "b"))
        .ok(1, Response::put(3))
        .invoke(1, Request::put("x", "c"))
        .ok(1, Response::put(4))
        .invoke(1, Request::delete("y"))
        .ok(1, Response::delete(5, 1))
        .invoke(
            1,
            Request::txn(
                vec![],
                vec![RequestOp::put("x", "d"), RequestOp::put("y", "e")],
                vec![],
            ),
        )
        .ok(
            1,
            Response::txn(6, true, vec![ResponseOp::put(6), ResponseOp::put(6)]),
        )
}

fn x2() -> WatchEvent {
    WatchEvent::put(kv("x", "a", 2, 2, 1))
}
fn y3() -> WatchEvent {
    WatchEvent::put(kv("y", "b", 3, 3, 1))
}
fn x4() -> WatchEvent {
    WatchEvent::put(kv("x", "c", 2, 4, 2))
}
fn y5() -> WatchEvent {
    WatchEvent::delete("y", 5)
}
fn x6() -> WatchEvent {
    WatchEvent::put(kv("x", "d", 2, 6, 3))
}
fn y6() -> WatchEvent {
    WatchEvent::put(kv("y", "e", 6, 6, 1))
}

/// The events of revision `r` of the base history (with `prev_kv` if `prev`).
fn at(r: i64, prev: bool) -> Vec<WatchEvent> {
    let p = |e: WatchEvent, kv: Option<KeyValue>| if prev { e.with_prev(kv) } else { e };
    match r {
        2 => vec![x2()],
        3 => vec![y3()],
        4 => vec![p(x4(), Some(x2().kv))],
        5 => vec![p(y5(), Some(y3().kv))],
        6 => vec![p(x6(), Some(x4().kv)), y6()],
        _ => vec![],
    }
}

/// Watch `w` receives every revision in `from..=to` (only events in `req`'s range and filters),
/// one response per revision.
fn deliver(
    mut b: WatchLogBuilder,
    w: u64,
    req: &WatchRequest,
    from: i64,
    to: i64,
) -> WatchLogBuilder {
    for r in from..=to {
        let evs: Vec<WatchEvent> = at(r, req.prev_kv)
            .into_iter()
            .filter(|e| req.covers(&e.kv.key) && req.passes(e.kind))
            .collect();
        if !evs.is_empty() {
            b = b.events(w, 6, evs);
        }
    }
    b
}

fn valid(h: &History, log: &WatchLog) {
    let v = check_watches(h, log);
    assert!(v.is_valid(), "{v}\n{}", log.to_jsonl());
}

fn invalid(h: &History, log: &WatchLog, kind: Kind) -> WatchViolation {
    match check_watches(h, log) {
        WatchVerdict::Valid => panic!("accepted a bad log:\n{}", log.to_jsonl()),
        WatchVerdict::Invalid(v) => {
            assert_eq!(v.kind, kind, "{v}");
            v
        }
    }
}

fn all() -> WatchRequest {
    WatchRequest::range("a", "z")
}

// ---------------------------------------------------------------- valid streams

#[test]
fn several_watches_and_resumes_are_valid() {
    let h = base().build();
    let full = all().start(2).with_prev_kv();
    let b = WatchLog::builder()
        .at(100)
        .open(1, full.clone())
        .created(1, 6);
    let b = deliver(b, 1, &full, 2, 6).progress(1, 6);
    // Watch 2 on x from "now" at revision 3, broken after revision 4, resumed as watch 3.
    let x = WatchRequest::key("x");
    let b = b.open(2, x.clone()).created(2, 3).events(2, 4, vec![x4()]);
    let b = b.closed(2, Some("connection reset"));
    let b = b
        .open(3, x.clone().start(5))
        .created(3, 6)
        .events(3, 6, vec![x6()]);
    // Watch 4 from revision 4 over [a, \0) and watch 5 of y only from 1.
    let from4 = WatchRequest::range("a", "\0").start(4);
    let b = b.open(4, from4.clone()).created(4, 6);
    let b = deliver(b, 4, &from4, 4, 6);
    let y = WatchRequest::key("y").start(1);
    let b = b.open(5, y.clone()).created(5, 6);
    let b = deliver(b, 5, &y, 2, 6).closed(5, None);
    valid(&h, &b.build());
}

#[test]
fn fragments_progress_and_filters_are_valid() {
    let h = base().build();
    let frag = all().start(2).with_fragment().with_progress_notify();
    let b = WatchLog::builder()
        .at(100)
        .open(1, frag.clone())
        .created(1, 6);
    let b = deliver(b, 1, &frag, 2, 5).progress(1, 5);
    let b = b
        .fragment(1, 6, vec![x6()])
        .events(1, 6, vec![y6()])
        .progress(1, 6);
    let noput = all().start(2).filter(Filter::NoPut).with_prev_kv();
    let b = b.open(2, noput.clone()).created(2, 6);
    let b = deliver(b, 2, &noput, 2, 6).progress(2, 6);
    let nodel = all().start(3).filter(Filter::NoDelete);
    let b = b.open(3, nodel.clone()).created(3, 6);
    let b = deliver(b, 3, &nodel, 3, 6).progress(3, 6);
    valid(&h, &b.build());
}

#[test]
fn cancel_for_compaction_is_valid() {
    let h = base()
        .invoke(2, Request::compact(5))
        .ok(2, Response::compact(6))
        .build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(3))
        .created(1, 6);
    let b = b
        .canceled(1, 5, "mvcc: required revision has been compacted")
        .closed(1, None);
    // Delivered 3 before the cancel: its next revision 4 is still below 5.
    let b = b
        .open(2, all().start(3))
        .created(2, 6)
        .events(2, 6, vec![y3()]);
    let b = b.canceled(2, 5, "compacted");
    // A prev_kv lost to the compaction may be null.
    let b = b.open(3, all().start(5).with_prev_kv()).created(3, 6);
    let b = b.events(3, 6, vec![y5()]).events(3, 6, at(6, true));
    valid(&h, &b.build());
}

#[test]
fn in_doubt_writes_may_or_may_not_appear() {
    let h = base()
        .invoke(2, Request::put("w", "q"))
        .info(2)
        .invoke(3, Request::delete("x"))
        .build();
    // Watch 1 sees both in-doubt writes, watch 2 neither: it is not live past 7.
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(6))
        .created(1, 6);
    let b = b.events(1, 7, vec![x6(), y6()]);
    let b = b.events(1, 7, vec![WatchEvent::put(kv("w", "q", 7, 7, 1))]);
    let b = b
        .events(1, 8, vec![WatchEvent::delete("x", 8)])
        .progress(1, 8);
    let b = b
        .open(2, all().start(6))
        .created(2, 6)
        .events(2, 6, vec![x6(), y6()]);
    valid(&h, &b.build());
    // Without watch 1, watch 2 may even be live past 7: nothing is known to have happened.
    let b = WatchLog::builder()
        .at(100)
        .open(2, all().start(6))
        .created(2, 6);
    let b = b.events(2, 6, vec![x6(), y6()]).progress(2, 9);
    valid(&h, &b.build());
}

#[test]
fn the_module_docs_worked_example() {
    let h = History::builder()
        .invoke(1, Request::put("x", "a"))
        .ok(1, Response::put(2))
        .invoke(1, Request::put("x", "b"))
        .ok(1, Response::put(3))
        .invoke(1, Request::delete("x"))
        .ok(1, Response::delete(4, 1))
        .invoke(1, Request::put("x", "c"))
        .info(1)
        .build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, WatchRequest::key("x").start(2))
        .created(1, 4);
    let b = b.events(1, 4, vec![WatchEvent::put(kv("x", "a", 2, 2, 1))]);
    let b = b.events(1, 4, vec![WatchEvent::put(kv("x", "b", 2, 3, 2))]);
    let b = b
        .events(1, 4, vec![WatchEvent::delete("x", 4)])
        .progress(1, 4);
    let good = b.clone().build();
    valid(&h, &good);
    let b = b.open(2, WatchRequest::key("x").start(3)).created(2, 4);
    let b = b.events(2, 5, vec![WatchEvent::put(kv("x", "b", 2, 3, 2))]);
    let b = b.events(2, 5, vec![WatchEvent::put(kv("x", "c", 5, 5, 1))]);
    let v = invalid(&h, &b.build(), Kind::Gap);
    assert_eq!((v.revision, v.key.as_deref()), (Some(4), Some("x")));
    assert_eq!(v.watches[0], 2, "{v}");
}

// ---------------------------------------------------------------- known-bad streams

#[test]
fn a_gap_is_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = b.events(1, 6, vec![x2()]).events(1, 6, vec![x4()]);
    let v = invalid(&h, &b.build(), Kind::Gap);
    assert_eq!((v.revision, v.key.as_deref()), (Some(3), Some("y")));
    assert!(v.explanation.contains("watch 1"), "{v}");
    assert!(v.names_record(3), "{v}");
    assert_eq!(v.ops.len(), 1, "{v}");
}

#[test]
fn a_missing_key_of_a_revision_is_a_gap() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(6))
        .created(1, 6);
    let v = invalid(&h, &b.events(1, 6, vec![x6()]).build(), Kind::Gap);
    assert_eq!((v.revision, v.key.as_deref()), (Some(6), Some("y")));
}

#[test]
fn a_reorder_is_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = b
        .events(1, 6, vec![x2()])
        .events(1, 6, vec![x4()])
        .events(1, 6, vec![y3()]);
    let v = invalid(&h, &b.build(), Kind::Unordered);
    assert_eq!(v.revision, Some(3));
    assert!(v.names_record(3) && v.names_record(4), "{v}");
}

#[test]
fn a_duplicate_is_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = b.events(1, 6, vec![x2()]).events(1, 6, vec![x2()]);
    let v = invalid(&h, &b.build(), Kind::Duplicate);
    assert_eq!((v.revision, v.key.as_deref()), (Some(2), Some("x")));
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = b.events(1, 6, vec![x2(), x2()]);
    invalid(&h, &b.build(), Kind::Duplicate);
}

#[test]
fn a_revision_split_across_two_responses_is_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(6))
        .created(1, 6);
    let b = b.events(1, 6, vec![x6()]).events(1, 6, vec![y6()]);
    let v = invalid(&h, &b.build(), Kind::Split);
    assert!(v.names_record(2) && v.names_record(3), "{v}");
    // Fragments on a watch that did not ask for them.
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(6))
        .created(1, 6);
    let b = b.fragment(1, 6, vec![x6()]).events(1, 6, vec![y6()]);
    invalid(&h, &b.build(), Kind::Split);
}

#[test]
fn an_event_at_or_below_a_progress_notification_is_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = b
        .events(1, 6, vec![x2()])
        .progress(1, 3)
        .events(1, 6, vec![y3()]);
    let v = invalid(&h, &b.build(), Kind::Progress);
    assert!(v.names_record(3) && v.names_record(4), "{v}");
    // A progress notification ahead of what was delivered.
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = b.events(1, 6, vec![x2()]).progress(1, 3).closed(1, None);
    let v = invalid(&h, &b.build(), Kind::Progress);
    assert_eq!((v.revision, v.key.as_deref()), (Some(3), Some("y")));
}

#[test]
fn a_wrong_prev_kv_is_rejected() {
    let h = base().build();
    let req = WatchRequest::key("x").start(6).with_prev_kv();
    let open = |p: Option<KeyValue>| {
        let b = WatchLog::builder()
            .at(100)
            .open(1, req.clone())
            .created(1, 6);
        b.events(1, 6, vec![x6().with_prev(p)]).build()
    };
    valid(&h, &open(Some(x4().kv)));
    // Right shape, wrong value: revision 4 put x=c.
    let v = invalid(&h, &open(Some(kv("x", "zz", 2, 4, 2))), Kind::PrevKv);
    assert_eq!(v.revision, Some(6));
    // Not the previous version's number.
    invalid(&h, &open(Some(x2().kv)), Kind::PrevKv);
    // Null although no compaction.
    invalid(&h, &open(None), Kind::PrevKv);
    let auto = WatchOptions {
        unrecorded_compactions: true,
        ..WatchOptions::default()
    };
    assert!(check_watches_with(&h, &open(None), &auto).is_valid());
    // Asked for none, got one.
    let b = WatchLog::builder()
        .at(100)
        .open(1, WatchRequest::key("x").start(6))
        .created(1, 6);
    invalid(
        &h,
        &b.events(1, 6, vec![x6().with_prev(Some(x4().kv))]).build(),
        Kind::PrevKv,
    );
    // A delete's prev_kv skipping a version another watch saw.
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = deliver(b, 1, &all(), 2, 6);
    let y = WatchRequest::key("y").start(5).with_prev_kv();
    let b =
        b.open(2, y)
            .created(2, 6)
            .events(2, 6, vec![y5().with_prev(Some(kv("y", "b", 3, 2, 1)))]);
    invalid(&h, &b.build(), Kind::PrevKv);
}

#[test]
fn a_wrong_create_flag_or_version_is_rejected() {
    let h = base().build();
    let with = |e: WatchEvent| {
        let b = WatchLog::builder()
            .at(100)
            .open(1, all().start(2))
            .created(1, 6);
        let b = b.events(1, 6, vec![x2()]).events(1, 6, vec![y3()]);
        b.events(1, 6, vec![e]).build()
    };
    valid(&h, &with(x4()));
    // A create of a key that exists.
    let v = invalid(
        &h,
        &with(WatchEvent::put(kv("x", "c", 4, 4, 1))),
        Kind::Version,
    );
    assert_eq!((v.revision, v.key.as_deref()), (Some(4), Some("x")));
    // Version skipped.
    invalid(
        &h,
        &with(WatchEvent::put(kv("x", "c", 2, 4, 3))),
        Kind::Version,
    );
    // Locally impossible: version 2 with create == mod.
    invalid(
        &h,
        &with(WatchEvent::put(kv("x", "c", 4, 4, 2))),
        Kind::Version,
    );
    // A continued generation after a delete: y was deleted at 5.
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = deliver(b, 1, &all(), 2, 5);
    let b = b.events(1, 6, vec![x6(), WatchEvent::put(kv("y", "e", 3, 6, 2))]);
    invalid(&h, &b.build(), Kind::Version);
}

#[test]
fn a_filter_violation_is_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2).filter(Filter::NoPut))
        .created(1, 6);
    let v = invalid(&h, &b.events(1, 6, vec![x2()]).build(), Kind::Filter);
    assert_eq!(v.watches, vec![1]);
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(5).filter(Filter::NoDelete))
        .created(1, 6);
    invalid(&h, &b.events(1, 6, vec![y5()]).build(), Kind::Filter);
}

#[test]
fn an_event_from_a_failed_or_unknown_write_is_rejected() {
    let h = base()
        .invoke(2, Request::put("w", "f"))
        .fail(2, "injected")
        .build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(7))
        .created(1, 6);
    let b = b.events(1, 7, vec![WatchEvent::put(kv("w", "f", 7, 7, 1))]);
    let v = invalid(&h, &b.build(), Kind::UnknownWrite);
    assert_eq!(v.ops.len(), 1, "{v}");
    assert!(v.explanation.contains("failed"), "{v}");
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(7))
        .created(1, 6);
    let b = b.events(1, 7, vec![WatchEvent::put(kv("w", "never", 7, 7, 1))]);
    invalid(&h, &b.build(), Kind::UnknownWrite);
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(7))
        .created(1, 6);
    let log = b.events(1, 7, vec![WatchEvent::delete("x", 7)]).build();
    invalid(&h, &log, Kind::UnknownWrite);
    // Unless the server deletes keys on its own (leases outside the history).
    let leases = WatchOptions {
        unrecorded_deletes: true,
        ..WatchOptions::default()
    };
    assert!(check_watches_with(&h, &log, &leases).is_valid());
}

#[test]
fn an_event_at_the_wrong_revision_is_rejected() {
    let h = base().build();
    // x=c was acknowledged at 4; revision 5 is the delete of y.
    let b = WatchLog::builder()
        .at(100)
        .open(1, WatchRequest::key("x").start(5))
        .created(1, 6);
    let v = invalid(
        &h,
        &b.events(1, 6, vec![WatchEvent::put(kv("x", "c", 2, 5, 2))])
            .build(),
        Kind::WrongRevision,
    );
    assert_eq!(v.revision, Some(5));
    assert_eq!(v.ops.len(), 2, "{v}");
    // At a revision no acknowledged write took.
    let b = WatchLog::builder()
        .at(100)
        .open(1, WatchRequest::key("x").start(7))
        .created(1, 6);
    invalid(
        &h,
        &b.events(1, 7, vec![WatchEvent::put(kv("x", "c", 2, 7, 4))])
            .build(),
        Kind::WrongRevision,
    );
}

#[test]
fn disagreeing_watches_are_rejected() {
    let h = base()
        .invoke(2, Request::put("w", "p"))
        .invoke(3, Request::put("w", "q"))
        .build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, WatchRequest::key("w").start(7))
        .created(1, 6);
    let b = b.events(1, 7, vec![WatchEvent::put(kv("w", "p", 7, 7, 1))]);
    let b = b.open(2, WatchRequest::key("w").start(7)).created(2, 6);
    let b = b.events(2, 7, vec![WatchEvent::put(kv("w", "q", 7, 7, 1))]);
    let v = invalid(&h, &b.build(), Kind::Disagree);
    assert_eq!(v.watches, vec![1, 2]);
}

#[test]
fn a_missing_created_is_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .events(1, 6, vec![x2()]);
    let v = invalid(&h, &b.build(), Kind::MissingCreated);
    assert!(v.names_record(0) && v.names_record(1), "{v}");
    let b = WatchLog::builder().at(100).created(1, 6);
    invalid(&h, &b.build(), Kind::Malformed);
}

#[test]
fn a_wrong_cancel_or_events_after_it_are_rejected() {
    let h = base()
        .invoke(2, Request::compact(5))
        .ok(2, Response::compact(6))
        .build();
    // Start 5 is kept by a compaction at 5.
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(5))
        .created(1, 6);
    let v = invalid(&h, &b.canceled(1, 5, "compacted").build(), Kind::Canceled);
    assert_eq!(v.watches, vec![1]);
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let b = b.canceled(1, 5, "compacted").events(1, 6, vec![x2()]);
    invalid(&h, &b.build(), Kind::Canceled);
}

#[test]
fn out_of_range_header_and_future_are_rejected() {
    let h = base().build();
    let b = WatchLog::builder()
        .at(100)
        .open(1, WatchRequest::key("y").start(2))
        .created(1, 6);
    invalid(&h, &b.events(1, 6, vec![x2()]).build(), Kind::OutOfRange);
    let b = WatchLog::builder().at(100).open(1, all()).created(1, 3);
    invalid(&h, &b.events(1, 6, vec![y3()]).build(), Kind::OutOfRange);
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    invalid(&h, &b.events(1, 1, vec![x2()]).build(), Kind::Header);
    // Revision 6 arrives at time 5, before its txn was invoked (time 8).
    let b = WatchLog::builder()
        .at(5)
        .open(1, all().start(6))
        .created(1, 4);
    invalid(&h, &b.events(1, 6, at(6, false)).build(), Kind::Future);
}

#[test]
fn the_cli_exits_zero_or_one() {
    let dir = std::env::temp_dir().join(format!("keel-jepsen-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (hp, wp) = (dir.join("h.jsonl"), dir.join("w.jsonl"));
    std::fs::write(&hp, base().build().to_jsonl()).unwrap();
    let run = |log: &WatchLog| {
        std::fs::write(&wp, log.to_jsonl()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-jepsen"))
            .args(["check-watch", hp.to_str().unwrap(), wp.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let b = WatchLog::builder()
        .at(100)
        .open(1, all().start(2))
        .created(1, 6);
    let (code, out) = run(&deliver(b.clone(), 1, &all(), 2, 6).build());
    assert_eq!((code, out.trim()), (0, "valid"));
    let (code, out) = run(&b.events(1, 6, vec![x4()]).build());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("invalid: Gap: watch 1 (start 2) missed the put of x at revision 2"),
        "{out}"
    );
    assert!(out.contains("record 2 (watch 1)"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}
