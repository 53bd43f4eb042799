//! Why the driver stops.

use keel_storage::snap::SnapError;
use keel_storage::wal::WalError;

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The WAL failed (a failed fsync is fatal).
    #[error("WAL: {0}")]
    Wal(#[from] WalError),
    /// Saving a snapshot failed.
    #[error("snapshot: {0}")]
    Snap(#[from] SnapError),
    /// The node cannot go on.
    #[error("node stopped: {0}")]
    Node(String),
    /// A task of the driver died.
    #[error("driver task failed: {0}")]
    Task(String),
    /// This member was removed from the cluster (etcd's words).
    #[error("the member has been permanently removed from the cluster")]
    Removed,
}
