//! What taking a state snapshot costs at scale: the store's copy for a snapshot, puts with and
//! without a copy held, the heap the store takes per key, and the streaming encoder.
//!
//! ```sh
//! cargo run --release -p keel-engine --example snapshot_cow            # 1M keys
//! KEYS=100000 PUTS=50000 cargo run --release -p keel-engine --example snapshot_cow
//! ```
//!
//! Keys are 8 bytes (big-endian numbers, loaded in order), values 256 bytes, one put per
//! write transaction, as in benches/scale-side-by-side.sh. Heap figures come from a counting
//! global allocator (requested bytes, not the allocator's rounding).
// A benchmark reads the wall clock; the engine's library code never does.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use keel_engine::lease::Leases;
use keel_engine::mvcc::Store;
use keel_engine::sink::{CrcWriter, Sink};
use keel_proto::etcdserverpb::LeaseGrantRequest;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const VALUE_BYTES: usize = 256;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: a fixed sequence of key numbers for the random puts.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn value(i: u64) -> Bytes {
    let mut v = vec![b'v'; VALUE_BYTES];
    v[..8].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

/// Random puts over the loaded keys; returns puts per second.
fn random_puts(store: &mut Store, keys: u64, puts: u64, seed: u64) -> f64 {
    let mut state = seed;
    let values: Vec<Bytes> = (0..1024).map(value).collect();
    let started = Instant::now();
    for i in 0..puts {
        let key = next(&mut state) % keys;
        let v = values[(i % 1024) as usize].clone();
        store.write().put(&key.to_be_bytes(), v, 0);
    }
    puts as f64 / started.elapsed().as_secs_f64()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Discards what is written, counting it.
struct Discard(u64);

impl std::io::Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {
    let keys = env("KEYS", 1_000_000);
    let puts = env("PUTS", 200_000);
    let base = LIVE.load(Ordering::Relaxed);
    let mut store = Store::new();
    let started = Instant::now();
    for i in 0..keys {
        store.write().put(&i.to_be_bytes(), value(i), 0);
    }
    let load_s = started.elapsed().as_secs_f64();
    let loaded = LIVE.load(Ordering::Relaxed) - base;
    let payload = keys as usize * (8 + VALUE_BYTES);
    println!(
        "load: {keys} keys in {load_s:.2} s ({:.0} puts/s); heap {:.1} MiB = {:.1} B/key \
         ({:.1} B/key beyond the 264 B of key and value)",
        keys as f64 / load_s,
        mib(loaded),
        loaded as f64 / keys as f64,
        (loaded - payload) as f64 / keys as f64,
    );
    let started = Instant::now();
    let stats = store.compact(store.current_revision()).expect("compact");
    let compact_s = started.elapsed().as_secs_f64();
    let compacted = LIVE.load(Ordering::Relaxed) - base;
    println!(
        "compaction visiting every key ({} keys): {:.0} ms",
        stats.keys_visited,
        compact_s * 1000.0
    );
    println!(
        "compacted (index only, log dropped): heap {:.1} MiB = {:.1} B/key ({:.1} B/key \
         beyond key and value)",
        mib(compacted),
        compacted as f64 / keys as f64,
        (compacted - payload) as f64 / keys as f64,
    );
    let free = random_puts(&mut store, keys, puts, 0x9e37_79b9_7f4a_7c15);
    println!("random puts, no copy held: {free:.0} puts/s");

    let before = LIVE.load(Ordering::Relaxed);
    let calls = CALLS.load(Ordering::Relaxed);
    let started = Instant::now();
    let copy = store.clone();
    let clone_s = started.elapsed().as_secs_f64();
    println!(
        "store.clone() for a snapshot: {:.3} ms, {} allocations, {:.1} MiB",
        clone_s * 1000.0,
        CALLS.load(Ordering::Relaxed) - calls,
        mib(LIVE.load(Ordering::Relaxed) - before),
    );
    let before = LIVE.load(Ordering::Relaxed);
    let held = random_puts(&mut store, keys, puts, 0x2545_f491_4f6c_dd1d);
    println!(
        "random puts, copy held: {held:.0} puts/s ({:.2}× no copy); heap grew {:.1} MiB",
        held / free,
        mib(LIVE.load(Ordering::Relaxed).saturating_sub(before)),
    );
    encode(&copy);
    drop(copy);
    let again = random_puts(&mut store, keys, puts, 0x1234_5678);
    println!("random puts after the copy is dropped: {again:.0} puts/s");
    for i in 0..keys {
        store.write().put(&i.to_be_bytes(), value(i), 0);
    }
    let started = Instant::now();
    let stats = store.compact(store.current_revision()).expect("compact");
    println!(
        "compaction after overwriting every key ({} keys, {} revisions freed): {:.0} ms",
        stats.keys_visited,
        stats.revisions_freed,
        started.elapsed().as_secs_f64() * 1000.0
    );
    drop(store);
    leases(env("LEASES", 100_000), env("LEASE_KEYS", 10));
}

/// What encoding the lease section costs on the driver loop, `count` leases with
/// `keys_each` keys attached to each.
fn leases(count: u64, keys_each: u64) {
    let mut leases = Leases::new(2, 1);
    let mut store = Store::new();
    for id in 1..=count as i64 {
        let grant = LeaseGrantRequest { ttl: 600, id };
        leases.apply_grant(&grant, 0).expect("grant");
        let mut txn = store.write();
        for k in 0..keys_each {
            let key = (id as u64 * keys_each + k).to_be_bytes();
            txn.put(&key, Bytes::from_static(b"v"), id);
        }
        leases.observe(&txn.end().events);
    }
    let started = Instant::now();
    let view = leases.section();
    let view_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let section = view.encode();
    println!(
        "lease section, {count} leases with {} keys: view taken in {:.3} ms; encoded (off \
         the loop) in {:.1} ms ({:.1} MiB)",
        count * keys_each,
        view_s * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0,
        mib(section.len()),
    );
}

/// The streaming encoder: the size walk and the write, with the heap they add.
fn encode(copy: &Store) {
    let before = LIVE.load(Ordering::Relaxed);
    let calls = CALLS.load(Ordering::Relaxed);
    let started = Instant::now();
    let len = copy.section_len();
    let len_s = started.elapsed().as_secs_f64();
    let len_calls = CALLS.load(Ordering::Relaxed) - calls;
    let started = Instant::now();
    let mut out = Discard(0);
    let mut w = CrcWriter::new(&mut out);
    copy.write_section(&mut w).expect("write");
    let peak = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    w.finish().expect("finish");
    let write_s = started.elapsed().as_secs_f64();
    assert_eq!(out.0, len + 4, "streamed the size walked");
    println!(
        "mvcc section {:.1} MiB: size walk {:.0} ms ({len_calls} allocations), streamed in \
         {:.0} ms ({:.0} MiB/s) holding {:.1} KiB",
        mib(len as usize),
        len_s * 1000.0,
        write_s * 1000.0,
        mib(len as usize) / write_s,
        peak as f64 / 1024.0,
    );
    let started = Instant::now();
    let whole = copy.encode_section();
    println!(
        "whole-buffer encode_section: {:.0} ms into a {:.1} MiB buffer",
        started.elapsed().as_secs_f64() * 1000.0,
        mib(whole.len())
    );
    let mut counter = keel_engine::sink::Counter::default();
    let Ok(()) = counter.put(&whole);
    assert_eq!(counter.0, len, "the two encoders agree on the size");
    let started = Instant::now();
    let decoded = Store::decode_section(&whole).expect("the section decodes");
    println!(
        "decode_section (a restart's or a follower's install): {:.0} ms, {} keys",
        started.elapsed().as_secs_f64() * 1000.0,
        decoded.key_count()
    );
}
