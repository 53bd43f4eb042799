//! Leases: client-granted TTLs that keys can be attached to (etcd's lessor).
//!
//! Wiring into the node (Lease gRPC service, LeaseGrant/Revoke/Checkpoint log entries, the
//! leader's expiry loop) comes with the leases-and-watches issue; [`lessor`] is the pure state
//! it will drive.

pub mod lessor;
