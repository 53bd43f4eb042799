//! The MVCC store against a naive model (a list of every version ever written), under random
//! put / delete / multi-op txn / compact sequences: range-at-revision, errors, counts, and the
//! memory compaction must free all agree.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_engine::error::Error;
use keel_engine::mvcc::{KeyRange, KeyValue, RangeOptions, Store};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8, Option<u8>),
}

#[derive(Clone, Debug)]
enum Step {
    Txn(Vec<Op>),
    Compact(i64),
}

/// One version: (main, sub, key, value or None for a delete).
type Version = (i64, i64, Vec<u8>, Option<Vec<u8>>);

/// Every version ever written.
#[derive(Default)]
struct Model {
    versions: Vec<Version>,
    current: i64,
    compacted: i64,
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + k]
}

impl Model {
    fn new() -> Self {
        Model {
            versions: Vec::new(),
            current: 1,
            compacted: -1,
        }
    }

    /// Key → kv at `at`, derived from scratch.
    fn state(&self, at: i64) -> BTreeMap<Vec<u8>, KeyValue> {
        self.state_through(self.versions.partition_point(|v| v.0 <= at))
    }

    /// Key → kv after the first `n` versions.
    fn state_through(&self, n: usize) -> BTreeMap<Vec<u8>, KeyValue> {
        let mut state: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        for (main, _, k, v) in &self.versions[..n] {
            match v {
                None => {
                    state.remove(k);
                }
                Some(value) => {
                    let prev = state.get(k).cloned();
                    let kv = KeyValue {
                        key: Bytes::from(k.clone()),
                        create_revision: prev.as_ref().map_or(*main, |p| p.create_revision),
                        mod_revision: *main,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: Bytes::from(value.clone()),
                        lease: 0,
                    };
                    state.insert(k.clone(), kv);
                }
            }
        }
        state
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, at: i64) -> Result<Vec<KeyValue>, Error> {
        if at > self.current {
            return Err(Error::FutureRev);
        }
        let at = if at <= 0 { self.current } else { at };
        if at < self.compacted {
            return Err(Error::Compacted);
        }
        let in_range = |k: &[u8]| match end {
            None => k == start,
            Some(e) => k >= start && k < e,
        };
        Ok(self
            .state(at)
            .into_iter()
            .filter(|(k, _)| in_range(k))
            .map(|(_, kv)| kv)
            .collect())
    }

    fn txn(&mut self, ops: &[Op]) {
        let main = self.current + 1;
        let mut sub = 0;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    self.versions.push((main, sub, key(*k), Some(vec![*v])));
                    sub += 1;
                }
                Op::Delete(s, e) => {
                    let live = self.state(main);
                    let (start, end) = (key(*s), e.map(key));
                    for k in live.keys() {
                        let hit = match &end {
                            None => *k == start,
                            Some(end) => *k >= start && k < end,
                        };
                        if hit {
                            self.versions.push((main, sub, k.clone(), None));
                            sub += 1;
                        }
                    }
                }
            }
        }
        if sub > 0 {
            self.current = main;
        }
    }

    /// Revisions etcd's compaction at `c` must keep.
    fn needed_after_compact(&self, c: i64) -> u64 {
        let mut needed = self.versions.iter().filter(|v| v.0 > c).count() as u64;
        let mut latest: BTreeMap<&[u8], bool> = BTreeMap::new();
        for (_, _, k, v) in self.versions.iter().filter(|v| v.0 <= c) {
            latest.insert(k, v.is_some());
        }
        needed += latest.values().filter(|alive| **alive).count() as u64;
        needed
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u8..6, proptest::option::of(0u8..7)).prop_map(|(s, e)| Op::Delete(s, e)),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => proptest::collection::vec(op_strategy(), 0..4).prop_map(Step::Txn),
        1 => (-1i64..40).prop_map(Step::Compact),
    ]
}

/// Applies ops the way etcd's apply does: a put after a delete of the same key in one txn is
/// forbidden by the duplicate-key check, so the generator's sequences are used as-is only when
/// each key is put at most once and never after being deleted in the same txn.
fn legal(ops: &[Op]) -> Vec<Op> {
    let mut put: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for op in ops {
        if let Op::Put(k, _) = op {
            if put.contains(k) {
                continue;
            }
            put.push(*k);
        }
        out.push(op.clone());
    }
    out
}

fn check(store: &Store, model: &Model) {
    store.check_invariants();
    assert_eq!(store.current_revision(), model.current);
    let ranges: [(&[u8], Option<&[u8]>); 4] = [
        (b"a", None),
        (b"b", Some(b"e")),
        (b"\0", Some(b"\xff")),
        (b"c", Some(b"a")),
    ];
    for at in -1..=model.current + 1 {
        for (start, end) in ranges {
            let key_range = match end {
                None => KeyRange::Single(start),
                Some(end) => KeyRange::Interval(start, Some(end)),
            };
            let options = RangeOptions {
                revision: at,
                ..Default::default()
            };
            let got = store.range(key_range, &options);
            let want = model.range(start, end, at);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got.kvs, want, "range {start:?}..{end:?} at {at}");
                    assert_eq!(got.count, want.len() as i64);
                    assert_eq!(got.revision, model.current);
                    let limited = store
                        .range(
                            key_range,
                            &RangeOptions {
                                limit: 1,
                                ..options
                            },
                        )
                        .unwrap();
                    assert_eq!(limited.kvs.len(), want.len().min(1));
                    assert_eq!(limited.count, want.len() as i64);
                }
                (got, want) => assert_eq!(got.map(|r| r.kvs), want, "at {at}"),
            }
        }
    }
    // Watch catch-up: every change from the compaction revision on, deletes included.
    let from = model.compacted.max(1);
    let events = store.events(from, model.current, usize::MAX).unwrap();
    let skip = model.versions.partition_point(|v| v.0 < from);
    // A put at the compaction revision superseded within its own txn is freed (as in etcd).
    let superseded = |i: usize| {
        let (main, _, k, v) = &model.versions[i];
        v.is_some()
            && *main == model.compacted
            && model.versions[i + 1..]
                .iter()
                .any(|v| v.0 == *main && v.2 == *k)
    };
    let want: Vec<usize> = (skip..model.versions.len())
        .filter(|i| !superseded(*i))
        .collect();
    assert_eq!(events.len(), want.len());
    for (event, i) in events.iter().zip(want) {
        let (main, _, k, v) = &model.versions[i];
        let kv = event.kv.clone().unwrap();
        assert_eq!((kv.mod_revision, kv.key.as_ref()), (*main, k.as_slice()));
        match v {
            None => assert_eq!(event.r#type, 1),
            Some(_) => assert_eq!(Some(&kv), model.state_through(i + 1).get(k)),
        }
    }
    if model.compacted > 1 {
        assert_eq!(
            store.events(model.compacted - 1, model.current, 1),
            Err(Error::Compacted)
        );
    }
    let recount: u64 = store
        .index()
        .iter()
        .map(|(_, ki)| ki.entry_count() as u64)
        .sum();
    assert_eq!(recount, store.stored_revision_count());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn store_matches_model(steps in proptest::collection::vec(step_strategy(), 1..40)) {
        let mut store = Store::default();
        let mut model = Model::new();
        for step in steps {
            match step {
                Step::Txn(ops) => {
                    let ops = legal(&ops);
                    let mut txn = store.write();
                    for op in &ops {
                        match op {
                            Op::Put(k, v) => {
                                txn.put(&key(*k), Bytes::from(vec![*v]), 0);
                            }
                            Op::Delete(s, e) => {
                                let (s, e) = (key(*s), e.map(key));
                                let range = match &e {
                                    None => KeyRange::Single(&s),
                                    Some(e) => KeyRange::Interval(&s, Some(e)),
                                };
                                txn.delete_range(range);
                            }
                        }
                    }
                    let outcome = txn.end();
                    model.txn(&ops);
                    prop_assert_eq!(outcome.revision, model.current);
                }
                Step::Compact(c) => {
                    let want = if c <= model.compacted {
                        Err(Error::Compacted)
                    } else if c > model.current {
                        Err(Error::FutureRev)
                    } else {
                        Ok(())
                    };
                    let got = store.compact(c).map(|_| ());
                    prop_assert_eq!(got, want);
                    if got.is_ok() {
                        model.compacted = c;
                        prop_assert_eq!(
                            store.stored_revision_count(),
                            model.needed_after_compact(c)
                        );
                    }
                }
            }
            check(&store, &model);
            // A snapshot round trip gives a store that answers, and goes on, the same way.
            let restored = Store::decode_section(&store.encode_section()).unwrap();
            check(&restored, &model);
            prop_assert_eq!(restored.hash_kv(0), store.hash_kv(0));
            prop_assert_eq!(restored.stored_revision_count(), store.stored_revision_count());
            store = restored;
        }
    }
}
