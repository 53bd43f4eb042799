//! Format 2's encoding against format 1's, which must still be read.

use bytes::Bytes;

use super::*;
use crate::mvcc::KeyRange;

/// Format 1's encoder, as it was before format 2: the files it wrote must still load.
fn encode_fixed(store: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_FIXED.to_be_bytes());
    out.extend_from_slice(&store.current_revision.to_be_bytes());
    out.extend_from_slice(&store.compact_revision.to_be_bytes());
    out.extend_from_slice(&(store.index.len() as u64).to_be_bytes());
    let fixed_bytes = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for (key, key_index) in store.index.iter() {
        fixed_bytes(&mut out, key);
        out.extend_from_slice(&(key_index.generations().len() as u32).to_be_bytes());
        for generation in key_index.generations() {
            out.extend_from_slice(&generation.created.to_bytes());
            out.extend_from_slice(&generation.changes.to_be_bytes());
            out.extend_from_slice(&(generation.entries.len() as u32).to_be_bytes());
            for entry in &generation.entries {
                out.extend_from_slice(&entry.revision.to_bytes());
                out.extend_from_slice(&entry.lease.to_be_bytes());
                fixed_bytes(&mut out, &entry.value);
            }
        }
    }
    out.extend_from_slice(&(store.log.len() as u64).to_be_bytes());
    for entry in &store.log {
        out.extend_from_slice(&entry.revision().to_bytes());
        out.push(u8::from(entry.tombstone));
        fixed_bytes(&mut out, &entry.key);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A store with shared and unshared key prefixes, a key that is a prefix of the next, several
/// generations, leases of both signs' extremes, tombstones, a compaction and multi-change
/// transactions.
fn varied_store() -> Store {
    let mut store = Store::default();
    let keys: [&[u8]; 7] = [
        b"/registry/pods/default/a",
        b"/registry/pods/default/ab",
        b"/registry/pods/kube-system/x",
        b"/registry/services/x",
        b"\x00",
        b"\xff\xff",
        b"z",
    ];
    for round in 0..4u8 {
        for (i, key) in keys.iter().enumerate() {
            let lease = match i % 3 {
                0 => 0,
                1 => i64::MAX,
                _ => 7_000_000_000,
            };
            store
                .write()
                .put(key, Bytes::from(vec![round; i * 40]), lease);
        }
        let mut txn = store.write();
        txn.put(b"txn/1", Bytes::from_static(b"one"), 0);
        txn.put(b"txn/2", Bytes::from_static(b"two"), 0);
        txn.delete_range(KeyRange::Single(b"z"));
        drop(txn);
    }
    store.compact(9).expect("compaction at 9 is valid");
    store
        .write()
        .delete_range(KeyRange::Single(b"/registry/services/x"));
    store
}

#[test]
fn format_two_round_trips_and_format_one_still_loads() {
    let store = varied_store();
    let two = store.encode_section();
    assert_eq!(&two[8..12], &FORMAT.to_be_bytes(), "format 2 is written");
    assert_eq!(two.len() as u64, store.section_len(), "section_len agrees");
    let from_two = Store::decode_section(&two).expect("format 2 decodes");
    let one = encode_fixed(&store);
    let from_one = Store::decode_section(&one).expect("format 1 still decodes");
    for restored in [&from_two, &from_one] {
        assert_eq!(restored.hash_kv(0), store.hash_kv(0), "same contents");
        assert_eq!(
            restored.events(store.compact_revision + 1, store.current_revision + 1, 1000),
            store.events(store.compact_revision + 1, store.current_revision + 1, 1000),
            "same change log"
        );
        assert_eq!(
            restored.encode_section(),
            two,
            "re-encodes to the same bytes"
        );
    }
    assert!(
        two.len() < one.len(),
        "format 2 ({}) is smaller than format 1 ({})",
        two.len(),
        one.len()
    );
}

#[test]
fn a_million_key_shaped_store_shrinks_by_a_sixth() {
    // The benchmark's shape: 8-byte big-endian keys in order, 256-byte values, no lease.
    let mut store = Store::default();
    for n in 0..20_000u64 {
        store
            .write()
            .put(&n.to_be_bytes(), Bytes::from(vec![(n % 251) as u8; 256]), 0);
    }
    let (one, two) = (encode_fixed(&store).len(), store.encode_section().len());
    assert!(
        two * 6 < one * 5,
        "format 2 is {two} bytes, format 1 {one}: expected at least a sixth less"
    );
}

#[test]
fn damaged_varints_and_prefixes_are_refused() {
    let store = varied_store();
    let bytes = store.encode_section();
    // Every single-bit flip is caught (by the crc, or by the structure before it).
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x01;
        assert!(Store::decode_section(&damaged).is_err(), "flip at {i}");
    }
    // A well-formed crc over bad structure: a shared prefix longer than the previous key.
    let mut body = Vec::new();
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&FORMAT.to_be_bytes());
    body.extend_from_slice(&[2, 0]); // current 1, compact 0 (zigzag)
    body.extend_from_slice(&[1, 3, 1, b'a']); // one key: shares 3 bytes with "", suffix "a"
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(
        Store::decode_section(&body).err(),
        Some(SectionError::Inconsistent)
    );
    // A varint longer than 64 bits.
    let mut body = Vec::new();
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&FORMAT.to_be_bytes());
    body.extend_from_slice(&[0xff; 10]);
    body.push(0x01);
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(
        Store::decode_section(&body).err(),
        Some(SectionError::Inconsistent)
    );
    // An unknown format.
    let mut body = bytes.clone();
    body[8..12].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(
        Store::decode_section(&body).err(),
        Some(SectionError::UnknownFormat)
    );
}

#[test]
fn varints_round_trip_at_the_edges() {
    for value in [
        0,
        1,
        -1,
        63,
        -64,
        64,
        i64::MAX,
        i64::MIN,
        1 << 35,
        -(1 << 35),
    ] {
        let mut out = Vec::new();
        put_sv(&mut out, value).expect("a Vec takes bytes");
        let mut reader = Reader {
            rest: &out,
            fixed: false,
        };
        assert_eq!(reader.i64(), Ok(value), "{value}");
        assert!(reader.rest.is_empty(), "{value}: all bytes read");
    }
    for value in [0, 127, 128, 16_383, 16_384, u64::MAX] {
        let mut out = Vec::new();
        put_uv(&mut out, value).expect("a Vec takes bytes");
        let mut reader = Reader {
            rest: &out,
            fixed: false,
        };
        assert_eq!(reader.uv(), Ok(value), "{value}");
    }
}
