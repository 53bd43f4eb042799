//! [`check_watches`]: the passes, in order.
//!
//! 1. Each stream on its own ([`super::stream`]).
//! 2. Each event against the KV history: the acknowledged write of its revision, or an
//!    in-doubt write where no acknowledged write took that revision.
//! 3. Watches against each other: one `(revision, key)` shows one change everywhere. The known
//!    changes ([`Chains`]) are then the acknowledged writes' and every event.
//! 4. Reliability and progress: every known change inside a watch's delivered window reached it.
//! 5. Version chains per key, and each `prev_kv` against the chains.
//!
//! Every violation is something a correct etcd cannot produce from this history: a change is
//! "known" only if an acknowledged write made it or a watch delivered it, and a key's changes
//! are "known completely" over revisions only where a watch without filters promised them (by
//! delivering a later event or a progress notification) or acknowledged writes made every one.
use std::collections::HashMap;

use crate::history::{History, Operation, Outcome, Revision};

use super::stream::{streams, Stream};
use super::truth::{chains_of, Chains, Change, Coverage, Known, Source, Writes};
use super::verdict::{bad, Check, WatchVerdict, WatchViolation, WatchViolationKind as Kind};
use super::{EventType, WatchEvent, WatchLog, WatchRecordKind};

/// Assumptions about the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// The store's revision before the history, at which it was empty (etcd starts at 1), as
    /// in [`crate::check::CheckOptions::initial_revision`].
    pub initial_revision: Revision,
    /// The server may compact on its own (auto-compaction), so a compaction not in the history
    /// may explain a null `prev_kv`. Off: only the history's compactions (any outcome) and
    /// compactions a `canceled` record reports do.
    pub unrecorded_compactions: bool,
    /// The server may delete keys on its own (lease expiry or revocation not in the history),
    /// so a delete event at a revision no acknowledged write took needs no op to explain it.
    pub unrecorded_deletes: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            initial_revision: 1,
            unrecorded_compactions: false,
            unrecorded_deletes: false,
        }
    }
}

/// Checks the watch streams of `log` against `history` (and each other).
pub fn check_watches(history: &History, log: &WatchLog) -> WatchVerdict {
    check_watches_with(history, log, &WatchOptions::default())
}

/// [`check_watches`] with explicit assumptions.
pub fn check_watches_with(
    history: &History,
    log: &WatchLog,
    options: &WatchOptions,
) -> WatchVerdict {
    match run(history, log, options) {
        Ok(()) => WatchVerdict::Valid,
        Err(v) => WatchVerdict::Invalid(*v),
    }
}

fn run(history: &History, log: &WatchLog, options: &WatchOptions) -> Check<()> {
    let ops = match history.operations() {
        Ok(ops) => ops,
        Err(e) => {
            let text = format!("the history cannot be read: {e}");
            return bad(WatchViolation::new(Kind::Malformed, text));
        }
    };
    let writes = Writes::new(&ops)?;
    let streams = streams(log)?;
    let cancels = log
        .records
        .iter()
        .filter_map(|rec| match rec.kind {
            WatchRecordKind::Canceled {
                compact_revision, ..
            } if compact_revision > 0 => Some((rec.time, compact_revision)),
            _ => None,
        })
        .collect();
    let ctx = Ctx {
        log,
        writes: &writes,
        streams: &streams,
        options,
        cancels,
    };
    for s in &streams {
        ctx.headers(s)?;
        for d in &s.deliveries {
            if let Some(e) = s.event(log, d) {
                ctx.source(d.record, e)?;
            }
        }
    }
    let chains = ctx.agree()?;
    for s in &streams {
        ctx.gaps(s, &chains)?;
    }
    let coverage = Coverage::new(chains.keys(), &writes, &streams);
    let chk = Chained {
        ctx: &ctx,
        chains: &chains,
        coverage: &coverage,
    };
    for (key, chain) in &chains {
        let mut prev: Option<(Revision, &Known)> = None;
        for (&r, k) in chain {
            chk.version(key, r, k, prev)?;
            prev = Some((r, k));
        }
    }
    for s in streams.iter().filter(|s| s.req.prev_kv) {
        for d in &s.deliveries {
            if let Some(e) = s.event(log, d) {
                chk.prev_kv(s, d.record, e)?;
            }
        }
    }
    Ok(())
}

struct Ctx<'a> {
    log: &'a WatchLog,
    writes: &'a Writes<'a>,
    streams: &'a [Stream<'a>],
    options: &'a WatchOptions,
    /// `(time, compact_revision)` of every cancel for compaction.
    cancels: Vec<(u64, Revision)>,
}

impl Ctx<'_> {
    fn op(&self, id: usize) -> Option<&Operation> {
        self.writes.ops.get(id)
    }

    fn time(&self, record: usize) -> u64 {
        self.log.records.get(record).map_or(0, |r| r.time)
    }

    fn watch_of(&self, record: usize) -> u64 {
        self.log.records.get(record).map_or(0, |r| r.watch)
    }

    fn name_source(&self, v: WatchViolation, source: Source) -> WatchViolation {
        match source {
            Source::Op(id) => match self.op(id) {
                Some(op) => v.op(op),
                None => v,
            },
            Source::Record(r) => v.record(self.log, r),
        }
    }

    fn source_text(&self, source: Source) -> String {
        match source {
            Source::Op(id) => format!("acknowledged op {id}"),
            Source::Record(r) => format!("record {r} of watch {}", self.watch_of(r)),
        }
    }

    /// A response's header revision cannot belong to a write invoked after the response
    /// arrived.
    fn headers(&self, s: &Stream) -> Check<()> {
        let records = s
            .created
            .into_iter()
            .chain(s.milestones.iter().map(|m| m.record));
        for i in records {
            let Some(rec) = self.log.records.get(i) else {
                continue;
            };
            let h = match &rec.kind {
                WatchRecordKind::Created { revision }
                | WatchRecordKind::Progress { revision }
                | WatchRecordKind::Events { revision, .. } => *revision,
                _ => continue,
            };
            self.not_future(i, h, None)?;
        }
        Ok(())
    }

    fn not_future(&self, i: usize, r: Revision, key: Option<&str>) -> Check<()> {
        let Some((id, _)) = self.writes.ok_at.get(&r) else {
            return Ok(());
        };
        let Some(op) = self.op(*id) else {
            return Ok(());
        };
        let t = self.time(i);
        if op.invoke_time <= t {
            return Ok(());
        }
        let text = format!(
            "watch {} received revision {r} at time {t} (record {i}), but op {id}, which made \
             revision {r}, was invoked only at {}",
            self.watch_of(i),
            op.invoke_time
        );
        let v = WatchViolation::new(Kind::Future, text);
        let v = match key {
            Some(k) => v.at(r, k),
            None => v.at_revision(r),
        };
        bad(v.record(self.log, i).op(op))
    }

    /// An event must come from the acknowledged write of its revision, or — if none took that
    /// revision — from an in-doubt write invoked before it arrived.
    fn source(&self, i: usize, e: &WatchEvent) -> Check<()> {
        let (r, key) = (e.revision(), e.kv.key.as_str());
        self.not_future(i, r, Some(key))?;
        let Some((id, fx)) = self.writes.ok_at.get(&r) else {
            return self.in_doubt_source(i, e);
        };
        let fits = match (fx.changes.get(key), e.kind) {
            (Some(Change::Put(v)), EventType::Put) => *v == e.kv.value,
            (Some(Change::Delete), EventType::Delete) => true,
            (None, EventType::Delete) => fx.may_have_deleted(key),
            _ => false,
        };
        if fits {
            return Ok(());
        }
        let did = match fx.changes.get(key) {
            Some(Change::Put(v)) => format!("put {key}={v}"),
            Some(Change::Delete) => format!("deleted {key}"),
            None => format!("did not change {key}"),
        };
        let mut text = format!(
            "watch {} delivered {} in record {i}, but revision {r} was made by acknowledged op \
             {id}, which {did}",
            self.watch_of(i),
            e.text()
        );
        let mut v = WatchViolation::new(Kind::WrongRevision, String::new()).at(r, key);
        if let Some((other, r2)) = self.ok_put_elsewhere(key, e) {
            text.push_str(&format!(
                "; {key}={} was written by acknowledged op {other} at revision {r2}",
                e.kv.value
            ));
            v = self.name_source(v, Source::Op(other));
        }
        v.explanation = text;
        let v = v.record(self.log, i);
        bad(self.name_source(v, Source::Op(*id)))
    }

    /// An acknowledged write that put the event's value, and its revision.
    fn ok_put_elsewhere(&self, key: &str, e: &WatchEvent) -> Option<(usize, Revision)> {
        if e.kind != EventType::Put {
            return None;
        }
        let ids = self
            .writes
            .puts_by
            .get(&(key.to_string(), e.kv.value.clone()))?;
        ids.iter().find_map(|&id| {
            let op = self.op(id)?;
            let r = op.ok()?.revision();
            let (_, fx) = self.writes.ok_at.get(&r)?;
            let wrote = fx.changes.get(key) == Some(&Change::Put(e.kv.value.clone()));
            wrote.then_some((id, r))
        })
    }

    fn in_doubt_source(&self, i: usize, e: &WatchEvent) -> Check<()> {
        let (r, key, t) = (e.revision(), e.kv.key.as_str(), self.time(i));
        let candidates: Vec<usize> = match e.kind {
            EventType::Put => self
                .writes
                .puts_by
                .get(&(key.to_string(), e.kv.value.clone()))
                .cloned()
                .unwrap_or_default(),
            EventType::Delete => self.writes.may_delete(key),
        };
        let ops: Vec<&Operation> = candidates.iter().filter_map(|&id| self.op(id)).collect();
        let in_doubt = |o: &&&Operation| matches!(o.outcome, Outcome::Info(_));
        if ops.iter().filter(in_doubt).any(|o| o.invoke_time <= t) {
            return Ok(());
        }
        if e.kind == EventType::Delete && self.options.unrecorded_deletes {
            return Ok(());
        }
        let watch = self.watch_of(i);
        let what = e.text();
        let base = WatchViolation::new(Kind::UnknownWrite, String::new())
            .at(r, key)
            .record(self.log, i);
        let (kind, text, named): (Kind, String, Vec<&Operation>) = if let Some((id, r2)) =
            self.ok_put_elsewhere(key, e)
        {
            let text = format!(
                "watch {watch} delivered {what} in record {i}, but acknowledged op {id} \
                     wrote that value at revision {r2}"
            );
            (Kind::WrongRevision, text, ops.clone())
        } else if let Some(late) = ops.iter().find(in_doubt) {
            let text = format!(
                "watch {watch} delivered {what} at time {t} (record {i}), but the only \
                     in-doubt op that could make it (op {}) was invoked at {}",
                late.id, late.invoke_time
            );
            (Kind::Future, text, vec![*late])
        } else if let Some(failed) = ops.iter().find(|o| matches!(o.outcome, Outcome::Fail(_))) {
            let text = format!(
                "watch {watch} delivered {what} in record {i}, but only op {}, which \
                     failed, could have made it",
                failed.id
            );
            (Kind::UnknownWrite, text, vec![*failed])
        } else {
            let verb = if e.kind == EventType::Put {
                format!("wrote {key}={}", e.kv.value)
            } else {
                format!("could delete {key}")
            };
            let text = format!(
                "watch {watch} delivered {what} in record {i}, but no op of the history \
                     {verb} at a revision no acknowledged write took"
            );
            (Kind::UnknownWrite, text, Vec::new())
        };
        let mut v = base;
        v.kind = kind;
        v.explanation = text;
        for op in named {
            v = v.op(op);
        }
        bad(v)
    }

    /// Watches agree on every `(revision, key)`; returns the known changes.
    fn agree(&self) -> Check<Chains> {
        let mut chains = chains_of(self.writes);
        let mut first: HashMap<(Revision, &str), (usize, &WatchEvent)> = HashMap::new();
        for s in self.streams {
            for d in &s.deliveries {
                let Some(e) = s.event(self.log, d) else {
                    continue;
                };
                let at = (e.revision(), e.kv.key.as_str());
                if let Some(&(i0, e0)) = first.get(&at) {
                    self.same(i0, e0, d.record, e)?;
                    continue;
                }
                first.insert(at, (d.record, e));
                let chain = chains.entry(e.kv.key.clone()).or_default();
                let known = chain.entry(e.revision()).or_insert_with(|| Known {
                    kind: e.kind,
                    value: (e.kind == EventType::Put).then(|| e.kv.value.clone()),
                    kv: None,
                    source: Source::Record(d.record),
                });
                if e.kind == EventType::Put {
                    known.kv = Some(e.kv.clone());
                }
            }
        }
        Ok(chains)
    }

    fn same(&self, i0: usize, e0: &WatchEvent, i: usize, e: &WatchEvent) -> Check<()> {
        let kv_differs = e.kind == EventType::Put && e.kv != e0.kv;
        let prev_differs = matches!((&e0.prev_kv, &e.prev_kv), (Some(a), Some(b)) if a != b);
        if e.kind == e0.kind && !kv_differs && !prev_differs {
            return Ok(());
        }
        let (w0, w) = (self.watch_of(i0), self.watch_of(i));
        let text = format!(
            "watches {w0} and {w} disagree about {} at revision {}: {} (record {i0}) vs {} \
             (record {i}){}",
            e.kv.key,
            e.revision(),
            e0.text(),
            e.text(),
            if prev_differs {
                ", prev_kv differs"
            } else {
                ""
            }
        );
        let v = WatchViolation::new(Kind::Disagree, text).at(e.revision(), &e.kv.key);
        bad(v.record(self.log, i0).record(self.log, i))
    }

    /// Every known change to a covered key in `[start, horizon]` (filters applied) reached
    /// the watch.
    fn gaps(&self, s: &Stream, chains: &Chains) -> Check<()> {
        if s.horizon < s.start {
            return Ok(());
        }
        for (key, chain) in chains {
            if !s.req.covers(key) {
                continue;
            }
            for (&r, k) in chain.range(s.start..=s.horizon) {
                if s.req.passes(k.kind) && !s.delivered.contains(&(r, key.clone())) {
                    return bad(self.gap(s, key, r, k));
                }
            }
        }
        Ok(())
    }

    fn gap(&self, s: &Stream, key: &str, r: Revision, k: &Known) -> WatchViolation {
        let m = s.milestones.iter().find(|m| m.revision >= r);
        let (kind, after) = match m {
            Some(m) if m.progress => (
                Kind::Progress,
                format!(
                    "it sent a progress notification at revision {} (record {}) without it",
                    m.revision, m.record
                ),
            ),
            Some(m) => (
                Kind::Gap,
                format!(
                    "it delivered revision {} (record {}) without it",
                    m.revision, m.record
                ),
            ),
            None => (Kind::Gap, String::new()),
        };
        let text = format!(
            "watch {} (start {}) missed the {} of {key} at revision {r} (known from {}): {after}",
            s.id,
            s.start,
            k.kind.name(),
            self.source_text(k.source),
        );
        let mut v = WatchViolation::new(kind, text)
            .at(r, key)
            .record(self.log, s.open);
        if let Some(m) = m {
            v = v.record(self.log, m.record);
        }
        self.name_source(v, k.source)
    }
}

/// Why a put continuing generation `c` at version `n` cannot directly follow `prev` (`None`:
/// the empty store at the initial revision).
fn follows(c: Revision, n: i64, prev: Option<(Revision, &Known)>) -> Option<String> {
    let Some((r1, p)) = prev.filter(|p| p.1.kind == EventType::Put) else {
        return Some("the key did not exist".to_string());
    };
    match &p.kv {
        Some(pkv) if (pkv.create_revision, pkv.version.saturating_add(1)) != (c, n) => {
            Some(format!(
                "expected create {} and version {}",
                pkv.create_revision,
                pkv.version.saturating_add(1)
            ))
        }
        None if c > r1 => Some(format!("the generation must include the put at {r1}")),
        _ => None,
    }
}

/// The passes that need the known changes and their coverage.
struct Chained<'a> {
    ctx: &'a Ctx<'a>,
    chains: &'a Chains,
    coverage: &'a Coverage,
}

impl Chained<'_> {
    fn fail(
        &self,
        key: &str,
        r: Revision,
        kind: Kind,
        text: String,
        sources: &[Source],
    ) -> WatchViolation {
        let mut v = WatchViolation::new(kind, text).at(r, key);
        for &s in sources {
            v = self.ctx.name_source(v, s);
        }
        v
    }

    fn state_text(&self, prev: Option<(Revision, &Known)>) -> String {
        match prev {
            None => format!(
                "it did not exist at revision {} (the empty store)",
                self.ctx.options.initial_revision
            ),
            Some((r, k)) => format!(
                "its last known change was a {} at revision {r} ({})",
                k.kind.name(),
                self.ctx.source_text(k.source)
            ),
        }
    }

    /// The version chain at `(key, r)`, given the previous known change (`None`: the empty
    /// store at revision 1).
    fn version(
        &self,
        key: &str,
        r: Revision,
        k: &Known,
        prev: Option<(Revision, &Known)>,
    ) -> Check<()> {
        let r1 = prev.map_or(self.ctx.options.initial_revision, |p| p.0);
        let complete = self
            .coverage
            .covered(key, r1.saturating_add(1), r.saturating_sub(1));
        let existed = complete.then(|| prev.is_some_and(|p| p.1.kind == EventType::Put));
        let sources: Vec<Source> = prev.iter().map(|p| p.1.source).chain([k.source]).collect();
        let nothing_between = "and every change in between is known";
        match (k.kind, &k.kv) {
            (EventType::Delete, _) if existed == Some(false) => {
                let text = format!(
                    "{key} was deleted at revision {r} ({}), but {}, {nothing_between}",
                    self.ctx.source_text(k.source),
                    self.state_text(prev)
                );
                bad(self.fail(key, r, Kind::Version, text, &sources))
            }
            (EventType::Put, Some(kv)) => {
                if kv.create_revision == r {
                    if existed == Some(true) {
                        let text = format!(
                            "the put of {key} at revision {r} is a create (version 1), but \
                             {key} existed: {}, {nothing_between}",
                            self.state_text(prev)
                        );
                        return bad(self.fail(key, r, Kind::Version, text, &sources));
                    }
                    return Ok(());
                }
                self.continued(key, r, k, kv, prev, complete)
            }
            _ => Ok(()),
        }
    }

    /// A put at `r` that continues the generation created at `kv.create_revision`.
    fn continued(
        &self,
        key: &str,
        r: Revision,
        k: &Known,
        kv: &crate::history::KeyValue,
        prev: Option<(Revision, &Known)>,
        complete: bool,
    ) -> Check<()> {
        let (c, n) = (kv.create_revision, kv.version);
        let here = format!(
            "{key}@{r} (create {c}, version {n}, {})",
            self.ctx.source_text(k.source)
        );
        if complete {
            if let Some(why) = follows(c, n, prev) {
                let text = format!(
                    "{here} does not follow the key's previous version ({why}): {}, and every \
                     change in between is known",
                    self.state_text(prev),
                );
                let mut sources = vec![k.source];
                sources.extend(prev.map(|p| p.1.source));
                return bad(self.fail(key, r, Kind::Version, text, &sources));
            }
        }
        let mut puts: i64 = 1;
        let chain = self.chains.get(key);
        let earlier = chain.into_iter().flat_map(|ch| ch.range(c..r).rev());
        for (&r0, k0) in earlier {
            if k0.kind == EventType::Delete {
                let text = format!(
                    "{here}: the generation from {c} cannot include the delete at {r0} ({})",
                    self.ctx.source_text(k0.source)
                );
                return bad(self.fail(key, r, Kind::Version, text, &[k.source, k0.source]));
            }
            puts += 1;
            let Some(kv0) = &k0.kv else { continue };
            let fits = kv0.create_revision == c
                && kv0.version < n
                && n - kv0.version >= puts - 1
                && n - kv0.version <= r - r0;
            if !fits {
                let text = format!(
                    "{here} does not continue {} ({}): {} known puts in ({r0}, {r}]",
                    kv0,
                    self.ctx.source_text(k0.source),
                    puts - 1
                );
                return bad(self.fail(key, r, Kind::Version, text, &[k.source, k0.source]));
            }
            return Ok(());
        }
        if puts > n {
            let text = format!("{here}: {puts} known puts since its create, more than its version");
            return bad(self.fail(key, r, Kind::Version, text, &[k.source]));
        }
        let at_create = chain.and_then(|ch| ch.get(&c));
        if at_create.is_none() {
            if let Some((id, _)) = self.ctx.writes.complete_at(c) {
                let text = format!(
                    "{here}: revision {c} was made by acknowledged op {id}, which did not \
                     create {key}"
                );
                return bad(self.fail(key, r, Kind::Version, text, &[k.source, Source::Op(id)]));
            }
            if self.coverage.covered(key, c, c) {
                let text = format!("{here}: {key} is known not to have changed at revision {c}");
                return bad(self.fail(key, r, Kind::Version, text, &[k.source]));
            }
        }
        Ok(())
    }

    /// A `prev_kv` is the key's version at its mod revision, with no known change between
    /// it and the event; null only for a create or where a compaction may have removed the
    /// revision before the event.
    fn prev_kv(&self, s: &Stream, i: usize, e: &WatchEvent) -> Check<()> {
        let (r, key) = (e.revision(), e.kv.key.as_str());
        if e.kind == EventType::Put && e.kv.version == 1 {
            return Ok(());
        }
        let here = format!("watch {}: {} in record {i}", s.id, e.text());
        let fail = |text: String, sources: &[Source]| {
            let v = self.fail(key, r, Kind::PrevKv, text, sources);
            v.record(self.ctx.log, i)
        };
        let Some(p) = &e.prev_kv else {
            if self.compacted_before(r, i) {
                return Ok(());
            }
            let text = format!(
                "{here} has a null prev_kv, but {key} existed at revision {} and no compaction \
                 to revision {r} or above came before",
                r.saturating_sub(1)
            );
            return bad(fail(text, &[]));
        };
        let m = p.mod_revision;
        let chain = self.chains.get(key);
        if let Some((&r2, k2)) = chain.and_then(|ch| ch.range(m + 1..r).next()) {
            let text = format!(
                "{here} has prev_kv {p}, but {key} changed in between: a {} at revision {r2} \
                 ({})",
                k2.kind.name(),
                self.ctx.source_text(k2.source)
            );
            return bad(fail(text, &[k2.source]));
        }
        match chain.and_then(|ch| ch.get(&m)) {
            Some(k0) => {
                let fits = k0.kind == EventType::Put
                    && k0.value.as_deref() == Some(p.value.as_str())
                    && k0.kv.as_ref().is_none_or(|kv| kv == p);
                if fits {
                    return Ok(());
                }
                let known = match (&k0.kv, &k0.value) {
                    (Some(kv), _) => format!("put {kv}"),
                    (None, Some(v)) => format!("put {key}={v}"),
                    (None, None) => format!("delete {key}"),
                };
                let text = format!(
                    "{here} has prev_kv {p}, but revision {m} shows {known} ({})",
                    self.ctx.source_text(k0.source)
                );
                bad(fail(text, &[k0.source]))
            }
            None => self.prev_unknown(key, m, &here, p, i, r),
        }
    }

    fn prev_unknown(
        &self,
        key: &str,
        m: Revision,
        here: &str,
        p: &crate::history::KeyValue,
        i: usize,
        r: Revision,
    ) -> Check<()> {
        let why = if let Some((id, _)) = self.ctx.writes.complete_at(m) {
            format!("revision {m} was made by acknowledged op {id}, which did not put {key}")
        } else if m <= self.ctx.options.initial_revision || self.coverage.covered(key, m, m) {
            format!("{key} is known not to have changed at revision {m}")
        } else {
            return Ok(());
        };
        let mut v = self.fail(
            key,
            r,
            Kind::PrevKv,
            format!("{here} has prev_kv {p}, but {why}"),
            &[],
        );
        if let Some((id, _)) = self.ctx.writes.complete_at(m) {
            v = self.ctx.name_source(v, Source::Op(id));
        }
        bad(v.record(self.ctx.log, i))
    }

    /// Whether a compaction to at least `r` may have applied before record `i` arrived.
    fn compacted_before(&self, r: Revision, i: usize) -> bool {
        if self.ctx.options.unrecorded_compactions {
            return true;
        }
        let t = self.ctx.time(i);
        if self.ctx.writes.compaction_by(r, t) {
            return true;
        }
        let cancels = &self.ctx.cancels;
        cancels.iter().any(|&(time, c)| time <= t && c >= r)
    }
}
