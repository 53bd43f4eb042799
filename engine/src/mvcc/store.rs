//! The multi-version store: every version of every key, a revision counter, write transactions.
//!
//! The store starts at revision 1 with nothing in it (as etcd does). A write transaction's
//! changes all get the same main revision (`current + 1`) and increasing sub revisions; a
//! transaction that changes nothing leaves the revision alone. Reads inside a write
//! transaction see its earlier writes.
//!
//! ```
//! use bytes::Bytes;
//! use keel_engine::mvcc::{KeyRange, RangeOptions, Store};
//! let mut store = Store::default();
//! assert_eq!(store.current_revision(), 1);
//! let mut txn = store.write();
//! txn.put(b"a", Bytes::from_static(b"1"), 0);
//! txn.put(b"b", Bytes::from_static(b"2"), 0);
//! // The txn reads its own writes, at the revision it is writing.
//! let seen = txn.range(KeyRange::from_wire(b"a", b"\0"), &RangeOptions::default()).unwrap();
//! assert_eq!((seen.count, seen.revision), (2, 2));
//! let outcome = txn.end();
//! assert_eq!(outcome.revision, 2);
//! assert_eq!(outcome.events.len(), 2); // PUT a (2.0), PUT b (2.1)
//! // A txn that deletes nothing does not bump the revision.
//! let mut txn = store.write();
//! assert_eq!(txn.delete_range(KeyRange::Single(b"zzz")), 0);
//! assert_eq!(txn.end().revision, 2);
//! // Reads at an old revision see the old state.
//! store.write().put(b"a", Bytes::from_static(b"3"), 0);
//! let old = store.range(KeyRange::Single(b"a"), &RangeOptions { revision: 2, ..Default::default() })
//!     .unwrap();
//! assert_eq!(old.kvs[0].value, Bytes::from_static(b"1"));
//! assert_eq!(old.revision, 3); // the header revision is always the current one
//! ```

use bytes::Bytes;
use imbl::Vector;

use super::key_index::{Found, KeyIndex};
use super::revision::Revision;
use super::tree_index::{Key, KeyRange, TreeIndex};
use crate::error::Error;
use keel_proto::mvccpb::event::EventType;
pub use keel_proto::mvccpb::{Event, KeyValue};

/// Builds the wire `KeyValue` for what a read found (the key copied, the value's refcount
/// bumped).
fn kv_from_found(key: &[u8], found: Found<'_>) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: found.created.main,
        mod_revision: found.entry.revision.main,
        version: found.version,
        value: found.entry.value.clone(),
        lease: found.entry.lease,
    }
}

/// A PUT event for `kv`. `prev_kv` is left `None` by the store (watchers that want it read
/// it with [`Store::kv_at`] at `mod_revision - 1`).
pub fn put_event(kv: KeyValue) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

/// A DELETE event: as in etcd, its kv carries only the key and the deleting revision.
pub fn delete_event(key: Bytes, revision: i64) -> Event {
    let kv = KeyValue {
        key,
        mod_revision: revision,
        ..Default::default()
    };
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

/// Options for a range read (etcd's `mvcc.RangeOptions`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Return at most this many kvs; ≤ 0 means no limit. `count` ignores it.
    pub limit: i64,
    /// Read at this revision; ≤ 0 means the current one.
    pub revision: i64,
    /// Only count, return no kvs.
    pub count_only: bool,
}

/// The answer to a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// The kvs, in key order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds at the read revision, ignoring `limit`.
    pub count: i64,
    /// The store's current revision (not the read revision), as etcd reports it.
    pub revision: i64,
}

/// What a finished write transaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnOutcome {
    /// The store's revision after the txn (unchanged if it changed nothing).
    pub revision: i64,
    /// The events the txn produced, in sub-revision order.
    pub events: Vec<Event>,
}

/// One change in revision order, kept from the compaction revision on: lets compaction visit
/// only keys changed since the last one, and lets watchers catch up (a delete event needs only
/// the key and revision, so even a tombstone compaction freed can still be reported).
///
/// 32 bytes: the sub revision is held in 32 bits (a txn would need 4 billion changes to
/// overflow it; [`LogEntry::new`] checks), next to the tombstone flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LogEntry {
    main: i64,
    sub: u32,
    pub(super) tombstone: bool,
    pub(super) key: Key,
}

impl LogEntry {
    pub(super) fn new(revision: Revision, key: Key, tombstone: bool) -> LogEntry {
        LogEntry::try_new(revision, key, tombstone)
            .unwrap_or_else(|| panic!("sub revision {} outside 0..2^32", revision.sub))
    }

    /// [`LogEntry::new`], or `None` if the sub revision does not fit (a damaged section).
    pub(super) fn try_new(revision: Revision, key: Key, tombstone: bool) -> Option<LogEntry> {
        Some(LogEntry {
            main: revision.main,
            sub: u32::try_from(revision.sub).ok()?,
            tombstone,
            key,
        })
    }

    /// The revision of the change.
    pub(super) fn revision(&self) -> Revision {
        Revision::new(self.main, i64::from(self.sub))
    }
}

/// What one stored revision costs towards the quota beyond its key and value bytes: about
/// what keel's memory holds for it (the entry in its key's history, revision and lease, and its
/// change-log record, each with its `Bytes` handle), rounded up.
pub const REVISION_OVERHEAD_BYTES: u64 = 128;

/// The quota bytes of one stored revision of a `key_len`-byte key holding `value_len` bytes
/// (a tombstone holds none): `key_len + value_len + REVISION_OVERHEAD_BYTES`.
pub fn revision_bytes(key_len: usize, value_len: usize) -> u64 {
    key_len as u64 + value_len as u64 + REVISION_OVERHEAD_BYTES
}

/// The MVCC store.
///
/// Its index and change log are persistent structures ([`TreeIndex`], [`imbl::Vector`]), so
/// [`Store::view`] (and [`Clone`]) is O(1): a state snapshot holds a view of the store as of
/// one revision while writes go on, and each write copies only the few nodes it changes that
/// a view still shares.
#[derive(Clone, Debug)]
pub struct Store {
    pub(super) index: TreeIndex,
    pub(super) log: Vector<LogEntry>,
    pub(super) current_revision: i64,
    /// -1 until the first compaction, as in etcd (so `compact(0)` once succeeds).
    pub(super) compact_revision: i64,
    pub(super) stored_revisions: u64,
    /// [`revision_bytes`] summed over the stored revisions: kept up to date by every write
    /// and compaction (O(1) per revision written or freed), never recomputed by a walk.
    pub(super) stored_bytes: u64,
    /// Events of the last write applied through `crate::apply` (replaced by the next one).
    pub(super) applied_events: Vec<Event>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            index: TreeIndex::default(),
            log: Vector::new(),
            current_revision: 1,
            compact_revision: -1,
            stored_revisions: 0,
            stored_bytes: 0,
            applied_events: Vec::new(),
        }
    }
}

impl Store {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        Store::default()
    }

    /// An O(1) copy-on-write view of the store as it is now: reads and encodes exactly as
    /// this store does at this moment, whatever is written to it afterwards. It shares every
    /// node until one side changes it; it carries no applied events.
    pub fn view(&self) -> Store {
        Store {
            index: self.index.clone(),
            log: self.log.clone(),
            current_revision: self.current_revision,
            compact_revision: self.compact_revision,
            stored_revisions: self.stored_revisions,
            stored_bytes: self.stored_bytes,
            applied_events: Vec::new(),
        }
    }

    /// The number of logged changes before the first for which `pred` is false (the log is
    /// in revision order, so `pred` must hold for a prefix): O(log² entries).
    pub(super) fn log_partition_point(&self, mut pred: impl FnMut(&LogEntry) -> bool) -> usize {
        let found = self.log.binary_search_by(|e| {
            if pred(e) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        found.unwrap_or_else(|at| at)
    }

    /// Takes the events of the last write applied through [`crate::apply`] (`put`,
    /// `delete_range`, `txn`). Each such write replaces them, so the buffer holds at most one
    /// write's events: drain it after every applied entry that should reach watchers.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.applied_events)
    }

    /// Records `events` as the last applied write's (see [`Store::take_events`]).
    pub fn set_applied_events(&mut self, events: Vec<Event>) {
        self.applied_events = events;
    }

    /// The revision of the last write transaction that changed something (1 when empty).
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction, -1 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Number of keys with any stored history (deleted keys not yet compacted included).
    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// Number of stored revisions (versions and tombstones) over all keys.
    pub fn stored_revision_count(&self) -> u64 {
        self.stored_revisions
    }

    /// The bytes the store with its uncompacted history counts towards the quota
    /// (`--quota-backend-bytes`): [`revision_bytes`] summed over every stored revision, puts
    /// and tombstones, each `key + value + REVISION_OVERHEAD_BYTES`. O(1): maintained by every
    /// write and compaction. A compaction lowers it at once (keel has no free pages to
    /// defragment); it is identical on every member at the same applied index.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use keel_engine::mvcc::{Store, REVISION_OVERHEAD_BYTES};
    /// let mut store = Store::default();
    /// store.write().put(b"k", Bytes::from_static(b"12345"), 0); // rev 2
    /// store.write().put(b"k", Bytes::from_static(b"12345"), 0); // rev 3
    /// assert_eq!(store.quota_bytes(), 2 * (1 + 5 + REVISION_OVERHEAD_BYTES));
    /// store.compact(3).unwrap(); // frees rev 2
    /// assert_eq!(store.quota_bytes(), 1 + 5 + REVISION_OVERHEAD_BYTES);
    /// ```
    pub fn quota_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// The tree index, for inspection.
    pub fn index(&self) -> &TreeIndex {
        &self.index
    }

    /// Starts a write transaction.
    pub fn write(&mut self) -> WriteTxn<'_> {
        let begin_revision = self.current_revision;
        WriteTxn {
            store: self,
            begin_revision,
            changes: 0,
            events: Vec::new(),
        }
    }

    /// Reads `range` at `options.revision` (etcd's `rangeKeys`). Errors: `FutureRev` if the
    /// revision is after the current one, `Compacted` if it is before the compaction revision
    /// (reading exactly at the compaction revision works, as in etcd).
    pub fn range(&self, range: KeyRange<'_>, options: &RangeOptions) -> Result<RangeResult, Error> {
        let current = self.current_revision;
        if options.revision > current {
            return Err(Error::FutureRev);
        }
        let at = if options.revision <= 0 {
            current
        } else {
            options.revision
        };
        if at < self.compact_revision {
            return Err(Error::Compacted);
        }
        let limit = usize::try_from(options.limit)
            .ok()
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut kvs = Vec::new();
        let mut count: i64 = 0;
        for (key, key_index) in self.index.range(range) {
            let found = if at == current {
                key_index.current()
            } else {
                key_index.get(at)
            };
            let Some(found) = found else { continue };
            count += 1;
            if !options.count_only && kvs.len() < limit {
                kvs.push(kv_from_found(key, found));
            }
        }
        Ok(RangeResult {
            kvs,
            count,
            revision: current,
        })
    }

    /// `key`'s state at main revision `at` (≤ 0: current), if it existed then and the revision
    /// needed has not been compacted away.
    pub fn kv_at(&self, key: &[u8], at: i64) -> Option<KeyValue> {
        let (stored, key_index) = self.index.range(KeyRange::Single(key)).next()?;
        let found = if at <= 0 || at == self.current_revision {
            key_index.current()
        } else {
            key_index.get(at)
        };
        found.map(|found| kv_from_found(stored, found))
    }

    /// Events with main revision in `[from, to]`, at most `max` of them, in revision order:
    /// what a watcher catching up from `from` needs. `Compacted` if `from` is before the
    /// compaction revision (events at the compaction revision itself, deletes included, are
    /// still served).
    pub fn events(&self, from: i64, to: i64, max: usize) -> Result<Vec<Event>, Error> {
        if from < self.compact_revision {
            return Err(Error::Compacted);
        }
        let start = self.log_partition_point(|e| e.revision().main < from);
        let mut out = Vec::new();
        for entry in self
            .log
            .focus()
            .narrow(start..)
            .into_iter()
            .take_while(|e| e.revision().main <= to)
            .take(max)
        {
            out.extend(self.event_for(entry));
        }
        Ok(out)
    }

    /// The event for a logged change; `None` only for a put that compaction freed because a
    /// later change in the same txn, at the compaction revision, superseded it.
    fn event_for(&self, entry: &LogEntry) -> Option<Event> {
        let main = entry.revision().main;
        if entry.tombstone {
            return Some(delete_event(Bytes::copy_from_slice(&entry.key), main));
        }
        let found = self
            .index
            .get(&entry.key)
            .and_then(|ki| ki.find(entry.revision()));
        assert!(
            found.is_some() || main == self.compact_revision,
            "logged put {} of {:?} is stored",
            entry.revision(),
            entry.key
        );
        found.map(|f| put_event(kv_from_found(&entry.key, f)))
    }
}

/// A write transaction: all its changes share one main revision. Changes are applied to the
/// store as they are made (callers validate first, so a txn never needs rolling back); the
/// revision moves on at the first change.
#[derive(Debug)]
pub struct WriteTxn<'s> {
    store: &'s mut Store,
    begin_revision: i64,
    changes: i64,
    events: Vec<Event>,
}

impl WriteTxn<'_> {
    /// The revision reads inside this txn see: the begin revision, plus one once it changed
    /// something.
    pub fn revision(&self) -> i64 {
        assert!(
            self.store.current_revision == self.begin_revision + i64::from(self.changes > 0),
            "the store's revision moved under a txn begun at {}",
            self.begin_revision
        );
        self.store.current_revision
    }

    /// The store as this txn sees it (its own writes included).
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Number of changes made so far.
    pub fn changes(&self) -> i64 {
        self.changes
    }

    /// Checks that the store still stands where this txn left it and that `revision` (the
    /// next one this txn writes) was never used: the store's revision only moves forward.
    fn assert_fresh(&self, revision: Revision) {
        let store = &*self.store;
        assert_eq!(
            store.current_revision,
            self.begin_revision + i64::from(self.changes > 0),
            "the store's revision moved under a txn begun at {}",
            self.begin_revision
        );
        assert_eq!(
            revision.main,
            self.begin_revision + 1,
            "a txn writes one main revision"
        );
        if let Some(last) = store.log.back() {
            assert!(
                last.revision() < revision,
                "revision {revision} reused: the log already holds {}",
                last.revision()
            );
        }
    }

    fn next_revision(&mut self) -> Revision {
        let revision = Revision::new(self.begin_revision + 1, self.changes);
        self.assert_fresh(revision);
        self.changes += 1;
        self.store.current_revision = revision.main;
        revision
    }

    /// Puts `value` at `key` with `lease`; returns the txn's main revision.
    pub fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> i64 {
        let revision = self.next_revision();
        let store = &mut *self.store;
        let (stored_key, created, version) = store.index.update(key, |stored, key_index| {
            key_index.put(revision, value.clone(), lease);
            let (created, version) = key_index
                .current()
                .map(|found| (found.created.main, found.version))
                .unwrap_or_else(|| unreachable!("just put"));
            (stored.clone(), created, version)
        });
        store.stored_revisions += 1;
        store.stored_bytes += revision_bytes(stored_key.len(), value.len());
        store
            .log
            .push_back(LogEntry::new(revision, stored_key, false));
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: created,
            mod_revision: revision.main,
            version,
            value,
            lease,
        };
        self.events.push(put_event(kv));
        revision.main
    }

    /// Deletes every key in `range` that exists; returns how many.
    pub fn delete_range(&mut self, range: KeyRange<'_>) -> i64 {
        let main = self.begin_revision + 1;
        // Later deletes of this call take later subs of the same main.
        self.assert_fresh(Revision::new(main, self.changes));
        let mut deleted: i64 = 0;
        let store = &mut *self.store;
        for key in store.index.keys_where(range, KeyIndex::is_alive) {
            let revision = Revision::new(main, self.changes);
            let tombstoned = store
                .index
                .get_mut(&key)
                .is_some_and(|key_index| key_index.tombstone(revision));
            assert!(tombstoned, "a live key can be tombstoned");
            self.changes += 1;
            deleted += 1;
            store.stored_revisions += 1;
            store.stored_bytes += revision_bytes(key.len(), 0);
            self.events
                .push(delete_event(Bytes::copy_from_slice(&key), main));
            store.log.push_back(LogEntry::new(revision, key, true));
        }
        if deleted > 0 {
            store.current_revision = main;
        }
        deleted
    }

    /// Reads as [`Store::range`] does, seeing this txn's writes.
    pub fn range(&self, range: KeyRange<'_>, options: &RangeOptions) -> Result<RangeResult, Error> {
        self.store.range(range, options)
    }

    /// Finishes the txn. Dropping it without calling `end` keeps its changes but loses the
    /// events.
    pub fn end(self) -> TxnOutcome {
        TxnOutcome {
            revision: self.store.current_revision,
            events: self.events,
        }
    }
}
