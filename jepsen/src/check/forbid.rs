//! Revisions at which a write to a key is impossible, from what reads saw.
//!
//! A read at revision `d` that shows `x` with `create c, mod m, version v` says: no put of `x`
//! in `(m, d]` and no delete of `x` in `(c, d]`; and if acknowledged puts of `x` in `[c, m]`
//! already number `v`, no other put of `x` in `[c, m]` either. A txn whose guard `mod(x) = m`
//! held at `d` says no write of `x` in `(m, d]`. The replay uses these to reject an in-doubt
//! write at a revision before trying it, which is what keeps backtracking rare.
use std::collections::HashMap;

use crate::history::Revision;

/// Per key, half-open intervals `(lo, hi]` of forbidden revisions.
#[derive(Debug, Default)]
pub struct Forbidden {
    raw: HashMap<String, Vec<(Revision, Revision)>>,
    /// Per key: interval ends `hi`, ascending, and the minimum `lo` over each suffix.
    built: HashMap<String, (Vec<Revision>, Vec<Revision>)>,
}

impl Forbidden {
    /// Forbids revisions in `(lo, hi]` for `key`.
    pub fn add(&mut self, key: &str, lo: Revision, hi: Revision) {
        if lo < hi {
            self.raw.entry(key.to_string()).or_default().push((hi, lo));
        }
    }

    /// Prepares the queries; call once after the last [`Forbidden::add`].
    pub fn build(&mut self) {
        for (key, mut intervals) in self.raw.drain() {
            intervals.sort_unstable();
            let mut min = Revision::MAX;
            let mut lows: Vec<Revision> = intervals
                .iter()
                .rev()
                .map(|&(_, lo)| {
                    min = min.min(lo);
                    min
                })
                .collect();
            lows.reverse();
            let highs = intervals.iter().map(|&(hi, _)| hi).collect();
            self.built.insert(key, (highs, lows));
        }
    }

    /// Whether some interval `(lo, hi]` of `key` holds `r`.
    pub fn forbids(&self, key: &str, r: Revision) -> bool {
        let Some((highs, lows)) = self.built.get(key) else {
            return false;
        };
        let n = highs.partition_point(|hi| *hi < r);
        lows.get(n).is_some_and(|lo| *lo < r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        let mut f = Forbidden::default();
        f.add("x", 5, 9);
        f.add("x", 2, 3);
        f.add("y", 4, 4);
        f.build();
        let hits: Vec<Revision> = (0..12).filter(|r| f.forbids("x", *r)).collect();
        assert_eq!(hits, vec![3, 6, 7, 8, 9]);
        assert!(!f.forbids("y", 4));
        assert!(!f.forbids("z", 4));
    }
}
