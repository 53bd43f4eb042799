//! The member's bytes on disk, as the disk tasks publish them for Status's `dbSize`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Where the disk tasks publish the member's bytes on disk, for Status's `dbSize`.
pub(crate) struct DiskBytes {
    /// The WAL's segments.
    pub(crate) wal: Arc<AtomicU64>,
    /// The snapshot files.
    pub(crate) snaps: Arc<AtomicU64>,
}

/// The bytes of the snapshot files in `snaps` (0, logged, if they cannot be listed: only
/// Status reports it).
pub(crate) fn snap_dir_bytes(snaps: &keel_storage::snap::SnapDir) -> u64 {
    snaps.disk_bytes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot size the snapshot files");
        0
    })
}
