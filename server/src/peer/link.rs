//! What every connection to a peer shares: who this member is on the wire, and how long
//! connecting may take.

use std::time::Duration;

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Who this member is on the wire.
#[derive(Debug, Clone, Copy)]
pub struct LocalIdentity {
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
}
