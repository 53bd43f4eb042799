//! keel-engine: the pure state machine at the heart of keel.
//!
//! No I/O, no clocks, no threads, no OS randomness (DESIGN.md rule 1): time, seeds, peer
//! messages and disk completions come in as inputs; messages, disk writes and client replies go
//! out as outputs.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod alarm;
pub mod apply;
pub mod auth;
pub mod bugs;
pub mod error;
pub mod lease;
pub mod membership;
pub mod mvcc;
pub mod node;
pub mod raft_log;
pub mod raft_storage;
pub mod request;
pub mod rng;
pub mod sink;
pub mod state_snapshot;
pub mod v2;
pub mod watch;

/// raft-rs's wire types (messages, entries, hard state), as the driver and transport see them.
pub use raft::eraftpb as raftpb;
