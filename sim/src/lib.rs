//! keel-sim: deterministic simulation of keel under madsim.
//!
//! The simulator runs the real server — `keel_server::run`, its gRPC services, driver loop and
//! WAL code — on madsim nodes. What the simulator owns instead of the OS: each node's
//! [`keel_storage::sim_disk::SimDisk`] (it outlives a node's kill, so a crash can drop unsynced
//! writes and tear the last one) and each node's [`clock::SimClock`] (offset and drift).
//!
//! One seed decides everything (see `sim/README.md`): the fault mix ([`nemesis::Swarm`]), when
//! each fault lands, what the clients do, and madsim's scheduling. A run has a safety phase
//! (faults on, invariants checked as operations complete), then a liveness phase (every fault
//! healed, every member must serve again within a bound), then the history checks
//! ([`check`], [`linearizable`]).
//!
//! Build and run with `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=/work/tgt/sim`; in the normal
//! build only the runtime-agnostic parts compile.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[cfg(madsim)]
pub mod alarm;
#[cfg(madsim)]
pub mod auth;
pub mod auth_check;
#[cfg(madsim)]
pub mod auth_client;
#[cfg(madsim)]
pub mod auth_lease;
pub mod auth_token_check;
pub mod check;
pub mod clock;
#[cfg(madsim)]
pub mod cluster;
pub mod history;
#[cfg(madsim)]
pub mod lease;
pub mod lease_check;
pub mod linearizable;
#[cfg(madsim)]
pub mod lock;
pub mod lock_check;
#[cfg(madsim)]
pub mod membership;
pub mod nemesis;
#[cfg(madsim)]
pub mod run;
pub mod trace;
#[cfg(madsim)]
pub mod v2;
pub mod v2_check;
pub mod v2_history;
#[cfg(madsim)]
pub mod watch;
#[cfg(madsim)]
pub mod workload;
