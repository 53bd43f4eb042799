//! Linearizability of the v2 clients' history, decided with etcd's v2 index.
//!
//! The v2 store is a set of registers (one per key) behind one global index: every write that
//! takes effect makes exactly one index, `1, 2, 3, …`, and every answer names an index (see
//! [`crate::v2_history`]). So the index gives the order of the writes outright, and a read or a
//! store error (`100`, `101`, `105`, decided at apply) names the point of that order it saw.
//! Linearizability then comes down to three things:
//!
//! 1. **Real time.** If `A` completed before `B` was invoked, `A`'s point precedes `B`'s: a
//!    write `j` after a write or read at `p` needs `j > p`, a read `Y` needs `Y ≥ p` (a quorum
//!    read below an acknowledged write is a stale read). Plain reads (no `quorum=true`) are
//!    served from a member's own store: they are checked against the index they name but not
//!    in real time.
//! 2. **Every index is some write.** Indexes no acknowledged write names are *gaps*; each is
//!    made by one in-doubt write (timed out, connection lost), invoked before any operation
//!    that saw the gap completed. In-doubt writes that fill no gap did not happen (or happened
//!    after everything the clients saw).
//! 3. **The registers.** Replaying the writes in index order from the empty store, every
//!    write's precondition holds where it is (a CAS's compare, a create's absent key, a
//!    delete's present key), every `prevNode` is the key's state just before, and every read
//!    and store error matches the state at its index.
//!
//! The only search is over which in-doubt write fills each gap. A read that shows a gap's
//! value names its writer (values are unique), which fixes most gaps; the rest are tried
//! depth first in index order, in-doubt writes with the same effect tried once, failed
//! (index, state, writes used) configurations remembered, within [`STEP_BUDGET`] (beyond it
//! the verdict is unknown, which the run counts as a failure). With no unexplained gap the
//! check is one pass over the indexes. It is exact: it rejects a history only when no order
//! explains it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::check::{Failure, FailureKind};
use crate::v2_history::{Compare, NodeState, V2Entry, V2Op, V2Outcome};

/// Gap decisions the search may take before it gives up (unknown verdict).
pub const STEP_BUDGET: u64 = 1_000_000;

/// The store as the replay has it: each key's state.
type State = BTreeMap<String, NodeState>;

/// What an answer says about a key at an index.
#[derive(Debug, Clone)]
enum Fact {
    /// The key's state is exactly this (`None`: absent).
    Is(Option<NodeState>),
    /// The key exists (a create refused with 105).
    Present,
    /// The key exists and fails the compare (a CAS or CAD refused with 101).
    CompareFails(Compare),
}

/// A fact, where it holds, and the entry that shows it.
#[derive(Debug, Clone)]
struct Obs {
    key: String,
    fact: Fact,
    entry: usize,
}

/// The facts an entry's answer shows: (index, fact).
fn facts(e: &V2Entry) -> Vec<(u64, Fact)> {
    match (&e.op, &e.outcome) {
        (V2Op::Get { .. }, V2Outcome::Ok { index, node, .. }) => {
            vec![(*index, Fact::Is(node.clone()))]
        }
        (_, V2Outcome::Error { code: 100, index }) => vec![(*index, Fact::Is(None))],
        (
            V2Op::Cas { compare, .. } | V2Op::Cad { compare, .. },
            V2Outcome::Error { code: 101, index },
        ) => {
            vec![(*index, Fact::CompareFails(compare.clone()))]
        }
        (V2Op::Create { .. }, V2Outcome::Error { code: 105, index }) => {
            vec![(*index, Fact::Present)]
        }
        (V2Op::Create { .. }, V2Outcome::Ok { .. }) => Vec::new(),
        (op, V2Outcome::Ok { index, prev, .. }) if op.is_write() && *index > 0 => {
            vec![(*index - 1, Fact::Is(prev.clone()))]
        }
        _ => Vec::new(),
    }
}

/// An entry's point in the order, if it has one and takes part in real time: `(index, is a
/// write)`.
fn point(e: &V2Entry) -> Option<(u64, bool)> {
    if matches!(e.op, V2Op::Get { quorum: false, .. }) {
        return None;
    }
    match &e.outcome {
        V2Outcome::Ok { index, .. } => Some((*index, e.op.is_write())),
        V2Outcome::Error { index, .. } => Some((*index, false)),
        _ => None,
    }
}

/// Whether `fact` holds of `state`.
fn holds(fact: &Fact, state: Option<&NodeState>) -> bool {
    match fact {
        Fact::Is(expected) => expected.as_ref() == state,
        Fact::Present => state.is_some(),
        Fact::CompareFails(c) => state.is_some_and(|s| !c.holds(s)),
    }
}

fn show(state: Option<&NodeState>) -> String {
    state.map_or("absent".to_string(), |s| s.to_string())
}

/// Applies write `op` at index `at`; why not, when its precondition fails.
fn apply(state: &mut State, op: &V2Op, at: u64) -> Result<(), String> {
    let key = op.key().to_string();
    let cur = state.get(&key);
    let why = |what: &str| {
        format!(
            "{op} at index {at} needs {what}, but {key} is {}",
            show(cur)
        )
    };
    match op {
        V2Op::Set { value, .. } => {
            state.insert(
                key,
                NodeState {
                    value: value.clone(),
                    modified: at,
                },
            );
        }
        V2Op::Create { value, .. } => {
            if cur.is_some() {
                return Err(why("the key absent"));
            }
            state.insert(
                key,
                NodeState {
                    value: value.clone(),
                    modified: at,
                },
            );
        }
        V2Op::Cas { compare, value, .. } => {
            if !cur.is_some_and(|s| compare.holds(s)) {
                return Err(why(&compare.to_string()));
            }
            state.insert(
                key,
                NodeState {
                    value: value.clone(),
                    modified: at,
                },
            );
        }
        V2Op::Cad { compare, .. } => {
            if !cur.is_some_and(|s| compare.holds(s)) {
                return Err(why(&compare.to_string()));
            }
            state.remove(&key);
        }
        V2Op::Delete { .. } => {
            if cur.is_none() {
                return Err(why("the key present"));
            }
            state.remove(&key);
        }
        V2Op::Get { .. } => return Err(format!("{op} is not a write")),
    }
    Ok(())
}

/// Checks the v2 history; `None` when it is linearizable.
pub fn check_v2(entries: &[V2Entry]) -> Option<Failure> {
    let known = match known_writes(entries) {
        Ok(k) => k,
        Err(f) => return Some(f),
    };
    let lows = match real_time(entries) {
        Ok(l) => l,
        Err(f) => return Some(f),
    };
    let mut search = Search::new(entries, known, lows);
    if let Some(f) = search.pin_gaps() {
        return Some(f);
    }
    let mut initial = State::new();
    if let Err((why, e)) = search.check_facts(&initial, 0) {
        return Some(search.violation(0, why, vec![e]));
    }
    let used = vec![0u64; search.in_doubt.len().div_ceil(64)];
    if search.run(1, &mut initial, used) {
        return None;
    }
    Some(search.verdict())
}

/// Acknowledged writes by index; two with one index are a violation.
fn known_writes(entries: &[V2Entry]) -> Result<BTreeMap<u64, usize>, Failure> {
    let mut known: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let Some((index, true)) = point(e) else {
            continue;
        };
        if let Some(&other) = known.get(&index) {
            return Err(Failure::new(
                FailureKind::V2Linearizability,
                format!("two acknowledged v2 writes report index {index}; an index is one write"),
                vec![entries[other].to_string(), e.to_string()],
            ));
        }
        known.insert(index, i);
    }
    Ok(known)
}

/// The real-time check over every entry with a point; returns each entry's lower bound (the
/// highest point of the entries completed before it was invoked, with the entry).
fn real_time(entries: &[V2Entry]) -> Result<Vec<(u64, Option<usize>)>, Failure> {
    let mut done: Vec<(u64, u64, usize)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| point(e).map(|(p, _)| (e.complete_ns, p, i)))
        .collect();
    done.sort();
    // best[k]: the highest point among the first k + 1 completions.
    let mut best: Vec<(u64, usize)> = Vec::with_capacity(done.len());
    for &(_, p, i) in &done {
        let prev = best.last().copied();
        best.push(match prev {
            Some((bp, bi)) if bp >= p => (bp, bi),
            _ => (p, i),
        });
    }
    let mut lows = Vec::with_capacity(entries.len());
    for e in entries {
        let k = done.partition_point(|&(c, _, _)| c < e.invoke_ns);
        let low = k.checked_sub(1).map(|k| best[k]);
        lows.push((low.map_or(0, |l| l.0), low.map(|l| l.1)));
        let (Some((lp, li)), Some((p, write))) = (low, point(e)) else {
            continue;
        };
        let stale = if write { p <= lp } else { p < lp };
        if stale {
            let what = if write {
                format!(
                    "a v2 write made index {p}, but an operation at index {lp} completed before \
                     it was invoked"
                )
            } else {
                format!(
                    "stale read: a v2 operation saw the store at index {p}, but an operation at \
                     index {lp} completed before it was invoked"
                )
            };
            return Err(Failure::new(
                FailureKind::V2Linearizability,
                what,
                vec![entries[li].to_string(), e.to_string()],
            ));
        }
    }
    Ok(lows)
}

/// The search over which in-doubt write made each gap.
struct Search<'a> {
    entries: &'a [V2Entry],
    /// The highest index any answer names.
    max: u64,
    known: BTreeMap<u64, usize>,
    facts_at: BTreeMap<u64, Vec<Obs>>,
    /// Entry numbers of the in-doubt writes.
    in_doubt: Vec<usize>,
    /// Each in-doubt write's lower bound: it made no index at or below this.
    low: Vec<u64>,
    /// Gaps whose writer a read named (gap → in-doubt position), and the reverse.
    pinned: BTreeMap<u64, usize>,
    pinned_to: BTreeMap<usize, u64>,
    /// Values some answer or compare mentions: writes of them are not interchangeable.
    relevant: BTreeSet<String>,
    failed: HashSet<(u64, State, Vec<u64>)>,
    steps: u64,
    out_of_budget: bool,
    /// The furthest index the replay failed at, why, and the entries that show it.
    deepest: Option<(u64, String, Vec<usize>)>,
}

impl<'a> Search<'a> {
    fn new(
        entries: &'a [V2Entry],
        known: BTreeMap<u64, usize>,
        lows: Vec<(u64, Option<usize>)>,
    ) -> Self {
        let mut facts_at: BTreeMap<u64, Vec<Obs>> = BTreeMap::new();
        let mut relevant = BTreeSet::new();
        let mut max = 0;
        for (i, e) in entries.iter().enumerate() {
            if let V2Outcome::Ok { index, .. } | V2Outcome::Error { index, .. } = &e.outcome {
                max = max.max(*index);
            }
            if let V2Op::Cas {
                compare: Compare::Value(v),
                ..
            }
            | V2Op::Cad {
                compare: Compare::Value(v),
                ..
            } = &e.op
            {
                relevant.insert(v.clone());
            }
            for (at, fact) in facts(e) {
                if let Fact::Is(Some(s)) = &fact {
                    relevant.insert(s.value.clone());
                }
                let key = e.op.key().to_string();
                facts_at.entry(at).or_default().push(Obs {
                    key,
                    fact,
                    entry: i,
                });
            }
        }
        let in_doubt: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].op.is_write())
            .filter(|&i| matches!(entries[i].outcome, V2Outcome::InDoubt(_)))
            .collect();
        let low = in_doubt.iter().map(|&i| lows[i].0).collect();
        Search {
            entries,
            max,
            known,
            facts_at,
            in_doubt,
            low,
            pinned: BTreeMap::new(),
            pinned_to: BTreeMap::new(),
            relevant,
            failed: HashSet::new(),
            steps: 0,
            out_of_budget: false,
            deepest: None,
        }
    }

    fn violation(&self, at: u64, why: String, shown: Vec<usize>) -> Failure {
        let mut evidence: Vec<String> =
            shown.iter().map(|&i| self.entries[i].to_string()).collect();
        evidence.dedup();
        Failure::new(
            FailureKind::V2Linearizability,
            format!(
                "v2 history not linearizable: no placement of its {} in-doubt writes explains \
                 index {at}: {why}",
                self.in_doubt.len()
            ),
            evidence,
        )
    }

    /// The failure to report once the search found no order.
    fn verdict(&self) -> Failure {
        if self.out_of_budget {
            return Failure::new(
                FailureKind::V2LinearizabilityUnknown,
                format!(
                    "the v2 checker gave up after {STEP_BUDGET} steps ({} in-doubt writes, \
                     index {})",
                    self.in_doubt.len(),
                    self.max
                ),
                Vec::new(),
            );
        }
        match &self.deepest {
            Some((at, why, shown)) => self.violation(*at, why.clone(), shown.clone()),
            None => self.violation(0, "no order found".to_string(), Vec::new()),
        }
    }

    /// Counts the gaps against the in-doubt writes, and pins each gap a read shows the
    /// value of to the one write of that value.
    fn pin_gaps(&mut self) -> Option<Failure> {
        let gaps = (1..=self.max)
            .filter(|i| !self.known.contains_key(i))
            .count();
        if gaps > self.in_doubt.len() {
            let first = (1..=self.max)
                .find(|i| !self.known.contains_key(i))
                .unwrap_or(0);
            return Some(self.violation(
                first,
                format!(
                    "the store's index reached {}, but only {} acknowledged and {} in-doubt \
                     writes could have made its indexes ({gaps} made by no acknowledged write, \
                     the first {first})",
                    self.max,
                    self.known.len(),
                    self.in_doubt.len()
                ),
                Vec::new(),
            ));
        }
        let shown: Vec<(String, NodeState, usize)> = self
            .facts_at
            .values()
            .flatten()
            .filter_map(|o| match &o.fact {
                Fact::Is(Some(s)) if !self.known.contains_key(&s.modified) && s.modified > 0 => {
                    Some((o.key.clone(), s.clone(), o.entry))
                }
                _ => None,
            })
            .collect();
        for (key, s, entry) in shown {
            let writers: Vec<usize> = (0..self.in_doubt.len())
                .filter(|&p| {
                    let op = &self.entries[self.in_doubt[p]].op;
                    op.key() == key && op.value() == Some(s.value.as_str())
                })
                .collect();
            let [p] = writers[..] else {
                if writers.is_empty() {
                    return Some(self.violation(
                        s.modified,
                        format!("{key} was {s}, a value no write of {key} could have made there"),
                        vec![entry],
                    ));
                }
                continue; // the same value written twice: leave it to the search
            };
            match (self.pinned.get(&s.modified), self.pinned_to.get(&p)) {
                (Some(&q), _) if q != p => {
                    return Some(self.violation(
                        s.modified,
                        format!("two different writes were seen at index {}", s.modified),
                        vec![entry, self.in_doubt[q], self.in_doubt[p]],
                    ))
                }
                (_, Some(&at)) if at != s.modified => {
                    return Some(self.violation(
                        s.modified,
                        format!(
                            "the write of {} was seen at indexes {at} and {}",
                            s.value, s.modified
                        ),
                        vec![entry, self.in_doubt[p]],
                    ))
                }
                _ => {
                    self.pinned.insert(s.modified, p);
                    self.pinned_to.insert(p, s.modified);
                }
            }
        }
        None
    }

    /// Every fact at index `at` against `state`.
    fn check_facts(&self, state: &State, at: u64) -> Result<(), (String, usize)> {
        for o in self.facts_at.get(&at).into_iter().flatten() {
            let cur = state.get(&o.key);
            if !holds(&o.fact, cur) {
                let seen = match &o.fact {
                    Fact::Is(s) => show(s.as_ref()),
                    Fact::Present => "present".to_string(),
                    Fact::CompareFails(c) => format!("failing {c}"),
                };
                let why = format!(
                    "an answer shows {} {seen} at index {at}, but the writes up to {at} leave it {}",
                    o.key,
                    show(cur)
                );
                return Err((why, o.entry));
            }
        }
        Ok(())
    }

    fn note(&mut self, at: u64, why: String, shown: Vec<usize>) {
        if self.deepest.as_ref().is_none_or(|d| at > d.0) {
            self.deepest = Some((at, why, shown));
        }
    }

    /// Replays indexes `from..=max` on `state` (the state at `from - 1`); whether some
    /// placement of the in-doubt writes explains them.
    fn run(&mut self, from: u64, state: &mut State, mut used: Vec<u64>) -> bool {
        let mut at = from;
        while at <= self.max {
            let made = if let Some(&e) = self.known.get(&at) {
                apply(state, &self.entries[e].op, at).map_err(|why| (why, vec![e]))
            } else if let Some(&p) = self.pinned.get(&at) {
                let e = self.in_doubt[p];
                if self.low[p] >= at {
                    Err((
                        format!(
                            "the in-doubt write of index {at} was invoked after an operation at \
                             index {} completed",
                            self.low[p]
                        ),
                        vec![e],
                    ))
                } else {
                    used[p / 64] |= 1 << (p % 64);
                    apply(state, &self.entries[e].op, at).map_err(|why| (why, vec![e]))
                }
            } else {
                return self.branch(at, state, used);
            };
            let checked =
                made.and_then(|()| self.check_facts(state, at).map_err(|(w, e)| (w, vec![e])));
            if let Err((why, shown)) = checked {
                self.note(at, why, shown);
                return false;
            }
            at += 1;
        }
        true
    }

    /// Index `at` is an unexplained gap: tries each in-doubt write that could have made it.
    fn branch(&mut self, at: u64, state: &State, used: Vec<u64>) -> bool {
        let memo = (at, state.clone(), used.clone());
        if self.failed.contains(&memo) {
            return false;
        }
        self.steps += 1;
        if self.steps > STEP_BUDGET {
            self.out_of_budget = true;
            return false;
        }
        let mut tried: BTreeSet<(String, String)> = BTreeSet::new();
        let mut any = false;
        for p in 0..self.in_doubt.len() {
            let free = used[p / 64] & (1 << (p % 64)) == 0;
            if !free || self.pinned_to.contains_key(&p) || self.low[p] >= at {
                continue;
            }
            let op = &self.entries[self.in_doubt[p]].op;
            if !tried.insert(self.effect(op)) {
                continue;
            }
            let mut next = state.clone();
            if apply(&mut next, op, at).is_err() {
                continue;
            }
            any = true;
            if let Err((why, e)) = self.check_facts(&next, at) {
                self.note(at, why, vec![e, self.in_doubt[p]]);
                continue;
            }
            let mut u = used.clone();
            u[p / 64] |= 1 << (p % 64);
            if self.run(at + 1, &mut next, u) {
                return true;
            }
            if self.out_of_budget {
                return false;
            }
        }
        if !any {
            self.note(
                at,
                "no in-doubt write could have made it (none invoked in time whose precondition \
                 holds there)"
                    .to_string(),
                Vec::new(),
            );
        }
        self.failed.insert(memo);
        false
    }

    /// In-doubt writes with equal effects are interchangeable at a gap: the op with its value
    /// left out, unless some answer or compare mentions that value.
    fn effect(&self, op: &V2Op) -> (String, String) {
        let relevant = op.value().is_some_and(|v| self.relevant.contains(v));
        let shape = match op {
            V2Op::Set { key, .. } => format!("set {key}"),
            V2Op::Create { key, .. } => format!("create {key}"),
            V2Op::Cas { key, compare, .. } => format!("cas {key} {compare}"),
            other => other.to_string(),
        };
        let value = if relevant {
            op.value().unwrap_or_default()
        } else {
            ""
        };
        (shape, value.to_string())
    }
}

#[cfg(test)]
mod tests;
