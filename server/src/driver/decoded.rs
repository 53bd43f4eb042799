//! The store of a received snapshot, decoded off the driver loop (see
//! `keel_engine::node::DecodedStore`), on its way from the peer service to the loop.

use std::sync::{Arc, Mutex, MutexGuard};

use keel_engine::node::DecodedStore;

/// The MVCC store of the last snapshot received, decoded off the loop by the peer service
/// before it queues the `MsgSnapshot` ([`keel_engine::node::DecodedStore`]); the loop steps it
/// (`Input::StoreDecoded`) just before a `MsgSnapshot`, whose install then takes it in O(1).
/// Clones share the slot; a newer store replaces one not yet taken.
#[derive(Clone, Default)]
pub struct DecodedSlot(Arc<Mutex<Option<Box<DecodedStore>>>>);

impl DecodedSlot {
    /// Leaves `store` for the loop.
    pub fn put(&self, store: DecodedStore) {
        *self.lock() = Some(Box::new(store));
    }

    /// The store left, if any.
    pub(super) fn take(&self) -> Option<Box<DecodedStore>> {
        self.lock().take()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Box<DecodedStore>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
