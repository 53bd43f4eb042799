//! Helpers shared by the process-level integration tests: free ports, temporary directories, and a
//! [`Server`] guard that runs an etcd-compatible server process (keel or real etcd) and kills it on drop.
//!
//! Every integration test that includes this module (`mod common;`) uses a different subset of it.
//! Tokio build only: [`etcd`] (an `etcd-client` connected once a server serves reads) and
//! [`peer`] (a member's peer service on a loopback port).
#![allow(dead_code)]

#[cfg(not(madsim))]
pub mod etcd;
#[cfg(not(madsim))]
pub mod peer;

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Path of the keel server binary built by cargo for this test run.
pub fn keel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// Looks `program` up on `PATH` (like a shell would); `None` if it is not there.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Like [`find_on_path`], but a missing program is an error that says what to install.
pub fn require_on_path(program: &str) -> Result<PathBuf> {
    find_on_path(program).with_context(|| {
        format!(
            "`{program}` is not on PATH; this test needs etcd 3.4.x and etcdctl 3.4.x installed \
             (CI installs them; locally e.g. unpack etcd-v3.4.23-linux-amd64.tar.gz into /usr/local/bin)"
        )
    })
}

/// The Python the client-library tests run (Debian's, where the python3-* packages go).
pub const PYTHON: &str = "/usr/bin/python3";

/// Fails loudly when the Python module `module` is not importable, naming the Debian package
/// that provides it (scripts/install-deps installs each of them).
pub fn require_python_module(module: &str, package: &str) -> Result<()> {
    let out = Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .output()
        .with_context(|| format!("running {PYTHON}"))?;
    if !out.status.success() {
        bail!(
            "{package} is missing (apt-get install {package}, as scripts/install-deps does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs the Python `script` with `args`; its stdout, or an error with both streams.
pub fn run_python(script: &str, args: &[String]) -> Result<String> {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {PYTHON}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "the Python script failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Picks a free TCP port on 127.0.0.1. Ports are never handed out twice within one test process.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A client port and a peer port, both on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        Ports {
            client: free_port(),
            peer: free_port(),
        }
    }

    /// `127.0.0.1:CLIENT`, the form etcdctl's `--endpoints` takes.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }
}

/// A fresh directory under `std::env::temp_dir()`, removed on drop unless [`TempDir::keep`] was
/// called or the thread is panicking (so a failing test leaves its logs and data behind).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "keel-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place after drop (call it when a test fails).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Flags that start a single-member cluster the way etcd 3.4 is started; keel takes the same ones.
pub fn etcd_flags(name: &str, data_dir: &Path, ports: Ports) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={}", ports.client_url()),
        format!("--advertise-client-urls={}", ports.client_url()),
        format!("--listen-peer-urls={}", ports.peer_url()),
        format!("--initial-advertise-peer-urls={}", ports.peer_url()),
        format!("--initial-cluster={name}={}", ports.peer_url()),
        "--initial-cluster-state=new".to_string(),
    ]
}

/// A running server process. Dropping it kills the process (SIGKILL, whole process group) and reaps it.
#[derive(Debug)]
pub struct Server {
    label: String,
    child: Option<Child>,
    pub ports: Ports,
    log_path: PathBuf,
}

/// How long [`Server::start`] waits for the client port to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Server {
    /// Spawns `program args...` with stdout and stderr appended to `log_path`, then waits until
    /// `ports.client` accepts TCP connections. Fails (with the log's tail) if the process exits first
    /// or the port does not open within [`START_TIMEOUT`].
    pub fn start(
        label: &str,
        program: &Path,
        args: &[String],
        ports: Ports,
        log_path: &Path,
    ) -> Result<Server> {
        let server = Server::spawn(label, program, args, ports, log_path)?;
        server.wait_ready(START_TIMEOUT)
    }

    /// Like [`Server::start`] but returns as soon as the process is spawned; call
    /// [`Server::wait_ready`] before using it (lets several servers start in parallel).
    pub fn spawn(
        label: &str,
        program: &Path,
        args: &[String],
        ports: Ports,
        log_path: &Path,
    ) -> Result<Server> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log {}", log_path.display()))?;
        let log2 = log.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Own process group, so drop can kill any children too.
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        Ok(Server {
            label: label.to_string(),
            child: Some(child),
            ports,
            log_path: log_path.to_path_buf(),
        })
    }

    /// Starts `program` as a single-member cluster named `name` with etcd's flags (see
    /// [`etcd_flags`]) plus `extra` flags, logging to `DATA_DIR.log` next to the data dir.
    pub fn start_etcd_style(
        label: &str,
        program: &Path,
        name: &str,
        data_dir: &Path,
        ports: Ports,
        extra: &[String],
    ) -> Result<Server> {
        let mut args = etcd_flags(name, data_dir, ports);
        args.extend(extra.iter().cloned());
        let log_path = data_dir.with_extension("log");
        Server::start(label, program, &args, ports, &log_path)
    }

    /// [`Server::start_etcd_style`] as the member `default`, with its data in `DIR/LABEL.data`
    /// (its log in `DIR/LABEL.log`) and fresh ports.
    pub fn start_default(
        label: &str,
        program: &Path,
        dir: &Path,
        extra: &[String],
    ) -> Result<Server> {
        let data_dir = dir.join(format!("{label}.data"));
        Server::start_etcd_style(label, program, "default", &data_dir, Ports::pick(), extra)
    }

    /// Waits until the client port accepts TCP connections.
    pub fn wait_ready(mut self, timeout: Duration) -> Result<Server> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.client));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "{} exited with {status} before its client port {} opened; log {}:\n{}",
                        self.label,
                        self.ports.client,
                        self.log_path.display(),
                        self.log_tail(4000)
                    );
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(self);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: client port {} did not open within {timeout:?}; log {}:\n{}",
                    self.label,
                    self.ports.client,
                    self.log_path.display(),
                    self.log_tail(4000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn endpoint(&self) -> String {
        self.ports.endpoint()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The OS process id, if the process is still ours.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `max_bytes` of the captured stdout/stderr.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut buf);
        }
        let start = buf.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&buf[start..]).into_owned()
    }

    /// SIGKILLs the process group and reaps the process. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child leads its own process group; `kill -KILL -- -PGID` gets its children too.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{} log: {}", self.label, self.log_path.display());
        }
    }
}

/// Masks nonzero `cluster_id`, `member_id` and `raft_term` in prost `{:#?}` output, so two
/// servers' gRPC responses compare equal when only their identities differ.
#[allow(dead_code)] // not every test binary that includes this module compares gRPC output
pub fn mask_ids_in_debug(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            for key in ["cluster_id: ", "member_id: ", "raft_term: "] {
                if let Some(at) = line.find(key) {
                    let value = line[at + key.len()..].trim_end_matches(',');
                    if value != "0" {
                        return format!("{}{key}<MASKED>,", &line[..at]);
                    }
                }
            }
            line.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
