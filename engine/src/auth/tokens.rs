//! etcd's simple tokens (`--auth-token simple`): an opaque string per login, known to every
//! member that applied the Authenticate entry, forgotten after `--auth-token-ttl` without use.
//!
//! Tokens are this member's soft state, as in etcd: they are not in the state snapshot and a
//! restart forgets them (clients log in again). They are assigned only by applying an entry,
//! and expire by the driver's clock (`now_ms`), so the simulator replays them.

use std::collections::BTreeMap;

/// Tokens held at most; past it the one closest to expiry is dropped (a client that loses
/// its token logs in again). Bounds memory under a storm of logins.
pub const TOKENS_MAX: usize = 1 << 20;

#[derive(Clone, Debug)]
struct Token {
    user: String,
    deadline_ms: u64,
}

/// The tokens this member knows, with their expiry.
#[derive(Clone, Debug)]
pub struct SimpleTokens {
    ttl_ms: u64,
    tokens: BTreeMap<String, Token>,
    /// (deadline, token): expiry in order.
    deadlines: BTreeMap<(u64, String), ()>,
    enabled: bool,
}

impl SimpleTokens {
    /// Tokens living `ttl_ms` after their last use.
    pub fn new(ttl_ms: u64) -> SimpleTokens {
        SimpleTokens {
            ttl_ms,
            tokens: BTreeMap::new(),
            deadlines: BTreeMap::new(),
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
        if self.tokens.len() >= TOKENS_MAX {
            if let Some(((_, oldest), ())) = self.deadlines.pop_first() {
                self.tokens.remove(&oldest);
            }
        }
        let deadline_ms = now_ms.saturating_add(self.ttl_ms);
        self.remove(&token);
        self.deadlines.insert((deadline_ms, token.clone()), ());
        let user = user.to_string();
        self.tokens.insert(token, Token { user, deadline_ms });
    }

    /// The user a live token names; using it restarts its TTL (etcd's `resetSimpleToken`).
    pub fn info(&mut self, token: &str, now_ms: u64) -> Option<String> {
        self.expire(now_ms);
        let t = self.tokens.get_mut(token)?;
        let old = (t.deadline_ms, token.to_string());
        t.deadline_ms = now_ms.saturating_add(self.ttl_ms);
        let user = t.user.clone();
        self.deadlines.remove(&old);
        self.deadlines.insert((t.deadline_ms, old.1), ());
        Some(user)
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

    /// Forgets tokens unused for their TTL.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let ((_, token), ()) = entry.remove_entry();
            self.tokens.remove(&token);
        }
    }

    fn remove(&mut self, token: &str) {
        if let Some(t) = self.tokens.remove(token) {
            self.deadlines.remove(&(t.deadline_ms, token.to_string()));
        }
    }

    /// The two indexes agree.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.tokens.len(),
            self.deadlines.len(),
            "token table and deadline index differ in size"
        );
        for ((deadline, token), ()) in &self.deadlines {
            let t = self.tokens.get(token);
            assert!(
                t.is_some_and(|t| t.deadline_ms == *deadline),
                "deadline index names a token it does not hold"
            );
        }
    }
}
