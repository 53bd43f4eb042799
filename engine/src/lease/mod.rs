//! Leases: client-granted TTLs that keys can be attached to (etcd's lessor).
//!
//! [`lessor`] holds the leases and, on the leader, their expiry schedule; [`leases`] adds the
//! key attachments (from MVCC events) and the leader's bookkeeping, and is what the node drives.

pub mod leases;
pub mod lessor;
pub mod section;

pub use leases::Leases;
pub use section::LeaseSection;
