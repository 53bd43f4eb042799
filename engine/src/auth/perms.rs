//! Permission checks (etcd's `isOpPermitted` and `authApplierV3`): which requests a user may
//! make, by the key ranges its roles grant.

use keel_proto::etcdserverpb::{request_op, RequestOp, TxnRequest};
use keel_proto::keelpb::raft_request::Request as LogRequest;

use super::{AuthInfo, AuthStore};
use crate::error::Error;
use crate::lease::Leases;
use crate::request::Read;

/// The kind of access a request needs on a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// Range, watch, a txn's compares and ranges, `prev_kv`.
    Read,
    /// Put, delete, a lease revoke's keys.
    Write,
}

impl AuthStore {
    /// etcd's `isOpPermitted`: may `info` access [key, range_end) this way? Anyone while
    /// auth is disabled; no user is `user name is empty`; a token resolved before the store
    /// last changed is `revision of auth store is old`; the `root` role may do anything.
    pub fn check(
        &self,
        info: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        perm: Perm,
    ) -> Result<(), Error> {
        if !self.is_enabled() {
            return Ok(());
        }
        let info = match info {
            Some(i) if i.revision != 0 => i,
            _ => return Err(Error::UserEmpty),
        };
        if info.revision < self.revision() {
            tracing::warn!(
                user = %info.username,
                request_revision = info.revision,
                revision = self.revision(),
                "request auth revision is less than current node auth revision"
            );
            return Err(Error::AuthOldRevision);
        }
        let granted = self
            .granted(&info.username)
            .ok_or(Error::PermissionDenied)?;
        if granted.root || granted.covers(perm, key, range_end) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// A txn: every compare needs read access, every op what it does; nested txns are
    /// checked too (etcd 3.4 skips them).
    pub fn check_txn(&self, info: Option<&AuthInfo>, t: &TxnRequest) -> Result<(), Error> {
        for c in &t.compare {
            self.check(info, &c.key, &c.range_end, Perm::Read)?;
        }
        self.check_ops(info, &t.success)?;
        self.check_ops(info, &t.failure)
    }

    fn check_ops(&self, info: Option<&AuthInfo>, ops: &[RequestOp]) -> Result<(), Error> {
        for op in ops.iter().filter_map(|op| op.request.as_ref()) {
            match op {
                request_op::Request::RequestRange(r) => {
                    self.check(info, &r.key, &r.range_end, Perm::Read)?
                }
                request_op::Request::RequestPut(p) => self.check(info, &p.key, &[], Perm::Write)?,
                request_op::Request::RequestDeleteRange(d) => {
                    if d.prev_kv {
                        self.check(info, &d.key, &d.range_end, Perm::Read)?;
                    }
                    self.check(info, &d.key, &d.range_end, Perm::Write)?
                }
                request_op::Request::RequestTxn(inner) => self.check_txn(info, inner)?,
            }
        }
        Ok(())
    }

    /// Write access to every key attached to lease `id` (etcd's `checkLeasePuts`).
    fn check_lease_keys(
        &self,
        leases: &Leases,
        info: Option<&AuthInfo>,
        id: i64,
    ) -> Result<(), Error> {
        if !self.is_enabled() {
            return Ok(());
        }
        if let Some(lease) = leases.lessor().get(id) {
            for key in lease.keys.iter() {
                self.check(info, key, &[], Perm::Write)?;
            }
        }
        Ok(())
    }
}

/// What a client request needs, checked against `auth` (etcd's `authApplierV3` and its
/// API-layer checks). `info` is `None` for entries the cluster proposes itself (lease
/// expiry, checkpoints, publish, a full disk's alarm), which run unchecked.
pub fn check_request(
    auth: &AuthStore,
    leases: &Leases,
    info: Option<&AuthInfo>,
    body: &LogRequest,
) -> Result<(), Error> {
    if info.is_none() || !auth.is_enabled() {
        return Ok(());
    }
    use LogRequest as R;
    match body {
        R::Put(p) => {
            auth.check(info, &p.key, &[], Perm::Write)?;
            auth.check_lease_keys(leases, info, p.lease)?;
            if p.prev_kv {
                auth.check(info, &p.key, &[], Perm::Read)?;
            }
            Ok(())
        }
        R::DeleteRange(d) => {
            auth.check(info, &d.key, &d.range_end, Perm::Write)?;
            if d.prev_kv {
                auth.check(info, &d.key, &d.range_end, Perm::Read)?;
            }
            Ok(())
        }
        R::Txn(t) => auth.check_txn(info, t),
        R::LeaseRevoke(r) => auth.check_lease_keys(leases, info, r.id),
        R::MemberUpdate(_)
        | R::AuthEnable(_)
        | R::AuthDisable(_)
        | R::UserAdd(_)
        | R::UserDelete(_)
        | R::UserChangePassword(_)
        | R::UserGrantRole(_)
        | R::UserRevokeRole(_)
        | R::RoleAdd(_)
        | R::RoleDelete(_)
        | R::RoleGrantPermission(_)
        | R::RoleRevokePermission(_) => auth.check_admin(info),
        // etcd (3.4 and 3.5) checks Compact for no one; LeaseGrant neither.
        R::Compaction(_)
        | R::LeaseGrant(_)
        | R::LeaseCheckpoint(_)
        | R::Publish(_)
        | R::Alarm(_)
        | R::Authenticate(_) => Ok(()),
        // The v2 keys API is outside v3 auth, as in etcd 3.4 (v2 had its own auth store).
        R::V2(_) => Ok(()),
    }
}

/// What a read needs: ranges and read-only txns their keys, HashKV and the auth listings
/// `root` (UserGet also the user itself, RoleGet also a holder of the role).
pub fn check_read(auth: &AuthStore, info: Option<&AuthInfo>, read: &Read) -> Result<(), Error> {
    if !auth.is_enabled() {
        return Ok(());
    }
    match read {
        Read::Range(r) => auth.check(info, &r.key, &r.range_end, Perm::Read),
        Read::Txn(t) => auth.check_txn(info, t),
        Read::HashKv(_) | Read::UserList(_) | Read::RoleList(_) => auth.check_admin(info),
        Read::UserGet(r) => match auth.check_admin(info) {
            Err(_) if info.is_some_and(|i| i.username == r.name) => Ok(()),
            other => other,
        },
        Read::RoleGet(r) => match auth.check_admin(info) {
            Err(_) if info.is_some_and(|i| auth.has_role(&i.username, &r.role)) => Ok(()),
            other => other,
        },
        Read::LeaseKeepAlive(_)
        | Read::LeaseTimeToLive(_)
        | Read::LeaseLeases(_)
        | Read::MemberList(_)
        | Read::Alarm(_)
        | Read::AuthStatus(_)
        | Read::PasswordLookup(_)
        | Read::V2(_) => Ok(()),
    }
}
