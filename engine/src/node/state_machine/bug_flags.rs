//! The simulator's bugs the apply path carries (`crate::bugs`; none is ever on outside
//! simulation builds): which are on, the stale copy of the `stale-read` bug, and the
//! state machine's methods that exist only for them.

use keel_proto::etcdserverpb::PutRequest;
use keel_proto::keelpb::raft_request;
use raft::eraftpb::{Entry, EntryType};

use super::StateMachine;
use crate::bugs::{Bug, Bugs};
use crate::mvcc::Store;
use crate::node::{Clock, Outbox};
use crate::watch::WatchHub;

/// A deliberately stale copy of the store: the simulator's `stale-read` bug.
struct StaleReads {
    /// The copy is refreshed every this many applied entries.
    every_applied: u64,
    applied_since_refresh: u64,
    copy: Store,
}

/// The bugs of the apply path that are on; all off in a production node.
pub(super) struct BugFlags {
    /// `stale-read`: linearizable ranges are served from this copy.
    stale_reads: Option<StaleReads>,
    /// `commit-without-quorum`: entries may be applied before raft commits them.
    pub(super) applies_ahead: bool,
    /// `apply-wrong`: the next put at revision 8 or later is applied with a changed value.
    applies_wrongly: bool,
    /// `skip-apply-auth-check`: writes are checked against the auth store only when they
    /// arrive.
    skips_apply_auth_check: bool,
    /// `keep-tokens-on-password-change`.
    pub(super) keeps_tokens_on_password_change: bool,
    /// `lease-revoke-skip-auth`.
    skips_lease_revoke_auth: bool,
}

impl BugFlags {
    /// The flags on from the start, so a replayed entry is applied as it was the first time
    /// (the others are armed once the node has started).
    pub(super) fn new(bugs: Bugs) -> BugFlags {
        BugFlags {
            stale_reads: None,
            applies_ahead: false,
            applies_wrongly: false,
            skips_apply_auth_check: bugs.has(Bug::SkipApplyAuthCheck),
            keeps_tokens_on_password_change: bugs.has(Bug::KeepTokensOnPasswordChange),
            skips_lease_revoke_auth: bugs.has(Bug::LeaseRevokeSkipAuth),
        }
    }

    /// Whether a bug lets `body` be applied without checking it against the auth store.
    pub(super) fn skips_auth_check(&self, body: &raft_request::Request) -> bool {
        self.skips_apply_auth_check
            || (self.skips_lease_revoke_auth
                && matches!(body, raft_request::Request::LeaseRevoke(_)))
    }

    /// The `apply-wrong` bug, once: changes the value of a put applied at `revision` 7 or
    /// later (so it becomes revision 8 or later).
    pub(super) fn maybe_apply_wrongly(&mut self, revision: i64, put: &mut PutRequest) {
        if self.applies_wrongly && revision >= 7 {
            self.applies_wrongly = false;
            let mut value = put.value.to_vec();
            value.push(b'!');
            put.value = value.into();
        }
    }

    /// The store was replaced (a snapshot installed): the stale copy starts again from it.
    pub(super) fn on_store_replaced(&mut self, store: &Store) {
        if let Some(stale) = &mut self.stale_reads {
            stale.copy = store.clone();
            stale.applied_since_refresh = 0;
        }
    }

    /// The stale copy linearizable ranges are served from (the `stale-read` bug).
    pub(super) fn stale_copy(&self) -> Option<&Store> {
        self.stale_reads.as_ref().map(|stale| &stale.copy)
    }

    /// One more entry applied: the stale copy is refreshed every so many.
    pub(super) fn on_applied(&mut self, store: &Store) {
        if let Some(stale) = &mut self.stale_reads {
            stale.applied_since_refresh += 1;
            if stale.applied_since_refresh >= stale.every_applied {
                stale.applied_since_refresh = 0;
                stale.copy = store.clone();
            }
        }
    }
}

impl StateMachine {
    /// The `stale-read` bug: linearizable ranges come from a copy of the store refreshed
    /// every `every_applied` applied entries.
    pub(in crate::node) fn serve_stale_reads(&mut self, every_applied: u64) {
        assert!(
            every_applied > 0,
            "stale copy refresh interval must be positive"
        );
        self.bugs.stale_reads = Some(StaleReads {
            every_applied,
            applied_since_refresh: 0,
            copy: self.store.clone(),
        });
    }

    /// The `apply-wrong` bug: the next put at revision 8 or later is applied wrongly.
    pub(in crate::node) fn apply_wrongly(&mut self) {
        self.bugs.applies_wrongly = true;
    }

    /// The `commit-without-quorum` bug: entries may be applied ahead of their commit.
    pub(in crate::node) fn apply_ahead(&mut self) {
        self.bugs.applies_ahead = true;
    }

    /// The `commit-without-quorum` bug: applies entries durable here but not (yet)
    /// committed. Conf changes wait for their commit.
    pub(in crate::node) fn apply_uncommitted(
        &mut self,
        entries: &[Entry],
        term: u64,
        clock: Clock,
        watches: &mut WatchHub,
        out: &mut Outbox,
    ) {
        for entry in entries {
            if entry.entry_type == EntryType::EntryNormal {
                self.apply_normal(entry, term, clock, watches, out);
            }
            assert!(
                entry.index == self.applied_index + 1,
                "applied index must advance by one: applied {}, entry {}",
                self.applied_index,
                entry.index
            );
            self.applied_index = entry.index; // the stale copy (another bug) is not refreshed
        }
    }
}
