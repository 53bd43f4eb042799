//! keel-sim: deterministic simulation of keel under madsim.
//!
//! The simulator runs the real server — `keel_server::run`, its gRPC services, driver loop and
//! WAL code — on madsim nodes. What the simulator owns instead of the OS: each node's
//! [`keel_storage::sim_disk::SimDisk`] (it outlives a node's kill, so a crash can drop unsynced
//! writes and tear the last one) and each node's [`clock::SimClock`] (offset and drift).
//!
//! Build and run with `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim`; in the normal
//! build only the runtime-agnostic parts ([`clock`], [`trace`]) compile.
#![deny(missing_docs)]

pub mod clock;
#[cfg(madsim)]
pub mod cluster;
pub mod trace;
