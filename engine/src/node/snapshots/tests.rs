//! The streaming encoder against the old whole-buffer one, byte for byte.

use std::io;

use bytes::Bytes;
use keel_proto::etcdserverpb::LeaseGrantRequest;
use raft::eraftpb::SnapshotMetadata;

use super::SnapshotJob;
use crate::lease::Leases;
use crate::membership::{Member, Membership};
use crate::mvcc::{KeyRange, Store};
use crate::sink::CHUNK_BYTES;
use crate::state_snapshot;

/// A store with several generations per key, tombstones, a compaction, writes after it, a
/// value larger than a chunk, and keys on leases; the leases it used.
fn used_store() -> (Store, Leases) {
    let mut store = Store::new();
    let mut leases = Leases::new(2, 1);
    for id in [5, 6] {
        let grant = LeaseGrantRequest { ttl: 60, id };
        leases.apply_grant(&grant, 0).expect("grant");
    }
    let value = |i: usize| Bytes::from(format!("value-{i}-{}", "x".repeat(i % 200)));
    for round in 0..3 {
        let mut txn = store.write();
        for i in 0..2_000 {
            let lease = [0, 5, 6][(i + round) % 3];
            txn.put(format!("key/{i:05}").as_bytes(), value(i + round), lease);
        }
        leases.observe(&txn.end().events);
        let deleted = store
            .write()
            .delete_range(KeyRange::Interval(b"key/00100", Some(b"key/00300")));
        assert_eq!(deleted, 200, "round {round} deletes 200 keys");
        leases.observe(&store.take_events());
    }
    store
        .compact(store.current_revision() - 2)
        .expect("compact");
    store
        .write()
        .put(b"big", Bytes::from(vec![7u8; 3 * CHUNK_BYTES + 5]), 0);
    store.write().delete_range(KeyRange::Single(b"key/00007"));
    store.write().put(b"key/00007", value(7), 5);
    store.check_invariants();
    (store, leases)
}

fn job(store: &Store, leases: &Leases) -> SnapshotJob {
    let members = Membership::bootstrap(vec![Member {
        id: 1,
        name: "one".into(),
        ..Member::default()
    }]);
    let metadata = SnapshotMetadata {
        index: 42,
        term: 3,
        ..Default::default()
    };
    let alarms = crate::alarm::Alarms::default().encode_section();
    let mut auth = crate::auth::AuthStore::default();
    auth.role_add("reader").expect("a fresh role");
    let parts = crate::node::state_machine::SnapshotParts {
        store: store.view(),
        leases: leases.section(),
        members: members.encode(),
        alarms,
        auth: auth.encode_section(),
        v2: crate::v2::V2Store::default().encode_section(),
    };
    SnapshotJob::new(metadata, parts)
}

/// Accepts at most `step` bytes a call, and records the largest write asked of it.
struct Trickle {
    data: Vec<u8>,
    step: usize,
    largest: usize,
}

impl io::Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.largest = self.largest.max(buf.len());
        let n = buf.len().min(self.step);
        self.data.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_data_streams_exactly_the_whole_buffer_encoding() {
    let (store, leases) = used_store();
    let job = job(&store, &leases);
    let whole = job.encode_whole();
    assert!(
        whole.len() > 4 * CHUNK_BYTES,
        "the store spans several chunks"
    );
    assert_eq!(job.encoded_len(), whole.len() as u64, "encoded_len");
    assert_eq!(store.section_len(), store.encode_section().len() as u64);
    let mut out = Trickle {
        data: Vec::new(),
        step: 1000,
        largest: 0,
    };
    job.write_data(&mut out).expect("write to memory");
    assert!(
        out.data == whole,
        "streamed bytes differ from the whole encoding"
    );
    assert!(
        out.largest <= 3 * CHUNK_BYTES + 5,
        "a write of {} bytes: more than the largest value",
        out.largest
    );
    let sections = state_snapshot::decode_known(&out.data).expect("decodes");
    let restored = Store::decode_section(sections[&state_snapshot::SECTION_MVCC]).expect("mvcc");
    assert_eq!(restored.hash_kv(0), store.hash_kv(0), "restored store");
    let snapshot = job.into_snapshot();
    assert!(
        *snapshot.data == *whole,
        "into_snapshot holds the same bytes"
    );
    assert_eq!(snapshot.get_metadata().index, 42);
}

#[test]
fn a_view_keeps_its_revision_while_the_store_moves_on() {
    let (mut store, leases) = used_store();
    let job = job(&store, &leases);
    let before = job.encode_whole();
    let hash = store.hash_kv(0);
    for i in 0..3_000 {
        store.write().put(
            format!("key/{i:05}").as_bytes(),
            Bytes::from_static(b"new"),
            0,
        );
    }
    store.write().delete_range(KeyRange::Interval(b"", None));
    store.compact(store.current_revision()).expect("compact");
    store.check_invariants();
    assert_eq!(store.key_count(), 0, "everything deleted and compacted");
    let mut streamed = Vec::new();
    job.write_data(&mut streamed).expect("write to memory");
    assert!(streamed == before, "the view changed under later writes");
    assert_eq!(job.store.hash_kv(0), hash, "the view's hash");
    job.store.check_invariants();
}

#[test]
fn a_failing_writer_fails_the_write() {
    struct Full(usize);
    impl io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 < buf.len() {
                return Err(io::Error::other("no space left"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (store, leases) = used_store();
    let job = job(&store, &leases);
    let len = job.encoded_len() as usize;
    for room in [0, 10, CHUNK_BYTES + 1, len - 1] {
        let result = job.write_data(&mut Full(room));
        assert!(result.is_err(), "{room} bytes of room");
    }
    job.write_data(&mut Full(len)).expect("exactly enough room");
}

#[test]
fn a_job_moves_to_a_saver_thread() {
    fn send_static<T: Send + Sync + 'static>() {}
    send_static::<SnapshotJob>();
}
