//! The nemesis: faults chosen from the seed (a "swarm": each seed enables its own subset of
//! fault kinds, at its own rate), and the partition plans, written for N nodes.
//!
//! The planning half ([`Swarm`], [`plan_partition`], [`SeedRng`]) is pure and runs in any build;
//! the half that injects faults into a running cluster ([`Nemesis`]) needs madsim.
//!
//! Partition plans are over the *network's* nodes: the members, then the client node. With one
//! member that means client↔member cuts; with replication the same plans cut member↔member
//! links too. Example with nodes `[n1, n2, n3, client]` and split `{n2} | {n1, n3, client}`:
//! `Symmetric` cuts n2→n1, n1→n2, n2→n3, n3→n2, n2→client, client→n2; `Asymmetric` only the
//! first direction of each pair; `Bridge` with bridge n1 and halves `{n2} | {n3, client}`
//! cuts n2↔n3 and n2↔client but leaves n1 talking to both; `Swizzle` cuts the symmetric set
//! one link at a time in a shuffled order and restores it in another.

use keel_rng::SplitMix64;

/// A seeded generator with the helpers the nemesis and workload need.
#[derive(Debug, Clone)]
pub struct SeedRng(SplitMix64);

impl SeedRng {
    /// A generator for stream `stream` of seed `seed` (independent streams per purpose).
    pub fn new(seed: u64, stream: u64) -> Self {
        SeedRng(SplitMix64::for_stream(seed, stream))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`), by remainder.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below_modulo(n)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "between({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// A uniformly chosen index into a non-empty slice of length `len`.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

/// A kind of fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Power cut armed for the next fsync: the node dies between write and fsync, the disk
    /// tears the unsynced tail, the node restarts and recovers.
    PowerCut,
    /// A power cut at an arbitrary moment (kill, tear, restart).
    Crash,
    /// A process crash: kill and restart, the disk keeps what was written.
    ProcessRestart,
    /// The next fsync fails: the node must stop; it restarts after a power cycle.
    FsyncError,
    /// The next write is short and fails: the node must stop and restart.
    WriteError,
    /// A stop-the-world pause of one node.
    Pause,
    /// A network partition (see [`PartitionKind`]).
    Partition,
    /// Packet loss and delay on every link.
    LossyNet,
    /// Clock drift and wall-clock jumps on one node.
    ClockSkew,
    /// A bit flip in a durable WAL record: the node must refuse to start on it.
    Corruption,
    /// Clock skew and drift on the leader (and one other member) mixed with a leader change:
    /// the leader is isolated from its peers, crashed, or paused, while leases are live.
    SkewedLeaderChange,
    /// A member restarts in the middle of an election (three members or more): the leader is
    /// isolated from its peers; as soon as another member moves to a new term (it voted, or
    /// campaigned), that member is crashed or restarted while the new term's winner cannot
    /// reach it, and the old leader can. A member that forgets its vote can then elect a
    /// second leader in the same term.
    ElectionRestart,
    /// A member's disk fills up (no room beyond what its files hold, or a little more), for a
    /// while, then space is freed. Appends into a preallocated WAL segment go on; preallocating
    /// the next one, creating a file or writing a snapshot fail with `StorageFull`; the member
    /// refuses writes and raises etcd's NOSPACE alarm. Not in [`FaultKind::ALL`]: a swarm
    /// draws it on a stream of its own (see [`Swarm::with_disk_full`]).
    DiskFull,
}

impl FaultKind {
    /// Every fault kind a seed may draw for any cluster size (see [`Swarm::from_seed`]).
    pub const ALL: [FaultKind; 11] = [
        FaultKind::PowerCut,
        FaultKind::Crash,
        FaultKind::ProcessRestart,
        FaultKind::FsyncError,
        FaultKind::WriteError,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::LossyNet,
        FaultKind::ClockSkew,
        FaultKind::Corruption,
        FaultKind::SkewedLeaderChange,
    ];

    /// A short name for traces and reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::PowerCut => "power-cut",
            FaultKind::Crash => "crash",
            FaultKind::ProcessRestart => "process-restart",
            FaultKind::FsyncError => "fsync-error",
            FaultKind::WriteError => "write-error",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::LossyNet => "lossy-net",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::Corruption => "corruption",
            FaultKind::SkewedLeaderChange => "skewed-leader-change",
            FaultKind::ElectionRestart => "election-restart",
            FaultKind::DiskFull => "disk-full",
        }
    }
}

/// How a partition cuts the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKind {
    /// Two sides, no traffic either way.
    Symmetric,
    /// Two sides, traffic from the first to the second is dropped, the reverse flows.
    Asymmetric,
    /// Two sides plus one node that still talks to both.
    Bridge,
    /// The symmetric cut, applied one link at a time in a shuffled order and healed in another
    /// (FoundationDB's "swizzle-clog").
    Swizzle,
}

/// A partition to apply: directed links `(from, to)` over network node indices, cut in
/// `cut_order` and restored in `heal_order` (both permutations of the same links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// The kind.
    pub kind: PartitionKind,
    /// The order in which links are cut.
    pub cut_order: Vec<(usize, usize)>,
    /// The order in which links are restored.
    pub heal_order: Vec<(usize, usize)>,
}

/// Plans a partition of `nodes` network nodes (`nodes >= 2`).
pub fn plan_partition(kind: PartitionKind, nodes: usize, rng: &mut SeedRng) -> PartitionPlan {
    assert!(nodes >= 2, "a partition needs two nodes, got {nodes}");
    let mut order: Vec<usize> = (0..nodes).collect();
    rng.shuffle(&mut order);
    let (kind, bridge) = match kind {
        PartitionKind::Bridge if nodes >= 3 => (kind, Some(order.remove(0))),
        PartitionKind::Bridge => (PartitionKind::Symmetric, None),
        other => (other, None),
    };
    let split = 1 + rng.index(order.len() - 1);
    let (a, b) = order.split_at(split);
    let mut links = Vec::new();
    for &x in a {
        for &y in b {
            links.push((x, y));
            if kind != PartitionKind::Asymmetric {
                links.push((y, x));
            }
        }
    }
    debug_assert!(bridge.is_none_or(|br| links.iter().all(|&(x, y)| x != br && y != br)));
    let mut cut_order = links.clone();
    let mut heal_order = links;
    if kind == PartitionKind::Swizzle {
        rng.shuffle(&mut cut_order);
        rng.shuffle(&mut heal_order);
    }
    PartitionPlan {
        kind,
        cut_order,
        heal_order,
    }
}

/// The fault mix of one seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swarm {
    /// The fault kinds this seed uses (never empty).
    pub faults: Vec<FaultKind>,
    /// Mean pause between the end of one fault and the start of the next, in ms.
    pub interval_ms_mean: u64,
    /// Longest a held fault (pause, partition) lasts, in ms.
    pub hold_ms_max: u64,
}

impl Swarm {
    /// The swarm of `seed` for a cluster of `members`: each fault kind of [`FaultKind::ALL`] is
    /// in with probability 1/2 (at least one is), the rate and hold times are drawn too; with
    /// three members or more, [`FaultKind::ElectionRestart`] is in with probability 1/2, drawn
    /// from a stream of its own (so a seed's other draws do not depend on the cluster size).
    pub fn from_seed(seed: u64, members: usize) -> Swarm {
        let mut rng = SeedRng::new(seed, 0x0053_5741_524d);
        let mut faults: Vec<FaultKind> = FaultKind::ALL
            .into_iter()
            .filter(|_| rng.chance(1, 2))
            .collect();
        if faults.is_empty() {
            faults.push(FaultKind::ALL[rng.index(FaultKind::ALL.len())]);
        }
        let interval_ms_mean = rng.between(100, 1200);
        let hold_ms_max = rng.between(200, 2500);
        if members >= 3 && SeedRng::new(seed, 0x0045_4c45_4354).chance(1, 2) {
            faults.push(FaultKind::ElectionRestart);
        }
        Swarm {
            faults,
            interval_ms_mean,
            hold_ms_max,
        }
    }

    /// Adds [`FaultKind::DiskFull`] to the mix with probability 1/2, drawn from a stream of its
    /// own (the seed's other draws are unchanged). `SimConfig::disk_full` (on by default; the
    /// simulator's `--no-disk-full` turns it off) asks for it.
    pub fn with_disk_full(mut self, seed: u64) -> Swarm {
        if SeedRng::new(seed, 0x0044_4953_4b46).chance(1, 2) {
            self.faults.push(FaultKind::DiskFull);
        }
        self
    }

    /// One line naming the mix, for traces and reports.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        format!(
            "faults=[{}] interval_ms_mean={} hold_ms_max={}",
            names.join(","),
            self.interval_ms_mean,
            self.hold_ms_max
        )
    }
}

#[cfg(madsim)]
pub use self::inject::Nemesis;

#[cfg(madsim)]
mod inject {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use keel_storage::disk::Disk as _;

    use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use keel_proto::etcdserverpb::StatusRequest;

    use super::{plan_partition, FaultKind, PartitionKind, SeedRng, Swarm};
    use crate::check::FailureKind;
    use crate::cluster::Cluster;
    use crate::history::Outcome;
    use crate::workload::Ctx;

    /// Where each member's WAL lives on its simulated disk.
    pub const WAL_DIR: &str = "/data/member/wal";
    /// Where every simulated member keeps its snapshot files.
    pub const SNAP_DIR: &str = "/data/member/snap";
    /// How long the nemesis waits for a node to die of an armed disk fault.
    const FAULT_WAIT_MS_MAX: u64 = 1500;
    /// The shortest isolation of the leader in `skewed-leader-change` (three election
    /// timeouts at keel's default 1 s).
    const ISOLATED_LEADER_HOLD_MS_MIN: u64 = 3000;
    /// How long `election-restart` waits for a member to move past the isolated leader's term.
    const ELECTION_WAIT_MS_MAX: u64 = 4000;
    /// How often `election-restart` asks every member for its status.
    const ELECTION_POLL_MS: u64 = 5;

    /// What one member's Maintenance.Status said.
    #[derive(Debug, Clone, Copy)]
    struct MemberStatus {
        member_id: u64,
        leader: u64,
        raft_term: u64,
    }

    impl MemberStatus {
        fn leads(&self) -> bool {
            self.leader != 0 && self.leader == self.member_id
        }
    }

    /// Injects a swarm's faults into a cluster and heals them.
    pub struct Nemesis<'c> {
        cluster: &'c Cluster,
        swarm: Swarm,
        rng: SeedRng,
        ctx: Ctx,
        /// Election safety (Raft §5.2: at most one leader per term): every member seen
        /// claiming leadership, by term.
        leaders_by_term: BTreeMap<u64, usize>,
    }

    impl<'c> Nemesis<'c> {
        /// A nemesis for `cluster` with the fault mix `swarm`, drawing from `seed`.
        pub fn new(cluster: &'c Cluster, swarm: Swarm, seed: u64, ctx: Ctx) -> Self {
            Nemesis {
                cluster,
                swarm,
                rng: SeedRng::new(seed, 0x004e_454d_4553_4953),
                ctx,
                leaders_by_term: BTreeMap::new(),
            }
        }

        fn note(&self, event: String) {
            self.ctx.event(event);
        }

        async fn sleep_ms(ms: u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }

        /// Injects faults until `until` (simulated time).
        pub async fn run_until(&mut self, until: tokio::time::Instant) {
            loop {
                let wait = self.rng.between(0, 2 * self.swarm.interval_ms_mean);
                Self::sleep_ms(wait).await;
                if tokio::time::Instant::now() >= until {
                    return;
                }
                self.supervise();
                let kind = self.swarm.faults[self.rng.index(self.swarm.faults.len())];
                self.inject(kind).await;
            }
        }

        /// Restarts (after a power cycle) any member whose process stopped on its own.
        fn supervise(&mut self) {
            for i in 0..self.cluster.members.len() {
                if let Some(why) = self.cluster.exited(i) {
                    let seed = self.rng.next_u64();
                    self.note(format!("supervisor n{} exited ({why}); power-cycle", i + 1));
                    self.cluster.crash(i, seed);
                }
            }
        }

        async fn inject(&mut self, kind: FaultKind) {
            let i = self.rng.index(self.cluster.members.len());
            match kind {
                FaultKind::PowerCut => self.power_cut(i).await,
                FaultKind::Crash => {
                    let seed = self.rng.next_u64();
                    self.note(format!("crash n{} tear-seed={seed:x}", i + 1));
                    self.cluster.crash(i, seed);
                }
                FaultKind::ProcessRestart => {
                    self.note(format!("process-restart n{}", i + 1));
                    self.cluster.restart(i);
                }
                FaultKind::FsyncError => {
                    self.note(format!("fsync-error armed n{}", i + 1));
                    self.cluster.members[i].disk.fail_next_sync();
                    self.await_fatal_then_power_cycle(i).await;
                }
                FaultKind::WriteError => {
                    self.note(format!("write-error armed n{}", i + 1));
                    self.cluster.members[i].disk.fail_next_write();
                    self.await_fatal_then_power_cycle(i).await;
                }
                FaultKind::Pause => {
                    let hold = self.rng.between(50, self.swarm.hold_ms_max);
                    self.note(format!("pause n{} for {hold}ms", i + 1));
                    self.cluster.pause(i);
                    Self::sleep_ms(hold).await;
                    self.cluster.resume(i);
                    self.note(format!("resume n{}", i + 1));
                }
                FaultKind::Partition => self.partition().await,
                FaultKind::LossyNet => self.lossy_net(),
                FaultKind::ClockSkew => self.clock_skew(i),
                FaultKind::Corruption => self.corruption(i).await,
                FaultKind::SkewedLeaderChange => self.skewed_leader_change().await,
                FaultKind::ElectionRestart => self.election_restart().await,
                FaultKind::DiskFull => self.disk_full(i).await,
            }
        }

        /// Fills member `i`'s disk: its capacity becomes what its files hold (half the time) or
        /// that plus up to one WAL segment (so the failure lands at a varying point: the
        /// reserve, a rotation, a snapshot), for a hold time; then frees it. A full disk is not a failed fsync: no
        /// acknowledgement check follows (writes into preallocated space still succeed). A
        /// member that stopped is power-cycled by the supervisor, as for any exit. Three times
        /// in four, an operator then disarms the cluster's alarms through a random member.
        async fn disk_full(&mut self, i: usize) {
            let disk = &self.cluster.members[i].disk;
            let slack = if self.rng.chance(1, 2) {
                0
            } else {
                self.rng.between(0, crate::cluster::WAL_SEGMENT_BYTES)
            };
            let hold = self.rng.between(50, self.swarm.hold_ms_max.max(1000));
            let capacity = disk.used_bytes() + slack;
            disk.set_capacity(Some(capacity));
            self.note(format!(
                "disk-full n{} capacity={capacity} (slack {slack}) hold={hold}ms",
                i + 1
            ));
            Self::sleep_ms(hold).await;
            disk.set_capacity(None);
            let why = self.cluster.exited(i);
            self.note(format!(
                "disk-full n{} freed (stopped: {})",
                i + 1,
                why.as_deref().unwrap_or("no")
            ));
            if self.rng.chance(3, 4) {
                // Usually an operator disarms the NOSPACE alarm soon after (a member that
                // still sees its disk full raises it again); else it stays until the liveness
                // phase, and the cluster refuses writes that grow the store until then.
                Self::sleep_ms(self.rng.between(20, 500)).await;
                let via = self.rng.index(self.cluster.members.len());
                crate::alarm::disarm_alarms(self.cluster, &self.ctx, via).await;
            }
        }

        /// Arms a power cut at the node's next fsync, so the crash lands between a write and
        /// its fsync; waits for it (or a bound), then tears the disk and restarts.
        /// Half the time the cut waits for the next sync of a snapshot file, so that it lands
        /// while a snapshot is being saved (after its data was written, before it is durable).
        async fn power_cut(&mut self, i: usize) {
            let disk = self.cluster.members[i].disk.clone();
            if self.rng.chance(1, 2) {
                self.note(format!("power-cut armed n{} at a snapshot save", i + 1));
                disk.power_cut_at_next_sync_under(Path::new(SNAP_DIR));
                // The WAL's fsyncs go on (and acknowledge writes) until the cut.
                self.await_fault_then_power_cycle(i, false).await;
            } else {
                self.note(format!("power-cut armed n{}", i + 1));
                disk.power_cut_at_next_sync();
                self.await_fatal_then_power_cycle(i).await;
            }
        }

        /// Waits until member `i` stops on the armed disk fault (or a bound passes), lets the
        /// messages it already sent land, then power-cycles it.
        async fn await_fatal_then_power_cycle(&mut self, i: usize) {
            self.await_fault_then_power_cycle(i, true).await;
        }

        /// [`Self::await_fatal_then_power_cycle`]; `check_acks`: whether the fault must stop
        /// the member at the next write or fsync (no acknowledgement after it was armed).
        async fn await_fault_then_power_cycle(&mut self, i: usize, check_acks: bool) {
            let armed_ns = self.ctx.now_ns();
            let mut waited = 0;
            while self.cluster.exited(i).is_none() && waited < FAULT_WAIT_MS_MAX {
                Self::sleep_ms(10).await;
                waited += 10;
            }
            let why = self.cluster.exited(i);
            Self::sleep_ms(self.rng.between(0, 30)).await;
            let seed = self.rng.next_u64();
            self.note(format!(
                "power-cycle n{} after {waited}ms (stopped: {}) tear-seed={seed:x}",
                i + 1,
                why.as_deref().unwrap_or("no")
            ));
            let cycled_ns = self.ctx.now_ns();
            let fired_on = self.cluster.members[i].disk.fault_fired_on();
            self.cluster.crash(i, seed);
            // A failed write or fsync of a snapshot file is not fatal (the save is retried;
            // the WAL holds everything), so only a fault that hit the WAL must stop the member.
            // (A power cut stops the whole disk, wherever it fired: the member stops.)
            match fired_on {
                Some(path) if !path.starts_with(WAL_DIR) && why.is_none() => self.note(format!(
                    "n{}'s fault hit {} (not the WAL): not fatal",
                    i + 1,
                    path.display()
                )),
                _ if check_acks => self.check_no_ack_after_disk_fault(i, armed_ns, cycled_ns),
                _ => {}
            }
        }

        /// A disk fault armed at `armed_ns` fails the member's next write or fsync, which is
        /// fatal; so on a one-member cluster no write invoked after `armed_ns` can have been
        /// acknowledged before the power cycle at `cycled_ns` (an acknowledgement needs an
        /// fsync after the invocation). With more members a quorum can commit without this
        /// member's fsync, so the check is skipped.
        fn check_no_ack_after_disk_fault(&self, i: usize, armed_ns: u64, cycled_ns: u64) {
            if self.cluster.members.len() != 1 {
                return;
            }
            let acked = self.ctx.history.entries().into_iter().find(|e| {
                e.member == i
                    && e.op.is_write()
                    && e.invoke_ns > armed_ns
                    && e.complete_ns <= cycled_ns
                    && matches!(e.outcome, Outcome::Ok(_))
            });
            if let Some(e) = acked {
                let what = format!(
                    "n{} acknowledged a write invoked after a fatal disk fault was armed (at \
                     {:.3}s): its failed write or fsync did not stop it",
                    i + 1,
                    armed_ns as f64 / 1e9
                );
                self.ctx
                    .violation(FailureKind::AckAfterDiskFault, what, vec![e.to_string()]);
            }
        }

        async fn partition(&mut self) {
            let nodes = self.cluster.net_nodes();
            let kinds = [
                PartitionKind::Symmetric,
                PartitionKind::Asymmetric,
                PartitionKind::Bridge,
                PartitionKind::Swizzle,
            ];
            let kind = kinds[self.rng.index(kinds.len())];
            let plan = plan_partition(kind, nodes.len(), &mut self.rng);
            let hold = self.rng.between(50, self.swarm.hold_ms_max);
            self.note(format!(
                "partition {:?} links={:?} hold={hold}ms",
                plan.kind, plan.cut_order
            ));
            let net = self.cluster.net();
            let swizzle = plan.kind == PartitionKind::Swizzle;
            for &(a, b) in &plan.cut_order {
                net.clog_link(nodes[a], nodes[b]);
                if swizzle {
                    Self::sleep_ms(self.rng.between(10, 200)).await;
                }
            }
            Self::sleep_ms(hold).await;
            for &(a, b) in &plan.heal_order {
                net.unclog_link(nodes[a], nodes[b]);
                if swizzle {
                    Self::sleep_ms(self.rng.between(10, 200)).await;
                }
            }
            self.note("partition healed".to_string());
        }

        fn lossy_net(&mut self) {
            let loss_permille = self.rng.between(0, 150);
            let lo_ms = self.rng.between(0, 20);
            let hi_ms = lo_ms + 1 + self.rng.between(0, 80);
            self.note(format!(
                "lossy-net loss={loss_permille}permille latency={lo_ms}..{hi_ms}ms"
            ));
            self.cluster.net().update_config(|c| {
                c.packet_loss_rate = loss_permille as f64 / 1000.0;
                c.send_latency = Duration::from_millis(lo_ms)..Duration::from_millis(hi_ms);
            });
        }

        fn clock_skew(&mut self, i: usize) {
            let clock = &self.cluster.members[i].clock;
            let max = crate::clock::DRIFT_PPM_MAX;
            let drift = self.rng.between(0, 2 * max as u64) as i64 - max;
            let jump_ms = self.rng.between(0, 20_000) as i64 - 10_000;
            clock.set_drift_ppm(drift);
            clock.jump_wall(jump_ms);
            self.note(format!(
                "clock n{} drift={drift}ppm wall-jump={jump_ms}ms",
                i + 1
            ));
        }

        /// The member that calls itself leader (asked over Maintenance.Status from the client
        /// node), if one answers.
        async fn find_leader(&self) -> Option<usize> {
            for i in 0..self.cluster.members.len() {
                let endpoint = self.cluster.endpoint(i);
                let ask = self.cluster.client_node.spawn(async move {
                    let wait = Duration::from_millis(300);
                    let mut m = tokio::time::timeout(wait, MaintenanceClient::connect(endpoint))
                        .await
                        .ok()?
                        .ok()?;
                    let s = tokio::time::timeout(wait, m.status(StatusRequest {}))
                        .await
                        .ok()?
                        .ok()?
                        .into_inner();
                    let me = s.header.map(|h| h.member_id)?;
                    Some(s.leader != 0 && s.leader == me)
                });
                if ask.await.ok().flatten() == Some(true) {
                    return Some(i);
                }
            }
            None
        }

        /// Every member's status, asked concurrently from the client node (`None`: no answer
        /// within 300 ms). Leadership claims are checked for election safety.
        async fn statuses(&mut self) -> Vec<Option<MemberStatus>> {
            let asks: Vec<_> = (0..self.cluster.members.len())
                .map(|i| {
                    let endpoint = self.cluster.endpoint(i);
                    self.cluster.client_node.spawn(async move {
                        let wait = Duration::from_millis(300);
                        let connect = MaintenanceClient::connect(endpoint);
                        let mut m = tokio::time::timeout(wait, connect).await.ok()?.ok()?;
                        let s = tokio::time::timeout(wait, m.status(StatusRequest {}))
                            .await
                            .ok()?
                            .ok()?
                            .into_inner();
                        Some(MemberStatus {
                            member_id: s.header.map(|h| h.member_id)?,
                            leader: s.leader,
                            raft_term: s.raft_term,
                        })
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(asks.len());
            for ask in asks {
                out.push(ask.await.ok().flatten());
            }
            for (i, s) in out.iter().enumerate() {
                if let Some(s) = s.filter(MemberStatus::leads) {
                    self.claim_leadership(s.raft_term, i);
                }
            }
            out
        }

        /// Records that member `i` called itself leader in `term`; a second member doing so
        /// for the same term breaks election safety.
        fn claim_leadership(&mut self, term: u64, i: usize) {
            let first = *self.leaders_by_term.entry(term).or_insert(i);
            if first != i {
                let what = format!(
                    "two leaders in term {term}: n{} and n{} (election safety, Raft §5.2)",
                    first + 1,
                    i + 1
                );
                if !self.ctx.violations().iter().any(|f| f.what == what) {
                    self.ctx
                        .violation(FailureKind::ElectionSafety, what, Vec::new());
                }
            }
        }

        /// Asks every member's status until `done` holds for one of the answers, or `max_ms`
        /// passes; returns whether it held.
        async fn poll_until(
            &mut self,
            max_ms: u64,
            done: impl Fn(usize, &MemberStatus) -> bool,
        ) -> bool {
            let until = tokio::time::Instant::now() + Duration::from_millis(max_ms);
            let mut seen = String::new();
            while tokio::time::Instant::now() < until {
                let all = self.statuses().await;
                let view = describe_statuses(&all);
                if view != seen {
                    self.note(format!("status {view}"));
                    seen = view;
                }
                let hit = all
                    .iter()
                    .enumerate()
                    .any(|(i, s)| s.as_ref().is_some_and(|s| done(i, s)));
                if hit {
                    return true;
                }
                Self::sleep_ms(ELECTION_POLL_MS).await;
            }
            false
        }

        /// A member loses power in the middle of an election (see
        /// [`FaultKind::ElectionRestart`]).
        ///
        /// With members L (leader, term t), V and O: arm a power cut at V's next fsync and
        /// isolate L from its peers. V's next fsync is the election's: its vote for O (or its
        /// own candidacy) in t + 1, so V dies between writing the vote and making it durable.
        /// Cut O→V (the new term's appends must not reach V), power-cycle V, wait until L
        /// steps down (check quorum), then let L and V talk again. L, with pre-vote, is still
        /// at term t and campaigns for t + 1 once V grants its pre-vote. A correct V never
        /// answered the vote it had not made durable, so O did not win t + 1 through it; a V
        /// that answered first elected O, and now elects L too: two leaders in t + 1. Every
        /// member's status is watched throughout for two leaders in one term.
        async fn election_restart(&mut self) {
            let n = self.cluster.members.len();
            let mut lead = None;
            if n >= 3 {
                self.poll_until(ELECTION_WAIT_MS_MAX, |_, s| s.leads())
                    .await;
                lead = self
                    .leaders_by_term
                    .iter()
                    .next_back()
                    .map(|(&term, &i)| (term, i));
            }
            let Some((term, leader)) = lead else {
                self.note("election-restart: no leader (or fewer than 3 members)".into());
                return;
            };
            let voter = (leader + 1 + self.rng.index(n - 1)) % n;
            let others: Vec<usize> = (0..n).filter(|&j| j != leader && j != voter).collect();
            let hold_ms = self.rng.between(1000, 3000);
            self.note(format!(
                "election-restart leader=n{} term={term} voter=n{} hold={hold_ms}ms: power cut \
                 armed on n{}, n{} isolated from its peers",
                leader + 1,
                voter + 1,
                voter + 1,
                leader + 1,
            ));
            let nodes = self.cluster.net_nodes();
            let net = self.cluster.net();
            self.cluster.members[voter].disk.power_cut_at_next_sync();
            for &j in others.iter().chain([&voter]) {
                net.clog_link(nodes[leader], nodes[j]);
                net.clog_link(nodes[j], nodes[leader]);
            }
            let voter_down = |nemesis: &Self| nemesis.cluster.exited(voter).is_some();
            let until = tokio::time::Instant::now() + Duration::from_millis(ELECTION_WAIT_MS_MAX);
            while !voter_down(self) && tokio::time::Instant::now() < until {
                self.statuses().await;
                Self::sleep_ms(ELECTION_POLL_MS).await;
            }
            // Its last packets (a vote answered before its fsync) land.
            Self::sleep_ms(self.rng.between(0, 30)).await;
            for &j in &others {
                net.clog_link(nodes[j], nodes[voter]);
            }
            let why = self.cluster.exited(voter);
            let seed = self.rng.next_u64();
            self.cluster.crash(voter, seed);
            self.note(format!(
                "election-restart power-cycle n{} (stopped: {}) tear-seed={seed:x}",
                voter + 1,
                why.as_deref().unwrap_or("no"),
            ));
            // A heartbeat of L's would carry V's newer term back to L: wait until L steps down
            // (as a pre-candidate it keeps its term).
            let stepped_down = self
                .poll_until(ELECTION_WAIT_MS_MAX, |i, s| i == leader && !s.leads())
                .await;
            net.unclog_link(nodes[leader], nodes[voter]);
            net.unclog_link(nodes[voter], nodes[leader]);
            self.note(format!(
                "election-restart n{} stepped down: {stepped_down}; n{}<->n{} open",
                leader + 1,
                leader + 1,
                voter + 1
            ));
            self.poll_until(hold_ms, |_, _| false).await;
            for &j in &others {
                net.unclog_link(nodes[leader], nodes[j]);
                net.unclog_link(nodes[j], nodes[leader]);
                net.unclog_link(nodes[j], nodes[voter]);
            }
            self.note("election-restart healed".into());
        }

        /// Skews and drifts the leader's clock (by the largest drift, either way) and one
        /// other member's, then changes the leader: isolates it from its peers (its clients
        /// still reach it), crashes it, or pauses it.
        async fn skewed_leader_change(&mut self) {
            let n = self.cluster.members.len();
            let found = self.find_leader().await;
            let leader = found.unwrap_or_else(|| self.rng.index(n));
            let max = crate::clock::DRIFT_PPM_MAX;
            let lead_drift = if self.rng.chance(1, 2) { max } else { -max };
            let other = (leader + 1 + self.rng.index(n.max(2) - 1)) % n;
            let other_drift = self.rng.between(0, 2 * max as u64) as i64 - max;
            let jump_ms = self.rng.between(0, 20_000) as i64 - 10_000;
            self.cluster.members[leader].clock.set_drift_ppm(lead_drift);
            self.cluster.members[leader].clock.jump_wall(jump_ms);
            let other_note = if other != leader {
                self.cluster.members[other].clock.set_drift_ppm(other_drift);
                format!(" n{} drift={other_drift}ppm", other + 1)
            } else {
                String::new()
            };
            let hold = self
                .rng
                .between(500, self.swarm.hold_ms_max.max(500) + 1500);
            let how = self.rng.below(3);
            self.note(format!(
                "skewed-leader-change leader=n{}{} drift={lead_drift}ppm wall-jump={jump_ms}ms\
                 {other_note}; {} for {hold}ms",
                leader + 1,
                if found.is_some() { "" } else { "(guessed)" },
                ["isolate", "crash", "pause"][how as usize]
            ));
            match how {
                // Isolated for at least three election timeouts: long enough that the others
                // elect a leader and acknowledge writes while the old leader, still reachable
                // by its clients, must not answer linearizable reads from its stale state.
                0 => {
                    self.isolate(leader, hold.max(ISOLATED_LEADER_HOLD_MS_MIN))
                        .await
                }
                1 => {
                    let seed = self.rng.next_u64();
                    self.cluster.crash(leader, seed);
                    Self::sleep_ms(hold).await;
                }
                _ => {
                    self.cluster.pause(leader);
                    Self::sleep_ms(hold).await;
                    self.cluster.resume(leader);
                }
            }
            self.note(format!("skewed-leader-change n{} back", leader + 1));
        }

        /// Cuts member `i` off from the other members (both ways) for `hold_ms`; with one
        /// member, from the client node.
        async fn isolate(&mut self, i: usize, hold_ms: u64) {
            let nodes = self.cluster.net_nodes();
            let members = self.cluster.members.len();
            let peers: Vec<usize> = if members == 1 {
                vec![members]
            } else {
                (0..members).filter(|&j| j != i).collect()
            };
            let net = self.cluster.net();
            for &j in &peers {
                net.clog_link(nodes[i], nodes[j]);
                net.clog_link(nodes[j], nodes[i]);
            }
            Self::sleep_ms(hold_ms).await;
            for &j in &peers {
                net.unclog_link(nodes[i], nodes[j]);
                net.unclog_link(nodes[j], nodes[i]);
            }
        }

        /// Flips a bit in a durable WAL record of member `i` (never the last record of the
        /// last segment, whose damage a torn write can explain), restarts the member, and
        /// requires it to refuse to start; then flips the bit back and restarts it again.
        async fn corruption(&mut self, i: usize) {
            let disk = self.cluster.members[i].disk.clone();
            let Some((path, offset, bit)) = self.pick_corruption(&disk) else {
                self.note(format!(
                    "corruption n{}: no durable record to damage",
                    i + 1
                ));
                return;
            };
            self.cluster.pause(i);
            if disk.flip_bit(&path, offset, bit).is_err() {
                self.cluster.resume(i);
                return;
            }
            self.note(format!(
                "corruption n{} {} offset={offset} bit={bit}; restart",
                i + 1,
                path.display()
            ));
            self.cluster.restart(i);
            let served = crate::workload::probe_serves(self.cluster, i, 3000).await;
            let why = self.cluster.exited(i);
            if served {
                let v = format!(
                    "n{} started on a WAL with a flipped bit ({} offset {offset} bit {bit}) and \
                     served reads: corruption went undetected",
                    i + 1,
                    path.display()
                );
                self.ctx
                    .violation(FailureKind::UndetectedCorruption, v, Vec::new());
            } else {
                self.note(format!(
                    "corruption n{} refused: {}",
                    i + 1,
                    why.as_deref().unwrap_or("did not serve")
                ));
            }
            self.cluster.pause(i);
            if disk.flip_bit(&path, offset, bit).is_err() {
                self.note(format!("corruption n{}: could not repair", i + 1));
            }
            self.cluster.restart(i);
            self.note(format!("corruption n{} repaired; restart", i + 1));
        }

        /// A random byte of a durable record other than the last one of the last segment.
        fn pick_corruption(&mut self, disk: &keel_storage::SimDisk) -> Option<(PathBuf, u64, u8)> {
            let dir = Path::new(WAL_DIR);
            let mut names: Vec<String> = disk.list_dir(dir).ok()?;
            names.retain(|n| n.ends_with(".wal"));
            names.sort();
            let last_name = names.last()?.clone();
            let mut candidates = Vec::new();
            for name in &names {
                let path = dir.join(name);
                let synced = disk.synced_len(&path).ok()?;
                let bytes = disk.read(&path).ok()?;
                let mut records = record_spans(&bytes, synced);
                if *name == last_name {
                    records.pop();
                }
                candidates.extend(records.into_iter().map(|r| (path.clone(), r)));
            }
            if candidates.is_empty() {
                return None;
            }
            let (path, (start, end)) = candidates[self.rng.index(candidates.len())].clone();
            let offset = self.rng.between(start, end - 1);
            Some((path, offset, self.rng.below(8) as u8))
        }
    }

    /// `n1:t3/n2 n2:t3/n2 n3:-` (member: term / the leader it knows, `?` for none or one that
    /// did not answer; `-` for no answer).
    fn describe_statuses(all: &[Option<MemberStatus>]) -> String {
        let name = |id: u64| {
            all.iter()
                .position(|s| s.is_some_and(|s| s.member_id == id && id != 0))
                .map_or("?".to_string(), |j| format!("n{}", j + 1))
        };
        let one = |(i, s): (usize, &Option<MemberStatus>)| match s {
            Some(s) => format!("n{}:t{}/{}", i + 1, s.raft_term, name(s.leader)),
            None => format!("n{}:-", i + 1),
        };
        all.iter()
            .enumerate()
            .map(one)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `(start, end)` byte spans of whole WAL records within the first `synced` bytes
    /// (record = len:u32 crc:u32 type:u8 payload[len]; see keel_storage::wal), up to the
    /// preallocated zeros after the last one (type 0 does not exist).
    fn record_spans(bytes: &[u8], synced: u64) -> Vec<(u64, u64)> {
        let limit = (synced as usize).min(bytes.len());
        let mut spans = Vec::new();
        let mut o = 0usize;
        while o + 9 <= limit && bytes[o + 8] != 0 {
            let mut len = [0u8; 4];
            len.copy_from_slice(&bytes[o..o + 4]);
            let end = o + 9 + u32::from_le_bytes(len) as usize;
            if end > limit {
                break;
            }
            spans.push((o as u64, end as u64));
            o = end;
        }
        spans
    }

    impl Nemesis<'_> {
        /// Ends every fault: resumes paused nodes, restores links and the network's defaults,
        /// resets clocks, and power-cycles any member that stopped.
        pub fn heal(&mut self) {
            let net = self.cluster.net();
            let nodes = self.cluster.net_nodes();
            for &a in &nodes {
                for &b in &nodes {
                    net.unclog_link(a, b);
                }
            }
            net.update_config(|c| *c = madsim::net::Config::default());
            for (i, m) in self.cluster.members.iter().enumerate() {
                self.cluster.resume(i);
                m.clock.reset();
                m.disk.set_capacity(None);
            }
            self.supervise();
            self.note("heal: links restored, net defaults, clocks reset, nodes resumed".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_cuts_both_ways_across_the_split() {
        let mut rng = SeedRng::new(1, 2);
        for n in 2..6 {
            let plan = plan_partition(PartitionKind::Symmetric, n, &mut rng);
            assert!(!plan.cut_order.is_empty());
            for &(a, b) in &plan.cut_order {
                assert!(plan.cut_order.contains(&(b, a)), "{plan:?}");
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn asymmetric_cuts_one_way_bridge_spares_one_node() {
        let mut rng = SeedRng::new(3, 4);
        let plan = plan_partition(PartitionKind::Asymmetric, 4, &mut rng);
        for &(a, b) in &plan.cut_order {
            assert!(!plan.cut_order.contains(&(b, a)));
        }
        let plan = plan_partition(PartitionKind::Bridge, 5, &mut rng);
        let touched: std::collections::BTreeSet<usize> =
            plan.cut_order.iter().flat_map(|&(a, b)| [a, b]).collect();
        assert_eq!(touched.len(), 4, "the bridge talks to everyone: {plan:?}");
    }

    #[test]
    fn swizzle_heals_the_links_it_cut() {
        let mut rng = SeedRng::new(5, 6);
        let plan = plan_partition(PartitionKind::Swizzle, 5, &mut rng);
        let mut a = plan.cut_order.clone();
        let mut b = plan.heal_order.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn swarms_differ_by_seed_and_never_are_empty() {
        let mixes: std::collections::BTreeSet<Vec<FaultKind>> =
            (0..64).map(|s| Swarm::from_seed(s, 1).faults).collect();
        assert!(mixes.len() > 20);
        assert!(mixes.iter().all(|m| !m.is_empty()));
        assert_eq!(Swarm::from_seed(9, 3), Swarm::from_seed(9, 3));
    }

    #[test]
    fn disk_full_only_when_asked_and_other_draws_unchanged() {
        let mut with = 0;
        for seed in 0..64 {
            let plain = Swarm::from_seed(seed, 3);
            assert!(
                !plain.faults.contains(&FaultKind::DiskFull),
                "off by default"
            );
            let full = plain.clone().with_disk_full(seed);
            with += usize::from(full.faults.contains(&FaultKind::DiskFull));
            let mut rest = full.clone();
            rest.faults.retain(|&f| f != FaultKind::DiskFull);
            assert_eq!(rest, plain, "seed {seed}");
        }
        assert!((16..=48).contains(&with), "{with} of 64");
        assert!(!FaultKind::ALL.contains(&FaultKind::DiskFull));
    }

    #[test]
    fn election_restart_only_with_three_members_and_other_draws_unchanged() {
        let has = |s: &Swarm| s.faults.contains(&FaultKind::ElectionRestart);
        let mut with = 0;
        for seed in 0..64 {
            let one = Swarm::from_seed(seed, 1);
            let three = Swarm::from_seed(seed, 3);
            assert!(!has(&one));
            with += usize::from(has(&three));
            let mut rest = three.clone();
            rest.faults.retain(|&f| f != FaultKind::ElectionRestart);
            assert_eq!(rest, one, "seed {seed}");
        }
        assert!((16..=48).contains(&with), "{with} of 64");
    }
}
