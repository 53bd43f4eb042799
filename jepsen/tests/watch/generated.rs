//! Random runs from etcd's model: a history of writes (acknowledged, failed, in doubt and
//! applied or not) and watch streams that deliver exactly what the model did (several
//! watches, resumes, fragments, progress notifications, filters, `prev_kv`). Each is valid;
//! with one mutation (a dropped, duplicated, swapped, split or corrupted event) it is not.
use keel_jepsen::gen::Rng;
use keel_jepsen::history::{
    Compare, DeleteRequest, History, KeyValue, Operation, Outcome, Request, RequestOp, Revision,
};
use keel_jepsen::model::Model;
use keel_jepsen::watch::{
    check_watches, Filter, WatchEvent, WatchLog, WatchRecord, WatchRecordKind, WatchRequest,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

/// One revision the model made.
struct Made {
    revision: Revision,
    time: u64,
    /// Every change is known from an acknowledged write (so a watch missing it is caught).
    known: bool,
    /// `(key, after, before)`.
    changes: Vec<(String, Option<KeyValue>, Option<KeyValue>)>,
}

struct World {
    ops: Vec<Operation>,
    made: Vec<Made>,
    /// `(time, revision)` of applied compactions.
    compactions: Vec<(u64, Revision)>,
    end_time: u64,
}

impl World {
    fn compacted_at(&self, time: u64) -> Revision {
        let at = self.compactions.iter().filter(|c| c.0 <= time);
        at.map(|c| c.1).max().unwrap_or(0)
    }
}

fn kv_of(model: &Model, key: &str) -> Option<KeyValue> {
    let e = model.current(key)?;
    Some(KeyValue::new(
        key,
        &e.value,
        e.create_revision,
        e.mod_revision,
        e.version,
    ))
}

fn request(rng: &mut Rng, model: &Model, value: &mut u64) -> (Request, bool) {
    let key = KEYS[rng.below(KEYS.len() as u64) as usize];
    let mut v = || {
        *value += 1;
        format!("v{value}")
    };
    match rng.below(11) {
        0..=4 => (Request::put(key, &v()), true),
        10 if model.revision() > model.compacted() + 3 => {
            (Request::compact(model.revision() - 2), true)
        }
        10 => (Request::get(key), true),
        5 | 6 => (Request::delete(key), true),
        7 => {
            let prev_kv = rng.chance(500);
            let d = DeleteRequest {
                key: "k1".to_string(),
                range_end: Some("k3".to_string()),
                prev_kv,
            };
            (Request::Delete(d), prev_kv)
        }
        8 => {
            let other = KEYS[(KEYS.iter().position(|k| *k == key).unwrap_or(0) + 1) % 4];
            let ops = vec![RequestOp::put(key, &v()), RequestOp::put(other, &v())];
            (Request::txn(vec![], ops, vec![]), true)
        }
        _ => {
            let m = model.current(key).map_or(0, |e| e.mod_revision);
            let ops = vec![RequestOp::put(key, &v()), RequestOp::delete(other_key(key))];
            (
                Request::txn(vec![Compare::mod_eq(key, m)], ops, vec![]),
                true,
            )
        }
    }
}

fn other_key(key: &str) -> &'static str {
    if key == "k0" {
        "k3"
    } else {
        "k0"
    }
}

fn world(rng: &mut Rng, n: usize) -> World {
    let mut model = Model::new(1);
    let (mut ops, mut made, mut compactions) = (Vec::new(), Vec::new(), Vec::new());
    let (mut t, mut value) = (10u64, 0u64);
    for id in 0..n {
        t += 2 + rng.below(6);
        let (req, keys_known) = request(rng, &model, &mut value);
        let roll = rng.below(100);
        let (ok, info, fail) = (roll < 75, (75..90).contains(&roll), roll >= 90);
        let applies = ok || (info && rng.chance(500));
        let mut outcome = Outcome::Fail(Some("injected".to_string()));
        let mut complete_time = Some(t + 1 + rng.below(4));
        if info {
            outcome = Outcome::Info(Some("timeout".to_string()));
            if rng.chance(300) {
                complete_time = None;
            }
        }
        if applies && !fail {
            let before: Vec<Option<KeyValue>> = KEYS.iter().map(|k| kv_of(&model, k)).collect();
            let rev0 = model.revision();
            let Ok((resp, undo)) = model.apply(&req) else {
                continue;
            };
            if ok {
                outcome = Outcome::Ok(resp);
            }
            if let Request::Compact(c) = &req {
                compactions.push((t, c.revision));
            }
            if model.revision() > rev0 {
                let mut changes = Vec::new();
                for (i, k) in KEYS.iter().enumerate() {
                    if undo.keys().iter().any(|u| u == k) {
                        changes.push((k.to_string(), kv_of(&model, k), before[i].clone()));
                    }
                }
                made.push(Made {
                    revision: model.revision(),
                    time: t,
                    known: ok && keys_known,
                    changes,
                });
            }
        }
        ops.push(Operation {
            id,
            process: id as u64,
            invoke_time: t - 1 - rng.below(3),
            complete_time,
            request: req,
            outcome,
        });
    }
    World {
        ops,
        made,
        compactions,
        end_time: t + 10,
    }
}

fn watch_request(rng: &mut Rng, last: Revision) -> WatchRequest {
    let mut req = match rng.below(4) {
        0 => WatchRequest::key(KEYS[rng.below(4) as usize]),
        1 => WatchRequest::range("k1", "k3"),
        2 => WatchRequest::range("k0", "\0"),
        _ => WatchRequest::range("a", "z"),
    };
    if rng.chance(600) {
        req = req.start(1 + rng.below(last.max(1) as u64 + 1) as Revision);
    }
    if rng.chance(500) {
        req = req.with_prev_kv();
    }
    if rng.chance(150) {
        req = req.filter(Filter::NoPut);
    } else if rng.chance(150) {
        req = req.filter(Filter::NoDelete);
    }
    if rng.chance(400) {
        req = req.with_fragment();
    }
    req
}

/// One watch: opened at `time`, delivering every revision through `stop`. Returns the last
/// revision delivered through and the time of its last record.
fn one_watch(
    rng: &mut Rng,
    w: &World,
    id: u64,
    req: &WatchRequest,
    mut time: u64,
    stop: Revision,
    out: &mut Vec<WatchRecord>,
) -> u64 {
    let rec = |time: u64, kind: WatchRecordKind| WatchRecord {
        watch: id,
        time,
        kind,
    };
    out.push(rec(time, WatchRecordKind::Open(req.clone())));
    let current = w
        .made
        .iter()
        .filter(|m| m.time <= time)
        .map(|m| m.revision)
        .max()
        .unwrap_or(1);
    time += 1;
    out.push(rec(time, WatchRecordKind::Created { revision: current }));
    let start = if req.start_revision > 0 {
        req.start_revision
    } else {
        current + 1
    };
    let compacted = w.compacted_at(time);
    if start < compacted && rng.chance(700) {
        let (compact_revision, reason) = (compacted, "compacted".to_string());
        let kind = WatchRecordKind::Canceled {
            compact_revision,
            reason,
        };
        out.push(rec(time + 1, kind));
        return time + 2;
    }
    for m in w
        .made
        .iter()
        .filter(|m| m.revision >= start && m.revision <= stop)
    {
        time = time.max(m.time) + 1;
        let events: Vec<WatchEvent> = m
            .changes
            .iter()
            .filter_map(|(key, after, before)| event(req, m.revision, key, after, before))
            .map(|e| {
                // etcd reads prev_kv at revision - 1, which a compaction may have removed.
                let gone = m.revision - 1 < w.compacted_at(time);
                if gone && rng.chance(700) {
                    e.with_prev(None)
                } else {
                    e
                }
            })
            .collect();
        if !events.is_empty() {
            let pieces = if req.fragment && events.len() > 1 && rng.chance(500) {
                events.iter().map(|e| vec![e.clone()]).collect()
            } else {
                vec![events]
            };
            let n = pieces.len();
            for (i, evs) in pieces.into_iter().enumerate() {
                let kind = WatchRecordKind::Events {
                    revision: m.revision,
                    fragment: i + 1 < n,
                    events: evs,
                };
                out.push(rec(time, kind));
            }
        }
        if rng.chance(200) {
            let revision = m.revision;
            out.push(rec(time, WatchRecordKind::Progress { revision }));
        }
    }
    time += 1;
    if rng.chance(500) {
        let error = Some("connection reset".to_string());
        out.push(rec(time, WatchRecordKind::Closed { error }));
    }
    time
}

fn event(
    req: &WatchRequest,
    revision: Revision,
    key: &str,
    after: &Option<KeyValue>,
    before: &Option<KeyValue>,
) -> Option<WatchEvent> {
    if !req.covers(key) {
        return None;
    }
    let e = match after {
        Some(kv) => WatchEvent::put(kv.clone()),
        None => WatchEvent::delete(key, revision),
    };
    if !req.passes(e.kind) {
        return None;
    }
    let create = after.as_ref().is_some_and(|kv| kv.version == 1);
    let prev = if req.prev_kv && !create {
        before.clone()
    } else {
        None
    };
    Some(e.with_prev(prev))
}

fn watches_of(rng: &mut Rng, w: &World) -> WatchLog {
    let last = w.made.last().map_or(1, |m| m.revision);
    let mut out = Vec::new();
    let mut id = 0;
    for _ in 0..1 + rng.below(5) {
        let mut req = watch_request(rng, last);
        let mut time = rng.below(w.end_time);
        loop {
            id += 1;
            let stop = last - rng.below(4) as Revision;
            time = one_watch(rng, w, id, &req, time, stop, &mut out);
            if stop >= last || !rng.chance(500) {
                break;
            }
            req = req.start(stop + 1);
            time += rng.below(20);
        }
    }
    out.sort_by_key(|r| r.time);
    WatchLog { records: out }
}

fn history(w: &World) -> History {
    History::from_operations(&w.ops)
}

/// Indices of events records of one watch, in order.
fn events_records(log: &WatchLog) -> Vec<usize> {
    (0..log.records.len())
        .filter(|&i| matches!(&log.records[i].kind, WatchRecordKind::Events { events, .. } if !events.is_empty()))
        .collect()
}

fn events_of(log: &WatchLog, i: usize) -> Option<(&Vec<WatchEvent>, bool)> {
    match &log.records[i].kind {
        WatchRecordKind::Events {
            events, fragment, ..
        } => Some((events, *fragment)),
        _ => None,
    }
}

/// A later milestone of the same watch at or above `r` (after record `i`, or `i` itself if
/// it is whole and still has an event at or above `r`).
fn live_past(log: &WatchLog, i: usize, r: Revision) -> bool {
    let watch = log.records[i].watch;
    log.records[i..].iter().any(|rec| {
        rec.watch == watch
            && match &rec.kind {
                WatchRecordKind::Events {
                    events, fragment, ..
                } => events
                    .last()
                    .is_some_and(|e| e.revision() - i64::from(*fragment) >= r),
                WatchRecordKind::Progress { revision } => *revision >= r,
                _ => false,
            }
    })
}

/// Drops one event of a known revision from a watch that is live past it.
fn drop_one(rng: &mut Rng, w: &World, log: &mut WatchLog) -> bool {
    let known: Vec<Revision> = w
        .made
        .iter()
        .filter(|m| m.known)
        .map(|m| m.revision)
        .collect();
    let recs = events_records(log);
    let start = rng.below(recs.len().max(1) as u64) as usize;
    for &i in recs.iter().cycle().skip(start).take(recs.len()) {
        let Some((events, _)) = events_of(log, i) else {
            continue;
        };
        let Some(j) = (0..events.len()).find(|&j| known.contains(&events[j].revision())) else {
            continue;
        };
        let r = events[j].revision();
        let mut copy = log.clone();
        if let WatchRecordKind::Events { events, .. } = &mut copy.records[i].kind {
            events.remove(j);
        }
        if live_past(&copy, i, r) {
            *log = copy;
            return true;
        }
    }
    false
}

fn duplicate_one(rng: &mut Rng, log: &mut WatchLog) -> bool {
    let recs = events_records(log);
    if recs.is_empty() {
        return false;
    }
    let i = recs[rng.below(recs.len() as u64) as usize];
    let copy = log.records[i].clone();
    log.records.insert(i + 1, copy);
    true
}

fn swap_one(rng: &mut Rng, log: &mut WatchLog) -> bool {
    let recs = events_records(log);
    let start = rng.below(recs.len().max(1) as u64) as usize;
    for a in (0..recs.len()).cycle().skip(start).take(recs.len()) {
        let i = recs[a];
        let next = recs[a + 1..]
            .iter()
            .find(|&&j| log.records[j].watch == log.records[i].watch);
        let Some(&j) = next else { continue };
        let (Some((ei, fi)), Some((ej, _))) = (events_of(log, i), events_of(log, j)) else {
            continue;
        };
        let (Some(hi), Some(lo)) = (ei.last(), ej.first()) else {
            continue;
        };
        if fi || hi.revision() >= lo.revision() {
            continue;
        }
        let (ki, kj) = (log.records[i].kind.clone(), log.records[j].kind.clone());
        log.records[i].kind = kj;
        log.records[j].kind = ki;
        return true;
    }
    false
}

fn split_one(log: &mut WatchLog) -> bool {
    for i in events_records(log) {
        let Some((events, false)) = events_of(log, i) else {
            continue;
        };
        if events.len() < 2 || events[0].revision() != events[1].revision() {
            continue;
        }
        let mut rest = log.records[i].clone();
        if let WatchRecordKind::Events { events, .. } = &mut rest.kind {
            events.remove(0);
        }
        if let WatchRecordKind::Events { events, .. } = &mut log.records[i].kind {
            events.truncate(1);
        }
        log.records.insert(i + 1, rest);
        return true;
    }
    false
}

fn corrupt_one(log: &mut WatchLog) -> bool {
    for rec in &mut log.records {
        if let WatchRecordKind::Events { events, .. } = &mut rec.kind {
            if let Some(e) = events.iter_mut().find(|e| e.kv.version > 0) {
                e.kv.value = "phantom".to_string();
                return true;
            }
        }
    }
    false
}

type Mutation = (&'static str, fn(&mut Rng, &World, &mut WatchLog) -> bool);

const MUTATIONS: [Mutation; 5] = [
    ("drop", drop_one),
    ("duplicate", |r, _, l| duplicate_one(r, l)),
    ("swap", |r, _, l| swap_one(r, l)),
    ("split", |_, _, l| split_one(l)),
    ("corrupt", |_, _, l| corrupt_one(l)),
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/watch/generated.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_runs_are_valid_and_each_mutation_is_caught(seed in any::<u64>(), n in 5usize..60) {
        let mut rng = Rng::new(seed);
        let w = world(&mut rng, n);
        let h = history(&w);
        let log = watches_of(&mut rng, &w);
        let v = check_watches(&h, &log);
        prop_assert!(v.is_valid(), "seed {seed} n {n}: {v}\n{}\n{}", h.to_jsonl(), log.to_jsonl());
        for (name, mutate) in MUTATIONS {
            let mut bad = log.clone();
            if !mutate(&mut rng, &w, &mut bad) {
                continue;
            }
            let v = check_watches(&h, &bad);
            prop_assert!(!v.is_valid(), "seed {seed} n {n}: {name} not caught\n{}\n{}", h.to_jsonl(), bad.to_jsonl());
        }
    }
}

/// The fuzz above is not vacuous: over fixed seeds, every mutation applies (and is caught)
/// many times, and the valid logs carry events, progress, fragments and resumes.
#[test]
fn the_generator_exercises_every_mutation() {
    let mut applied = [0u32; 5];
    let (mut events, mut progress, mut fragments, mut watches) = (0, 0, 0, 0);
    let (mut canceled, mut null_prev) = (0, 0);
    for seed in 0..200u64 {
        let mut rng = Rng::new(seed);
        let w = world(&mut rng, 40);
        let h = history(&w);
        let log = watches_of(&mut rng, &w);
        let asked: std::collections::HashSet<u64> = log
            .records
            .iter()
            .filter(|r| matches!(&r.kind, WatchRecordKind::Open(q) if q.prev_kv))
            .map(|r| r.watch)
            .collect();
        for r in &log.records {
            let asked = asked.contains(&r.watch);
            match &r.kind {
                WatchRecordKind::Events {
                    events: e,
                    fragment,
                    ..
                } => {
                    events += e.len();
                    fragments += usize::from(*fragment);
                    let nulls = e
                        .iter()
                        .filter(|e| e.prev_kv.is_none() && e.kv.version != 1);
                    null_prev += if asked { nulls.count() } else { 0 };
                }
                WatchRecordKind::Progress { .. } => progress += 1,
                WatchRecordKind::Canceled { .. } => canceled += 1,
                WatchRecordKind::Open(_) => watches += 1,
                _ => {}
            }
        }
        for (k, mutate) in MUTATIONS.iter().enumerate() {
            let mut bad = log.clone();
            if mutate.1(&mut rng, &w, &mut bad) {
                applied[k] += 1;
                let v = check_watches(&h, &bad);
                assert!(!v.is_valid(), "seed {seed}: {} not caught", mutate.0);
            }
        }
    }
    eprintln!(
        "applied {applied:?}; {events} events, {progress} progress, {fragments} fragments, \
         {watches} watches, {canceled} cancels, {null_prev} prev_kvs lost to compaction"
    );
    assert!(applied.iter().all(|&n| n >= 20), "{applied:?}");
    assert!(progress > 100 && fragments > 20 && watches > 400);
    assert!(canceled > 10 && null_prev > 10);
}

/// Long runs: 10k writes, watches resumed a few times; valid, and checked in well under a
/// second each in release.
#[test]
fn long_runs_are_valid() {
    let mut records = 0;
    for seed in 0..4 {
        let mut rng = Rng::new(seed);
        let w = world(&mut rng, 10_000);
        let h = history(&w);
        let log = watches_of(&mut rng, &w);
        let started = std::time::Instant::now();
        let v = check_watches(&h, &log);
        eprintln!(
            "{} ops, {} watch records: {v} in {:?}",
            w.ops.len(),
            log.records.len(),
            started.elapsed()
        );
        assert!(v.is_valid(), "seed {seed}: {v}");
        records += log.records.len();
    }
    assert!(records > 5_000, "{records}");
}
