//! The members: one server process per namespace, started with etcd's flags (the same for
//! keel and etcd), killed with SIGKILL, paused with SIGSTOP, resumed with SIGCONT, restarted
//! on the same data directory. Each member's standard output and error go to
//! `RESULTS/member-N.log` (appended across restarts).
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::StatusRequest;
use tonic::transport::{Channel, Endpoint};

use super::net::{member_addr, netns};
use super::HarnessError;

/// Client port of every member (each has its own address).
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member.
pub const PEER_PORT: u16 = 2380;

/// The client URL of member `i`.
pub fn client_url(i: usize) -> String {
    format!("http://{}:{CLIENT_PORT}", member_addr(i))
}

/// The peer URL of member `i`.
pub fn peer_url(i: usize) -> String {
    format!("http://{}:{PEER_PORT}", member_addr(i))
}

/// The name of member `i`.
pub fn member_name(i: usize) -> String {
    format!("m{}", i + 1)
}

/// A gRPC channel to member `i` that connects lazily (and reconnects) with short timeouts.
pub fn channel(i: usize, timeout: Duration) -> Result<Channel, HarnessError> {
    channel_with(i, timeout, timeout)
}

/// A lazy channel to member `i` whose requests may take up to `request` (connecting up to
/// `connect`).
pub fn channel_with(
    i: usize,
    connect: Duration,
    request: Duration,
) -> Result<Channel, HarnessError> {
    let endpoint = Endpoint::from_shared(client_url(i))
        .map_err(|e| HarnessError::Client { why: e.to_string() })?;
    Ok(endpoint
        .connect_timeout(connect)
        .timeout(request)
        .connect_lazy())
}

/// One member process (maybe not running).
struct Member {
    child: Option<Child>,
    paused: bool,
}

/// The cluster of member processes.
pub struct Members {
    bin: PathBuf,
    results: PathBuf,
    data: PathBuf,
    /// The member processes.
    members: Vec<Member>,
    token: String,
    /// Run every member under libfaketime, its offset read from a file the clock nemesis
    /// rewrites.
    faketime: bool,
}

/// libfaketime (Debian's `faketime` package), the thread-safe build.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl Members {
    /// A cluster of `n` members of `bin`, logging into `results`, with data under `data`.
    pub fn new(bin: &Path, n: usize, results: &Path, data: &Path, seed: u64) -> Members {
        Members {
            bin: bin.to_path_buf(),
            results: results.to_path_buf(),
            data: data.to_path_buf(),
            members: (0..n)
                .map(|_| Member {
                    child: None,
                    paused: false,
                })
                .collect(),
            token: format!("keel-jepsen-{seed}"),
            faketime: false,
        }
    }

    /// Runs every member under libfaketime from now on (the `clock` nemesis), with no offset
    /// yet. Only the wall clock is faked: `CLOCK_MONOTONIC` stays true.
    pub fn use_faketime(&mut self) -> Result<(), HarnessError> {
        if !Path::new(LIBFAKETIME).exists() {
            return Err(HarnessError::Usage(format!(
                "the clock nemesis needs libfaketime ({LIBFAKETIME}; apt-get install faketime)"
            )));
        }
        self.faketime = true;
        for i in 0..self.len() {
            self.set_clock(i, "+0")?;
        }
        Ok(())
    }

    /// Whether the members run under libfaketime.
    pub fn uses_faketime(&self) -> bool {
        self.faketime
    }

    fn clock_file(&self, i: usize) -> PathBuf {
        self.data.join(format!("clock-{}", member_name(i)))
    }

    /// Sets member `i`'s clock to `spec` (libfaketime's syntax: `+30s`, `-5s`, `+10s x1.5`).
    /// It takes effect within a second (libfaketime's cache).
    pub fn set_clock(&self, i: usize, spec: &str) -> Result<(), HarnessError> {
        let path = self.clock_file(i);
        std::fs::write(&path, format!("{spec}\n")).map_err(|e| HarnessError::Io {
            what: path.display().to_string(),
            why: e.to_string(),
        })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.data.join(member_name(i))
    }

    fn flags(&self, i: usize, existing: bool) -> Vec<String> {
        let state = if existing { "existing" } else { "new" };
        let cluster: Vec<String> = (0..self.len())
            .map(|j| format!("{}={}", member_name(j), peer_url(j)))
            .collect();
        let pairs = [
            ("name", member_name(i)),
            ("data-dir", self.data_dir(i).display().to_string()),
            ("listen-client-urls", client_url(i)),
            ("advertise-client-urls", client_url(i)),
            ("listen-peer-urls", peer_url(i)),
            ("initial-advertise-peer-urls", peer_url(i)),
            ("initial-cluster", cluster.join(",")),
            ("initial-cluster-state", state.to_string()),
            ("initial-cluster-token", self.token.clone()),
        ];
        pairs.iter().map(|(k, v)| format!("--{k}={v}")).collect()
    }

    fn log(&self, i: usize) -> Result<File, HarnessError> {
        let path = self.results.join(format!("member-{}.log", i + 1));
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| HarnessError::Io {
                what: path.display().to_string(),
                why: e.to_string(),
            })
    }

    /// Starts member `i` in its namespace (on its data, or as a new cluster's member).
    pub fn start(&mut self, i: usize) -> Result<(), HarnessError> {
        self.spawn(i, false)
    }

    /// Starts member `i`, with an empty data directory, to join the running cluster that has
    /// just added it (`--initial-cluster-state existing`).
    pub fn join(&mut self, i: usize) -> Result<(), HarnessError> {
        self.spawn(i, true)
    }

    fn spawn(&mut self, i: usize, existing: bool) -> Result<(), HarnessError> {
        let log = self.log(i)?;
        let err = log.try_clone().map_err(|e| HarnessError::Io {
            what: "member log".to_string(),
            why: e.to_string(),
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns(i)])
            .arg(&self.bin)
            .args(self.flags(i, existing))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        if self.faketime {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", self.clock_file(i))
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.spawn().map_err(|e| HarnessError::Command {
            command: format!("start member {}", i + 1),
            why: e.to_string(),
        })?;
        self.members[i] = Member {
            child: Some(child),
            paused: false,
        };
        Ok(())
    }

    /// Starts every member.
    pub fn start_all(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.len() {
            self.start(i)?;
        }
        Ok(())
    }

    fn signal(&self, i: usize, signal: i32) {
        if let Some(child) = &self.members[i].child {
            // SAFETY: kill(2) on our own child's pid; it is not reaped until we wait on it.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    /// Pauses member `i` (SIGSTOP).
    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.members[i].paused = true;
    }

    /// Resumes member `i` (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.members[i].paused = false;
    }

    /// Whether member `i` has a process (paused or not).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.members[i].child = None;
                false
            }
            None => false,
        }
    }

    /// Wipes member `i`'s data directory (the member must be stopped).
    pub fn wipe(&self, i: usize) -> Result<(), HarnessError> {
        let dir = self.data_dir(i);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| HarnessError::Io {
                what: dir.display().to_string(),
                why: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Kills every member (resuming the paused ones first is not needed: SIGKILL ends them).
    pub fn stop_all(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What `Status` says of member `i`: (its member id, the leader it knows), if it answers.
pub async fn status(i: usize, timeout: Duration) -> Option<(u64, u64)> {
    let mut client = MaintenanceClient::new(channel(i, timeout).ok()?);
    let call = client.status(StatusRequest::default());
    let r = tokio::time::timeout(timeout, call).await.ok()?.ok()?;
    let r = r.into_inner();
    Some((r.header.map_or(0, |h| h.member_id), r.leader))
}

/// The index of the member the majority of answering members call leader, if any.
pub async fn leader(n: usize, timeout: Duration) -> Option<usize> {
    let mut ids = vec![0u64; n];
    let mut leaders = Vec::new();
    for (i, id) in ids.iter_mut().enumerate() {
        if let Some((me, leader)) = status(i, timeout).await {
            *id = me;
            if leader != 0 {
                leaders.push(leader);
            }
        }
    }
    let first = *leaders.first()?;
    ids.iter().position(|id| *id == first && first != 0)
}
