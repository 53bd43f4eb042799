//! Revisions: the logical clock of the MVCC store.
//!
//! Every write transaction gets one `main` revision; each change inside it gets the next `sub`
//! revision, starting at 0. Revisions order first by `main`, then by `sub`:
//!
//! ```
//! use keel_engine::mvcc::Revision;
//! let put_a = Revision::new(5, 0); // first change of the txn at revision 5
//! let put_b = Revision::new(5, 1); // second change of the same txn
//! let next = Revision::new(6, 0);
//! assert!(put_a < put_b && put_b < next);
//! assert_eq!(put_b.to_bytes()[..8], 5i64.to_be_bytes());
//! ```

/// A point in the store's history: `main` is the transaction, `sub` the change within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The write transaction's revision (etcd's `main`); the store's revision counter.
    pub main: i64,
    /// The change's position within its write transaction, from 0.
    pub sub: i64,
}

impl Revision {
    /// Builds a revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The 16-byte big-endian encoding (`main` then `sub`); byte order equals revision order.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}
