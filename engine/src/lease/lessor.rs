//! The lessor: every lease of the cluster, and — on the leader only — when each one expires.
//!
//! Two kinds of operations, kept apart on purpose:
//!
//! * **Applied** operations come from committed log entries and run identically on every member:
//!   [`Lessor::grant`], [`Lessor::revoke`], [`Lessor::checkpoint`], [`Lessor::attach`],
//!   [`Lessor::detach`]. They never read time except to set the leader's own expiry.
//! * **Primary** (leader-only) operations decide expiry from the time the driver passes in:
//!   [`Lessor::promote`], [`Lessor::demote`], [`Lessor::renew`], [`Lessor::expired`],
//!   [`Lessor::checkpoints_due`]. Expiry is never decided from a follower's clock: a follower's
//!   lessor has no expiries at all. An expired lease is revoked by *proposing* a revoke, so every
//!   member deletes its keys at the same log index.
//!
//! # Worked example (min TTL 2 s, one leader, times in ms)
//! ```
//! use keel_engine::lease::lessor::Lessor;
//! let mut l = Lessor::new(2);
//! l.promote(0, 0);                            // this member leads from t=0
//! assert_eq!(l.grant(7, 1, 0).unwrap(), 2);   // TTL below the minimum: granted 2 s
//! l.attach(7, b"svc/a".as_slice().into()).unwrap();
//! assert!(l.expired(1_999, 10).is_empty());   // not yet
//! assert_eq!(l.renew(7, 1_500).unwrap(), 2);  // keepalive: now expires at 3_500
//! assert!(l.expired(3_499, 10).is_empty());
//! assert_eq!(l.expired(3_500, 10), vec![7]);  // the driver proposes LeaseRevoke(7)
//! let keys = l.revoke(7).unwrap();            // applied: the caller deletes these keys
//! assert_eq!(keys, vec![bytes::Bytes::from_static(b"svc/a")]);
//! ```
//!
//! # Leader change
//! A new leader [`promote`](Lessor::promote)s with an `extend` (etcd uses the election
//! timeout): every lease gets `now + remaining + extend`, where `remaining` is the last
//! checkpointed remaining TTL if there is one, else the granted TTL. So a leader change never
//! shortens a lease, and extends it by at most one checkpoint interval plus `extend` — it never
//! extends it without bound, because long leases are checkpointed (see
//! [`Lessor::checkpoints_due`]).

use std::collections::BTreeSet;

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};

use crate::error::Error;

/// The largest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const LEASE_TTL_MAX_S: i64 = 9_000_000_000;
/// Leases the leader revokes per call of [`Lessor::expired`], at most (etcd: 1000 per second).
pub const REVOKES_PER_ROUND_MAX: usize = 1000;
/// A lease whose remaining TTL is at least this long gets its remaining TTL checkpointed
/// through the log every [`CHECKPOINT_INTERVAL_MS`] (etcd: 5 minutes).
pub const CHECKPOINT_INTERVAL_MS: u64 = 5 * 60 * 1000;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease id (non-zero).
    pub id: i64,
    /// The granted TTL, seconds (after the minimum was applied).
    pub ttl_s: i64,
    /// The remaining TTL last checkpointed through the log, seconds; 0 if never.
    pub remaining_ttl_s: i64,
    /// Keys attached to this lease (a persistent set: cloning a lease is O(1)).
    pub keys: OrdSet<Bytes>,
    /// When the lease expires (ms on the leader's monotonic clock); `None` on followers.
    expiry_ms: Option<u64>,
    /// When the leader next checkpoints it; `None` if it is not due for checkpoints.
    next_checkpoint_ms: Option<u64>,
}

/// Every lease, and the leader's expiry schedule.
#[derive(Debug, Clone)]
pub struct Lessor {
    min_ttl_s: i64,
    /// A persistent map, so [`Lessor::view`] is O(1).
    leases: OrdMap<i64, Lease>,
    /// (expiry ms, id) of every lease, leader only: ordered, so expiry is deterministic.
    expiries: BTreeSet<(u64, i64)>,
    primary: bool,
}

impl Lessor {
    /// An empty lessor; `min_ttl_s` is etcd's ⌈1.5 × election timeout⌉ in seconds.
    pub fn new(min_ttl_s: i64) -> Lessor {
        assert!(min_ttl_s > 0, "the minimum lease TTL must be positive");
        Lessor {
            min_ttl_s,
            leases: OrdMap::new(),
            expiries: BTreeSet::new(),
            primary: false,
        }
    }

    /// Whether this member's lessor is the primary (the leader's).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// The lease `id`, if it exists.
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.leases.keys().copied()
    }

    /// An O(1) copy-on-write view of every lease as it is now, for a state snapshot: it
    /// does not change whatever happens to the lessor afterwards.
    pub fn view(&self) -> LeasesView {
        LeasesView {
            leases: self.leases.clone(),
        }
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The TTL a grant of `ttl_s` gets: at least the minimum; an error above the maximum.
    pub fn effective_ttl(&self, ttl_s: i64) -> Result<i64, Error> {
        if ttl_s > LEASE_TTL_MAX_S {
            return Err(Error::LeaseTtlTooLarge);
        }
        Ok(ttl_s.max(self.min_ttl_s))
    }

    /// Applied: grants lease `id` (non-zero; the proposer chose it) with `ttl_s`; returns the
    /// granted TTL. On the leader the lease expires at `now_ms + ttl`.
    pub fn grant(&mut self, id: i64, ttl_s: i64, now_ms: u64) -> Result<i64, Error> {
        assert!(
            id != 0,
            "lease ids are chosen before proposing; 0 is 'no lease'"
        );
        let ttl_s = self.effective_ttl(ttl_s)?;
        if self.leases.contains_key(&id) {
            return Err(Error::LeaseExist);
        }
        let lease = Lease {
            id,
            ttl_s,
            remaining_ttl_s: 0,
            keys: OrdSet::new(),
            expiry_ms: None,
            next_checkpoint_ms: None,
        };
        self.leases.insert(id, lease);
        if self.primary {
            self.schedule(id, now_ms, ttl_s, 0);
        }
        Ok(ttl_s)
    }

    /// The minimum TTL this lessor grants, in seconds.
    pub fn min_ttl_s(&self) -> i64 {
        self.min_ttl_s
    }

    /// Restores lease `id` from a snapshot, as granted (`ttl_s`, already effective) with its
    /// checkpointed remaining TTL; not scheduled (a restored lessor is not primary).
    pub fn restore(&mut self, id: i64, ttl_s: i64, remaining_ttl_s: i64) -> Result<(), Error> {
        assert!(
            !self.primary,
            "leases are restored only on a member that does not lead"
        );
        if self.leases.contains_key(&id) {
            return Err(Error::LeaseExist);
        }
        let lease = Lease {
            id,
            ttl_s,
            remaining_ttl_s: remaining_ttl_s.clamp(0, ttl_s),
            keys: OrdSet::new(),
            expiry_ms: None,
            next_checkpoint_ms: None,
        };
        self.leases.insert(id, lease);
        Ok(())
    }

    /// Applied: removes lease `id` and returns its keys, which the caller deletes in one MVCC
    /// write (one revision).
    pub fn revoke(&mut self, id: i64) -> Result<Vec<Bytes>, Error> {
        let lease = self.leases.remove(&id).ok_or(Error::LeaseNotFound)?;
        if let Some(at) = lease.expiry_ms {
            let removed = self.expiries.remove(&(at, id));
            assert!(removed, "lease {id:x}: expiry {at} missing from the queue");
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// Applied: records lease `id`'s remaining TTL as of the checkpoint (ignored if the lease is
    /// gone: a revoke may have been committed first).
    pub fn checkpoint(&mut self, id: i64, remaining_ttl_s: i64) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.remaining_ttl_s = remaining_ttl_s.clamp(0, lease.ttl_s);
        }
    }

    /// Applied: attaches `key` to lease `id` (a put with this lease).
    pub fn attach(&mut self, id: i64, key: Bytes) -> Result<(), Error> {
        let lease = self.leases.get_mut(&id).ok_or(Error::LeaseNotFound)?;
        lease.keys.insert(key);
        Ok(())
    }

    /// Applied: detaches `key` from lease `id` (the key was deleted or put with another lease).
    /// Detaching from a lease that is gone is a no-op.
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Primary: this member became leader at `now_ms`. Every lease expires `extend_ms` after its
    /// remaining (checkpointed) or granted TTL from now.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        self.primary = true;
        // Every lease is scheduled afresh below: forget the old schedule on both sides.
        self.forget_schedule();
        let plans: Vec<(i64, i64, u64)> = self
            .leases
            .values()
            .map(|l| {
                let ttl = if l.remaining_ttl_s > 0 {
                    l.remaining_ttl_s
                } else {
                    l.ttl_s
                };
                (l.id, ttl, extend_ms)
            })
            .collect();
        for (id, ttl_s, extend_ms) in plans {
            self.schedule(id, now_ms, ttl_s, extend_ms);
        }
    }

    /// Primary: this member is no longer leader; it forgets every expiry (followers never
    /// expire leases).
    pub fn demote(&mut self) {
        self.primary = false;
        self.forget_schedule();
    }

    /// Clears every lease's expiry and checkpoint time, and the expiry queue.
    fn forget_schedule(&mut self) {
        self.expiries.clear();
        let ids: Vec<i64> = self.leases.keys().copied().collect();
        for id in ids {
            if let Some(lease) = self.leases.get_mut(&id) {
                lease.expiry_ms = None;
                lease.next_checkpoint_ms = None;
            }
        }
    }

    /// Primary: a keepalive for lease `id` at `now_ms`; returns the TTL granted again. Fails
    /// with `NotLeader` on a follower and `LeaseNotFound` for an unknown or already expired
    /// lease (its revoke is on its way through the log).
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Result<i64, Error> {
        if !self.primary {
            return Err(Error::NotLeader);
        }
        let lease = self.leases.get(&id).ok_or(Error::LeaseNotFound)?;
        let ttl_s = lease.ttl_s;
        if lease.expiry_ms.is_some_and(|at| at <= now_ms) {
            return Err(Error::LeaseNotFound);
        }
        self.schedule(id, now_ms, ttl_s, 0);
        if let Some(lease) = self.leases.get_mut(&id) {
            // A renewed lease starts over from its full TTL.
            lease.remaining_ttl_s = 0;
        }
        Ok(ttl_s)
    }

    /// Primary: up to `max` (and at most [`REVOKES_PER_ROUND_MAX`]) leases expired at
    /// `now_ms`, soonest first, for the driver to propose revoking. Empty on followers.
    pub fn expired(&self, now_ms: u64, max: usize) -> Vec<i64> {
        let max = max.min(REVOKES_PER_ROUND_MAX);
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Primary: up to `max` (id, remaining TTL in seconds) checkpoints due at `now_ms`, for the
    /// driver to propose; each is rescheduled one interval later.
    pub fn checkpoints_due(&mut self, now_ms: u64, max: usize) -> Vec<(i64, i64)> {
        let mut due = Vec::new();
        for lease in self.leases.values() {
            if due.len() >= max {
                break;
            }
            let (Some(next), Some(expiry)) = (lease.next_checkpoint_ms, lease.expiry_ms) else {
                continue;
            };
            if next > now_ms || expiry <= now_ms {
                continue;
            }
            let remaining_s = (expiry - now_ms).div_ceil(1000) as i64;
            due.push((lease.id, remaining_s));
        }
        for (id, _) in &due {
            if let Some(lease) = self.leases.get_mut(id) {
                lease.next_checkpoint_ms = Some(now_ms + CHECKPOINT_INTERVAL_MS);
            }
        }
        due
    }

    /// Lease `id`'s granted TTL and remaining TTL in seconds as this member sees it: the leader
    /// from its expiry; a follower reports the checkpointed remaining TTL, else the granted TTL.
    ///
    /// `stamp_ms` is stamped as grants and renewals are (the end of the current tick), so right
    /// after a grant the leader has exactly the TTL left by its clock. etcd reads a nanosecond
    /// clock and truncates, so some time has always passed: right after granting 10 s it says 9.
    /// keel says the same by counting a remainder of exactly whole seconds as just short of them.
    pub fn time_to_live(&self, id: i64, stamp_ms: u64) -> Option<(i64, i64)> {
        let lease = self.leases.get(&id)?;
        let remaining = match lease.expiry_ms {
            Some(at) => (at.saturating_sub(stamp_ms).saturating_sub(1) / 1000) as i64,
            None if lease.remaining_ttl_s > 0 => lease.remaining_ttl_s,
            None => lease.ttl_s,
        };
        Some((lease.ttl_s, remaining))
    }

    /// Sets lease `id` to expire `ttl_s` seconds plus `extend_ms` after `now_ms`.
    fn schedule(&mut self, id: i64, now_ms: u64, ttl_s: i64, extend_ms: u64) {
        assert!(self.primary, "only the leader schedules expiries");
        let Some(lease) = self.leases.get_mut(&id) else {
            panic!("scheduling unknown lease {id:x}");
        };
        if let Some(old) = lease.expiry_ms {
            let removed = self.expiries.remove(&(old, id));
            assert!(removed, "lease {id:x}: expiry {old} missing from the queue");
        }
        let ttl_ms = (ttl_s.max(0) as u64).saturating_mul(1000);
        let at = now_ms.saturating_add(ttl_ms).saturating_add(extend_ms);
        lease.expiry_ms = Some(at);
        lease.next_checkpoint_ms = (ttl_ms >= CHECKPOINT_INTERVAL_MS)
            .then(|| now_ms.saturating_add(CHECKPOINT_INTERVAL_MS));
        let added = self.expiries.insert((at, id));
        assert!(added, "lease {id:x}: expiry {at} queued twice");
    }

    /// Panics, with a message naming what is wrong, unless every lease is well formed and
    /// the expiry schedule and the leases agree both ways: on the leader every lease has an
    /// expiry and the queue holds exactly those; on a follower neither exists.
    ///
    /// Meant for tests and the simulator: O(leases) time, no allocation.
    pub fn check_invariants(&self) {
        assert!(
            self.min_ttl_s > 0,
            "minimum TTL {} not positive",
            self.min_ttl_s
        );
        for (&id, lease) in &self.leases {
            assert!(id != 0, "a lease with id 0");
            assert_eq!(lease.id, id, "lease {id:x} stored under another id");
            assert!(
                lease.ttl_s > 0,
                "lease {id:x}: TTL {} not positive",
                lease.ttl_s
            );
            assert!(
                (0..=lease.ttl_s).contains(&lease.remaining_ttl_s),
                "lease {id:x}: checkpointed remaining TTL {} outside [0, {}]",
                lease.remaining_ttl_s,
                lease.ttl_s
            );
            match lease.expiry_ms {
                Some(at) => {
                    assert!(self.primary, "follower lease {id:x} has an expiry");
                    assert!(
                        self.expiries.contains(&(at, id)),
                        "lease {id:x}: expiry {at} missing from the queue"
                    );
                }
                None => {
                    assert!(!self.primary, "leader lease {id:x} has no expiry");
                    assert!(
                        lease.next_checkpoint_ms.is_none(),
                        "lease {id:x}: a checkpoint scheduled without an expiry"
                    );
                }
            }
        }
        for &(at, id) in &self.expiries {
            let lease = self
                .leases
                .get(&id)
                .unwrap_or_else(|| panic!("expiry queue names unknown lease {id:x}"));
            assert_eq!(lease.expiry_ms, Some(at), "lease {id:x}: queued at {at}");
        }
    }
}

/// Every lease as of one moment ([`Lessor::view`]), for a state snapshot.
#[derive(Clone, Debug, Default)]
pub struct LeasesView {
    leases: OrdMap<i64, Lease>,
}

impl LeasesView {
    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every lease, by ascending id.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    #[test]
    fn grant_applies_etcds_minimum_and_maximum_and_refuses_duplicates() {
        let mut l = Lessor::new(2);
        assert_eq!(l.grant(1, 0, 0), Ok(2));
        assert_eq!(l.grant(2, 600, 0), Ok(600));
        assert_eq!(l.grant(1, 10, 0), Err(Error::LeaseExist));
        assert_eq!(
            l.grant(3, LEASE_TTL_MAX_S + 1, 0),
            Err(Error::LeaseTtlTooLarge)
        );
        assert_eq!(l.grant(3, LEASE_TTL_MAX_S, 0), Ok(LEASE_TTL_MAX_S));
        assert_eq!(l.ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn time_to_live_rounds_down_like_etcd() {
        let mut l = Lessor::new(2);
        l.promote(0, 0);
        assert_eq!(l.grant(1, 10, 5_000), Ok(10));
        // Asked at the grant's own stamp: etcd, a nanosecond later, says 9.
        assert_eq!(l.time_to_live(1, 5_000), Some((10, 9)));
        assert_eq!(l.time_to_live(1, 5_100), Some((10, 9)));
        assert_eq!(l.time_to_live(1, 6_000), Some((10, 8)));
        assert_eq!(l.time_to_live(1, 14_999), Some((10, 0)));
        assert_eq!(l.time_to_live(1, 15_000), Some((10, 0)));
        // A renewal answers the granted TTL, as etcd's keepalive does.
        assert_eq!(l.renew(1, 8_000), Ok(10));
        assert_eq!(l.time_to_live(1, 8_000), Some((10, 9)));
    }

    #[test]
    fn followers_never_expire_leases() {
        let mut l = Lessor::new(2);
        l.grant(1, 5, 0).expect("grant");
        assert!(
            l.expired(u64::MAX, 10).is_empty(),
            "a follower decides no expiry"
        );
        assert_eq!(l.renew(1, 0), Err(Error::NotLeader));
        assert_eq!(l.time_to_live(1, 1_000_000), Some((5, 5)));
    }

    #[test]
    fn the_leader_expires_in_order_and_renew_pushes_expiry_back() {
        let mut l = Lessor::new(1);
        l.promote(0, 0);
        l.grant(1, 10, 0).expect("grant");
        l.grant(2, 5, 0).expect("grant");
        l.grant(3, 5, 1_000).expect("grant");
        assert!(l.expired(4_999, 10).is_empty());
        assert_eq!(
            l.expired(6_000, 10),
            vec![2, 3],
            "soonest first, ties by id"
        );
        assert_eq!(l.renew(2, 4_000), Ok(5));
        assert_eq!(l.expired(6_000, 10), vec![3]);
        assert_eq!(l.expired(6_000, 0), Vec::<i64>::new(), "bounded by max");
        assert_eq!(
            l.renew(3, 6_000),
            Err(Error::LeaseNotFound),
            "expired: revoke is due"
        );
        assert_eq!(l.renew(9, 0), Err(Error::LeaseNotFound));
    }

    #[test]
    fn revoke_returns_attached_keys_and_detach_removes_them() {
        let mut l = Lessor::new(1);
        l.promote(0, 0);
        l.grant(1, 10, 0).expect("grant");
        l.attach(1, key("a")).expect("attach");
        l.attach(1, key("b")).expect("attach");
        l.detach(1, b"a");
        l.detach(42, b"b"); // no such lease: no-op
        assert_eq!(l.attach(42, key("x")), Err(Error::LeaseNotFound));
        assert_eq!(l.revoke(1), Ok(vec![key("b")]));
        assert_eq!(l.revoke(1), Err(Error::LeaseNotFound));
        assert!(
            l.expired(u64::MAX, 10).is_empty(),
            "a revoked lease leaves the queue"
        );
    }

    #[test]
    fn a_new_leader_extends_from_the_checkpoint_never_shortens() {
        // Leader 1 grants a 600 s lease at t=0 and checkpoints it at t=300 s (300 s left).
        let mut old = Lessor::new(2);
        old.promote(0, 0);
        old.grant(1, 600, 0).expect("grant");
        let due = old.checkpoints_due(CHECKPOINT_INTERVAL_MS, 10);
        assert_eq!(due, vec![(1, 300)]);

        // A follower applied the same entries; it becomes leader at t=310 s with extend 1 s.
        let mut new = Lessor::new(2);
        new.grant(1, 600, 0).expect("grant");
        new.checkpoint(1, 300);
        new.promote(310_000, 1_000);
        // Expires at 310 + 300 + 1 = 611 s: never before the old leader's 600 s.
        assert!(new.expired(610_999, 10).is_empty());
        assert_eq!(new.expired(611_000, 10), vec![1]);
        assert_eq!(new.time_to_live(1, 310_000), Some((600, 300)));
    }

    #[test]
    fn without_a_checkpoint_a_new_leader_restarts_the_full_ttl() {
        let mut l = Lessor::new(2);
        l.grant(1, 10, 0).expect("grant");
        l.promote(50_000, 1_000);
        assert_eq!(l.expired(60_999, 10), Vec::<i64>::new());
        assert_eq!(l.expired(61_000, 10), vec![1]);
        l.demote();
        assert!(
            l.expired(u64::MAX, 10).is_empty(),
            "a demoted member decides no expiry"
        );
        assert!(!l.is_primary());
    }

    #[test]
    fn short_leases_are_not_checkpointed_and_long_ones_are_once_per_interval() {
        let mut l = Lessor::new(1);
        l.promote(0, 0);
        l.grant(1, 60, 0).expect("grant");
        l.grant(2, 3_600, 0).expect("grant");
        assert!(l.checkpoints_due(CHECKPOINT_INTERVAL_MS - 1, 10).is_empty());
        assert_eq!(
            l.checkpoints_due(CHECKPOINT_INTERVAL_MS, 10),
            vec![(2, 3_300)]
        );
        assert!(
            l.checkpoints_due(CHECKPOINT_INTERVAL_MS + 1, 10).is_empty(),
            "once per interval"
        );
        assert_eq!(
            l.checkpoints_due(2 * CHECKPOINT_INTERVAL_MS, 10),
            vec![(2, 3_000)],
            "then again one interval later"
        );
    }

    #[test]
    fn invariants_hold_through_grants_renewals_and_leader_changes() {
        let mut l = Lessor::new(2);
        l.grant(1, 10, 0).expect("grant");
        l.attach(1, key("a")).expect("attach");
        l.check_invariants();
        l.promote(0, 0);
        l.grant(2, 600, 0).expect("grant");
        l.check_invariants();
        assert_eq!(l.renew(1, 500), Ok(10));
        assert_eq!(
            l.checkpoints_due(CHECKPOINT_INTERVAL_MS, 10),
            vec![(2, 300)]
        );
        l.checkpoint(2, 300);
        l.check_invariants();
        // Promoted again without a demote in between: the schedule is rebuilt, not doubled.
        l.promote(1_000, 1_000);
        l.check_invariants();
        assert_eq!(l.revoke(2), Ok(Vec::new()));
        l.check_invariants();
        l.demote();
        l.restore(3, 5, 9).expect("restore");
        l.check_invariants();
        assert_eq!(
            l.time_to_live(3, 0),
            Some((5, 5)),
            "remaining clamped to the TTL"
        );
    }

    #[test]
    #[should_panic(expected = "missing from the queue")]
    fn a_leader_lease_missing_from_the_expiry_queue_is_caught() {
        let mut l = Lessor::new(2);
        l.promote(0, 0);
        l.grant(1, 10, 0).expect("grant");
        l.expiries.clear();
        l.check_invariants();
    }

    #[test]
    #[should_panic(expected = "follower lease 1 has an expiry")]
    fn a_follower_lease_with_an_expiry_is_caught() {
        let mut l = Lessor::new(2);
        l.promote(0, 0);
        l.grant(1, 10, 0).expect("grant");
        l.primary = false;
        l.check_invariants();
    }
}
