//! The cluster builder: keel members as madsim nodes, each running the real
//! `keel_server::run` over a [`SimDisk`] and a [`SimClock`] that the harness owns.
//!
//! A member's disk outlives its kill: [`Cluster::crash`] kills the node, makes the disk lose
//! what was not fsynced (tearing the last write at sector granularity), and restarts it; the
//! restarted node recovers from that disk exactly as production recovers after a power cut.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use keel_engine::bugs::Bugs;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_server::{Config, Env};
use keel_storage::sim_disk::SimDisk;
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use madsim::task::NodeId;
use tonic::transport::Channel;

use crate::clock::SimClock;
use crate::trace::fnv1a;

/// The client port every member listens on.
pub const CLIENT_PORT: u16 = 2379;
/// The peer port every member listens on.
pub const PEER_PORT: u16 = 2380;

/// One simulated member.
pub struct Member {
    /// Its madsim node.
    pub node: NodeHandle,
    /// Its disk, owned by the harness.
    pub disk: SimDisk,
    /// Its address.
    pub ip: IpAddr,
    /// Its clock, owned by the harness (every boot gets a clone: same skew).
    pub clock: SimClock,
    /// How many times it has booted.
    pub boots: Arc<AtomicU64>,
    /// Why the current boot's `keel_server::run` returned, once it has (a fatal error).
    pub exit: Arc<Mutex<Option<String>>>,
}

/// A simulated keel cluster plus a client node.
pub struct Cluster {
    handle: Handle,
    seed: u64,
    /// The members, in order of `--initial-cluster`.
    pub members: Vec<Member>,
    /// A node for clients to run on.
    pub client_node: NodeHandle,
    /// A member not in the initial cluster, waiting to join (see [`Cluster::with_spare`]).
    pub spare: Option<Spare>,
    /// The deliberate bugs every member runs with (simulation builds only).
    bugs: Bugs,
    /// Flags every member gets beyond the simulator's own (e.g. auto-compaction).
    extra_flags: Vec<String>,
}

/// A member built up front that starts only when [`Cluster::start_spare`] opens its gate,
/// with `--initial-cluster-state existing` (after a MemberAdd of [`Cluster::peer_url`] of
/// its index).
pub struct Spare {
    /// The member; its index is the cluster's size.
    pub member: Member,
    gate: Arc<AtomicBool>,
}

fn set_exit(exit: &Mutex<Option<String>>, why: Option<String>) {
    *exit.lock().unwrap_or_else(|e| e.into_inner()) = why;
}

fn member_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + i as u8))
}

fn member_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// Every member snapshots its state this often (applied entries), so that a seed's few
/// hundred entries make several snapshots, compact the log and send snapshots to members that
/// were down or cut off: snapshot installs happen under every fault.
pub const SNAPSHOT_COUNT: u64 = 64;
/// Small WAL segments, so that snapshots release WAL segments during a seed: a seed writes
/// a few tens of KiB of WAL, and 64 entries (one snapshot's worth) are a few KiB.
pub const WAL_SEGMENT_BYTES: u64 = 8 * 1024;

/// etcd-style flags for member `i` of `size`; `existing`: `--initial-cluster-state existing`
/// (a member added with MemberAdd, joining a running cluster).
fn member_config(i: usize, size: usize, existing: bool, bugs: Bugs, extra: &[String]) -> Config {
    let ip = member_ip(i);
    let cluster: Vec<String> = (0..size)
        .map(|j| format!("{}=http://{}:{PEER_PORT}", member_name(j), member_ip(j)))
        .collect();
    let args = vec![
        "keel".to_string(),
        format!("--name={}", member_name(i)),
        "--data-dir=/data".to_string(),
        format!("--listen-client-urls=http://{ip}:{CLIENT_PORT}"),
        format!("--advertise-client-urls=http://{ip}:{CLIENT_PORT}"),
        format!("--listen-peer-urls=http://{ip}:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls=http://{ip}:{PEER_PORT}"),
        format!("--initial-cluster={}", cluster.join(",")),
        format!(
            "--initial-cluster-state={}",
            if existing { "existing" } else { "new" }
        ),
        format!("--snapshot-count={SNAPSHOT_COUNT}"),
        // Snapshots every 64 entries whatever the store's size, so installs and WAL release
        // happen under every fault.
        "--snapshot-log-percent=0".to_string(),
        format!("--wal-segment-bytes={WAL_SEGMENT_BYTES}"),
    ];
    let args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
    match Config::try_parse_from(args) {
        Ok(c) => Config { bugs, ..c },
        Err(e) => panic!("the simulator's own flags must parse: {e}"),
    }
}

impl Cluster {
    /// Builds `size` members and a client node; call inside a madsim runtime.
    pub fn new(size: usize, seed: u64) -> Cluster {
        Cluster::with_bugs(size, seed, Bugs::none())
    }

    /// Like [`Cluster::new`], every member running with the deliberate `bugs`.
    pub fn with_bugs(size: usize, seed: u64, bugs: Bugs) -> Cluster {
        Cluster::with_flags(size, seed, bugs, Vec::new())
    }

    /// Like [`Cluster::with_bugs`], every member also started with the flags `extra`.
    pub fn with_flags(size: usize, seed: u64, bugs: Bugs, extra: Vec<String>) -> Cluster {
        let handle = Handle::current();
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let config = member_config(i, size, false, bugs, &extra);
            members.push(start_member(&handle, seed, i, config, None));
        }
        let client_node = handle
            .create_node()
            .name("client")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
            .build();
        Cluster {
            handle,
            seed,
            members,
            client_node,
            spare: None,
            bugs,
            extra_flags: extra,
        }
    }

    /// Like [`Cluster::new`] plus a spare member, built after the others (so the first `size`
    /// members and the client node are exactly those of [`Cluster::new`]).
    pub fn with_spare(size: usize, seed: u64, bugs: Bugs, extra: Vec<String>) -> Cluster {
        let mut cluster = Cluster::with_flags(size, seed, bugs, extra);
        let gate = Arc::new(AtomicBool::new(false));
        let config = member_config(size, size + 1, true, bugs, &cluster.extra_flags);
        let member = start_member(&cluster.handle, seed, size, config, Some(Arc::clone(&gate)));
        cluster.spare = Some(Spare { member, gate });
        cluster
    }

    /// Lets the spare member start (it joins the cluster); false if there is none.
    pub fn start_spare(&self) -> bool {
        match &self.spare {
            Some(spare) => {
                spare.gate.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Why the spare member's current boot stopped, if it has.
    pub fn spare_exited(&self) -> Option<String> {
        let spare = self.spare.as_ref()?;
        let why = spare.member.exit.lock().unwrap_or_else(|e| e.into_inner());
        why.clone()
    }

    /// The spare member's client endpoint.
    pub fn spare_endpoint(&self) -> Option<String> {
        let spare = self.spare.as_ref()?;
        Some(format!(
            "http://{}",
            SocketAddr::new(spare.member.ip, CLIENT_PORT)
        ))
    }

    /// Starts one more member with `--initial-cluster-state existing`, after a MemberAdd of its
    /// peer URL ([`Cluster::peer_url`] of the index this returns); returns its index.
    pub fn add_member(&mut self) -> usize {
        let i = self.members.len();
        let config = member_config(i, i + 1, true, self.bugs, &self.extra_flags);
        self.members
            .push(start_member(&self.handle, self.seed, i, config, None));
        i
    }

    /// The peer URL member `i` has (or will have, for the next [`Cluster::add_member`]).
    pub fn peer_url(i: usize) -> String {
        format!("http://{}:{PEER_PORT}", member_ip(i))
    }

    /// The seed this cluster was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Every member's client endpoint, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "http://{}",
            SocketAddr::new(self.members[i].ip, CLIENT_PORT)
        )
    }

    /// Kills member `i` (power cut: its disk loses what was not fsynced), then restarts it.
    pub fn crash(&self, i: usize, crash_seed: u64) {
        let member = &self.members[i];
        self.handle.kill(member.node.id());
        member.disk.crash(crash_seed);
        self.handle.restart(member.node.id());
    }

    /// Kills member `i`'s process and starts it again; the disk keeps everything written
    /// (the page cache survives a process crash).
    pub fn restart(&self, i: usize) {
        // `kill` also closes the node's sockets; `restart` alone would leave the old listener
        // bound and the new boot could not listen.
        self.handle.kill(self.members[i].node.id());
        self.handle.restart(self.members[i].node.id());
    }

    /// Kills member `i`'s process and leaves it down.
    pub fn kill(&self, i: usize) {
        self.handle.kill(self.members[i].node.id());
    }

    /// Freezes every task of member `i` (a stop-the-world pause) until [`Cluster::resume`].
    pub fn pause(&self, i: usize) {
        self.handle.pause(self.members[i].node.id());
    }

    /// Resumes member `i` after [`Cluster::pause`].
    pub fn resume(&self, i: usize) {
        self.handle.resume(self.members[i].node.id());
    }

    /// Why member `i`'s current boot stopped, if it has.
    pub fn exited(&self, i: usize) -> Option<String> {
        self.members[i]
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The madsim node ids of the members, then the client node: the network's nodes, in the
    /// order partitions index them.
    pub fn net_nodes(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.members.iter().map(|m| m.node.id()).collect();
        ids.push(self.client_node.id());
        ids
    }

    /// The simulated network.
    pub fn net(&self) -> Arc<NetSim> {
        NetSim::current()
    }

    /// A KV client for member `i`, retrying until the member listens (bounded).
    pub async fn kv_client(&self, i: usize) -> KvClient<Channel> {
        let endpoint = self.endpoint(i);
        for _ in 0..100 {
            if let Ok(c) = KvClient::connect(endpoint.clone()).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("member {i} at {endpoint} never accepted a connection");
    }
}

/// Builds and boots member `i` as a madsim node running `keel_server::run(config)`; with a
/// `gate`, the process waits until the gate opens.
fn start_member(
    handle: &Handle,
    seed: u64,
    i: usize,
    config: Config,
    gate: Option<Arc<AtomicBool>>,
) -> Member {
    let disk = SimDisk::new();
    let clock = SimClock::new(0, 0);
    let boots = Arc::new(AtomicU64::new(0));
    let exit = Arc::new(Mutex::new(None));
    let (init_disk, init_boots) = (disk.clone(), Arc::clone(&boots));
    let (init_clock, init_exit) = (clock.clone(), Arc::clone(&exit));
    let member_seed = fnv1a(seed.to_le_bytes().into_iter().chain([i as u8]));
    let node = handle
        .create_node()
        .name(member_name(i))
        .ip(member_ip(i))
        .init(move || {
            let boot = init_boots.fetch_add(1, Ordering::Relaxed);
            set_exit(&init_exit, None);
            let env = Env {
                disk: Arc::new(init_disk.clone()),
                clock: Arc::new(init_clock.clone()),
                seed: fnv1a(
                    member_seed
                        .to_le_bytes()
                        .into_iter()
                        .chain(boot.to_le_bytes()),
                ),
            };
            let config = config.clone();
            let exit = Arc::clone(&init_exit);
            let gate = gate.clone();
            async move {
                while gate.as_ref().is_some_and(|g| !g.load(Ordering::Relaxed)) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let why = match keel_server::run(config, env).await {
                    Err(e) => {
                        tracing::error!(error = %e, "keel member stopped");
                        e.to_string()
                    }
                    Ok(()) => "run returned Ok".to_string(),
                };
                set_exit(&exit, Some(why));
            }
        })
        .build();
    Member {
        node,
        disk,
        ip: member_ip(i),
        clock,
        boots,
        exit,
    }
}
