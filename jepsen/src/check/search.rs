//! Replay of the store revision by revision, searching only over in-doubt writes.
//!
//! Revision `r` is made by the acknowledged write that reports it, if any: the model applies it
//! to the state at `r - 1` and its response must match. Otherwise an in-doubt write made it:
//! the candidates are unused in-doubt writes invoked before anything at or after revision `r`
//! had completed, that change the store when applied, and that put what reads saw at mod
//! revision `r`. Each such revision is a choice point; after each revision, the reads of that
//! revision are checked against the model. A failure backtracks to the latest choice point with
//! candidates left; a state seen before (revision, set of used in-doubt writes, live state) is a
//! dead end already explored. With no in-doubt writes there is no choice and no backtracking.
use std::collections::{HashMap, HashSet};
use std::time::Instant;

mod explain;

use explain::first_differing_key;

use super::absent::Absences;
use super::describe::who;
use super::facts::Facts;
use super::order::Prepared;
use super::prune::{delete_ranges, put_keys, puts_needed, Pins};
use super::{CheckOptions, Verdict, Violation, ViolationKind};
use crate::history::{KeyValue, Request, RequestOp, Response, ResponseOp, Revision};
use crate::model::{Model, Undo};

/// What the replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Revisions produced, backtracking included.
    pub steps: u64,
    /// Revisions made by an in-doubt write (choice points opened).
    pub choice_points: u64,
    /// Candidates tried at choice points, the first included.
    pub candidates_tried: u64,
    /// Times the replay went back to an earlier choice point.
    pub backtracks: u64,
    /// Choice points skipped by backjumping.
    pub jumps: u64,
}

/// Whether `req`, in any branch, puts or deletes `key`.
fn writes_key(req: &Request, key: &str) -> bool {
    let op_writes = |op: &RequestOp| match op {
        RequestOp::Put(p) => p.key == key,
        RequestOp::Delete(d) => crate::model::in_range(key, &d.key, d.range_end.as_deref()),
        RequestOp::Range(_) => false,
    };
    match req {
        Request::Put(p) => p.key == key,
        Request::Delete(d) => crate::model::in_range(key, &d.key, d.range_end.as_deref()),
        Request::Txn(t) => t.success.iter().chain(&t.failure).any(op_writes),
        _ => false,
    }
}

struct Choice {
    revision: Revision,
    candidates: Vec<usize>,
    next: usize,
    log_len: usize,
    /// Whether some candidate was ever accepted here (if none, the revision is unexplained).
    accepted: bool,
}

enum Step {
    Bad(Violation),
    Seen,
}

impl From<Violation> for Step {
    fn from(v: Violation) -> Step {
        Step::Bad(v)
    }
}

/// Where backtracking ended.
enum Back {
    /// This revision was made anew; the replay goes on after it.
    Resume(Revision),
    /// No choice point has a candidate left: every order was tried.
    Exhausted,
    /// The budget ran out with choices untried (why).
    OutOfBudget(String),
}

struct LogEntry {
    undo: Undo,
    in_doubt: Option<(Revision, usize)>,
}

/// The replay's state.
pub struct Search<'a> {
    p: &'a Prepared<'a>,
    options: &'a CheckOptions,
    model: Model,
    log: Vec<LogEntry>,
    chosen: HashMap<Revision, usize>,
    used: Vec<bool>,
    used_hash: u64,
    stack: Vec<Choice>,
    memo: HashSet<(Revision, u64, u64)>,
    steps: u64,
    started: Instant,
    deepest: Option<(Revision, Violation)>,
    hints: HashMap<Revision, Vec<(usize, KeyValue)>>,
    observed: HashSet<(String, String)>,
    /// Per key, what reads saw: (mod, create, version), by mod revision.
    seen_versions: HashMap<String, Vec<(Revision, Revision, i64)>>,
    /// The key whose state made the last read fail, for backjumping.
    conflict: Option<String>,
    stats: Stats,
    min_revision: Vec<(Revision, usize)>,
    ok_by_revision: Vec<(Revision, usize)>,
    facts: &'a Facts,
    absences: Absences,
    pins: Pins,
}

fn shown_kvs(resp: &Response) -> Vec<&KeyValue> {
    match resp {
        Response::Range(r) => r.kvs.iter().collect(),
        Response::Txn(t) => t
            .responses
            .iter()
            .filter_map(|r| match r {
                ResponseOp::Range(r) => Some(r.kvs.iter()),
                _ => None,
            })
            .flatten()
            .collect(),
        _ => Vec::new(),
    }
}

impl<'a> Search<'a> {
    /// Prepares the replay.
    pub fn new(p: &'a Prepared<'a>, facts: &'a Facts, options: &'a CheckOptions) -> Self {
        let mut s = Search {
            p,
            options,
            model: Model::new(p.initial),
            log: Vec::new(),
            chosen: HashMap::new(),
            used: vec![false; p.ops.len()],
            used_hash: 0,
            stack: Vec::new(),
            memo: HashSet::new(),
            steps: 0,
            started: Instant::now(),
            deepest: None,
            hints: HashMap::new(),
            observed: HashSet::new(),
            seen_versions: HashMap::new(),
            conflict: None,
            stats: Stats::default(),
            min_revision: Vec::new(),
            ok_by_revision: Vec::new(),
            facts,
            absences: Absences::new(p, facts),
            pins: Pins::default(),
        };
        s.index();
        s
    }

    fn index(&mut self) {
        for reads in self.p.reads_at.values() {
            for &id in reads {
                let Some(resp) = self.p.ops[id].ok() else {
                    continue;
                };
                for kv in shown_kvs(resp) {
                    let seen = self.seen_versions.entry(kv.key.clone()).or_default();
                    seen.push((kv.mod_revision, kv.create_revision, kv.version));
                    self.observed.insert((kv.key.clone(), kv.value.clone()));
                    if !self.p.writer.contains_key(&kv.mod_revision) {
                        let h = self.hints.entry(kv.mod_revision).or_default();
                        h.push((id, kv.clone()));
                    }
                }
            }
        }
        for hints in self.hints.values_mut() {
            hints.sort_unstable_by_key(|h| h.0);
        }
        for seen in self.seen_versions.values_mut() {
            seen.sort_unstable();
            seen.dedup();
        }
        let p = self.p;
        let shown = p
            .reads_at
            .values()
            .flatten()
            .filter_map(|&id| p.ops[id].ok())
            .flat_map(shown_kvs);
        self.pins = Pins::new(p, self.facts, shown);
        for &id in &self.p.in_doubt {
            self.min_revision.push((self.p.min_revision[id], id));
        }
        self.min_revision.sort_unstable();
        for op in self.p.ops {
            if let Some(r) = op.ok() {
                self.ok_by_revision.push((r.revision(), op.id));
            }
        }
        self.ok_by_revision.sort_unstable();
    }

    /// Runs the replay to a verdict.
    pub fn run(self) -> Verdict {
        self.run_with_stats().0
    }

    /// Runs the replay to a verdict, with what it did.
    pub fn run_with_stats(mut self) -> (Verdict, Stats) {
        let v = self.replay();
        self.stats.steps = self.steps;
        (v, self.stats)
    }

    fn replay(&mut self) -> Verdict {
        if let Err(v) = self.check_reads(self.p.initial) {
            return Verdict::Invalid(v);
        }
        let mut r = self.p.initial + 1;
        loop {
            if r > self.p.max_revision {
                return Verdict::Valid;
            }
            if let Some(reason) = self.out_of_budget() {
                return Verdict::Unknown { reason };
            }
            self.conflict = None;
            let step = match self.p.writer.get(&r) {
                Some(&w) => self.apply_acknowledged(w, r).map_err(Step::from),
                None => {
                    self.stats.choice_points += 1;
                    self.stack.push(Choice {
                        revision: r,
                        candidates: self.candidates(r),
                        next: 0,
                        log_len: self.log.len(),
                        accepted: false,
                    });
                    self.advance(r)
                }
            };
            match step.and_then(|()| self.after(r)) {
                Ok(()) => r += 1,
                Err(e) => {
                    self.note(r, e);
                    match self.backtrack() {
                        Back::Resume(back) => r = back + 1,
                        Back::Exhausted => return self.verdict_after_exhaustion(),
                        Back::OutOfBudget(reason) => return Verdict::Unknown { reason },
                    }
                }
            }
        }
    }

    fn verdict_after_exhaustion(&mut self) -> Verdict {
        match self.deepest.take() {
            Some((_, v)) => Verdict::Invalid(v),
            None => Verdict::Unknown {
                reason: "search exhausted without a recorded violation".to_string(),
            },
        }
    }

    fn out_of_budget(&mut self) -> Option<String> {
        self.steps += 1;
        if self.steps > self.options.max_steps {
            return Some(format!(
                "gave up after {} replay steps (max_steps); {} choice points open",
                self.options.max_steps,
                self.stack.len()
            ));
        }
        if self.steps.is_multiple_of(1024) && self.started.elapsed() > self.options.time_limit {
            return Some(format!(
                "gave up after {:?} (time_limit), {} replay steps",
                self.options.time_limit, self.steps
            ));
        }
        None
    }

    fn note(&mut self, r: Revision, e: Step) {
        let Step::Bad(v) = e else { return };
        if self.deepest.as_ref().is_none_or(|(d, _)| r > *d) {
            self.deepest = Some((r, v));
        }
    }

    /// Checks revision `r`'s reads and the memo.
    fn after(&mut self, r: Revision) -> Result<(), Step> {
        assert_eq!(
            self.model.revision(),
            r,
            "the replay made a revision out of order"
        );
        assert_eq!(
            self.log.len() as i64,
            r - self.p.initial,
            "one log entry per revision made"
        );
        self.check_reads(r)?;
        if !self.stack.is_empty() && self.memo.len() < self.options.max_memo_states {
            let key = (r, self.used_hash, self.model.state_hash());
            if !self.memo.insert(key) {
                return Err(Step::Seen);
            }
        }
        Ok(())
    }

    /// Goes back to the latest choice point with candidates left and makes its revision anew
    /// and checked. Running out of budget on the way is not exhaustion: the choices left
    /// untried may hold a linearization, so it decides nothing.
    fn backtrack(&mut self) -> Back {
        self.stats.backtracks += 1;
        loop {
            if let Some(key) = self.conflict.take() {
                self.jump(&key);
            }
            let Some(choice) = self.stack.last() else {
                return Back::Exhausted;
            };
            let (r, log_len) = (choice.revision, choice.log_len);
            self.undo_to(log_len);
            match self.advance(r).and_then(|()| self.after(r)) {
                Ok(()) => return Back::Resume(r),
                Err(e) => self.note(r, e),
            }
            if let Some(reason) = self.out_of_budget() {
                return Back::OutOfBudget(reason);
            }
        }
    }

    /// Backjumping: a read failed because of `key`'s state, which only ops that write `key`
    /// decide; drop the latest choice points none of whose candidates write it. Their
    /// alternatives would leave `key`, and so the failure, as they are.
    fn jump(&mut self, key: &str) {
        while let Some(top) = self.stack.last() {
            let made = self.chosen.get(&top.revision).copied();
            // Every candidate counts, the ones already tried too: they may have failed for a
            // reason that an earlier choice point's alternative removes.
            let relevant = made
                .into_iter()
                .chain(top.candidates.iter().copied())
                .any(|id| writes_key(&self.p.ops[id].request, key));
            if relevant {
                return;
            }
            let log_len = top.log_len;
            self.undo_to(log_len);
            self.stack.pop();
            self.stats.jumps += 1;
        }
    }

    fn undo_to(&mut self, len: usize) {
        while self.log.len() > len {
            let Some(entry) = self.log.pop() else { break };
            self.model.undo(entry.undo);
            if let Some((rev, id)) = entry.in_doubt {
                self.used[id] = false;
                self.used_hash ^= keel_rng::mix(id as u64);
                self.chosen.remove(&rev);
            }
        }
    }

    fn candidates(&self, r: Revision) -> Vec<usize> {
        let n = self.min_revision.partition_point(|x| x.0 <= r);
        let open = self.min_revision[..n]
            .iter()
            .map(|x| x.1)
            .filter(|&id| !self.used[id] && self.pins.allows(id, r));
        if let Some(hints) = self.hints.get(&r) {
            let wanted: Vec<(&str, &str)> = hints
                .iter()
                .map(|(_, kv)| (kv.key.as_str(), kv.value.as_str()))
                .collect();
            return open
                .filter(|&id| {
                    wanted.iter().all(|(k, v)| {
                        let kv = ((*k).to_string(), (*v).to_string());
                        self.facts
                            .any_puts
                            .get(&kv)
                            .is_some_and(|ws| ws.contains(&id))
                    })
                })
                .collect();
        }
        let (mut quiet, mut seen): (Vec<usize>, Vec<usize>) =
            open.partition(|&id| !self.is_observed(id));
        quiet.append(&mut seen);
        quiet.sort_by_cached_key(|&id| self.deadline(id, r - 1));
        quiet
    }

    /// The earliest revision by which something op `id` would do must be done, with the model
    /// at `r`: a put a read's version count still needs (rule 3 of [`Pins`]), or the delete of
    /// a live key a read shows absent. Trying the most urgent candidates first finds a
    /// linearization sooner; the order changes nothing else.
    fn deadline(&self, id: usize, r: Revision) -> Revision {
        let req = &self.p.ops[id].request;
        let mut best = Revision::MAX;
        for key in put_keys(req) {
            let Some(versions) = self.seen_versions.get(key) else {
                continue;
            };
            if let Some((m, needed)) =
                puts_needed(&self.model, r, key, versions, (self.facts, &self.pins))
            {
                if needed > 0 {
                    best = best.min(m);
                }
            }
        }
        for (start, end) in delete_ranges(req) {
            for key in self.absences.keys_in(start, end) {
                if self.model.current(key).is_some() {
                    if let Some(d) = self.absences.next_after(key, r) {
                        best = best.min(d);
                    }
                }
            }
        }
        best
    }

    fn is_observed(&self, id: usize) -> bool {
        let put = |k: &str, v: &str| self.observed.contains(&(k.to_string(), v.to_string()));
        match &self.p.ops[id].request {
            Request::Put(x) => put(&x.key, &x.value),
            Request::Txn(t) => t.success.iter().chain(&t.failure).any(|o| match o {
                crate::history::RequestOp::Put(x) => put(&x.key, &x.value),
                _ => false,
            }),
            _ => false,
        }
    }

    /// Makes revision `r` with the top choice point's next viable candidate.
    fn advance(&mut self, r: Revision) -> Result<(), Step> {
        loop {
            let Some(choice) = self.stack.last_mut() else {
                return Err(Step::Seen);
            };
            let Some(&id) = choice.candidates.get(choice.next) else {
                let accepted = choice.accepted;
                let tried = std::mem::take(&mut choice.candidates);
                self.stack.pop();
                return Err(if accepted {
                    Step::Seen // the failures after each accepted candidate were noted then
                } else {
                    Step::Bad(self.unexplained(r, &tried))
                });
            };
            choice.next += 1;
            self.stats.candidates_tried += 1;
            let Ok((_, undo)) = self.model.apply(&self.p.ops[id].request) else {
                continue;
            };
            if self.model.revision() != r
                || !self.hints_hold(r)
                || !self.pins.creates_hold(&self.model, r)
                || !self.unseen_by_reads(&undo, r, id)
                || !self.counts_fit(r, id)
            {
                self.model.undo(undo);
                continue;
            }
            if let Some(choice) = self.stack.last_mut() {
                choice.accepted = true;
            }
            self.used[id] = true;
            self.used_hash ^= keel_rng::mix(id as u64);
            self.chosen.insert(r, id);
            self.log.push(LogEntry {
                undo,
                in_doubt: Some((r, id)),
            });
            return Ok(());
        }
    }

    /// Rule 3 of [`Pins`] with in-doubt op `id` placed at `r` (not yet marked used).
    fn counts_fit(&mut self, r: Revision, id: usize) -> bool {
        self.used[id] = true;
        let fit = self.pins.counts_fit(
            &self.model,
            r,
            &self.seen_versions,
            (self.p, self.facts, &self.used),
        ) && self.all_can_vanish(r);
        self.used[id] = false;
        fit
    }

    /// Whether what reads saw allows op `id`'s writes at `r`.
    fn unseen_by_reads(&self, undo: &Undo, r: Revision, id: usize) -> bool {
        undo.keys().iter().all(|key| match self.model.current(key) {
            Some(e) => {
                !self.facts.no_puts.forbids(key, r)
                    && self.version_fits(key, e, r)
                    && self.can_vanish(key, r, id)
            }
            None => !self.facts.no_deletes.forbids(key, r),
        })
    }

    /// `key` is live at `r` (op `id` put it): if a later complete read showed it absent, some
    /// delete can still fall between (see [`Absences`]).
    fn can_vanish(&self, key: &str, r: Revision, id: usize) -> bool {
        let Some(d) = self.absences.next_after(key, r) else {
            return true;
        };
        // An in-doubt delete needs a gap of its own in (r, d] that no read forbids it and that
        // no read pins to another write.
        let (acked, in_doubt) = self.absences.deleters(key, r, d);
        acked
            || in_doubt.iter().any(|&op| {
                op != id
                    && !self.used[op]
                    && self.p.could_place(op, r, d, |g| {
                        !self.facts.no_deletes.forbids(key, g) && self.pins.allows(op, g)
                    })
            })
    }

    /// Every live key that a later read shows absent can still be deleted in time (see
    /// [`Search::can_vanish`]), with the model at `r`.
    fn all_can_vanish(&self, r: Revision) -> bool {
        self.absences
            .keys()
            .filter(|k| self.model.current(k).is_some())
            .all(|k| self.can_vanish(k, r, usize::MAX))
    }

    /// A put of `key` at `r` leaves it at `e`; the next version a read saw, `(m, c, v)` with
    /// `c <= r <= m`, is of the same generation, so it must have `e`'s create revision and room
    /// for the acknowledged puts in `(r, m]`.
    fn version_fits(&self, key: &str, e: &crate::model::Entry, r: Revision) -> bool {
        let Some(seen) = self.seen_versions.get(key) else {
            return true;
        };
        let n = seen.partition_point(|x| x.0 < r);
        let Some(&(m, c, v)) = seen.get(n) else {
            return true;
        };
        if c > r {
            return true; // a later generation: something deletes the key in between
        }
        let acked = self.facts.ok_puts.get(key).map_or(0, |puts| {
            let lo = puts.partition_point(|x| x.0 <= r);
            let hi = puts.partition_point(|x| x.0 <= m);
            let mut revs: Vec<Revision> = puts[lo..hi.max(lo)].iter().map(|x| x.0).collect();
            revs.dedup();
            revs.len()
        });
        let acked = i64::try_from(acked).unwrap_or(i64::MAX);
        e.create_revision == c && e.version.saturating_add(acked) <= v
    }

    fn hints_hold(&self, r: Revision) -> bool {
        let Some(hints) = self.hints.get(&r) else {
            return true;
        };
        hints.iter().all(|(_, kv)| {
            self.model.current(&kv.key).is_some_and(|e| {
                e.value == kv.value
                    && e.mod_revision == r
                    && e.create_revision == kv.create_revision
                    && e.version == kv.version
            })
        })
    }

    /// Applies the acknowledged write at revision `r`; its response must match.
    fn apply_acknowledged(&mut self, w: usize, r: Revision) -> Result<(), Violation> {
        let op = &self.p.ops[w];
        let Some(actual) = op.ok() else {
            return Err(Violation::new(
                ViolationKind::WrongResponse,
                &[op],
                "not acknowledged".to_string(),
            ));
        };
        let (expected, undo) = match self.model.apply(&op.request) {
            Ok(x) => x,
            Err(e) => {
                return Err(Violation::new(
                    ViolationKind::WrongResponse,
                    &[op],
                    format!("{} succeeded at rev {r}, but the model says {e}", who(op)),
                ))
            }
        };
        let changed = self.model.revision() == r;
        let mismatch = self.diff(op, &expected, actual, r - 1).or_else(|| {
            (!changed).then(|| {
                format!(
                    "{} reports it changed the store at rev {r}, but applied to the state at \
                     rev {} it changes nothing",
                    who(op),
                    r - 1
                )
            })
        });
        if let Some(why) = mismatch {
            self.model.undo(undo);
            return Err(self.wrong(op, why));
        }
        self.log.push(LogEntry {
            undo,
            in_doubt: None,
        });
        Ok(())
    }

    /// Checks every non-mutating `ok` op whose data revision is `r` against the model at `r`.
    fn check_reads(&mut self, r: Revision) -> Result<(), Violation> {
        let Some(reads) = self.p.reads_at.get(&r) else {
            return Ok(());
        };
        for &id in reads {
            let op = &self.p.ops[id];
            let Some(actual) = op.ok() else { continue };
            let mut req = op.request.clone();
            if let Request::Range(q) = &mut req {
                q.revision = None;
            }
            let outcome = self.model.apply(&req);
            let (expected, undo) = match outcome {
                Ok(x) => x,
                Err(e) => {
                    let why = format!("{} succeeded, but the model says {e}", who(op));
                    return Err(self.wrong(op, why));
                }
            };
            let changed = self.model.revision() != r;
            self.model.undo(undo);
            let why = if changed {
                Some(format!(
                    "{} reports it changed nothing at rev {r}, but applied to the state at rev \
                     {r} it changes the store ({})",
                    who(op),
                    super::describe::response_text(&expected)
                ))
            } else {
                self.diff(op, &expected, actual, r)
            };
            if let Some(why) = why {
                if let (Response::Range(e), Response::Range(a)) = (&expected, actual) {
                    self.conflict = first_differing_key(&e.kvs, &a.kvs);
                }
                return Err(self.wrong(op, why));
            }
        }
        Ok(())
    }
}
