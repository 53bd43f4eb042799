//! The v2 store's part of the apply path (engine/src/v2): entries, reads, and the optional
//! snapshot section.

use keel_proto::keelpb::V2Request;

use super::StateMachine;
use crate::request::Response;
use crate::state_snapshot::StateSnapshotError;
use crate::v2::V2Store;

impl StateMachine {
    /// Applies a v2 entry at raft index `index`.
    pub(super) fn apply_v2(&mut self, r: &V2Request, index: u64) -> Response {
        let mut resp = self.v2.apply(r);
        resp.raft_index = index;
        Response::V2(resp)
    }

    /// The `v2-cas-created-index` bug: v2 compare-and-swap compares `prevIndex` with the
    /// key's `createdIndex`.
    #[cfg(madsim)]
    pub(in crate::node) fn cas_on_created_index(&mut self) {
        self.v2.cas_on_created = true;
    }

    /// Serves a v2 read from the applied store.
    pub(super) fn serve_v2(&mut self, r: &V2Request) -> Response {
        let mut resp = self.v2.read(r);
        resp.raft_index = self.applied_index;
        Response::V2(resp)
    }
}

/// The v2 store of a snapshot's optional `v2st` section (empty when a snapshot from before
/// the v2 store lacks it).
pub(super) fn decode_v2(section: Option<&&[u8]>) -> Result<V2Store, StateSnapshotError> {
    match section {
        Some(bytes) => Ok(V2Store::decode_section(bytes)?),
        None => Ok(V2Store::default()),
    }
}
