//! etcd's Auth service: users, roles, permissions, AuthEnable/Disable and Authenticate.
//!
//! The auth store itself is the engine's (replicated through raft, in snapshots); this
//! layer does what must not happen on the driver loop or in the engine, as etcd 3.5 does:
//! it hashes passwords (bcrypt at `--bcrypt-cost`) before proposing UserAdd and
//! UserChangePassword, so only hashes reach the log; and for Authenticate it reads the
//! user's hash (a linearizable read), checks the password on a blocking thread, draws the
//! token's random prefix, and proposes the login through raft, so every member learns the
//! token (etcd 3.4's simple tokens: `<16 letters>.<raft index>`). With `--auth-token jwt`
//! the entry carries no token: once it applied (the login is current at the revision the
//! password was checked at), this member signs a JWT for that user and revision
//! ([`crate::tokens::jwt`]). No password, hash or token is ever logged.

use keel_engine::error::Error;
use keel_proto::etcdserverpb::auth_server::Auth;
use keel_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use keel_proto::keelpb::{InternalAuthenticate, PasswordLookup};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::{auth_token, Services};
use crate::status::to_status;
use crate::tokens::{TokenError, Tokens};

/// Authenticate tries this often when the auth store changes between the password check and
/// the login's apply (etcd retries without bound).
const AUTHENTICATE_TRIES: usize = 5;

/// Length of a simple token's random prefix (etcd's `defaultSimpleTokenLength`).
const TOKEN_PREFIX_LEN: usize = 16;

const TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The random prefix of a simple token, from the server's generator (the simulator's in
/// simulation builds, so a seed replays).
fn token_prefix() -> String {
    #[cfg(madsim)]
    use madsim::rand::RngCore as _;
    #[cfg(not(madsim))]
    use rand::RngCore as _;
    #[cfg(madsim)]
    let mut rng = madsim::rand::thread_rng();
    #[cfg(not(madsim))]
    let mut rng = rand::rng();
    let n = TOKEN_LETTERS.len() as u32;
    // Rejection sampling: every letter equally likely.
    let zone = u32::MAX - u32::MAX % n;
    let mut out = String::with_capacity(TOKEN_PREFIX_LEN);
    while out.len() < TOKEN_PREFIX_LEN {
        let x = rng.next_u32();
        if x < zone {
            out.push(TOKEN_LETTERS[(x % n) as usize] as char);
        }
    }
    out
}

/// Runs bcrypt off the async threads (it takes tens of milliseconds at cost 10).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    // Under madsim this runs the closure as a simulated task (see `wal_writer::run_blocking`).
    #[allow(deprecated)]
    let joined = tokio::task::spawn_blocking(f);
    joined
        .await
        .map_err(|_| Status::internal("password hashing failed"))
}

impl Services {
    /// A bcrypt hash of `password` at `--bcrypt-cost`.
    async fn hash_password(&self, password: String) -> Result<String, Status> {
        let cost = self.bcrypt_cost;
        blocking(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|e| {
                tracing::error!(error = %e, "failed to bcrypt hash password");
                Status::internal("etcdserver: failed to hash password")
            })
    }

    /// etcd's `Authenticate`: check the password against the replicated hash, then log in
    /// through raft; again if the auth store changed in between.
    async fn authenticate(&self, r: AuthenticateRequest) -> Result<AuthenticateResponse, Status> {
        for _ in 0..AUTHENTICATE_TRIES {
            let lookup = PasswordLookup {
                name: r.name.clone(),
            };
            let found = self.handle.call(lookup).await.map_err(to_status)?;
            if !found.enabled {
                return Err(to_status(Error::AuthNotEnabled));
            }
            if !found.found {
                return Err(to_status(Error::AuthFailed));
            }
            if found.no_password {
                return Err(to_status(Error::NoPasswordUser));
            }
            let password = r.password.clone();
            let hash = String::from_utf8_lossy(&found.hash).into_owned();
            let ok = blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await?;
            if !ok {
                tracing::info!(user = %r.name, "invalid password");
                return Err(to_status(Error::AuthFailed));
            }
            let jwt = match self.handle.tokens() {
                Tokens::Jwt(jwt) if jwt.verify_only() => {
                    // etcd fails the login's apply with this error, sent as is (Unknown).
                    return Err(Status::unknown(TokenError::VerifyOnly.to_string()));
                }
                Tokens::Jwt(jwt) => Some(jwt.clone()),
                Tokens::Simple => None,
            };
            let login = InternalAuthenticate {
                name: r.name.clone(),
                // Empty for a signed token: the entry only checks the login is current.
                simple_token: if jwt.is_some() {
                    String::new()
                } else {
                    token_prefix()
                },
                checked_revision: found.revision,
            };
            match self.handle.call(login).await {
                Err(Error::AuthOldRevision) => {
                    tracing::info!("revision when password checked became stale; retrying");
                }
                Ok(mut resp) => {
                    if let Some(jwt) = jwt {
                        // The entry applied at `checked_revision`: the token's revision.
                        resp.token = jwt
                            .assign(&r.name, found.revision)
                            .map_err(|e| Status::unknown(e.to_string()))?;
                    }
                    return Ok(resp);
                }
                Err(e) => return Err(to_status(e)),
            }
        }
        Err(to_status(Error::AuthOldRevision))
    }
}

#[tonic::async_trait]
impl Auth for Services {
    async fn auth_enable(
        &self,
        request: GrpcRequest<AuthEnableRequest>,
    ) -> Result<GrpcResponse<AuthEnableResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn auth_disable(
        &self,
        request: GrpcRequest<AuthDisableRequest>,
    ) -> Result<GrpcResponse<AuthDisableResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn auth_status(
        &self,
        request: GrpcRequest<AuthStatusRequest>,
    ) -> Result<GrpcResponse<AuthStatusResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn authenticate(
        &self,
        request: GrpcRequest<AuthenticateRequest>,
    ) -> Result<GrpcResponse<AuthenticateResponse>, Status> {
        let mut resp = self.authenticate(request.into_inner()).await?;
        self.local_header(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn user_add(
        &self,
        request: GrpcRequest<AuthUserAddRequest>,
    ) -> Result<GrpcResponse<AuthUserAddResponse>, Status> {
        let token = auth_token(&request);
        let mut r = request.into_inner();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let password = std::mem::take(&mut r.password);
        if !no_password && r.hashed_password.is_empty() {
            r.hashed_password = self.hash_password(password).await?;
        }
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }

    async fn user_get(
        &self,
        request: GrpcRequest<AuthUserGetRequest>,
    ) -> Result<GrpcResponse<AuthUserGetResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn user_list(
        &self,
        request: GrpcRequest<AuthUserListRequest>,
    ) -> Result<GrpcResponse<AuthUserListResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn user_delete(
        &self,
        request: GrpcRequest<AuthUserDeleteRequest>,
    ) -> Result<GrpcResponse<AuthUserDeleteResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn user_change_password(
        &self,
        request: GrpcRequest<AuthUserChangePasswordRequest>,
    ) -> Result<GrpcResponse<AuthUserChangePasswordResponse>, Status> {
        let token = auth_token(&request);
        let mut r = request.into_inner();
        let password = std::mem::take(&mut r.password);
        if r.hashed_password.is_empty() {
            r.hashed_password = self.hash_password(password).await?;
        }
        Ok(GrpcResponse::new(self.call(token, r).await?))
    }

    async fn user_grant_role(
        &self,
        request: GrpcRequest<AuthUserGrantRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserGrantRoleResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn user_revoke_role(
        &self,
        request: GrpcRequest<AuthUserRevokeRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserRevokeRoleResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn role_add(
        &self,
        request: GrpcRequest<AuthRoleAddRequest>,
    ) -> Result<GrpcResponse<AuthRoleAddResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn role_get(
        &self,
        request: GrpcRequest<AuthRoleGetRequest>,
    ) -> Result<GrpcResponse<AuthRoleGetResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn role_list(
        &self,
        request: GrpcRequest<AuthRoleListRequest>,
    ) -> Result<GrpcResponse<AuthRoleListResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn role_delete(
        &self,
        request: GrpcRequest<AuthRoleDeleteRequest>,
    ) -> Result<GrpcResponse<AuthRoleDeleteResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn role_grant_permission(
        &self,
        request: GrpcRequest<AuthRoleGrantPermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleGrantPermissionResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }

    async fn role_revoke_permission(
        &self,
        request: GrpcRequest<AuthRoleRevokePermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleRevokePermissionResponse>, Status> {
        Ok(GrpcResponse::new(self.call_req(request).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_prefixes_are_sixteen_letters_and_differ() {
        let a = token_prefix();
        let b = token_prefix();
        assert_eq!(a.len(), TOKEN_PREFIX_LEN, "etcd's prefix length");
        assert!(a.bytes().all(|c| c.is_ascii_alphabetic()), "letters only");
        assert_ne!(a, b, "two draws of 16 letters collide with negligible odds");
    }
}
