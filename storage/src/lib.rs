//! keel's durable storage, free of any async runtime.
//!
//! * [`Disk`] is the only way keel touches files; [`OsDisk`] implements it on the operating
//!   system, [`SimDisk`] in memory with a power-loss model for deterministic simulation.
//! * [`Wal`] is the write-ahead log of raft entries and hard state: crc32-checked records in
//!   preallocated, size-rotated segment files, group-committed (many records, one fsync).
//! * [`SnapDir`] holds the state-machine snapshots: crc32-checked files, written atomically,
//!   read back mapped.
#![deny(missing_docs)]

pub mod disk;
pub mod sim_disk;
pub mod snap;
pub mod wal;

pub use disk::{is_no_space, Disk, DiskFile, IoOp, OsDisk, REMOVE_STEP};
pub use sim_disk::SimDisk;
pub use snap::{SnapCorruption, SnapDir, SnapError};
pub use wal::{
    Corruption, Recovered, RecoveredEntry, Released, SnapshotMark, Wal, WalError, WalOptions,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn handles_cross_threads() {
        send_sync::<SimDisk>();
        send_sync::<OsDisk>();
        send_sync::<std::sync::Arc<dyn Disk>>();
        send::<Wal>();
        send::<Box<dyn DiskFile>>();
    }
}
