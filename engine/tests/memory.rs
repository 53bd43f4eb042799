//! Heap bytes per key after a bulk load through the real apply path (issue 12, "Memory").
//!
//! Not part of the default test run (it loads a million keys):
//!
//! ```text
//! cargo test --release -p keel-engine --test memory -- --ignored --nocapture
//! KEYS=200000 VAL_SIZE=256 cargo test --release -p keel-engine --test memory -- --ignored --nocapture
//! ```
//!
//! A one-member [`Node`] is loaded with `KEYS` puts of 8-byte keys (big-endian numbers, in
//! order) and `VAL_SIZE`-byte values, proposed 100 at a time as 100 clients would, with the
//! server's snapshot policy (every 10 000 entries at least, once the log applied since the last
//! snapshot is as large as it). Persisted entries are dropped (a real WAL writes them to disk).
//!
//! A counting global allocator keeps, for every requested size up to [`SIZES`], the number of
//! live blocks, and remembers every live block of at least [`LARGE_MIN`] bytes. After the load
//! the live heap is split by component, each recognised by the size of its blocks (the tree
//! index's nodes and the change log's chunks are sized by calibration loads of a fresh index
//! and store, `KeyIndex` blocks and key and value buffers from the types and the load). "chunk" is glibc malloc's block (size + 8 rounded up to 16, at least 32
//! bytes): what the allocator really uses, before fragmentation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use keel_engine::mvcc::{Entry, Generation, KeyIndex, Store, TreeIndex};
use keel_engine::node::{Input, Node, Output, Request, Response, SNAPSHOT_LOG_PERCENT_DEFAULT};
use keel_proto::etcdserverpb::PutRequest;
use keel_proto::keelpb::{raft_request, RaftRequest};
use prost::Message as _;

mod common;
use common::TestConfig;

/// Requested sizes counted one by one; bigger blocks are counted together.
const SIZES: usize = 8192;
/// Blocks at least this big are remembered one by one (logs, snapshots, big vectors).
const LARGE_MIN: usize = 64 * 1024;
/// How many large blocks can be remembered at once.
const LARGE_SLOTS: usize = 1024;

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_CHUNK: AtomicUsize = AtomicUsize::new(0);
static BY_SIZE: [AtomicUsize; SIZES] = [const { AtomicUsize::new(0) }; SIZES];
static MID_BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGE_PTR: [AtomicUsize; LARGE_SLOTS] = [const { AtomicUsize::new(0) }; LARGE_SLOTS];
static LARGE_SIZE: [AtomicUsize; LARGE_SLOTS] = [const { AtomicUsize::new(0) }; LARGE_SLOTS];

/// glibc malloc's chunk for a request of `size` bytes on 64-bit Linux.
fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

fn note_alloc(ptr: *mut u8, size: usize) {
    LIVE_BYTES.fetch_add(size, Relaxed);
    LIVE_CHUNK.fetch_add(chunk(size), Relaxed);
    if size < SIZES {
        BY_SIZE[size].fetch_add(1, Relaxed);
    } else if size < LARGE_MIN {
        MID_BYTES.fetch_add(size, Relaxed);
    } else {
        for (p, s) in LARGE_PTR.iter().zip(&LARGE_SIZE) {
            if p.compare_exchange(0, ptr as usize, Relaxed, Relaxed)
                .is_ok()
            {
                s.store(size, Relaxed);
                return;
            }
        }
    }
}

fn note_free(ptr: *mut u8, size: usize) {
    LIVE_BYTES.fetch_sub(size, Relaxed);
    LIVE_CHUNK.fetch_sub(chunk(size), Relaxed);
    if size < SIZES {
        BY_SIZE[size].fetch_sub(1, Relaxed);
    } else if size < LARGE_MIN {
        MID_BYTES.fetch_sub(size, Relaxed);
    } else {
        for (p, s) in LARGE_PTR.iter().zip(&LARGE_SIZE) {
            if p.load(Relaxed) == ptr as usize {
                s.store(0, Relaxed);
                p.store(0, Relaxed);
                return;
            }
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            note_alloc(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(ptr, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            note_free(ptr, layout.size());
            note_alloc(new, new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live blocks by requested size (small ones) and the large blocks, at one moment.
struct HeapSnapshot {
    bytes: usize,
    chunk: usize,
    by_size: Vec<usize>,
    mid_bytes: usize,
    large: Vec<usize>,
}

fn heap() -> HeapSnapshot {
    HeapSnapshot {
        bytes: LIVE_BYTES.load(Relaxed),
        chunk: LIVE_CHUNK.load(Relaxed),
        by_size: BY_SIZE.iter().map(|c| c.load(Relaxed)).collect(),
        mid_bytes: MID_BYTES.load(Relaxed),
        large: LARGE_SIZE
            .iter()
            .map(|s| s.load(Relaxed))
            .filter(|s| *s > 0)
            .collect(),
    }
}

/// Sizes of the blocks `f` leaves live, by size, with their count.
fn new_blocks(f: impl FnOnce()) -> BTreeMap<usize, isize> {
    let before = heap().by_size;
    f();
    let after = heap().by_size;
    (0..SIZES)
        .filter(|&s| after[s] != before[s])
        .map(|s| (s, after[s] as isize - before[s] as isize))
        .collect()
}

/// The sizes of the tree index's leaf and branch nodes, from a calibration load of a fresh
/// index: the largest block a first key leaves is a leaf; the blocks of at least 256 B that
/// only many keys bring (and that are not leaves or change-log chunks) are branches.
fn tree_node_sizes(log_chunks: &[usize]) -> (usize, Vec<usize>) {
    let mut index = TreeIndex::default();
    let first = new_blocks(|| {
        index.update(b"k0000", |_, _| ());
    });
    let leaf = first
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, _)| s)
        .max()
        .unwrap_or(0);
    let more = new_blocks(|| {
        for i in 1..2000u32 {
            index.update(format!("k{i:04}").as_bytes(), |_, _| ());
        }
    });
    let branches = more
        .into_iter()
        .filter(|(s, n)| *n > 0 && *s >= 256 && *s != leaf && !log_chunks.contains(s))
        .map(|(s, _)| s)
        .collect();
    (leaf, branches)
}

/// The sizes of the change log's chunks: the blocks of at least 1 KiB that many puts to one
/// key leave more than once (the key's own entry vector is a single block).
fn log_chunk_sizes() -> Vec<usize> {
    let mut store = Store::default();
    let blocks = new_blocks(|| {
        for _ in 0..640 {
            store.write().put(b"k", Bytes::new(), 0);
        }
    });
    blocks
        .into_iter()
        .filter(|(s, n)| *n >= 2 && *s >= 1024)
        .map(|(s, _)| s)
        .collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Steps `node` until it has nothing more to say, doing what a driver would: persisted
/// batches are acknowledged (their entries are on disk, not in memory), snapshots are saved
/// (held in memory here; a real driver maps the file). Returns the replies.
fn drive(node: &mut Node) -> usize {
    let mut replies = 0;
    loop {
        let outputs = node.take_outputs();
        if outputs.is_empty() {
            return replies;
        }
        for out in outputs {
            match out {
                Output::Persist(batch) => node.step(Input::Persisted {
                    number: batch.number,
                }),
                Output::SaveSnapshot(job) => {
                    let snapshot = job.into_snapshot();
                    node.step(Input::SnapshotSaved { snapshot });
                }
                Output::Reply { result, .. } => {
                    assert!(matches!(result, Ok(Response::Put(_))), "put: {result:?}");
                    replies += 1;
                }
                Output::Fatal(why) => panic!("the member stopped: {why}"),
                Output::Send(m) => panic!("one member sends nothing, yet {m:?}"),
                Output::Watch(_) | Output::Members { .. } | Output::V2Events(_) => {}
            }
        }
    }
}

/// One row of the table: a component, its blocks' sizes, and its live bytes.
struct Row {
    name: String,
    blocks: usize,
    bytes: usize,
    chunk: usize,
}

/// Splits the small blocks of `heap` by the sizes in `labels` (first label wins); what no
/// label claims is listed by size when it is large enough to matter.
fn rows(heap: &HeapSnapshot, labels: &[(String, Vec<usize>)], keys: usize) -> Vec<Row> {
    let mut claimed = vec![false; SIZES];
    let mut out = Vec::new();
    for (name, sizes) in labels {
        let mut row = Row {
            name: name.clone(),
            blocks: 0,
            bytes: 0,
            chunk: 0,
        };
        for &s in sizes {
            if s >= SIZES || claimed[s] {
                continue;
            }
            claimed[s] = true;
            row.blocks += heap.by_size[s];
            row.bytes += heap.by_size[s] * s;
            row.chunk += heap.by_size[s] * chunk(s);
        }
        out.push(row);
    }
    for (s, &n) in heap.by_size.iter().enumerate() {
        if !claimed[s] && n * s >= keys.max(1) {
            out.push(Row {
                name: format!("other {s}-byte blocks"),
                blocks: n,
                bytes: n * s,
                chunk: n * chunk(s),
            });
        }
    }
    let rest: Vec<(usize, usize)> = (0..SIZES)
        .filter(|&s| !claimed[s] && heap.by_size[s] * s < keys.max(1))
        .map(|s| (s, heap.by_size[s]))
        .collect();
    out.push(Row {
        name: "other small blocks".into(),
        blocks: rest.iter().map(|(_, n)| n).sum(),
        bytes: rest.iter().map(|(s, n)| s * n).sum(),
        chunk: rest.iter().map(|(s, n)| chunk(*s) * n).sum(),
    });
    out.push(Row {
        name: format!("blocks of {SIZES} B .. 64 KiB"),
        blocks: 0,
        bytes: heap.mid_bytes,
        chunk: heap.mid_bytes,
    });
    out
}

fn print_table(title: &str, rows: &[Row], large: &[(String, usize)], keys: usize) {
    let per = |b: usize| b as f64 / keys as f64;
    println!("\n{title}");
    println!(
        "{:<58} {:>10} {:>10} {:>10} {:>12}",
        "component", "blocks", "B/key", "chunk B/key", "chunk MiB"
    );
    let mut total = (0, 0);
    for r in rows {
        total.0 += r.bytes;
        total.1 += r.chunk;
        println!(
            "{:<58} {:>10} {:>10.1} {:>10.1} {:>12.1}",
            r.name,
            r.blocks,
            per(r.bytes),
            per(r.chunk),
            r.chunk as f64 / 1048576.0
        );
    }
    for (name, size) in large {
        total.0 += size;
        total.1 += size;
        println!(
            "{:<58} {:>10} {:>10.1} {:>10.1} {:>12.1}",
            name,
            1,
            per(*size),
            per(*size),
            *size as f64 / 1048576.0
        );
    }
    println!(
        "{:<58} {:>10} {:>10.1} {:>10.1} {:>12.1}",
        "TOTAL",
        "",
        per(total.0),
        per(total.1),
        total.1 as f64 / 1048576.0
    );
    let mapped: usize = large
        .iter()
        .filter(|(name, _)| name.starts_with("newest snapshot"))
        .map(|(_, s)| s)
        .sum();
    println!(
        "{:<58} {:>10} {:>10.1} {:>10.1} {:>12.1}",
        "TOTAL without the snapshot's data",
        "",
        per(total.0 - mapped),
        per(total.1 - mapped),
        (total.1 - mapped) as f64 / 1048576.0
    );
}

/// The encoded raft entry of the put of key `i`, as the proposer encodes it.
fn entry_len(key: &[u8], value: &Bytes) -> usize {
    RaftRequest {
        member_id: 1,
        id: 1 << 40,
        auth: None,
        request: Some(raft_request::Request::Put(PutRequest {
            key: Bytes::copy_from_slice(key),
            value: value.clone(),
            ..Default::default()
        })),
    }
    .encoded_len()
}

/// The labels of the store's blocks for a load of `key_size`-byte keys and
/// `val_size`-byte values.
fn labels(key_size: usize, val_size: usize, value: &Bytes) -> Vec<(String, Vec<usize>)> {
    let log_chunks = log_chunk_sizes();
    let (leaf, branches) = tree_node_sizes(&log_chunks);
    let generation = std::mem::size_of::<Generation>();
    let entry = std::mem::size_of::<Entry>();
    let key_index = std::mem::size_of::<KeyIndex>();
    let raft_entry = entry_len(&vec![0xff; key_size], value);
    vec![
        (format!("tree index: leaf nodes ({leaf} B)"), vec![leaf]),
        (
            format!("tree index: branch nodes ({branches:?} B)"),
            branches,
        ),
        (format!("change log: chunks ({log_chunks:?} B)"), log_chunks),
        (
            format!("KeyIndex in its Arc (16 + {key_index} B)"),
            vec![16 + key_index],
        ),
        (
            format!("KeyIndex: Vec<Generation> ({generation} B per generation)"),
            vec![2 * generation, 4 * generation],
        ),
        (
            format!("KeyIndex: Vec<Entry> ({entry} B per entry)"),
            vec![entry, 2 * entry, 4 * entry],
        ),
        (
            format!("keys, Arc<[u8]> (16 + {key_size} B; before: Bytes data)"),
            vec![16 + key_size, key_size],
        ),
        (
            format!("value bytes, own block ({val_size} B)"),
            vec![val_size],
        ),
        (
            format!("raft entry data: raft log, and values' if sliced ({raft_entry} B ± 4)"),
            (raft_entry.saturating_sub(4)..=raft_entry + 4).collect(),
        ),
        ("bytes::Bytes shared headers (24 B)".into(), vec![24]),
    ]
}

#[test]
#[ignore = "loads a million keys; run by hand (see the module doc)"]
fn heap_bytes_per_key() {
    let keys = env_usize("KEYS", 1_000_000);
    let val_size = env_usize("VAL_SIZE", 256);
    let batch = env_usize("CLIENTS", 100);
    let value = Bytes::from((0..val_size).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
    let labels = labels(8, val_size, &value);

    let start = heap();
    let cfg = TestConfig::new(1, &[1]).snapshot_log_percent(SNAPSHOT_LOG_PERCENT_DEFAULT);
    let mut node = cfg.start(Default::default()).expect("the member starts");
    drive(&mut node);
    assert_eq!(node.status().leader, 1, "a lone member leads itself");
    let mut token = 0u64;
    let mut replies = 0;
    for chunk_start in (0..keys).step_by(batch) {
        for i in chunk_start..(chunk_start + batch).min(keys) {
            token += 1;
            let put = PutRequest {
                key: Bytes::copy_from_slice(&(i as u64).to_be_bytes()),
                value: value.clone(),
                ..Default::default()
            };
            node.step(Input::Request {
                token,
                request: Request::Put(put),
            });
        }
        replies += drive(&mut node);
    }
    assert_eq!(replies, keys, "every put answered");
    let store = node.store();
    assert_eq!(store.key_count(), keys, "every key stored");
    let loaded = heap();
    let payload = keys * (8 + val_size);
    let entry_slots: usize = store
        .index()
        .iter()
        .map(|(_, ki)| ki.entry_capacity())
        .sum();
    println!(
        "\n{keys} keys of 8 B with {val_size}-B values: payload {:.1} MiB; heap {:.1} MiB \
         requested, {:.1} MiB in malloc chunks; {:.1} B/key requested, {:.1} B/key chunks \
         ({:.2}x the payload); Entry slots per key {:.2}; size_of KeyIndex {} B",
        payload as f64 / 1048576.0,
        (loaded.bytes - start.bytes) as f64 / 1048576.0,
        (loaded.chunk - start.chunk) as f64 / 1048576.0,
        (loaded.bytes - start.bytes) as f64 / keys as f64,
        (loaded.chunk - start.chunk) as f64 / keys as f64,
        (loaded.chunk - start.chunk) as f64 / payload as f64,
        entry_slots as f64 / keys as f64,
        std::mem::size_of::<KeyIndex>(),
    );
    let raft_entry_size = std::mem::size_of::<keel_engine::raftpb::Entry>();
    let large: Vec<(String, usize)> = loaded
        .large
        .iter()
        .map(|&s| {
            let name = if s % raft_entry_size == 0 && (s / raft_entry_size) < 4 * 10_000 {
                format!(
                    "raft log in memory: Vec<Entry> of {} slots",
                    s / raft_entry_size
                )
            } else if s % 56 == 0 && (s / 56).is_power_of_two() {
                format!("MVCC change log: VecDeque of {} 56-B slots", s / 56)
            } else if s > 1 << 20 {
                format!("newest snapshot's data, {s} B (the server maps its file)")
            } else {
                format!("large block of {s} B")
            };
            (name, s)
        })
        .collect();
    print_table(
        "live heap after the load, by component",
        &rows(&loaded, &labels, keys),
        &large,
        keys,
    );
}
