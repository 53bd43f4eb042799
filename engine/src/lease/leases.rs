//! The node's lease state: the [`Lessor`], which key is attached to which lease, and the
//! leader's bookkeeping of revokes it has proposed. Pure; the node feeds it applied entries,
//! MVCC events and the time.
//!
//! Keys are attached and detached from the MVCC events of every applied write, so the rule is
//! in one place whatever wrote the key (put, txn, delete, revoke):
//!
//! ```text
//! PUT  k lease=L   k moves to L (detached from its previous lease, if different)
//! PUT  k lease=0   k is detached from its previous lease
//! DEL  k           k is detached from its lease
//! ```

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use keel_proto::etcdserverpb::{
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use keel_proto::mvccpb::{event::EventType, Event};

use super::lessor::Lessor;
use super::section::LeaseSection;
use crate::apply::LeaseLookup;
use crate::error::Error;
use crate::mvcc::{KeyRange, Store};
use crate::rng::SplitMix64;

/// Revokes the leader proposes per tick, at most.
pub const REVOKES_PER_TICK_MAX: usize = 100;
/// Checkpoints the leader proposes per tick, at most.
pub const CHECKPOINTS_PER_TICK_MAX: usize = 100;

/// Every lease and its keys, as of the applied index.
#[derive(Debug, Clone)]
pub struct Leases {
    lessor: Lessor,
    /// key → the lease it is attached to (only keys with a lease).
    key_leases: BTreeMap<Bytes, i64>,
    /// Leases whose revoke the leader has proposed and not yet seen applied.
    revoking: BTreeSet<i64>,
    ids: SplitMix64,
}

impl LeaseLookup for Leases {
    fn exists(&self, id: i64) -> bool {
        self.lessor.get(id).is_some()
    }
}

/// What the leader should propose this tick.
#[derive(Debug, Default, PartialEq)]
pub struct LeaderWork {
    /// Leases to revoke (expired).
    pub revoke: Vec<i64>,
    /// Remaining-TTL checkpoints to record.
    pub checkpoint: Option<LeaseCheckpointRequest>,
}

impl Leases {
    /// No leases; `min_ttl_s` is etcd's minimum TTL, `seed` decides the ids this member picks.
    pub fn new(min_ttl_s: i64, seed: u64) -> Leases {
        Leases {
            lessor: Lessor::new(min_ttl_s),
            key_leases: BTreeMap::new(),
            revoking: BTreeSet::new(),
            ids: SplitMix64::new(seed ^ 0x1ea5e),
        }
    }

    /// The lessor (read-only).
    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    /// A fresh lease id for a grant that asked for none: positive, non-zero, unused here.
    pub fn choose_id(&mut self) -> i64 {
        loop {
            let id = (self.ids.next_u64() >> 1) as i64;
            if id != 0 && self.lessor.get(id).is_none() {
                return id;
            }
        }
    }

    /// Applied LeaseGrant (its id already chosen).
    pub fn apply_grant(
        &mut self,
        req: &LeaseGrantRequest,
        now_ms: u64,
    ) -> Result<LeaseGrantResponse, Error> {
        let ttl = self.lessor.grant(req.id, req.ttl, now_ms)?;
        Ok(LeaseGrantResponse {
            id: req.id,
            ttl,
            ..Default::default()
        })
    }

    /// Applied LeaseRevoke: removes the lease and deletes its keys in one MVCC write (one
    /// revision, even for many keys). The deletes' events stay in the store for the caller to
    /// [`observe`](Leases::observe).
    pub fn apply_revoke(
        &mut self,
        store: &mut Store,
        id: i64,
    ) -> Result<LeaseRevokeResponse, Error> {
        self.revoking.remove(&id);
        let keys = self.lessor.revoke(id)?;
        let mut txn = store.write();
        for key in &keys {
            // Both sides at once: the lease is gone, so no key may still point at it (the
            // delete events then find these keys detached already).
            let attached = self.key_leases.remove(key);
            assert_eq!(
                attached,
                Some(id),
                "key {key:?} of lease {id:x} pointed elsewhere"
            );
            let deleted = txn.delete_range(KeyRange::Single(key));
            assert_eq!(deleted, 1, "key {key:?} of lease {id:x} did not exist");
        }
        let outcome = txn.end();
        // Left in the store like every write's events: the node detaches the keys from them.
        store.set_applied_events(outcome.events);
        Ok(LeaseRevokeResponse::default())
    }

    /// Applied LeaseCheckpoint.
    pub fn apply_checkpoint(&mut self, req: &LeaseCheckpointRequest) {
        for c in &req.checkpoints {
            self.lessor.checkpoint(c.id, c.remaining_ttl);
        }
    }

    /// Attaches and detaches keys after an applied write, from its MVCC events.
    pub fn observe(&mut self, events: &[Event]) {
        for event in events {
            let Some(kv) = &event.kv else { continue };
            let is_put = event.r#type == EventType::Put as i32;
            let new_lease = if is_put { kv.lease } else { 0 };
            let old_lease = if new_lease != 0 {
                self.key_leases.insert(kv.key.clone(), new_lease)
            } else {
                self.key_leases.remove(&kv.key)
            };
            if let Some(old) = old_lease.filter(|old| *old != new_lease) {
                let listed = self.lessor.get(old).map(|l| l.keys.contains(&kv.key));
                assert_eq!(
                    listed,
                    Some(true),
                    "key {:?} pointed at lease {old:x}, which did not list it",
                    kv.key
                );
                self.lessor.detach(old, &kv.key);
            }
            if new_lease != 0 && self.lessor.attach(new_lease, kv.key.clone()).is_err() {
                // apply::put validated the lease; a missing one here is a bug.
                panic!("key attached to unknown lease {new_lease:x}");
            }
        }
    }

    /// This member became leader (`true`) or stopped being leader, at `now_ms`; a new leader
    /// extends every lease by `extend_ms` beyond its remaining TTL.
    pub fn set_leader(&mut self, leader: bool, now_ms: u64, extend_ms: u64) {
        self.revoking.clear();
        if leader {
            self.lessor.promote(now_ms, extend_ms);
        } else {
            self.lessor.demote();
        }
    }

    /// Leader: what to propose at `now_ms` (expired leases not already being revoked, due
    /// checkpoints). Marks the revokes as in flight.
    pub fn leader_work(&mut self, now_ms: u64) -> LeaderWork {
        let mut work = LeaderWork::default();
        if !self.lessor.is_primary() {
            return work;
        }
        let expired = self
            .lessor
            .expired(now_ms, REVOKES_PER_TICK_MAX + self.revoking.len());
        for id in expired {
            if work.revoke.len() >= REVOKES_PER_TICK_MAX {
                break;
            }
            if self.revoking.insert(id) {
                work.revoke.push(id);
            }
        }
        let due = self
            .lessor
            .checkpoints_due(now_ms, CHECKPOINTS_PER_TICK_MAX);
        if !due.is_empty() {
            let checkpoints = due
                .into_iter()
                .map(
                    |(id, remaining_ttl)| keel_proto::etcdserverpb::LeaseCheckpoint {
                        id,
                        remaining_ttl,
                    },
                )
                .collect();
            work.checkpoint = Some(LeaseCheckpointRequest { checkpoints });
        }
        work
    }

    /// The leader could not propose the revoke of `id`; it will try again.
    pub fn revoke_not_proposed(&mut self, id: i64) {
        self.revoking.remove(&id);
    }

    /// Leader: a keepalive. etcd answers an unknown or expired lease with TTL 0 (the client
    /// library turns that into "requested lease not found").
    pub fn keep_alive(&mut self, id: i64, now_ms: u64) -> Result<LeaseKeepAliveResponse, Error> {
        let ttl = match self.lessor.renew(id, now_ms) {
            Ok(ttl) => ttl,
            Err(Error::LeaseNotFound) => 0,
            Err(e) => return Err(e),
        };
        Ok(LeaseKeepAliveResponse {
            id,
            ttl,
            ..Default::default()
        })
    }

    /// LeaseTimeToLive at `stamp_ms` (stamped like grants and renewals); the remaining TTL is
    /// rounded down as etcd's is ([`Lessor::time_to_live`]). An unknown lease answers TTL -1,
    /// as etcd does.
    pub fn time_to_live(
        &self,
        req: &LeaseTimeToLiveRequest,
        stamp_ms: u64,
    ) -> LeaseTimeToLiveResponse {
        let Some((granted, remaining)) = self.lessor.time_to_live(req.id, stamp_ms) else {
            return LeaseTimeToLiveResponse {
                id: req.id,
                ttl: -1,
                ..Default::default()
            };
        };
        let keys = match (req.keys, self.lessor.get(req.id)) {
            (true, Some(lease)) => lease.keys.iter().cloned().collect(),
            _ => Vec::new(),
        };
        LeaseTimeToLiveResponse {
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
            ..Default::default()
        }
    }

    /// Panics, with a message naming what is wrong, unless the lessor's own invariants hold
    /// (see [`Lessor::check_invariants`]), every key attachment is recorded on both sides
    /// (the key points at the lease and the lease lists the key), and every revoke in flight
    /// is the leader's, of a lease that exists.
    ///
    /// Meant for tests and the simulator: O((leases + attached keys) × log keys) time.
    pub fn check_invariants(&self) {
        self.lessor.check_invariants();
        let mut listed = 0;
        for id in self.lessor.ids() {
            let Some(lease) = self.lessor.get(id) else {
                panic!("lease {id:x} listed but not found");
            };
            for key in &lease.keys {
                assert_eq!(
                    self.key_leases.get(key),
                    Some(&id),
                    "lease {id:x} lists key {key:?}, which points elsewhere"
                );
            }
            listed += lease.keys.len();
        }
        // Every listed key points back at its lease (above), so equal counts mean every
        // pointing key is listed too.
        assert_eq!(
            listed,
            self.key_leases.len(),
            "keys pointing at leases against keys the leases list"
        );
        for &id in &self.revoking {
            assert!(
                self.lessor.is_primary(),
                "a follower with revoke {id:x} in flight"
            );
            assert!(
                self.lessor.get(id).is_some(),
                "revoke in flight of unknown lease {id:x}"
            );
        }
    }

    /// LeaseLeases: every lease id.
    pub fn list(&self) -> LeaseLeasesResponse {
        let leases = self.lessor.ids().map(|id| LeaseStatus { id }).collect();
        LeaseLeasesResponse {
            leases,
            ..Default::default()
        }
    }
}

/// Why a lease snapshot could not be restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lease snapshot: {0}")]
pub struct LeaseSectionError(&'static str);

impl Leases {
    /// Encodes every lease (id, granted TTL, checkpointed remaining TTL, keys) for a
    /// state-machine snapshot. Expiry times are not included: they are the leader's, and a
    /// member that becomes leader extends every lease from its own clock (etcd's promote).
    ///
    /// Layout (big-endian): `count u64 | per lease: id i64 | ttl i64 | remaining i64 |
    /// key_count u32 | per key: len u32, bytes`.
    pub fn encode_section(&self) -> Vec<u8> {
        self.section().encode()
    }

    /// The lease section as of now, not yet encoded: O(1), a copy-on-write view.
    pub fn section(&self) -> LeaseSection {
        LeaseSection::new(self.lessor.view())
    }

    /// Replaces every lease by those of a snapshot (see [`Leases::encode_section`]). The
    /// member is not primary afterwards; the node promotes it again if it leads.
    pub fn restore_section(&mut self, bytes: &[u8]) -> Result<(), LeaseSectionError> {
        let mut lessor = Lessor::new(self.lessor.min_ttl_s());
        let mut key_leases = BTreeMap::new();
        let mut r = bytes;
        let count = take_u64(&mut r)?;
        for _ in 0..count {
            let id = take_u64(&mut r)? as i64;
            let ttl = take_u64(&mut r)? as i64;
            let remaining = take_u64(&mut r)? as i64;
            if id == 0 || ttl <= 0 {
                return Err(LeaseSectionError("lease with id 0 or a non-positive TTL"));
            }
            lessor
                .restore(id, ttl, remaining)
                .map_err(|_| LeaseSectionError("duplicate lease id"))?;
            let keys = take_u32(&mut r)?;
            for _ in 0..keys {
                let len = take_u32(&mut r)? as usize;
                let key = Bytes::copy_from_slice(take(&mut r, len)?);
                if key_leases.insert(key.clone(), id).is_some() {
                    return Err(LeaseSectionError("a key attached to two leases"));
                }
                lessor
                    .attach(id, key)
                    .map_err(|_| LeaseSectionError("key of an unknown lease"))?;
            }
        }
        if !r.is_empty() {
            return Err(LeaseSectionError("trailing bytes"));
        }
        self.lessor = lessor;
        self.key_leases = key_leases;
        self.revoking.clear();
        Ok(())
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], LeaseSectionError> {
    if r.len() < n {
        return Err(LeaseSectionError("truncated"));
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

fn take_u64(r: &mut &[u8]) -> Result<u64, LeaseSectionError> {
    let b = take(r, 8)?;
    Ok(u64::from_be_bytes(
        b.try_into().map_err(|_| LeaseSectionError("truncated"))?,
    ))
}

fn take_u32(r: &mut &[u8]) -> Result<u32, LeaseSectionError> {
    let b = take(r, 4)?;
    Ok(u32::from_be_bytes(
        b.try_into().map_err(|_| LeaseSectionError("truncated"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply;
    use keel_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn put(key: &str, lease: i64) -> PutRequest {
        PutRequest {
            key: key.to_owned().into(),
            value: "v".into(),
            lease,
            ..Default::default()
        }
    }

    fn apply_put(leases: &mut Leases, store: &mut Store, key: &str, lease: i64) {
        apply::put(store, &put(key, lease), leases).expect("put");
        let events = store.take_events();
        leases.observe(&events);
    }

    fn count(store: &Store, prefix: &str) -> i64 {
        let req = RangeRequest {
            key: prefix.to_owned().into(),
            range_end: "\0".into(),
            count_only: true,
            ..Default::default()
        };
        apply::range(store, &req).expect("range").count
    }

    #[test]
    fn revoke_deletes_exactly_the_attached_keys_in_one_revision() {
        let (mut leases, mut store) = (Leases::new(2, 1), Store::new());
        leases.set_leader(true, 0, 0);
        let grant = LeaseGrantRequest { id: 5, ttl: 10 };
        assert_eq!(leases.apply_grant(&grant, 0).expect("grant").ttl, 10);
        apply_put(&mut leases, &mut store, "a", 5);
        apply_put(&mut leases, &mut store, "b", 5);
        apply_put(&mut leases, &mut store, "c", 5);
        apply_put(&mut leases, &mut store, "c", 0); // moved off the lease
        apply::delete_range(
            &mut store,
            &DeleteRangeRequest {
                key: "b".into(),
                ..Default::default()
            },
        )
        .expect("delete");
        let events = store.take_events();
        leases.observe(&events);
        apply_put(&mut leases, &mut store, "plain", 0);
        let before = store.current_revision();

        leases.apply_revoke(&mut store, 5).expect("revoke");
        assert_eq!(
            store.current_revision(),
            before + 1,
            "one revision for the revoke"
        );
        assert_eq!(count(&store, "a"), 2, "a is gone; c and plain stay");
        assert_eq!(
            leases.apply_revoke(&mut store, 5),
            Err(Error::LeaseNotFound)
        );
    }

    #[test]
    fn a_put_with_an_unknown_lease_is_refused() {
        let (leases, mut store) = (Leases::new(2, 1), Store::new());
        assert_eq!(
            apply::put(&mut store, &put("a", 9), &leases),
            Err(Error::LeaseNotFound)
        );
    }

    #[test]
    fn leader_work_proposes_each_expired_lease_once() {
        let (mut leases, _) = (Leases::new(1, 1), Store::new());
        leases.set_leader(true, 0, 0);
        leases
            .apply_grant(&LeaseGrantRequest { id: 1, ttl: 1 }, 0)
            .expect("grant");
        assert_eq!(leases.leader_work(999).revoke, Vec::<i64>::new());
        assert_eq!(leases.leader_work(1_000).revoke, vec![1]);
        assert_eq!(
            leases.leader_work(1_100).revoke,
            Vec::<i64>::new(),
            "already proposed"
        );
        leases.revoke_not_proposed(1);
        assert_eq!(leases.leader_work(1_200).revoke, vec![1], "proposed again");
        leases.set_leader(false, 1_300, 0);
        assert_eq!(
            leases.leader_work(9_999).revoke,
            Vec::<i64>::new(),
            "followers never"
        );
    }

    #[test]
    fn keep_alive_and_time_to_live_answer_like_etcd_for_unknown_leases() {
        let mut leases = Leases::new(2, 1);
        leases.set_leader(true, 0, 0);
        assert_eq!(leases.keep_alive(77, 0).expect("leader").ttl, 0);
        let ttl = leases.time_to_live(&LeaseTimeToLiveRequest { id: 77, keys: true }, 0);
        assert_eq!((ttl.id, ttl.ttl), (77, -1));
        let id = leases.choose_id();
        assert!(id > 0);
        leases
            .apply_grant(&LeaseGrantRequest { id, ttl: 30 }, 0)
            .expect("grant");
        assert_eq!(leases.keep_alive(id, 10_000).expect("leader").ttl, 30);
        let ttl = leases.time_to_live(&LeaseTimeToLiveRequest { id, keys: false }, 20_000);
        // Renewed at 10 s for 30 s, asked at 20 s: etcd (a nanosecond clock, truncated) says 19.
        assert_eq!((ttl.granted_ttl, ttl.ttl), (30, 19));
        assert_eq!(leases.list().leases, vec![LeaseStatus { id }]);
    }

    fn grant(leases: &mut Leases, id: i64) {
        leases
            .apply_grant(&LeaseGrantRequest { id, ttl: 10 }, 0)
            .expect("grant");
    }

    #[test]
    fn invariants_hold_through_puts_moves_deletes_revokes_and_snapshots() {
        let (mut leases, mut store) = (Leases::new(2, 1), Store::new());
        leases.set_leader(true, 0, 0);
        grant(&mut leases, 5);
        grant(&mut leases, 6);
        apply_put(&mut leases, &mut store, "a", 5);
        apply_put(&mut leases, &mut store, "b", 5);
        apply_put(&mut leases, &mut store, "b", 6); // moved
        apply_put(&mut leases, &mut store, "c", 6);
        apply_put(&mut leases, &mut store, "c", 0); // detached
        leases.check_invariants();
        assert_eq!(leases.leader_work(60_000).revoke, vec![5, 6]);
        leases.check_invariants();
        leases.apply_revoke(&mut store, 5).expect("revoke");
        leases.check_invariants();
        let events = store.take_events();
        leases.observe(&events);
        leases.check_invariants();
        let mut restored = Leases::new(2, 2);
        restored
            .restore_section(&leases.encode_section())
            .expect("restore");
        restored.check_invariants();
        leases.set_leader(false, 70_000, 0);
        leases.check_invariants();
        assert_eq!(count(&store, ""), 2, "b (lease 6) and c are left");
    }

    #[test]
    #[should_panic(expected = "points elsewhere")]
    fn a_key_a_lease_lists_without_pointing_at_it_is_caught() {
        let mut leases = Leases::new(2, 1);
        grant(&mut leases, 5);
        leases
            .lessor
            .attach(5, Bytes::from_static(b"x"))
            .expect("attach");
        leases.check_invariants();
    }

    #[test]
    #[should_panic(expected = "keys pointing at leases against keys the leases list")]
    fn a_key_pointing_at_a_lease_that_does_not_list_it_is_caught() {
        let mut leases = Leases::new(2, 1);
        grant(&mut leases, 5);
        leases.key_leases.insert(Bytes::from_static(b"x"), 5);
        leases.check_invariants();
    }

    #[test]
    #[should_panic(expected = "which did not list it")]
    fn moving_a_key_off_a_lease_that_did_not_list_it_panics() {
        let mut leases = Leases::new(2, 1);
        grant(&mut leases, 5);
        grant(&mut leases, 6);
        leases.key_leases.insert(Bytes::from_static(b"x"), 5);
        let kv = crate::mvcc::KeyValue {
            key: Bytes::from_static(b"x"),
            lease: 6,
            ..Default::default()
        };
        leases.observe(&[crate::mvcc::put_event(kv)]);
    }
}
