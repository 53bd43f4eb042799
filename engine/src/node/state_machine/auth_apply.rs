//! Applying auth entries and serving auth reads: the replicated auth store and this
//! member's simple tokens (see [`crate::auth`]).

use keel_proto::etcdserverpb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionResponse, AuthRoleListResponse,
    AuthRoleRevokePermissionResponse, AuthStatusResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGetResponse,
    AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleResponse,
    AuthenticateResponse,
};
use keel_proto::keelpb::raft_request::Request as LogRequest;
use keel_proto::keelpb::{InternalAuthenticate, PasswordLookupResponse};

use super::StateMachine;
use crate::auth::{self, AuthInfo, AuthStore, Credential};
use crate::error::Error;
use crate::request::{Read, Response};

impl StateMachine {
    /// The auth store as of the applied index.
    pub(in crate::node) fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// Resolves a request's token to its caller: no token is the empty user (refused by
    /// every check while auth is enabled); an unknown or expired one is etcd's
    /// `invalid auth token`.
    pub(in crate::node) fn resolve_caller(
        &mut self,
        token: Option<&Credential>,
        now_ms: u64,
    ) -> Result<AuthInfo, Error> {
        let token = match token {
            None => return Ok(AuthInfo::default()),
            Some(Credential::Verified(info)) => return Ok(info.clone()),
            Some(Credential::Invalid) => return Err(Error::InvalidAuthToken),
            Some(Credential::Token(token)) => token,
        };
        if let Some(user) = token.strip_prefix(auth::COMMON_NAME_CALLER) {
            // A verified certificate names its user directly, at the current revision.
            return Ok(AuthInfo {
                username: user.to_string(),
                revision: self.auth.revision(),
            });
        }
        match self.tokens.info(token, now_ms) {
            Some(username) => Ok(AuthInfo {
                username,
                revision: self.auth.revision(),
            }),
            None => {
                tracing::warn!("invalid auth token");
                Err(Error::InvalidAuthToken)
            }
        }
    }

    /// Forgets tokens unused for their TTL.
    pub(in crate::node) fn expire_tokens(&mut self, now_ms: u64) {
        self.tokens.expire(now_ms);
    }

    /// Whether `caller` may make this write (`None`: the cluster's own entry).
    pub(in crate::node) fn check_write(
        &self,
        caller: Option<&AuthInfo>,
        body: &LogRequest,
    ) -> Result<(), Error> {
        auth::check_request(&self.auth, &self.leases, caller, body)
    }

    /// Whether `caller` may make this read.
    pub(in crate::node) fn check_read(&self, caller: &AuthInfo, read: &Read) -> Result<(), Error> {
        auth::check_read(&self.auth, Some(caller), read)
    }

    /// Applies an auth entry (the caller routes only those here; any other is refused with
    /// an error, never a panic, so no entry can stop a member).
    pub(super) fn apply_auth(
        &mut self,
        body: &LogRequest,
        index: u64,
        now_ms: u64,
    ) -> Result<Response, Error> {
        use LogRequest as R;
        let a = &mut self.auth;
        let result = match body {
            R::AuthEnable(_) => a.enable().map(|()| {
                self.tokens.enable();
                Response::AuthEnable(AuthEnableResponse::default())
            }),
            R::AuthDisable(_) => {
                a.disable();
                self.tokens.disable();
                Ok(Response::AuthDisable(AuthDisableResponse::default()))
            }
            R::Authenticate(r) => self.authenticate(r, index, now_ms),
            R::UserAdd(r) => {
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let hash = r.hashed_password.as_bytes().to_vec().into();
                a.user_add(&r.name, hash, no_password)
                    .map(|()| Response::UserAdd(AuthUserAddResponse::default()))
            }
            R::UserDelete(r) => a.user_delete(&r.name).map(|()| {
                self.tokens.invalidate_user(&r.name);
                Response::UserDelete(AuthUserDeleteResponse::default())
            }),
            R::UserChangePassword(r) => {
                let hash = r.hashed_password.as_bytes().to_vec().into();
                a.user_change_password(&r.name, hash).map(|()| {
                    if !self.bugs.keeps_tokens_on_password_change {
                        self.tokens.invalidate_user(&r.name);
                    }
                    Response::UserChangePassword(AuthUserChangePasswordResponse::default())
                })
            }
            R::UserGrantRole(r) => a
                .user_grant_role(&r.user, &r.role)
                .map(|()| Response::UserGrantRole(AuthUserGrantRoleResponse::default())),
            R::UserRevokeRole(r) => a
                .user_revoke_role(&r.name, &r.role)
                .map(|()| Response::UserRevokeRole(AuthUserRevokeRoleResponse::default())),
            R::RoleAdd(r) => a
                .role_add(&r.name)
                .map(|()| Response::RoleAdd(AuthRoleAddResponse::default())),
            R::RoleDelete(r) => a
                .role_delete(&r.role)
                .map(|()| Response::RoleDelete(AuthRoleDeleteResponse::default())),
            R::RoleGrantPermission(r) => a
                .role_grant_permission(&r.name, r.perm.clone().unwrap_or_default())
                .map(
                    |()| Response::RoleGrantPermission(AuthRoleGrantPermissionResponse::default()),
                ),
            R::RoleRevokePermission(r) => a
                .role_revoke_permission(&r.role, &r.key, &r.range_end)
                .map(|()| {
                    Response::RoleRevokePermission(AuthRoleRevokePermissionResponse::default())
                }),
            _ => {
                tracing::error!(index, "not an auth entry; refused");
                Err(Error::InvalidAuthMgmt)
            }
        };
        result
    }

    /// etcd's `Authenticate` apply: the password was checked by the proposer at
    /// `checked_revision`; a store changed since refuses (the server checks again).
    fn authenticate(
        &mut self,
        r: &InternalAuthenticate,
        index: u64,
        now_ms: u64,
    ) -> Result<Response, Error> {
        if !self.auth.is_enabled() {
            return Err(Error::AuthNotEnabled);
        }
        let user = self.auth.user(&r.name).ok_or(Error::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(Error::AuthFailed);
        }
        if r.checked_revision != self.auth.revision() {
            return Err(Error::AuthOldRevision);
        }
        if r.simple_token.is_empty() {
            // A signed (JWT) login: the proposer signs the token once this entry applied.
            tracing::debug!(user = %r.name, "authenticated a user (signed token)");
            return Ok(Response::Authenticate(AuthenticateResponse::default()));
        }
        let token = format!("{}.{index}", r.simple_token);
        self.tokens.assign(token.clone(), &r.name, now_ms);
        tracing::debug!(user = %r.name, "authenticated a user");
        Ok(Response::Authenticate(AuthenticateResponse {
            header: None,
            token,
        }))
    }

    /// Serves an auth read (the caller routes only those here; any other is refused with an
    /// error, never a panic).
    pub(super) fn serve_auth_read(&self, read: &Read) -> Result<Response, Error> {
        let a = &self.auth;
        let result = match read {
            Read::AuthStatus(_) => Ok(Response::AuthStatus(AuthStatusResponse {
                header: None,
                enabled: a.is_enabled(),
                auth_revision: a.revision(),
            })),
            Read::UserGet(r) => a.user(&r.name).ok_or(Error::UserNotFound).map(|u| {
                Response::UserGet(AuthUserGetResponse {
                    header: None,
                    roles: u.roles.clone(),
                })
            }),
            Read::UserList(_) => Ok(Response::UserList(AuthUserListResponse {
                header: None,
                users: a.user_names(),
            })),
            Read::RoleGet(r) => a.role(&r.role).ok_or(Error::RoleNotFound).map(|role| {
                Response::RoleGet(AuthRoleGetResponse {
                    header: None,
                    perm: role.key_permission.clone(),
                })
            }),
            Read::RoleList(_) => Ok(Response::RoleList(AuthRoleListResponse {
                header: None,
                roles: a.role_names(),
            })),
            Read::PasswordLookup(r) => {
                let user = a.user(&r.name);
                Ok(Response::PasswordLookup(PasswordLookupResponse {
                    header: None,
                    found: user.is_some(),
                    no_password: user
                        .and_then(|u| u.options.as_ref())
                        .is_some_and(|o| o.no_password),
                    hash: user.map(|u| u.password.clone()).unwrap_or_default(),
                    revision: a.revision(),
                    enabled: a.is_enabled(),
                }))
            }
            _ => {
                tracing::error!("not an auth read; refused");
                Err(Error::InvalidAuthMgmt)
            }
        };
        result
    }
}
