//! The replicated auth store: users, roles, the enabled flag and the auth revision, with
//! etcd 3.4's rules for changing them.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_proto::authpb::{Permission, Role, User, UserAddOptions};
use keel_proto::keelpb::AuthTable;
use prost::Message as _;

use super::granted::Granted;
use super::AuthInfo;
use crate::error::Error;

/// The name of etcd's superuser and of its all-powerful role.
pub const ROOT: &str = "root";

/// The auth section of a state snapshot does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthSectionError {
    /// The protobuf body is malformed.
    #[error("auth section: {0}")]
    Body(String),
    /// A user or role name is not UTF-8, or repeats.
    #[error("auth section: bad name {0:?}")]
    Name(String),
}

/// The auth store as of the applied index. Ordered maps, so listing is deterministic (and
/// sorted, as etcd's bbolt buckets list).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's permissions resolved from `users` and `roles` (derived state, rebuilt by
    /// every change that touches them; never encoded).
    granted: BTreeMap<String, Granted>,
}

impl Default for AuthStore {
    /// An empty store at revision 1 (etcd commits revision 1 when it creates the store).
    fn default() -> Self {
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            granted: BTreeMap::new(),
        }
    }
}

impl AuthStore {
    /// Whether auth is enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: bumped by every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The user `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The role `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Whether the user has the role.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    fn commit(&mut self) {
        self.revision += 1;
    }

    /// A user's resolved permissions (`None`: no such user).
    pub(super) fn granted(&self, name: &str) -> Option<&Granted> {
        self.granted.get(name)
    }

    /// The resolved permissions match the users and roles they come from.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.granted.len(),
            self.users.len(),
            "resolved permissions and users differ in number"
        );
        for (name, user) in &self.users {
            assert!(
                self.granted.get(name) == Some(&Granted::of(user, &self.roles)),
                "the resolved permissions of user {name:?} are stale"
            );
        }
    }

    /// Resolves `name`'s permissions again (or forgets them, once the user is gone).
    fn regrant(&mut self, name: &str) {
        match self.users.get(name) {
            Some(user) => {
                let granted = Granted::of(user, &self.roles);
                self.granted.insert(name.to_string(), granted);
            }
            None => {
                self.granted.remove(name);
            }
        }
    }

    /// Resolves again the permissions of every user holding `role`.
    fn regrant_holders(&mut self, role: &str) {
        for (name, user) in &self.users {
            if user.roles.iter().any(|r| r == role) {
                self.granted
                    .insert(name.clone(), Granted::of(user, &self.roles));
            }
        }
    }

    /// AuthEnable: only with a `root` user that has the `root` role. Enabling twice is no
    /// error; the revision does not move (etcd 3.4).
    pub fn enable(&mut self) -> Result<(), Error> {
        if self.enabled {
            tracing::info!("authentication is already enabled; ignored auth enable request");
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(Error::RootRoleNotExist);
        }
        self.enabled = true;
        tracing::info!("enabled authentication");
        Ok(())
    }

    /// AuthDisable; disabling twice is no error and changes nothing.
    pub fn disable(&mut self) {
        if !self.enabled {
            return;
        }
        self.enabled = false;
        self.commit();
        tracing::info!("disabled authentication");
    }

    /// UserAdd with an already hashed password (empty for a no-password user).
    pub fn user_add(&mut self, name: &str, hash: Bytes, no_password: bool) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(Error::UserAlreadyExist);
        }
        let user = User {
            name: Bytes::copy_from_slice(name.as_bytes()),
            password: if no_password { Bytes::new() } else { hash },
            roles: Vec::new(),
            options: Some(UserAddOptions { no_password }),
        };
        self.users.insert(name.to_string(), user);
        self.regrant(name);
        self.commit();
        Ok(())
    }

    /// UserDelete; `root` cannot go while auth is enabled.
    pub fn user_delete(&mut self, name: &str) -> Result<(), Error> {
        if self.enabled && name == ROOT {
            return Err(Error::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(Error::UserNotFound)?;
        self.regrant(name);
        self.commit();
        Ok(())
    }

    /// UserChangePassword with an already hashed password.
    pub fn user_change_password(&mut self, name: &str, hash: Bytes) -> Result<(), Error> {
        let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
        user.password = hash;
        self.commit();
        Ok(())
    }

    /// UserGrantRole; `root` may be granted before the role exists. Granting a role the user
    /// has is no error and changes nothing.
    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), Error> {
        let has_role = self.roles.contains_key(role);
        let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
        if role != ROOT && !has_role {
            return Err(Error::RoleNotFound);
        }
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => return Ok(()),
            Err(at) => user.roles.insert(at, role.to_string()),
        }
        self.regrant(name);
        self.commit();
        Ok(())
    }

    /// UserRevokeRole; `root` keeps the `root` role while auth is enabled.
    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), Error> {
        if self.enabled && name == ROOT && role == ROOT {
            return Err(Error::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|r| r != role);
        if user.roles.len() == before {
            return Err(Error::RoleNotGranted);
        }
        self.regrant(name);
        self.commit();
        Ok(())
    }

    /// RoleAdd.
    pub fn role_add(&mut self, name: &str) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(Error::RoleAlreadyExist);
        }
        let role = Role {
            name: Bytes::copy_from_slice(name.as_bytes()),
            key_permission: Vec::new(),
        };
        self.roles.insert(name.to_string(), role);
        self.regrant_holders(name);
        self.commit();
        Ok(())
    }

    /// RoleDelete, taking the role from every user; the `root` role cannot go while auth is
    /// enabled.
    pub fn role_delete(&mut self, name: &str) -> Result<(), Error> {
        if self.enabled && name == ROOT {
            return Err(Error::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(Error::RoleNotFound)?;
        let mut holders = Vec::new();
        for (user_name, user) in self.users.iter_mut() {
            let before = user.roles.len();
            user.roles.retain(|r| r != name);
            if user.roles.len() != before {
                holders.push(user_name.clone());
            }
        }
        for user in holders {
            self.regrant(&user);
        }
        self.commit();
        Ok(())
    }

    /// RoleGrantPermission: the same (key, range_end) changes its type; a new one goes in
    /// after those with a key not greater than its own (etcd keeps them sorted by key).
    pub fn role_grant_permission(&mut self, name: &str, perm: Permission) -> Result<(), Error> {
        let role = self.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
        let perms = &mut role.key_permission;
        let at = perms.partition_point(|p| p.key < perm.key);
        match perms.get_mut(at) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                p.perm_type = perm.perm_type;
            }
            _ => {
                let after = perms.partition_point(|p| p.key <= perm.key);
                perms.insert(after, perm);
            }
        }
        self.regrant_holders(name);
        self.commit();
        Ok(())
    }

    /// RoleRevokePermission of every permission on exactly (key, range_end).
    pub fn role_revoke_permission(
        &mut self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Error> {
        let role = self.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| p.key != key || p.range_end != range_end);
        if role.key_permission.len() == before {
            return Err(Error::PermissionNotGranted);
        }
        self.regrant_holders(name);
        self.commit();
        Ok(())
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// etcd's `IsAdminPermitted`: anyone while auth is disabled; else a user with the
    /// `root` role. No revision check, as in etcd.
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let name = match info {
            Some(i) if !i.username.is_empty() => &i.username,
            _ => return Err(Error::UserEmpty),
        };
        let user = self.users.get(name).ok_or(Error::UserNotFound)?;
        if user.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// The store as a state snapshot section.
    pub fn encode_section(&self) -> Vec<u8> {
        AuthTable {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
        .encode_to_vec()
    }

    /// The store back from [`AuthStore::encode_section`]'s bytes.
    pub fn decode_section(bytes: &[u8]) -> Result<AuthStore, AuthSectionError> {
        let table = AuthTable::decode(bytes).map_err(|e| AuthSectionError::Body(e.to_string()))?;
        let mut store = AuthStore {
            enabled: table.enabled,
            revision: table.revision,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            granted: BTreeMap::new(),
        };
        for user in table.users {
            let name = utf8_name(&user.name)?;
            if store.users.insert(name.clone(), user).is_some() {
                return Err(AuthSectionError::Name(name));
            }
        }
        for role in table.roles {
            let name = utf8_name(&role.name)?;
            if store.roles.insert(name.clone(), role).is_some() {
                return Err(AuthSectionError::Name(name));
            }
        }
        let names: Vec<String> = store.users.keys().cloned().collect();
        for name in names {
            store.regrant(&name);
        }
        Ok(store)
    }
}

fn utf8_name(name: &[u8]) -> Result<String, AuthSectionError> {
    String::from_utf8(name.to_vec())
        .map_err(|_| AuthSectionError::Name(String::from_utf8_lossy(name).into_owned()))
}
