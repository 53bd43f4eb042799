//! The lease section of a state snapshot, from an O(1) view of the leases
//! ([`crate::lease::lessor::Lessor::view`]), encoded off the driver loop.
//!
//! Layout (big-endian): `count u64 | per lease: id i64 | ttl i64 | remaining i64 |
//! key_count u32 | per key: len u32, bytes`, leases by ascending id, keys in byte order.

use crate::lease::lessor::LeasesView;
use crate::sink::{Counter, Sink};

/// Every lease as of one moment, ready to encode (see the module doc for the layout).
#[derive(Clone, Debug, Default)]
pub struct LeaseSection {
    view: LeasesView,
}

impl LeaseSection {
    /// The section of these leases.
    pub fn new(view: LeasesView) -> LeaseSection {
        LeaseSection { view }
    }

    /// The encoded section, whole.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let Ok(()) = self.write(&mut out);
        out
    }

    /// The encoded length, from a walk that stores nothing.
    pub fn encoded_len(&self) -> u64 {
        let mut counter = Counter::default();
        let Ok(()) = self.write(&mut counter);
        counter.0
    }

    /// Puts the encoded section into `out`, in order.
    pub fn write<S: Sink>(&self, out: &mut S) -> Result<(), S::Error> {
        out.put(&(self.view.len() as u64).to_be_bytes())?;
        for lease in self.view.iter() {
            out.put(&lease.id.to_be_bytes())?;
            out.put(&lease.ttl_s.to_be_bytes())?;
            out.put(&lease.remaining_ttl_s.to_be_bytes())?;
            let keys = u32::try_from(lease.keys.len()).unwrap_or(u32::MAX);
            out.put(&keys.to_be_bytes())?;
            for key in &lease.keys {
                let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
                out.put(&len.to_be_bytes())?;
                out.put(key)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keel_proto::etcdserverpb::LeaseGrantRequest;

    use crate::lease::Leases;
    use crate::mvcc::{KeyRange, Store};

    /// The encoding as it was written before the section was streamed (the reference).
    fn reference(leases: &Leases) -> Vec<u8> {
        let lessor = leases.lessor();
        let mut out = Vec::new();
        out.extend_from_slice(&(lessor.len() as u64).to_be_bytes());
        for id in lessor.ids() {
            let Some(lease) = lessor.get(id) else {
                continue;
            };
            out.extend_from_slice(&lease.id.to_be_bytes());
            out.extend_from_slice(&lease.ttl_s.to_be_bytes());
            out.extend_from_slice(&lease.remaining_ttl_s.to_be_bytes());
            out.extend_from_slice(&(lease.keys.len() as u32).to_be_bytes());
            for key in &lease.keys {
                out.extend_from_slice(&(key.len() as u32).to_be_bytes());
                out.extend_from_slice(key);
            }
        }
        out
    }

    #[test]
    fn the_section_encodes_as_before_and_a_view_stays_put() {
        let mut leases = Leases::new(2, 1);
        let mut store = Store::new();
        for id in 1..=40 {
            let grant = LeaseGrantRequest { ttl: 60 + id, id };
            leases.apply_grant(&grant, 0).expect("grant");
            let mut txn = store.write();
            for k in 0..id % 5 {
                let key = format!("k{:03}-{k}", 41 - id);
                txn.put(key.as_bytes(), Bytes::from_static(b"v"), id);
            }
            leases.observe(&txn.end().events);
        }
        leases.set_leader(true, 0, 0);
        let section = leases.section();
        let before = reference(&leases);
        assert_eq!(section.encode(), before, "as the reference encodes");
        assert_eq!(section.encoded_len(), before.len() as u64);
        leases.apply_revoke(&mut store, 7).expect("revoke");
        leases.observe(&store.take_events());
        store.write().delete_range(KeyRange::Interval(b"k", None));
        leases.observe(&store.take_events());
        leases.set_leader(false, 10, 0);
        leases.check_invariants();
        assert_ne!(reference(&leases), before, "the leases changed");
        assert_eq!(section.encode(), before, "the view did not");
        let mut restored = Leases::new(2, 1);
        restored.restore_section(&before).expect("restores");
        restored.check_invariants();
        assert_eq!(restored.encode_section(), before, "round trip");
    }
}
