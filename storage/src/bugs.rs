//! Deliberate bugs for the simulator to catch (simulation builds only: `--cfg madsim`).
//!
//! Every checker must prove it can fail (STYLE.md rule 14). keel-sim's `--bug NAME` switches
//! one of these on for the run; the code paths that misbehave look the switch up here. This
//! module lives in keel-storage, the lowest crate, so the WAL (here) and the driver
//! (keel-server) can both see it without new dependencies. The engine cannot see it; the server
//! passes the engine's bug to it (`Node::inject_stale_reads`).
//!
//! The switch is thread-local: madsim runs a whole simulated cluster on the thread that calls
//! `Runtime::block_on`, so parallel tests on other threads never see each other's bugs. A
//! production build does not compile this module, so nothing can turn a bug on there.

use std::cell::Cell;

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
}

impl Bug {
    /// Every bug, in CLI order.
    pub const ALL: [Bug; 8] = [
        Bug::AckBeforeFsync,
        Bug::SkipCrc,
        Bug::StaleRead,
        Bug::WatchSkipCompactionBoundary,
        Bug::LeaseExpireOnFollowerClock,
        Bug::ReadIndexSkipHeartbeat,
        Bug::CommitWithoutQuorum,
        Bug::ForgetVote,
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
        }
    }

    /// The bug named `name`, if any.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }

    fn bit(self) -> u8 {
        match self {
            Bug::AckBeforeFsync => 1,
            Bug::SkipCrc => 2,
            Bug::StaleRead => 4,
            Bug::WatchSkipCompactionBoundary => 8,
            Bug::LeaseExpireOnFollowerClock => 16,
            Bug::ReadIndexSkipHeartbeat => 32,
            Bug::CommitWithoutQuorum => 64,
            Bug::ForgetVote => 128,
        }
    }
}

thread_local! {
    static ENABLED: Cell<u8> = const { Cell::new(0) };
}

/// Turns exactly the given bugs on for this thread (an empty slice turns every bug off).
pub fn set(bugs: &[Bug]) {
    let bits = bugs.iter().fold(0u8, |acc, b| acc | b.bit());
    ENABLED.with(|e| e.set(bits));
}

/// Whether `bug` is on for this thread.
pub fn enabled(bug: Bug) -> bool {
    ENABLED.with(|e| e.get() & bug.bit() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_switch_is_per_thread() {
        for b in Bug::ALL {
            assert_eq!(Bug::from_name(b.name()), Some(b));
        }
        set(&[Bug::SkipCrc]);
        assert!(enabled(Bug::SkipCrc) && !enabled(Bug::StaleRead));
        let other = std::thread::spawn(|| enabled(Bug::SkipCrc)).join();
        assert_eq!(other.ok(), Some(false));
        set(&[]);
        assert!(!enabled(Bug::SkipCrc));
    }
}
