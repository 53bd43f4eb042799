//! Shapes of network partitions, as grudges: `grudge[i]` lists the members whose packets
//! member `i` drops. Every grudge is symmetric.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keel_rng::SplitMix64;

/// Which members are cut off from a majority right now (set by the partition nemesis while
/// its rules are in place; read by the stale-read probe).
#[derive(Clone, Debug)]
pub struct CutOff(Arc<Vec<AtomicBool>>);

impl CutOff {
    /// No member cut off, of `n`.
    pub fn new(n: usize) -> CutOff {
        CutOff(Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()))
    }
    /// Whether member `i` is cut off.
    pub fn is_cut_off(&self, i: usize) -> bool {
        self.0.get(i).is_some_and(|b| b.load(Ordering::SeqCst))
    }
    /// Marks the members that `grudge` leaves without a majority in reach (itself included).
    pub fn set(&self, grudge: &[Vec<usize>]) {
        let n = grudge.len();
        for (i, g) in grudge.iter().enumerate() {
            if let Some(b) = self.0.get(i) {
                b.store(n - g.len() <= n / 2, Ordering::SeqCst);
            }
        }
    }
    /// No member cut off.
    pub fn clear(&self) {
        for b in self.0.iter() {
            b.store(false, Ordering::SeqCst);
        }
    }
}

fn shuffled(rng: &mut SplitMix64, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Cuts every member of `a` off from every member of `b` (both ways).
fn cut(grudge: &mut [Vec<usize>], a: &[usize], b: &[usize]) {
    for &x in a {
        for &y in b {
            if !grudge[x].contains(&y) {
                grudge[x].push(y);
            }
            if !grudge[y].contains(&x) {
                grudge[y].push(x);
            }
        }
    }
}

/// Majority/minority: a random minority (`n / 2` members) cut off from the rest.
pub fn halves(rng: &mut SplitMix64, n: usize) -> Vec<Vec<usize>> {
    let order = shuffled(rng, n);
    let mut grudge = vec![Vec::new(); n];
    let (minority, majority) = order.split_at(n / 2);
    cut(&mut grudge, minority, majority);
    grudge
}

/// `lone` cut off from everyone else.
pub fn isolate(n: usize, lone: usize) -> Vec<Vec<usize>> {
    let mut grudge = vec![Vec::new(); n];
    let rest: Vec<usize> = (0..n).filter(|i| *i != lone).collect();
    cut(&mut grudge, &[lone], &rest);
    grudge
}

/// Two halves that cannot see each other, and one member in the middle that sees both.
pub fn bridge(rng: &mut SplitMix64, n: usize) -> Vec<Vec<usize>> {
    let order = shuffled(rng, n);
    let mut grudge = vec![Vec::new(); n];
    let half = n / 2;
    let (left, rest) = order.split_at(half);
    cut(&mut grudge, left, &rest[1..]);
    grudge
}

/// A ring in a random order: every member sees only its two neighbours (for three members
/// that is everyone: no cut, so [`choose`] never picks it for fewer than five).
pub fn ring(rng: &mut SplitMix64, n: usize) -> Vec<Vec<usize>> {
    let order = shuffled(rng, n);
    let mut grudge = vec![Vec::new(); n];
    for (pos, &x) in order.iter().enumerate() {
        for (qos, &y) in order.iter().enumerate() {
            let d = pos.abs_diff(qos);
            let ring_distance = d.min(n - d);
            if ring_distance > 1 {
                grudge[x].push(y);
            }
        }
    }
    grudge
}

/// Picks a shape: its name and grudge. Isolating the leader falls back to a random member when
/// no leader is known.
pub fn choose(
    rng: &mut SplitMix64,
    n: usize,
    leader: Option<usize>,
) -> (&'static str, Vec<Vec<usize>>) {
    match rng.below(4) {
        0 => ("majority/minority", halves(rng, n)),
        1 => {
            let lone = leader.unwrap_or_else(|| rng.below(n as u64) as usize);
            ("isolate leader", isolate(n, lone))
        }
        2 => ("bridge", bridge(rng, n)),
        _ if n >= 5 => ("ring", ring(rng, n)),
        _ => ("majority/minority", halves(rng, n)),
    }
}

/// `m1 x m2,m3; ...`: who drops whom.
pub fn describe(grudge: &[Vec<usize>]) -> String {
    let parts: Vec<String> = grudge
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(i, g)| {
            let peers: Vec<String> = g.iter().map(|p| format!("m{}", p + 1)).collect();
            format!("m{} drops {}", i + 1, peers.join(","))
        })
        .collect();
    if parts.is_empty() {
        "no cut".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symmetric(g: &[Vec<usize>]) -> bool {
        g.iter()
            .enumerate()
            .all(|(i, peers)| peers.iter().all(|p| g[*p].contains(&i)))
    }

    #[test]
    fn shapes_are_symmetric_and_cut_what_they_say() {
        let mut rng = SplitMix64::new(7);
        for n in [3, 5] {
            let h = halves(&mut rng, n);
            assert!(symmetric(&h), "halves must be symmetric: {h:?}");
            let cut_off = h.iter().filter(|g| g.len() == n - n / 2).count();
            assert_eq!(
                cut_off,
                n / 2,
                "a minority of n/2 members sees nobody of the majority"
            );
            let iso = isolate(n, 1);
            assert_eq!(iso[1].len(), n - 1, "the isolated member drops everyone");
            let b = bridge(&mut rng, n);
            assert!(symmetric(&b), "bridge must be symmetric: {b:?}");
            let middle = b.iter().filter(|g| g.is_empty()).count();
            assert_eq!(
                middle, 1,
                "exactly one member (the bridge) sees everyone: {b:?}"
            );
            let r = ring(&mut rng, n);
            assert!(symmetric(&r), "ring must be symmetric: {r:?}");
            assert!(
                r.iter().all(|g| g.len() == n - 3),
                "ring: each sees two: {r:?}"
            );
        }
    }
}
