//! Why the server stopped or could not start.

use keel_engine::raft_log::CodecError;
use keel_storage::snap::SnapError;
use keel_storage::wal::WalError;

use crate::config;
use crate::driver;

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The TLS setup is unusable (a certificate file, a TLS flag).
    #[cfg(not(madsim))]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The data directory could not be prepared.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The WAL could not be opened (corruption, I/O error).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A WAL record passed its crc but does not decode.
    #[error("WAL record does not decode: {0}")]
    Codec(#[from] CodecError),
    /// The snapshot directory could not be read.
    #[error(transparent)]
    Snap(#[from] SnapError),
    /// The snapshots and the WAL do not fit together.
    #[error("data dir {path}: {reason}")]
    Recovery {
        /// The data directory.
        path: String,
        /// What does not fit.
        reason: String,
    },
    /// The engine refused to start.
    #[error(transparent)]
    Start(#[from] keel_engine::node::StartError),
    /// The driver stopped (e.g. a failed fsync).
    #[error(transparent)]
    Driver(#[from] driver::DriverError),
    /// `--initial-cluster-state existing`, and no listed peer told us about the cluster.
    #[error("joining an existing cluster: {0}")]
    Join(String),
    /// A gRPC listener failed.
    #[error("serving {addr}: {reason}")]
    Serve {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}
