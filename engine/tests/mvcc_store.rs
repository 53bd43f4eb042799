//! Worked cases for the MVCC store: revisions, versions, compaction freeing memory, hashing.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use keel_engine::error::Error;
use keel_engine::mvcc::{KeyIndex, KeyRange, RangeOptions, Revision, Store};

fn v(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn at(revision: i64) -> RangeOptions {
    RangeOptions {
        revision,
        ..Default::default()
    }
}

#[test]
fn versions_and_create_revisions_follow_etcd() {
    let mut store = Store::default();
    store.write().put(b"k", v("1"), 0); // 2: create, version 1
    store.write().put(b"k", v("2"), 7); // 3: version 2
    store.write().delete_range(KeyRange::Single(b"k")); // 4
    store.write().put(b"k", v("3"), 0); // 5: new life, version 1
    let kv = store
        .range(KeyRange::Single(b"k"), &at(0))
        .unwrap()
        .kvs
        .remove(0);
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    let kv = store
        .range(KeyRange::Single(b"k"), &at(3))
        .unwrap()
        .kvs
        .remove(0);
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (2, 3, 2, 7)
    );
    assert!(store
        .range(KeyRange::Single(b"k"), &at(4))
        .unwrap()
        .kvs
        .is_empty());
    assert!(store
        .range(KeyRange::Single(b"k"), &at(1))
        .unwrap()
        .kvs
        .is_empty());
    assert_eq!(
        store.range(KeyRange::Single(b"k"), &at(6)),
        Err(Error::FutureRev)
    );
}

#[test]
fn one_txn_one_revision_increasing_subs() {
    let mut store = Store::default();
    let mut txn = store.write();
    txn.put(b"a", v("1"), 0);
    txn.put(b"b", v("1"), 0);
    assert_eq!(txn.delete_range(KeyRange::from_wire(b"a", b"\0")), 2);
    let outcome = txn.end();
    assert_eq!(outcome.revision, 2);
    let subs: Vec<_> = store
        .index()
        .iter()
        .flat_map(|(_, ki)| ki.revisions())
        .collect();
    assert_eq!(
        subs,
        [
            Revision::new(2, 0),
            Revision::new(2, 2),
            Revision::new(2, 1),
            Revision::new(2, 3)
        ]
    );
    let kinds: Vec<_> = outcome.events.iter().map(|e| e.r#type).collect();
    assert_eq!(kinds, [0, 0, 1, 1]);
    let delete = outcome.events[2].kv.clone().unwrap();
    assert_eq!(
        (delete.key, delete.mod_revision, delete.version),
        (v("a"), 2, 0)
    );
    // An empty txn changes nothing.
    assert_eq!(store.write().end().revision, 2);
}

#[test]
fn limit_and_count_and_count_only() {
    let mut store = Store::default();
    for key in ["a", "b", "c", "d"] {
        store.write().put(key.as_bytes(), v("x"), 0);
    }
    let all = KeyRange::from_wire(b"a", b"\0");
    let got = store
        .range(
            all,
            &RangeOptions {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((got.kvs.len(), got.count, got.revision), (2, 4, 5));
    let got = store
        .range(
            all,
            &RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((got.kvs.len(), got.count), (0, 4));
    let got = store
        .range(KeyRange::from_wire(b"b", b"d"), &at(3))
        .unwrap();
    assert_eq!(got.count, 1); // only b existed at 3
}

#[test]
fn compaction_frees_memory() {
    let mut store = Store::default();
    let keys_n = 100;
    let rounds = 50;
    for round in 0..rounds {
        let mut txn = store.write();
        for k in 0..keys_n {
            txn.put(
                format!("key{k:03}").as_bytes(),
                Bytes::from(vec![round as u8; 64]),
                0,
            );
        }
        txn.end();
    }
    // Delete half the keys.
    store
        .write()
        .delete_range(KeyRange::from_wire(b"key050", b"\0"));
    let before = store.stored_revision_count();
    assert_eq!(before, (keys_n * rounds + keys_n / 2) as u64);
    let current = store.current_revision();
    let stats = store.compact(current).unwrap();
    // One revision per live key is all reads at ≥ current need.
    assert_eq!(store.stored_revision_count(), (keys_n / 2) as u64);
    assert_eq!(stats.revisions_freed, before - (keys_n / 2) as u64);
    assert_eq!(store.key_count(), keys_n / 2);
    let recount: usize = store.index().iter().map(|(_, ki)| ki.entry_count()).sum();
    assert_eq!(recount as u64, store.stored_revision_count());
    // The buffers shrank too, not just the counts.
    let capacity: usize = store
        .index()
        .iter()
        .map(|(_, ki)| ki.entry_capacity())
        .sum();
    assert!(
        capacity <= 16 * keys_n / 2,
        "entry capacity {capacity} after compaction"
    );
    // A second compaction visits only keys changed since: none.
    store.write().put(b"key000", v("y"), 0);
    let stats = store.compact(store.current_revision()).unwrap();
    assert_eq!((stats.keys_visited, stats.revisions_freed), (1, 1));
}

#[test]
fn compaction_keeps_reads_at_and_after_the_revision() {
    let mut store = Store::default();
    store.write().put(b"a", v("1"), 0); // 2
    store.write().put(b"a", v("2"), 0); // 3
    store.write().put(b"b", v("1"), 0); // 4
    store.write().delete_range(KeyRange::Single(b"a")); // 5
    store.write().put(b"a", v("3"), 0); // 6
    let reads = |store: &Store, rev| store.range(KeyRange::from_wire(b"a", b"\0"), &at(rev));
    let before: Vec<_> = (4..=6).map(|r| reads(&store, r)).collect();
    store.compact(4).unwrap();
    let after: Vec<_> = (4..=6).map(|r| reads(&store, r)).collect();
    assert_eq!(before, after);
    assert_eq!(reads(&store, 3), Err(Error::Compacted));
    // a keeps 3 (latest ≤ 4), 5(t), 6; b keeps 4.
    let revs: Vec<i64> = store
        .index()
        .iter()
        .flat_map(|(_, ki)| ki.revisions())
        .map(|r| r.main)
        .collect();
    assert_eq!(revs, [3, 5, 6, 4]);
    // The delete at 5 is still reported to watchers after compacting at 5.
    store.compact(5).unwrap();
    let events = store.events(5, 6, 10).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (
            events[0].r#type,
            events[0].kv.as_ref().map(|kv| kv.mod_revision)
        ),
        (1, Some(5))
    );
}

#[test]
fn compact_zero_once_like_etcd() {
    // Checked against etcd 3.4.23: compact(0) on a fresh store succeeds, a second one fails.
    let mut store = Store::default();
    assert_eq!(store.compact_revision(), -1);
    assert!(store.compact(0).is_ok());
    assert_eq!(store.compact(0), Err(Error::Compacted));
    assert_eq!(store.compact(2), Err(Error::FutureRev));
    assert!(store.compact(1).is_ok());
}

#[test]
fn hash_is_deterministic_and_checks_revisions() {
    let build = || {
        let mut store = Store::default();
        for i in 0..20u8 {
            let mut txn = store.write();
            txn.put(&[b'a' + i % 5], Bytes::from(vec![i]), i64::from(i % 2));
            if i % 7 == 0 {
                txn.delete_range(KeyRange::Single(b"c"));
            }
            txn.end();
        }
        store.compact(10).unwrap();
        store
    };
    let (one, two) = (build(), build());
    for rev in [0, 11, 15, 21] {
        assert_eq!(one.hash_kv(rev), two.hash_kv(rev));
    }
    let h = one.hash_kv(0).unwrap();
    assert_eq!(
        (h.compact_revision, h.revision, h.hashed_revision),
        (10, 21, 21)
    );
    // etcd: HashKV at the compaction revision itself is Compacted (unlike Range).
    assert_eq!(one.hash_kv(10), Err(Error::Compacted));
    assert_eq!(one.hash_kv(22), Err(Error::FutureRev));
    let mut three = build();
    three.write().put(b"z", v("z"), 0);
    assert_eq!(
        three.hash_kv(21),
        one.hash_kv(21)
            .map(|h| keel_engine::mvcc::HashKv { revision: 22, ..h })
    );
    assert_ne!(three.hash_kv(0).unwrap().hash, one.hash_kv(0).unwrap().hash);
}

#[test]
fn key_index_since_and_find() {
    let mut ki = KeyIndex::default();
    ki.put(Revision::new(2, 0), v("a"), 0);
    ki.put(Revision::new(3, 0), v("b"), 0);
    ki.tombstone(Revision::new(3, 1));
    ki.put(Revision::new(4, 0), v("c"), 0);
    assert_eq!(ki.since(3), [Revision::new(3, 1), Revision::new(4, 0)]);
    assert!(ki.find(Revision::new(3, 1)).is_none()); // tombstone
    assert_eq!(ki.find(Revision::new(3, 0)).map(|f| f.version), Some(2));
    assert!(ki.tombstone(Revision::new(5, 0)));
    assert!(
        !ki.tombstone(Revision::new(6, 0)),
        "a deleted key cannot be deleted again"
    );
    assert_eq!(ki.modified(), Revision::new(5, 0));
}

#[test]
fn snapshot_detects_damage() {
    use keel_engine::mvcc::SectionError;
    let mut store = Store::default();
    for i in 0..10u8 {
        store
            .write()
            .put(&[b'a' + i % 3], Bytes::from(vec![i; 10]), 0);
    }
    store.compact(5).unwrap();
    let bytes = store.encode_section();
    let restored = Store::decode_section(&bytes).unwrap();
    assert_eq!(restored.encode_section(), bytes);
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x40;
        assert!(Store::decode_section(&damaged).is_err(), "flip at {i}");
    }
    for len in 0..bytes.len() {
        assert!(
            Store::decode_section(&bytes[..len]).is_err(),
            "cut at {len}"
        );
    }
    assert_eq!(
        Store::decode_section(b"KEELMVCC").err(),
        Some(SectionError::Truncated)
    );
}
