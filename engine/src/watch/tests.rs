//! The hub driven directly with a store: `check_invariants` holds through random use, and
//! catches each kind of corruption it claims to catch.

use bytes::Bytes;
use keel_proto::etcdserverpb::{WatchCreateRequest, WatchResponse};

use super::watcher::NONE;
use super::{HeaderInfo, WatchHub, WatchInput, WatchOutput, CONTROL_QUEUE_MAX};
use crate::mvcc::{KeyRange, Store};
use crate::rng::SplitMix64;

const HEADER: HeaderInfo = HeaderInfo {
    cluster_id: 1,
    member_id: 2,
    raft_term: 3,
};

fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: Bytes::from(key.to_owned()),
        range_end: Bytes::from(end.to_owned()),
        start_revision: start,
        ..Default::default()
    }
}

fn watch(hub: &mut WatchHub, store: &Store, stream: u64, request: WatchCreateRequest) {
    hub.input(WatchInput::Create { stream, request }, store, HEADER);
}

fn put(hub: &mut WatchHub, store: &mut Store, key: &str) {
    let mut txn = store.write();
    txn.put(key.as_bytes(), Bytes::from_static(b"v"), 0);
    let events = txn.end().events;
    hub.notify(&events, store, HEADER);
}

fn sent(outputs: &[WatchOutput]) -> Vec<&WatchResponse> {
    outputs
        .iter()
        .filter_map(|o| match o {
            WatchOutput::Send(_, r) => Some(r),
            WatchOutput::Close(..) => None,
        })
        .collect()
}

/// A hub with watchers in every state: synced, unsynced (historical start and fallen
/// behind), prev_kv, ranged and single-key, on four streams.
fn busy_hub() -> (WatchHub, Store) {
    let (mut hub, mut store) = (WatchHub::new(), Store::new());
    hub.set_stream_window(2);
    for i in 0..5 {
        put(&mut hub, &mut store, &format!("k{i}"));
    }
    watch(&mut hub, &store, 1, create("k1", "", 0));
    watch(&mut hub, &store, 1, create("k", "l", 0));
    watch(&mut hub, &store, 2, create("k2", "", 2));
    let mut with_prev = create("k", "\0", 0);
    with_prev.prev_kv = true;
    watch(&mut hub, &store, 3, with_prev);
    watch(&mut hub, &store, 4, create("z", "", 0));
    watch(&mut hub, &store, 4, create("k3", "k4", 0));
    for _ in 0..3 {
        put(&mut hub, &mut store, "k1"); // streams 1 and 3 run out of credit
    }
    hub.check_invariants();
    (hub, store)
}

/// One random step of a client, a writer, the compactor or the node.
fn random_step(hub: &mut WatchHub, store: &mut Store, rng: &mut SplitMix64) {
    let stream = rng.below(4);
    let key = format!("k{}", rng.below(6));
    match rng.below(12) {
        0..=2 => {
            let mut request = match rng.below(3) {
                0 => create(&key, "", 0),
                1 => create(&key, &format!("k{}", rng.below(7)), 0),
                _ => create(&key, "\0", 0),
            };
            let back = rng.below(8) as i64;
            request.start_revision = (store.current_revision() - back).max(0);
            request.prev_kv = rng.below(2) == 0;
            request.progress_notify = rng.below(2) == 0;
            request.fragment = rng.below(2) == 0;
            request.filters = vec![rng.below(3) as i32];
            request.watch_id = rng.below(3) as i64;
            watch(hub, store, stream, request);
        }
        3 | 4 => put(hub, store, &key),
        5 => {
            let mut txn = store.write();
            txn.delete_range(KeyRange::Single(key.as_bytes()));
            let events = txn.end().events;
            hub.notify(&events, store, HEADER);
        }
        6 => {
            let (from, to) = (store.compact_revision(), store.current_revision());
            let _ = store.compact((from + to + 1) / 2);
        }
        7 => {
            let watch_id = rng.below(4) as i64;
            hub.input(WatchInput::Cancel { stream, watch_id }, store, HEADER);
        }
        8 | 9 => {
            let responses = rng.below(4) as u32;
            hub.input(WatchInput::Credit { stream, responses }, store, HEADER);
        }
        10 => match rng.below(4) {
            0 => hub.input(WatchInput::Close { stream }, store, HEADER),
            1 => hub.input(WatchInput::Progress { stream }, store, HEADER),
            2 => hub.tick(rng.below(1_000_000), store, HEADER),
            _ => hub.desync_all(store.current_revision() + 1),
        },
        _ => hub.catch_up(store, HEADER),
    }
}

#[test]
fn invariants_hold_through_random_use() {
    for seed in 0..40 {
        let mut rng = SplitMix64::new(seed);
        let (mut hub, mut store) = (WatchHub::new(), Store::new());
        hub.set_stream_window(1 + rng.below(4) as u32);
        hub.set_progress_interval_ms(1000);
        hub.set_fragment_bytes(40);
        for _ in 0..400 {
            random_step(&mut hub, &mut store, &mut rng);
            hub.check_invariants();
            hub.take_outputs();
        }
    }
}

#[test]
fn invariants_hold_on_the_busy_hub_and_after_closing_everything() {
    let (mut hub, mut store) = busy_hub();
    assert!(
        hub.unsynced_count() >= 2,
        "stream 2 is historical, stream 1 fell behind"
    );
    for stream in 1..=4 {
        hub.input(
            WatchInput::Credit {
                stream,
                responses: 10,
            },
            &store,
            HEADER,
        );
        hub.catch_up(&store, HEADER);
        hub.check_invariants();
    }
    hub.desync_all(store.current_revision() + 1);
    hub.check_invariants();
    put(&mut hub, &mut store, "k1");
    for stream in 1..=4 {
        hub.input(WatchInput::Close { stream }, &store, HEADER);
        hub.check_invariants();
    }
    assert_eq!((hub.watcher_count(), hub.stream_count()), (0, 0));
    assert!(!hub.wants_prev_kv());
}

/// A client that creates watches without reading: the created response that overflows the
/// control queue closes the stream, and the watcher it was for goes with it.
#[test]
fn a_create_that_overflows_the_control_queue_closes_the_stream_cleanly() {
    let (mut hub, store) = (WatchHub::new(), Store::new());
    hub.set_stream_window(1);
    let shared = 0;
    watch(&mut hub, &store, shared, create("a", "", 0));
    // One created response goes out, CONTROL_QUEUE_MAX queue, the next one overflows.
    for _ in 0..CONTROL_QUEUE_MAX + 2 {
        watch(&mut hub, &store, 9, create("a", "", 0));
    }
    let outputs = hub.take_outputs();
    assert!(outputs.contains(&WatchOutput::Close(9, super::ERR_STREAM_NOT_READING)));
    assert_eq!(
        sent(&outputs).len(),
        2,
        "one created each, before credit ran out"
    );
    assert_eq!((hub.watcher_count(), hub.stream_count()), (1, 1));
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "not at its position")]
fn a_synced_watcher_out_of_its_place_is_caught() {
    let (mut hub, _) = busy_hub();
    let (w, _) = hub
        .slab
        .iter()
        .find(|(_, w)| w.is_synced())
        .expect("a synced watcher");
    hub.slab.get_mut(w).pos += 1;
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "position")]
fn a_synced_list_entry_without_its_watcher_is_caught() {
    let (mut hub, _) = busy_hub();
    let (w, _) = hub
        .slab
        .iter()
        .find(|(_, w)| w.is_synced())
        .expect("a synced watcher");
    let stream = hub.slab.get(w).stream;
    hub.slab.get_mut(w).pos = NONE; // the group's list still names it
    hub.unsynced.push_back(w);
    hub.streams.get_mut(&stream).expect("its stream").unsynced += 1;
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "unsynced watcher count")]
fn a_wrong_per_stream_unsynced_count_is_caught() {
    let (mut hub, _) = busy_hub();
    let s = hub.streams.get_mut(&2).expect("stream 2");
    s.unsynced -= 1;
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "does not map watch")]
fn a_watcher_missing_from_its_stream_is_caught() {
    let (mut hub, _) = busy_hub();
    let s = hub.streams.get_mut(&3).expect("stream 3");
    s.watchers.clear();
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "queued twice")]
fn a_watcher_queued_twice_is_caught() {
    let (mut hub, _) = busy_hub();
    let w = *hub.unsynced.front().expect("an unsynced watcher");
    hub.unsynced.push_back(w);
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "prev_kv watcher count")]
fn a_wrong_prev_kv_count_is_caught() {
    let (mut hub, _) = busy_hub();
    hub.prev_kv_watchers += 1;
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "control responses wait although there is credit")]
fn credit_beside_queued_control_responses_is_caught() {
    let (mut hub, _) = busy_hub();
    let s = hub.streams.get_mut(&1).expect("stream 1");
    s.control.push_back(WatchResponse::default());
    s.credit = 1;
    hub.check_invariants();
}

#[test]
#[should_panic(expected = "goes below zero")]
fn freeing_an_unsynced_watcher_its_stream_did_not_count_panics() {
    let (mut hub, store) = busy_hub();
    let s = hub.streams.get_mut(&2).expect("stream 2");
    s.unsynced = 0;
    hub.input(
        WatchInput::Cancel {
            stream: 2,
            watch_id: 0,
        },
        &store,
        HEADER,
    );
}
