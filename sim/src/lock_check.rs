//! Lock safety: no two holders of the simulator's lock overlap in revision order.
//!
//! A lock client that Lock answered then writes under the lock with a fenced txn: *if its
//! lock key still exists*, put the witness key. A holding that wrote is one the store proves:
//! its key was the oldest under the lock's prefix at the `acquired` revision (the Lock
//! answer's header) and still existed at `wrote` (the txn's revision), so the holder held the
//! lock over the whole of `[acquired, wrote]`. Two holders' such intervals must be disjoint:
//! whichever key is older existed throughout the other's interval, so the other could not have
//! been the oldest. A holder whose key was gone by its write (its lease ran out, or etcd 3.4's
//! waiter whose own key vanished while it waited) proves nothing and is not recorded.
//!
//! # Worked example
//! ```text
//! c0 acquired at 10, wrote at 11      [10, 11]
//! c1 acquired at 12, wrote at 14      [12, 14]   ok: 12 > 11
//! c2 acquired at 13, wrote at 15      [13, 15]   VIOLATION: 13 ≤ 14, c1 still held
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::check::{Failure, FailureKind};

/// The simulator's lock (its keys live under `LOCK_NAME/`, below the workload's `k*` keys and
/// so outside every watch client's range).
pub const LOCK_NAME: &str = "_lock";
/// The key holders write under the lock: in the workload's `k*` key space (before `k0`), so
/// the final read checks its durability, range watches see it, and the linearizability
/// checker sees the reads that return it.
pub const LOCK_WITNESS: &str = "k-lock";

/// One holding the store proves (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolding {
    /// The lock client.
    pub client: usize,
    /// Its lock key.
    pub key: String,
    /// The Lock answer's header revision.
    pub acquired: i64,
    /// The revision of the fenced write.
    pub wrote: i64,
}

impl fmt::Display for LockHolding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lock client {} held {} over revisions [{}, {}]",
            self.client, self.key, self.acquired, self.wrote
        )
    }
}

/// The holdings of a run, shared by its lock clients.
#[derive(Debug, Clone, Default)]
pub struct LockLog(Arc<Mutex<Vec<LockHolding>>>);

impl LockLog {
    /// Records a holding.
    pub fn push(&self, holding: LockHolding) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(holding);
    }

    /// Every holding recorded so far.
    pub fn holdings(&self) -> Vec<LockHolding> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The first two holdings that overlap in revision order, as a failure.
pub fn check_locks(holdings: &[LockHolding]) -> Option<Failure> {
    let mut sorted = holdings.to_vec();
    sorted.sort_by_key(|h| (h.acquired, h.wrote, h.client));
    // The holding reaching furthest so far: a later one must start after it ends.
    let mut furthest: Option<&LockHolding> = None;
    for h in &sorted {
        if let Some(before) = furthest {
            if h.acquired <= before.wrote {
                return Some(Failure::new(
                    FailureKind::LockOverlap,
                    format!(
                        "two lock holders overlap: client {} acquired at revision {} while \
                         client {} held the lock until at least {}",
                        h.client, h.acquired, before.client, before.wrote
                    ),
                    vec![before.to_string(), h.to_string()],
                ));
            }
        }
        if furthest.is_none_or(|f| h.wrote > f.wrote) {
            furthest = Some(h);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(client: usize, acquired: i64, wrote: i64) -> LockHolding {
        LockHolding {
            client,
            key: format!("{LOCK_NAME}/{client:x}"),
            acquired,
            wrote,
        }
    }

    #[test]
    fn disjoint_holdings_pass_in_any_order() {
        let h = vec![held(1, 12, 14), held(0, 10, 11), held(2, 15, 15)];
        assert_eq!(check_locks(&h), None, "disjoint intervals are fine");
        assert_eq!(check_locks(&[]), None, "no holdings, no overlap");
    }

    #[test]
    fn the_worked_example_is_caught() {
        let h = vec![held(0, 10, 11), held(1, 12, 14), held(2, 13, 15)];
        let f = check_locks(&h).expect("an overlap");
        assert_eq!(f.kind, FailureKind::LockOverlap);
        assert!(
            f.what.contains("client 2 acquired at revision 13"),
            "{}",
            f.what
        );
    }

    #[test]
    fn a_holding_inside_a_long_one_is_caught_and_touching_counts() {
        // Not adjacent after sorting: [10, 30] contains [20, 21] behind [12, 13].
        let nested = vec![held(0, 10, 30), held(1, 31, 32), held(2, 20, 21)];
        assert!(check_locks(&nested).is_some(), "nested interval caught");
        let touching = vec![held(0, 10, 12), held(1, 12, 13)];
        assert!(
            check_locks(&touching).is_some(),
            "a shared revision is an overlap"
        );
    }
}
