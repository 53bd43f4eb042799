//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), etcd 3.4's
//! `v3compactor`, driven by the node's clock so that it is deterministic (the simulator's
//! clock in keel-sim).
//!
//! Every member runs it from its start; only the leader proposes (etcd pauses the compactor
//! on followers), and the compaction goes through the log like a client's.
//!
//! * **Periodic**, retention `R`: every `R/10` (with `R` capped at one hour for the interval:
//!   etcd's retry interval) the store's revision is sampled, keeping the last `R/(R/10) + 1`
//!   samples, so the oldest is the revision of `R` to `R + R/10` ago. The first compaction waits `R`
//!   after start; later ones come every `min(R, 1h)`, each to the oldest sample. Example, `R`
//!   = 1 h: samples every 6 min; at 1 h the leader compacts to the revision of the start, then
//!   every hour to the revision of an hour before.
//! * **Revision**, retention `N`: every 5 minutes the leader compacts to `current - N`, unless
//!   that is ≤ 0 or the revision it compacted to last time.
//!
//! A compaction to a revision already compacted is skipped (etcd counts its `ErrCompacted` as a
//! success). A proposal lost to a leader change is not retried before the next interval.

use std::collections::VecDeque;

use keel_proto::etcdserverpb::CompactionRequest;
use keel_proto::keelpb::raft_request::Request as LogRequest;

use super::types::AutoCompaction;
use super::Node;

/// Revision mode checks this often (etcd's `revInterval`).
pub const REVISION_CHECK_MS: u64 = 5 * 60 * 1000;
/// Periodic mode's intervals are capped at this (etcd: one hour).
pub const PERIODIC_INTERVAL_MAX_MS: u64 = 60 * 60 * 1000;
/// Periodic mode samples `retention / PERIODIC_SAMPLES_PER_INTERVAL` apart (etcd's
/// `retryDivisor`).
pub const PERIODIC_SAMPLES_PER_INTERVAL: u64 = 10;

/// The compactor's state.
#[derive(Debug, Clone)]
pub(super) struct Compactor {
    mode: AutoCompaction,
    /// When (node clock) it next acts.
    next_at_ms: u64,
    /// Periodic: revisions sampled, oldest first, at most `retentions`.
    revs: VecDeque<i64>,
    /// Periodic: when the last compaction was proposed (or the start).
    last_success_ms: u64,
    /// Periodic: the wait after `last_success_ms` (the retention first, then the interval).
    base_interval_ms: u64,
    /// Revision: the revision last compacted to.
    prev: i64,
}

impl Compactor {
    /// A compactor started at `now_ms` with the store at `revision`.
    pub(super) fn new(mode: AutoCompaction, now_ms: u64, revision: i64) -> Compactor {
        let mut c = Compactor {
            mode,
            next_at_ms: now_ms,
            revs: VecDeque::new(),
            last_success_ms: now_ms,
            base_interval_ms: 0,
            prev: 0,
        };
        match mode {
            AutoCompaction::Periodic { retention_ms } => {
                c.base_interval_ms = retention_ms;
                c.revs.push_back(revision);
                c.next_at_ms = now_ms + c.retry_ms();
            }
            AutoCompaction::Revision { .. } => c.next_at_ms = now_ms + REVISION_CHECK_MS,
        }
        c
    }

    /// Periodic: the sampling (and retry) interval, `min(R, 1h) / 10`, at least 1 ms.
    fn retry_ms(&self) -> u64 {
        match self.mode {
            AutoCompaction::Periodic { retention_ms } => {
                (retention_ms.min(PERIODIC_INTERVAL_MAX_MS) / PERIODIC_SAMPLES_PER_INTERVAL).max(1)
            }
            AutoCompaction::Revision { .. } => REVISION_CHECK_MS,
        }
    }

    /// Periodic: how many samples are kept (`R / retry + 1`).
    fn retentions(&self) -> usize {
        match self.mode {
            AutoCompaction::Periodic { retention_ms } => {
                (retention_ms / self.retry_ms()) as usize + 1
            }
            AutoCompaction::Revision { .. } => 0,
        }
    }

    /// Called on every tick: the compaction the leader should propose now, if any.
    /// `revision` and `compacted` are the store's current and compaction revisions.
    pub(super) fn tick(
        &mut self,
        now_ms: u64,
        leading: bool,
        revision: i64,
        compacted: i64,
    ) -> Option<LogRequest> {
        if now_ms < self.next_at_ms {
            return None;
        }
        self.next_at_ms = now_ms + self.retry_ms();
        let target = match self.mode {
            AutoCompaction::Periodic { .. } => self.periodic(now_ms, leading, revision),
            AutoCompaction::Revision { retention } => {
                let target = revision - retention;
                if !leading || target <= 0 || target == self.prev {
                    None
                } else {
                    self.prev = target;
                    Some(target)
                }
            }
        }?;
        if target <= compacted {
            return None; // etcd: ErrCompacted counts as done
        }
        tracing::info!(revision = target, mode = ?self.mode, "starting auto compaction");
        Some(LogRequest::Compaction(CompactionRequest {
            revision: target,
            physical: false,
        }))
    }

    /// One turn of etcd's periodic loop (the wait just ended): maybe compact to the oldest
    /// sample, then sample the revision for the next turn.
    fn periodic(&mut self, now_ms: u64, leading: bool, revision: i64) -> Option<i64> {
        let due = leading && now_ms - self.last_success_ms >= self.base_interval_ms;
        let target = if due {
            self.base_interval_ms = match self.mode {
                AutoCompaction::Periodic { retention_ms } => {
                    retention_ms.min(PERIODIC_INTERVAL_MAX_MS)
                }
                AutoCompaction::Revision { .. } => REVISION_CHECK_MS,
            };
            self.last_success_ms = now_ms;
            self.revs.front().copied()
        } else {
            None
        };
        self.revs.push_back(revision);
        while self.revs.len() > self.retentions() {
            self.revs.pop_front();
        }
        target
    }
}

impl Node {
    /// On every tick: the leader proposes the compaction its compactor asks for, if any.
    pub(super) fn auto_compact(&mut self) {
        let Some(compactor) = &mut self.compactor else {
            return;
        };
        let store = self.sm.store();
        let (revision, compacted) = (store.current_revision(), store.compact_revision());
        let leading = self.core.is_leader();
        if let Some(body) = compactor.tick(self.clock.now_ms, leading, revision, compacted) {
            // A lost proposal is proposed again at the next interval.
            let _ = self.propose_entry(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(r: Option<LogRequest>) -> Option<i64> {
        match r {
            Some(LogRequest::Compaction(c)) => Some(c.revision),
            _ => None,
        }
    }

    #[test]
    fn periodic_compacts_to_the_revision_of_a_retention_ago() {
        // Retention 10 s: samples every second, the first compaction at 10 s to the start's
        // revision, then every 10 s to the oldest of the 11 samples kept: taken 10 s before
        // the last one, 11 s before now, as etcd's. The revision is the second plus 100.
        let mut c = Compactor::new(
            AutoCompaction::Periodic {
                retention_ms: 10_000,
            },
            0,
            100,
        );
        let mut done = Vec::new();
        for s in 1..=30 {
            if let Some(rev) = target(c.tick(s * 1000, true, 100 + s as i64, -1)) {
                done.push((s, rev));
            }
        }
        assert_eq!(done, [(10, 100), (20, 109), (30, 119)]);
    }

    #[test]
    fn periodic_waits_while_following_and_skips_what_is_compacted() {
        let mode = AutoCompaction::Periodic {
            retention_ms: 10_000,
        };
        let mut c = Compactor::new(mode, 0, 100);
        for s in 1..=15 {
            assert_eq!(target(c.tick(s * 1000, false, 100 + s as i64, -1)), None);
        }
        // Leading from 16 s: due (15 s since start), to the oldest sample (11 samples kept:
        // 5 s ago .. now).
        assert_eq!(target(c.tick(16_000, true, 116, -1)), Some(105));
        let mut c = Compactor::new(mode, 0, 100);
        for s in 1..10 {
            c.tick(s * 1000, true, 100, 100);
        }
        assert_eq!(target(c.tick(10_000, true, 100, 100)), None, "compacted");
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_checked_every_five_minutes() {
        let mut c = Compactor::new(AutoCompaction::Revision { retention: 1000 }, 0, 1);
        assert_eq!(
            target(c.tick(REVISION_CHECK_MS - 100, true, 5000, -1)),
            None
        );
        assert_eq!(
            target(c.tick(REVISION_CHECK_MS, true, 5000, -1)),
            Some(4000)
        );
        let next = 2 * REVISION_CHECK_MS;
        assert_eq!(target(c.tick(next, true, 5000, 4000)), None, "same as last");
        assert_eq!(target(c.tick(3 * REVISION_CHECK_MS, true, 900, -1)), None);
        assert_eq!(
            target(c.tick(4 * REVISION_CHECK_MS, false, 9000, 4000)),
            None,
            "followers never propose"
        );
        assert_eq!(
            target(c.tick(5 * REVISION_CHECK_MS, true, 9000, 4000)),
            Some(8000)
        );
    }
}
