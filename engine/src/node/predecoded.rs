//! A leader's snapshot's MVCC store, decoded before the snapshot reaches the node.
//!
//! Installing the leader's snapshot rebuilds the store from its `mvcc` section: at 200k keys
//! ~75 MB decoded into a tree, O(store) work that would otherwise run on the driver loop, at
//! the loop's priority, competing with the leader for the CPU when members share a machine.
//! The follower's transport decodes it instead ([`DecodedStore::decode`], a pure function of
//! the snapshot's bytes) on a thread of its own at background priority, and hands the result
//! to the node ([`super::Input::StoreDecoded`]) just before the `MsgSnapshot`; the install
//! then takes the finished store in O(1). The install of any other snapshot (another index,
//! term or length) decodes its own, as before; a store that no install took is dropped once
//! the `MsgSnapshot` has been stepped. The result is the same state either way, so the node
//! stays deterministic: the simulator's runs decode as a simulated task.

use raft::eraftpb::Snapshot;

use crate::mvcc::Store;
use crate::state_snapshot::{self, StateSnapshotError, SECTION_MVCC};

/// The MVCC store of one snapshot, decoded (see the module docs).
pub struct DecodedStore {
    index: u64,
    term: u64,
    len: usize,
    store: Store,
}

impl std::fmt::Debug for DecodedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedStore")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl DecodedStore {
    /// Decodes the MVCC store of `snapshot`'s state (checking the container's and the
    /// section's crc32s, as an install does).
    pub fn decode(snapshot: &Snapshot) -> Result<DecodedStore, StateSnapshotError> {
        let sections = state_snapshot::decode_known(&snapshot.data)?;
        let mvcc = sections
            .get(&SECTION_MVCC)
            .ok_or_else(|| StateSnapshotError::Section("mvcc".into(), "is missing"))?;
        let store = Store::decode_section(mvcc)?;
        let meta = snapshot.get_metadata();
        Ok(DecodedStore {
            index: meta.index,
            term: meta.term,
            len: snapshot.data.len(),
            store,
        })
    }

    /// The store, if it was decoded from `snapshot` (same index, term and data length).
    pub(super) fn take_for(self, snapshot: &Snapshot) -> Option<Store> {
        let meta = snapshot.get_metadata();
        let same =
            (self.index, self.term, self.len) == (meta.index, meta.term, snapshot.data.len());
        same.then_some(self.store)
    }
}
