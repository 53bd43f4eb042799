//! Deliberate bugs for the simulator to catch: the one bug-injection mechanism of keel.
//!
//! Every checker must prove it can fail (STYLE.md rule 14). keel-sim's `--bug NAME` puts the
//! named [`Bug`]s into the server's configuration (`keel_server::Config::bugs`), which hands
//! them to the engine ([`crate::node::NodeConfig::bugs`]), the driver and the WAL (its own
//! open option). The code paths that misbehave ask [`Bugs::has`].
//!
//! Only simulation builds (`--cfg madsim`) can turn a bug on. In every other build [`Bugs`] is
//! a zero-sized type that has no way to be enabled and whose [`Bugs::has`] is always `false`,
//! so the compiler removes the misbehaving branches.

/// A bug the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bug {
    /// The driver's WAL writer reports a batch durable before its write and fsync.
    AckBeforeFsync,
    /// The WAL's recovery accepts a record whose crc does not match.
    SkipCrc,
    /// The engine answers linearizable ranges from a copy of the store that is refreshed only
    /// every few applied entries.
    StaleRead,
    /// Watch catch-up from MVCC drops the delete events at exactly the compaction revision
    /// (etcd issue #19179).
    WatchSkipCompactionBoundary,
    /// Followers decide lease expiry from their own clocks and propose revokes, though
    /// keepalives renew leases only on the leader.
    LeaseExpireOnFollowerClock,
    /// Linearizable reads are served without confirming leadership (no heartbeat round).
    ReadIndexSkipHeartbeat,
    /// A leader applies and acknowledges entries once durable on its own disk, without a
    /// quorum.
    CommitWithoutQuorum,
    /// The vote is not made durable before the vote response leaves (and not at all): a
    /// member that restarts forgets whom it voted for in its current term.
    ForgetVote,
    /// The WAL segments a new snapshot of the member's own covers are released when its save
    /// starts, not once it is durable (and not only those before the previous snapshot): a
    /// power cut while it is written leaves a snapshot too old for the WAL that remains.
    ReleaseWalEarly,
    /// One member (the one with the lowest id among the bootstrap voters) applies one put
    /// wrongly: the first put it applies at revision 8 or later stores its value with a byte
    /// changed. Its store then differs from the others' (HashKV), which the corruption checks
    /// must catch with the `CORRUPT` alarm.
    ApplyWrong,
    /// Writes are checked against the auth store when they arrive instead of at apply: a put
    /// accepted before a revoke that lands between its arrival and its apply is applied
    /// without the permission.
    SkipApplyAuthCheck,
    /// v2 `quorum=true` reads are served from the member's own store, with no ReadIndex
    /// round: a follower behind the leader, or a deposed leader, answers stale.
    V2QuorumReadLocal,
    /// v2 compare-and-swap compares `prevIndex` with the key's `createdIndex`, not its
    /// `modifiedIndex`: a CAS on the index a client just read fails once the key has been
    /// swapped, and one on the key's creation index succeeds.
    V2CasCreatedIndex,
    /// Watch creation is not checked against the caller's read permission: a user watches a
    /// range it may not read.
    WatchCreateSkipAuth,
    /// UserChangePassword leaves the user's tokens valid (etcd 3.4 invalidates them): a
    /// token issued before the change is still served after it.
    KeepTokensOnPasswordChange,
    /// LeaseRevoke is not checked at apply for write permission on the lease's keys
    /// (etcd's `checkLeasePuts`): a user revokes a lease, deleting keys it may not write.
    LeaseRevokeSkipAuth,
}

impl Bug {
    /// Every bug, in CLI order.
    pub const ALL: [Bug; 16] = [
        Bug::AckBeforeFsync,
        Bug::SkipCrc,
        Bug::StaleRead,
        Bug::WatchSkipCompactionBoundary,
        Bug::LeaseExpireOnFollowerClock,
        Bug::ReadIndexSkipHeartbeat,
        Bug::CommitWithoutQuorum,
        Bug::ForgetVote,
        Bug::ReleaseWalEarly,
        Bug::ApplyWrong,
        Bug::SkipApplyAuthCheck,
        Bug::V2QuorumReadLocal,
        Bug::V2CasCreatedIndex,
        Bug::WatchCreateSkipAuth,
        Bug::KeepTokensOnPasswordChange,
        Bug::LeaseRevokeSkipAuth,
    ];

    /// The name used on the command line (`--bug NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::SkipCrc => "skip-crc",
            Bug::StaleRead => "stale-read",
            Bug::WatchSkipCompactionBoundary => "watch-skip-compaction-boundary",
            Bug::LeaseExpireOnFollowerClock => "lease-expire-on-follower-clock",
            Bug::ReadIndexSkipHeartbeat => "read-index-skip-heartbeat",
            Bug::CommitWithoutQuorum => "commit-without-quorum",
            Bug::ForgetVote => "forget-vote",
            Bug::ReleaseWalEarly => "release-wal-early",
            Bug::ApplyWrong => "apply-wrong",
            Bug::SkipApplyAuthCheck => "skip-apply-auth-check",
            Bug::V2QuorumReadLocal => "v2-quorum-read-local",
            Bug::V2CasCreatedIndex => "v2-cas-created-index",
            Bug::WatchCreateSkipAuth => "watch-create-skip-auth",
            Bug::KeepTokensOnPasswordChange => "keep-tokens-on-password-change",
            Bug::LeaseRevokeSkipAuth => "lease-revoke-skip-auth",
        }
    }

    /// The bug named `name`, if any.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }

    #[cfg(madsim)]
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of [`Bug`]s, carried in the engine's and the server's configuration. Simulation
/// builds only can put a bug in it ([`Bugs::of`]).
#[cfg(madsim)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs(u32);

/// A set of [`Bug`]s: always empty outside simulation builds (`--cfg madsim`).
#[cfg(not(madsim))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs;

impl Bugs {
    /// No bugs: what every production configuration carries.
    #[cfg(madsim)]
    pub fn none() -> Bugs {
        Bugs(0)
    }

    /// No bugs: what every production configuration carries.
    #[cfg(not(madsim))]
    pub fn none() -> Bugs {
        Bugs
    }

    /// Whether `bug` is in the set (never, outside simulation builds).
    #[cfg(madsim)]
    pub fn has(self, bug: Bug) -> bool {
        self.0 & bug.bit() != 0
    }

    /// Whether `bug` is in the set (never, outside simulation builds).
    #[cfg(not(madsim))]
    pub fn has(self, _bug: Bug) -> bool {
        false
    }

    /// Exactly the given bugs (simulation builds only).
    #[cfg(madsim)]
    pub fn of(bugs: &[Bug]) -> Bugs {
        Bugs(bugs.iter().fold(0, |acc, b| acc | b.bit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for b in Bug::ALL {
            assert_eq!(Bug::from_name(b.name()), Some(b));
        }
        assert_eq!(Bug::from_name("no-such-bug"), None);
    }

    #[test]
    fn no_bug_is_on_by_default() {
        for b in Bug::ALL {
            assert!(!Bugs::none().has(b), "{b:?} on by default");
        }
    }

    #[cfg(madsim)]
    #[test]
    fn a_set_holds_exactly_its_bugs() {
        let bugs = Bugs::of(&[Bug::SkipCrc, Bug::ForgetVote]);
        for b in Bug::ALL {
            assert_eq!(
                bugs.has(b),
                matches!(b, Bug::SkipCrc | Bug::ForgetVote),
                "{b:?}"
            );
        }
    }
}
