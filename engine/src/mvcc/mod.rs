//! Multi-version concurrency control, etcd style.
//!
//! - [`revision`]: `Revision { main, sub }`, the store's logical clock.
//! - [`key_index`]: one key's history as generations of revisions (etcd's `keyIndex`).
//! - [`entries`]: a generation's stored entries, the common single one inline.
//! - [`tree_index`]: key → history, ordered (etcd's `treeIndex`), and [`KeyRange`].
//! - [`store`]: the store, write transactions, range reads, events.
//! - [`compaction`]: freeing history no read at or after a revision needs.
//! - [`hash`]: a deterministic digest of the kept history, to compare replicas.
//! - [`section`]: the whole store to bytes and back: the MVCC section of a state snapshot
//!   ([`crate::state_snapshot`]).
//! - `invariants`: [`Store::check_invariants`], what must hold between any two calls.

pub mod compaction;
pub mod entries;
pub mod hash;
mod invariants;
pub mod key_index;
pub mod revision;
pub mod section;
pub mod store;
pub mod tree_index;

pub use compaction::CompactStats;
pub use entries::Entries;
pub use hash::HashKv;
pub use key_index::{Entry, Found, Generation, KeyIndex};
pub use revision::Revision;
pub use section::SectionError;
pub use store::{
    delete_event, put_event, revision_bytes, Event, KeyValue, RangeOptions, RangeResult, Store,
    TxnOutcome, WriteTxn, REVISION_OVERHEAD_BYTES,
};
pub use tree_index::{Key, KeyRange, Range, TreeIndex};
