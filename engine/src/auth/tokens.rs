//! etcd's simple tokens (`--auth-token simple`): an opaque string per login, known to every
//! member that applied the Authenticate entry, forgotten after `--auth-token-ttl` without use.
//!
//! Tokens are this member's soft state, as in etcd: they are not in the state snapshot and a
//! restart forgets them (clients log in again). They are assigned only by applying an entry,
//! and expire by the driver's clock (`now_ms`), so the simulator replays them.

use std::collections::{BTreeMap, BTreeSet};

/// Tokens held at most; past it the one closest to expiry is dropped (a client that loses
/// its token logs in again). Bounds memory under a storm of logins.
pub const TOKENS_MAX: usize = 1 << 20;

#[derive(Clone, Debug)]
struct Token {
    user: String,
    /// When it expires: its last use plus the TTL.
    deadline_ms: u64,
    /// The deadline it is filed under in the expiry index: not after `deadline_ms`. A use
    /// moves only `deadline_ms`; the index catches up when the old deadline comes due, so a
    /// request costs one map lookup, not a re-keying of the index.
    filed_ms: u64,
}

/// The tokens this member knows, with their expiry.
#[derive(Clone, Debug)]
pub struct SimpleTokens {
    ttl_ms: u64,
    tokens: BTreeMap<String, Token>,
    /// (filed deadline, token): expiry in order, each deadline at most the token's own.
    deadlines: BTreeSet<(u64, String)>,
    enabled: bool,
}

impl SimpleTokens {
    /// Tokens living `ttl_ms` after their last use.
    pub fn new(ttl_ms: u64) -> SimpleTokens {
        SimpleTokens {
            ttl_ms,
            tokens: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            enabled: false,
        }
    }

    /// Number of live tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is live.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Auth was enabled: tokens may be assigned.
    pub fn enable(&mut self) {
        self.enabled = true;
    }

    /// Auth was disabled: every token is forgotten and none is assigned.
    pub fn disable(&mut self) {
        self.enabled = false;
        self.tokens.clear();
        self.deadlines.clear();
    }

    /// Gives `token` to `user`.
    pub fn assign(&mut self, token: String, user: &str, now_ms: u64) {
        if !self.enabled {
            return;
        }
        self.remove(&token);
        if self.tokens.len() >= TOKENS_MAX {
            self.drop_closest_to_expiry();
        }
        let deadline_ms = now_ms.saturating_add(self.ttl_ms);
        self.deadlines.insert((deadline_ms, token.clone()));
        let user = user.to_string();
        let filed_ms = deadline_ms;
        let t = Token {
            user,
            deadline_ms,
            filed_ms,
        };
        self.tokens.insert(token, t);
    }

    /// The user a live token names; using it restarts its TTL (etcd's `resetSimpleToken`).
    pub fn info(&mut self, token: &str, now_ms: u64) -> Option<String> {
        self.expire(now_ms);
        let t = self.tokens.get_mut(token)?;
        t.deadline_ms = now_ms.saturating_add(self.ttl_ms);
        Some(t.user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        let gone: Vec<String> = self
            .tokens
            .iter()
            .filter(|(_, t)| t.user == user)
            .map(|(k, _)| k.clone())
            .collect();
        for token in gone {
            self.remove(&token);
        }
    }

    /// Forgets tokens unused for their TTL. A token used since it was filed is filed again
    /// under its real deadline instead.
    pub fn expire(&mut self, now_ms: u64) {
        while self.deadlines.first().is_some_and(|(d, _)| *d <= now_ms) {
            let Some((_, token)) = self.deadlines.pop_first() else {
                break;
            };
            self.refile_or_drop(token, |deadline_ms| deadline_ms <= now_ms);
        }
    }

    /// Drops the token that expires first (making room under [`TOKENS_MAX`]).
    fn drop_closest_to_expiry(&mut self) {
        while let Some((filed_ms, token)) = self.deadlines.pop_first() {
            if self.refile_or_drop(token, |deadline_ms| deadline_ms <= filed_ms) {
                return;
            }
        }
    }

    /// `token`, just taken out of the index: dropped if `drop` says so of its deadline
    /// (true returned), else filed again under its deadline.
    fn refile_or_drop(&mut self, token: String, drop: impl Fn(u64) -> bool) -> bool {
        let Some(t) = self.tokens.get_mut(&token) else {
            return false;
        };
        if drop(t.deadline_ms) {
            self.tokens.remove(&token);
            return true;
        }
        t.filed_ms = t.deadline_ms;
        self.deadlines.insert((t.deadline_ms, token));
        false
    }

    fn remove(&mut self, token: &str) {
        if let Some(t) = self.tokens.remove(token) {
            self.deadlines.remove(&(t.filed_ms, token.to_string()));
        }
    }

    /// The two indexes agree.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.tokens.len(),
            self.deadlines.len(),
            "token table and deadline index differ in size"
        );
        for (filed, token) in &self.deadlines {
            let t = self.tokens.get(token);
            assert!(
                t.is_some_and(|t| t.filed_ms == *filed && *filed <= t.deadline_ms),
                "deadline index names a token it does not hold, or files it too late"
            );
        }
    }
}
