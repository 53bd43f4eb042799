//! etcd's authentication and role-based access control (`auth/store.go`): the replicated
//! auth store, the permission checks, and each member's simple tokens.
//!
//! The store ([`AuthStore`]: users with bcrypt hashes and roles, roles with key permissions,
//! the enabled flag, the auth revision) changes only when an auth entry is applied, so every
//! member agrees on it at every applied index; it goes into the state snapshot as the
//! optional `auth` section. Every change bumps the revision, as etcd's `commitRevision` does
//! (AuthEnable excepted, as in etcd 3.4).
//!
//! Passwords never reach the engine: the server hashes them (UserAdd, UserChangePassword)
//! and checks them (Authenticate) against the hash it read, off the driver loop; an entry
//! carries the hash, or the random token prefix the server chose.
//!
//! Requests are checked twice: when they reach the node (against the applied state, with the
//! caller's token resolved to a user and the auth revision of that moment) and again when
//! applied or served, where a revision older than the store's is refused with etcd's
//! `revision of auth store is old` — so a permission revoked between the two is honoured.
//!
//! ```
//! use keel_engine::auth::{AuthInfo, AuthStore, Perm};
//! let mut auth = AuthStore::default();
//! auth.role_add("root").unwrap();
//! auth.user_add("root", b"hash".to_vec().into(), false).unwrap();
//! auth.user_grant_role("root", "root").unwrap();
//! auth.user_add("u", b"hash".to_vec().into(), false).unwrap();
//! auth.enable().unwrap();
//! let u = AuthInfo { username: "u".into(), revision: auth.revision() };
//! assert!(auth.check(Some(&u), b"k", b"", Perm::Read).is_err());
//! ```

mod granted;
mod perms;
mod store;
mod tokens;

#[cfg(test)]
mod tests;

pub use perms::{check_read, check_request, Perm};
pub use store::{AuthSectionError, AuthStore, ROOT};
pub use tokens::{SimpleTokens, TOKENS_MAX};

/// What a client request carries to say who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A simple token (`--auth-token simple`), resolved by this member's token table.
    Token(String),
    /// A caller the server already verified (a JWT's signature and expiry, checked off the
    /// engine): its user and the auth revision the token was issued at.
    Verified(AuthInfo),
    /// A token the server found invalid (a JWT with a bad signature, or expired): refused
    /// with etcd's `invalid auth token` wherever it is used.
    Invalid,
}

impl From<String> for Credential {
    fn from(token: String) -> Credential {
        Credential::Token(token)
    }
}

/// How the server names a caller authenticated by a verified client certificate instead of
/// a token (etcd's `AuthInfoFromTLS`, under `--client-cert-auth`): this prefix, then the
/// certificate's CommonName, in place of the token. No client can send it: gRPC metadata and
/// HTTP header values cannot hold a NUL byte.
pub const COMMON_NAME_CALLER: &str = "\0cn:";

/// The caller token for a client certificate whose CommonName is `common_name`.
pub fn common_name_caller(common_name: &str) -> String {
    format!("{COMMON_NAME_CALLER}{common_name}")
}

/// Who a request runs as: the user its token names and the auth revision when the token was
/// resolved (etcd's `AuthInfo`). Revision 0 means "no user".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthInfo {
    /// The user name ("" for none).
    pub username: String,
    /// The auth revision the token was resolved at.
    pub revision: u64,
}

impl AuthInfo {
    /// The log entry header for this caller.
    pub fn header(&self) -> keel_proto::keelpb::AuthHeader {
        keel_proto::keelpb::AuthHeader {
            username: self.username.clone(),
            revision: self.revision,
        }
    }

    /// Back from a log entry header.
    pub fn from_header(h: &keel_proto::keelpb::AuthHeader) -> AuthInfo {
        AuthInfo {
            username: h.username.clone(),
            revision: h.revision,
        }
    }
}
