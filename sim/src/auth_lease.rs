//! Auth mode's leases. Now and then an auth client grants a lease in one user's *lease key
//! space* (its own user's two times in three, another user's otherwise), attaches keys to it
//! with puts, and revokes it. A put with a lease needs write permission on its key and on
//! every key already attached to the lease, and a revoke needs write permission on every
//! attached key (etcd's `checkLeasePuts`, checked at apply). The churn (`src/auth.rs`) grants
//! and revokes permissions on the lease key spaces as on the other prefixes, so the checker
//! (`src/auth_check.rs`) sees revokes served and refused while the permission comes and goes.
//!
//! A lease's id names its space: lease `(0xa0 + N) << 48 | client << 24 | serial` has the
//! key prefix `lease/00aN…` ([`crate::lease_check::lease_prefix`]), so one prefix permission,
//! on [`space_prefix`]`(N)`, covers all of space N's leased keys. The puts go into the KV
//! history as lease puts, and the run's lease deletions
//! ([`crate::lease::record_lease_deletions`]) explain the revisions their revokes and
//! expiries make.
//!
//! A revoke is sent only for a lease whose every attach attempt is certain (served, or
//! certainly refused): then the keys it deletes, and so the permission it needs, are known.
//! A lease with an attach in doubt is left to expire. Each lease has keys of its own (the
//! key names carry the lease id), so no other client's put moves a key off it.

use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use tonic::transport::Channel;
use tonic::Status;

use crate::auth::with_token;
use crate::history::OpResult;
use crate::lease_check::{lease_prefix, LEASE_PREFIX};
use crate::workload::OP_TIMEOUT;

/// Lease space `n`'s id prefix is `SPACE_BASE + n` (the top 16 bits of the id).
const SPACE_BASE: i64 = 0xa0;
/// Auth leases live longer than any run's fault phase: revoked, or left to expire after it.
const LEASE_TTL_S: i64 = 60;
/// A lease with this many keys attached is revoked at its next step.
pub const KEYS_MAX: u64 = 2;

/// The key prefix of every lease in space `n`: `lease/00aN` (16 hex digits of the id follow
/// `lease/`, the first four naming the space).
pub fn space_prefix(n: usize) -> String {
    format!("{LEASE_PREFIX}{:04x}", SPACE_BASE + n as i64)
}

/// The id of `client`'s `serial`th lease in space `space`.
pub fn lease_id(space: usize, client: usize, serial: u64) -> i64 {
    ((SPACE_BASE + space as i64) << 48)
        | ((client as i64 & 0xff_ffff) << 24)
        | (serial as i64 & 0xff_ffff)
}

/// One auth client's current lease, and what it knows of its keys.
#[derive(Debug, Clone)]
pub struct AuthLease {
    /// The lease id.
    pub id: i64,
    /// The space its keys are in.
    pub space: usize,
    next_key: u64,
    /// Keys certainly attached.
    attached: u64,
    /// An attach attempt ended in doubt: the keys are not known.
    doubtful: bool,
}

impl AuthLease {
    /// A lease just granted, with no keys.
    pub fn new(id: i64, space: usize) -> AuthLease {
        AuthLease {
            id,
            space,
            next_key: 0,
            attached: 0,
            doubtful: false,
        }
    }

    /// A fresh key of the lease (each key is put once).
    pub fn next_key(&mut self) -> String {
        self.next_key += 1;
        format!("{}{}", lease_prefix(self.id), self.next_key)
    }

    /// Notes how an attach attempt ended: `Ok`, certainly refused, or in doubt.
    pub fn attach_ended(&mut self, served: bool, certainly_refused: bool) {
        if served {
            self.attached += 1;
        } else if !certainly_refused {
            self.doubtful = true;
        }
    }

    /// Whether its keys are known and there are some: a revoke then needs write permission
    /// on its space, and deletes them at one revision.
    pub fn revocable(&self) -> bool {
        self.attached > 0 && !self.doubtful
    }

    /// Whether it is time to revoke it.
    pub fn full(&self) -> bool {
        self.attached >= KEYS_MAX
    }

    /// Whether more keys may be attached (a lease with an attach in doubt is dropped).
    pub fn usable(&self) -> bool {
        !self.doubtful
    }
}

/// Grants lease `id`, within the op timeout.
pub async fn grant(
    leases: &mut LeaseClient<Channel>,
    token: Option<&str>,
    id: i64,
) -> Result<(), Status> {
    let req = LeaseGrantRequest {
        id,
        ttl: LEASE_TTL_S,
    };
    match tokio::time::timeout(OP_TIMEOUT, leases.lease_grant(with_token(req, token))).await {
        Ok(r) => {
            let r = r?.into_inner();
            match r.error.is_empty() {
                true => Ok(()),
                false => Err(Status::unknown(r.error)),
            }
        }
        Err(_) => Err(Status::deadline_exceeded("timeout")),
    }
}

/// Revokes lease `id`, within the op timeout: a write at the header's revision (the one its
/// keys' deletion made, as the caller revokes only leases with keys).
pub async fn revoke(
    leases: &mut LeaseClient<Channel>,
    token: Option<&str>,
    id: i64,
) -> Result<OpResult, Status> {
    let req = LeaseRevokeRequest { id };
    match tokio::time::timeout(OP_TIMEOUT, leases.lease_revoke(with_token(req, token))).await {
        Ok(r) => Ok(OpResult::Write {
            revision: r?.into_inner().header.map_or(0, |h| h.revision),
            succeeded: true,
            deleted: 0,
        }),
        Err(_) => Err(Status::deadline_exceeded("timeout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_id_names_its_space_and_only_its_space() {
        let id = lease_id(1, 7, 42);
        let key_prefix = lease_prefix(id);
        assert!(
            key_prefix.starts_with(&space_prefix(1)),
            "{key_prefix} is in space 1"
        );
        for other in [0, 2] {
            assert!(
                !key_prefix.starts_with(&space_prefix(other)),
                "{key_prefix} is not in space {other}"
            );
        }
        assert!(id > 0, "lease ids are positive");
        assert_ne!(lease_id(1, 7, 43), id, "serials give distinct ids");
        assert_ne!(lease_id(1, 8, 42), id, "clients give distinct ids");
    }

    #[test]
    fn only_a_lease_whose_keys_are_known_is_revocable() {
        let mut l = AuthLease::new(lease_id(0, 0, 1), 0);
        assert!(!l.revocable(), "no keys: nothing to check");
        l.attach_ended(false, true);
        assert!(!l.revocable(), "a certain refusal attaches nothing");
        l.attach_ended(true, false);
        assert!(l.revocable() && l.usable(), "one key, known");
        l.attach_ended(false, false);
        assert!(!l.revocable() && !l.usable(), "an attach in doubt");
    }
}
