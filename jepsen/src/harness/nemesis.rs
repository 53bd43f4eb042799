//! The nemesis: faults on a schedule drawn from the run's seed, one at a time, each logged
//! with its start and end to the timeline (`timeline.jsonl`, one JSON object a line).
//!
//! - `kill`: SIGKILL a member, restart it on the same data after the hold.
//! - `pause`: SIGSTOP a member (the leader half of the time), SIGCONT after the hold. In the
//!   lock workload, three pauses in four target the member of the client that holds the lock
//!   and last 4–10 s, longer than the lock's lease TTL (2 s) plus an election: the lease can
//!   expire under the paused holder, as in Jepsen's 2020 etcd test.
//! - `partition`: majority/minority, isolate the leader, bridge or ring, as nftables drops
//!   inside the members' namespaces (clients in the root namespace are never cut off).
//! - `netem`: delay with jitter, loss and reordering on every member's link (`tc netem`;
//!   where the kernel has no netem qdisc, packet loss by nftables only).
//! - `member`: remove a member (MemberRemove through another member), kill it, wipe its
//!   data; at the end add it back (MemberAdd) and start it empty to join the cluster.
//! - `clock`: a member's wall clock jumps by up to ±60 s, sometimes running fast or slow,
//!   through libfaketime (every member runs under it when this nemesis is on). Go binaries
//!   such as etcd read the clock without libc, so on etcd this fault changes nothing.
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_rng::SplitMix64;
use serde::Serialize;

use super::lock::LockLog;
use super::member::{leader, Members};
use super::membership;
use super::net::Hosts;
use super::partition::CutOff;
use super::recorder::Recorder;
use super::HarnessError;

/// A kind of fault the nemesis can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// kill -9, then restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Network partitions.
    Partition,
    /// Delay, loss, reordering.
    Netem,
    /// Wall-clock offset and drift (libfaketime).
    Clock,
    /// Remove a member, wipe it, add it back.
    Member,
}

impl Kind {
    /// Parses `kill,pause,...` (`all` for every kind, `none` for none).
    pub fn parse_list(s: &str) -> Result<Vec<Kind>, HarnessError> {
        let mut kinds = Vec::new();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let add: &[Kind] = match word {
                "kill" => &[Kind::Kill],
                "pause" => &[Kind::Pause],
                "partition" => &[Kind::Partition],
                "netem" => &[Kind::Netem],
                "clock" => &[Kind::Clock],
                "member" => &[Kind::Member],
                "all" => &[
                    Kind::Kill,
                    Kind::Pause,
                    Kind::Partition,
                    Kind::Netem,
                    Kind::Clock,
                    Kind::Member,
                ],
                "none" => &[],
                other => return Err(HarnessError::Usage(format!(
                    "unknown nemesis {other:?} (kill, pause, partition, netem, clock, member, all, none)"
                ))),
            };
            for k in add {
                if !kinds.contains(k) {
                    kinds.push(*k);
                }
            }
        }
        Ok(kinds)
    }
}

/// One fault window of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// The fault's kind.
    pub fault: Kind,
    /// What exactly (members, shape).
    pub detail: String,
    /// Start, nanoseconds since the run began (the history's clock).
    pub start_ns: u64,
    /// End; `None` while active.
    pub end_ns: Option<u64>,
}

/// The faults a nemesis has to undo at its end.
enum Active {
    Killed(usize),
    Paused(usize),
    Partitioned,
    Netem,
    Skewed(usize),
    Removed(usize),
    /// A fault that could not start (logged; nothing to undo).
    Nothing,
}

/// The nemesis of one run.
pub struct Nemesis {
    kinds: Vec<Kind>,
    rng: SplitMix64,
    members: Arc<Mutex<Members>>,
    hosts: Arc<Hosts>,
    rec: Recorder,
    timeline: std::fs::File,
    cut_off: CutOff,
    /// The lock workload's log: pauses then aim at the lock holder's member.
    lock_holders: Option<LockLog>,
    /// The hold the fault just started chose for itself (a pause of the lock holder).
    long_hold: Option<Duration>,
    /// Every window so far.
    pub windows: Vec<Window>,
    /// A member the cluster would not take back (MemberAdd refused): the run cannot heal.
    pub left_out: Option<String>,
}

fn lock(m: &Mutex<Members>) -> std::sync::MutexGuard<'_, Members> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Nemesis {
    /// A nemesis of `kinds` whose schedule comes from `seed`, logging to `timeline`.
    pub fn new(
        kinds: Vec<Kind>,
        seed: u64,
        members: Arc<Mutex<Members>>,
        hosts: Arc<Hosts>,
        rec: Recorder,
        timeline: std::fs::File,
        cut_off: CutOff,
    ) -> Nemesis {
        Nemesis {
            kinds,
            rng: SplitMix64::for_stream(seed, 0x4E4E_4E4E),
            members,
            hosts,
            rec,
            timeline,
            cut_off,
            lock_holders: None,
            long_hold: None,
            windows: Vec::new(),
            left_out: None,
        }
    }

    /// Lets pauses aim at the member of the client that holds the lock (lock workload).
    pub fn target_lock_holders(&mut self, log: LockLog) {
        self.lock_holders = Some(log);
    }

    fn log(&mut self, event: &str, w: &Window) {
        let line = serde_json::json!({
            "time_ns": if event == "start" { w.start_ns } else { w.end_ns.unwrap_or(0) },
            "event": event,
            "fault": w.fault,
            "detail": w.detail,
        });
        let _ = writeln!(self.timeline, "{line}");
        tracing_line(event, w);
    }

    fn between(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.rng.below(hi_ms - lo_ms + 1))
    }

    /// Injects faults until `until`: a quiet gap, a fault, a hold, its end; repeated. Every
    /// fault has ended when this returns.
    pub async fn run(&mut self, until: Instant) -> Result<(), HarnessError> {
        if self.kinds.is_empty() {
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
            return Ok(());
        }
        loop {
            let gap = self.between(1000, 3000);
            if Instant::now() + gap >= until {
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                return Ok(());
            }
            tokio::time::sleep(gap).await;
            let kind = self.kinds[self.rng.below(self.kinds.len() as u64) as usize];
            let (active, detail) = self.start(kind).await?;
            let mut w = Window {
                fault: kind,
                detail,
                start_ns: self.rec.now_ns(),
                end_ns: None,
            };
            self.log("start", &w);
            let hold = self.between(2000, 6000);
            let hold = self.long_hold.take().unwrap_or(hold);
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(hold.min(left)).await;
            self.end(active).await?;
            w.end_ns = Some(self.rec.now_ns());
            self.log("end", &w);
            self.windows.push(w);
            if self.left_out.is_some() {
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                return Ok(());
            }
        }
    }

    async fn target(&mut self, prefer_leader: bool) -> usize {
        let n = lock(&self.members).len();
        if prefer_leader && self.rng.below(2) == 0 {
            if let Some(l) = leader(n, Duration::from_millis(500)).await {
                return l;
            }
        }
        self.rng.below(n as u64) as usize
    }

    async fn start(&mut self, kind: Kind) -> Result<(Active, String), HarnessError> {
        match kind {
            Kind::Kill => {
                let i = self.target(true).await;
                lock(&self.members).kill(i);
                Ok((Active::Killed(i), format!("kill -9 m{}", i + 1)))
            }
            Kind::Pause => self.pause().await,
            Kind::Partition => {
                let n = self.hosts.n;
                let known_leader = leader(n, Duration::from_millis(500)).await;
                let (name, grudge) = super::partition::choose(&mut self.rng, n, known_leader);
                for (i, peers) in grudge.iter().enumerate() {
                    self.hosts.drop_from(i, peers)?;
                }
                self.cut_off.set(&grudge);
                let text = super::partition::describe(&grudge);
                Ok((Active::Partitioned, format!("{name}: {text}")))
            }
            Kind::Netem => {
                let delay = format!("{}ms", 20 + self.rng.below(80));
                let spec = [
                    "delay", &delay, "20ms", "loss", "5%", "reorder", "20%", "50%",
                ];
                let mut done = String::new();
                for i in 0..self.hosts.n {
                    done = self.hosts.netem(i, &spec, 5)?;
                }
                Ok((Active::Netem, format!("every member: {done}")))
            }
            Kind::Member => self.remove_member().await,
            Kind::Clock => {
                let i = self.target(true).await;
                let secs = 1 + self.rng.below(60) as i64;
                let secs = if self.rng.below(2) == 0 { secs } else { -secs };
                let rate = ["", " x0.5", " x2", " x1.1"][self.rng.below(4) as usize];
                let spec = format!("{secs:+}s{rate}");
                lock(&self.members).set_clock(i, &spec)?;
                Ok((Active::Skewed(i), format!("m{} clock {spec}", i + 1)))
            }
        }
    }

    async fn end(&mut self, active: Active) -> Result<(), HarnessError> {
        match active {
            Active::Killed(i) => lock(&self.members).start(i),
            Active::Paused(i) => {
                lock(&self.members).resume(i);
                Ok(())
            }
            Active::Partitioned => {
                self.cut_off.clear();
                for i in 0..self.hosts.n {
                    self.hosts.heal_partition(i)?;
                }
                Ok(())
            }
            Active::Netem => {
                for i in 0..self.hosts.n {
                    self.hosts.heal_netem(i)?;
                }
                Ok(())
            }
            Active::Skewed(i) => lock(&self.members).set_clock(i, "+0"),
            Active::Removed(i) => self.add_back(i).await,
            Active::Nothing => Ok(()),
        }
    }
}

/// The client that holds the lock, waiting up to 2 s for one.
async fn wait_holder(log: &LockLog) -> Option<u64> {
    for _ in 0..100 {
        if let Some(client) = log.holder() {
            return Some(client);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

impl Nemesis {
    /// SIGSTOP a member: in the lock workload, three times in four the lock holder's member
    /// for 4–10 s (the choice and the hold come from the seed, the holder from the run).
    async fn pause(&mut self) -> Result<(Active, String), HarnessError> {
        if let Some(log) = self.lock_holders.clone() {
            let aim = self.rng.below(4) != 0;
            let hold = self.between(4000, 10_000);
            if let Some(client) = if aim { wait_holder(&log).await } else { None } {
                let i = client as usize % self.hosts.n;
                lock(&self.members).pause(i);
                self.long_hold = Some(hold);
                let why = format!(
                    "SIGSTOP m{} (the member of lock holder client {client}) for {} ms",
                    i + 1,
                    hold.as_millis()
                );
                return Ok((Active::Paused(i), why));
            }
        }
        let i = self.target(true).await;
        lock(&self.members).pause(i);
        Ok((Active::Paused(i), format!("SIGSTOP m{}", i + 1)))
    }

    async fn remove_member(&mut self) -> Result<(Active, String), HarnessError> {
        let n = self.hosts.n;
        let i = self.target(false).await;
        let Some(id) = membership::member_id(n, i).await else {
            let why = format!("m{}: no member listed it; not removed", i + 1);
            return Ok((Active::Nothing, why));
        };
        if !membership::remove(n, i, id).await {
            let why = format!("m{} ({id:x}): MemberRemove refused; not removed", i + 1);
            return Ok((Active::Nothing, why));
        }
        let mut m = lock(&self.members);
        m.kill(i);
        m.wipe(i)?;
        Ok((
            Active::Removed(i),
            format!("removed and wiped m{} ({id:x})", i + 1),
        ))
    }

    /// Adds member `i` back. When no member accepts the MemberAdd (the cluster has no quorum),
    /// the member stays out and the run is marked as unable to heal ([`Nemesis::left_out`]);
    /// the faults stop there.
    async fn add_back(&mut self, i: usize) -> Result<(), HarnessError> {
        if !membership::add(self.hosts.n, i).await {
            let why = format!(
                "MemberAdd m{}: no member accepted it within {:?}",
                i + 1,
                membership::BOUND
            );
            eprintln!("nemesis: {why}; no more faults");
            self.left_out = Some(why);
            return Ok(());
        }
        lock(&self.members).join(i)
    }
}

fn tracing_line(event: &str, w: &Window) {
    eprintln!(
        "[{:>8.3}s] nemesis {event} {:?}: {}",
        w.start_ns.max(w.end_ns.unwrap_or(0)) as f64 / 1e9,
        w.fault,
        w.detail
    );
}

/// Ends whatever fault may still be on (the heal phase's belt and braces): every member
/// resumed and running, no partition rule, no netem qdisc.
pub fn heal_all(members: &Mutex<Members>, hosts: &Hosts) -> Result<(), HarnessError> {
    let mut m = lock(members);
    for i in 0..m.len() {
        m.resume(i);
        if m.uses_faketime() {
            m.set_clock(i, "+0")?;
        }
        if !m.is_running(i) {
            m.start(i)?;
        }
    }
    for i in 0..hosts.n {
        hosts.heal_partition(i)?;
        hosts.heal_netem(i)?;
    }
    Ok(())
}
