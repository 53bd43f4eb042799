//! The runtime driver: owns the engine [`Node`], feeds it inputs, carries out its outputs.
//!
//! Three tasks:
//! - the **driver loop** owns the node: commands from the gRPC layer, ticks, disk completions
//!   go in; replies, messages and persist batches come out;
//! - the **WAL writer** takes persist batches, writes every batch queued behind the first one
//!   and fsyncs once (group commit), then reports the newest durable batch back; it also saves
//!   snapshots (the node's own, and a leader's that a batch installs) and, after saving one,
//!   releases the WAL segments the snapshot before it covers;
//! - the **ticker** sleeps one heartbeat interval on the node's [`Clock`] and sends a tick.
//!
//! A client's reply is released only when the engine applies its entry, which it can do only
//! after the WAL writer reported the entry durable: acknowledgement after fsync, by
//! construction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::bugs::{Bug, Bugs};
use keel_engine::error::Error;
use keel_engine::membership::{Member, Membership};
use keel_engine::node::{
    Input, Node, NodeStatus, Output, PersistBatch, Request, Response, SnapshotJob,
};
use keel_engine::raft_log::{encode_conf_state, encode_entry, encode_hard_state};
use keel_engine::raftpb::{Message, Snapshot};
use keel_engine::request::Rpc;
use keel_engine::watch::{StreamId, WatchInput, WatchOutput, STREAM_WINDOW};
use keel_proto::etcdserverpb::WatchResponse;
use keel_storage::snap::{SnapDir, SnapError};
use keel_storage::wal::{Wal, WalError};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::transport::Transport;

/// Commands the driver loop takes in one turn before it handles outputs, at most.
pub const COMMANDS_PER_TURN_MAX: usize = 1024;
/// Persist batches the WAL writer merges into one fsync, at most.
pub const BATCHES_PER_SYNC_MAX: usize = 4096;
/// Commands queued towards the driver, at most (back-pressure on clients beyond that).
pub const COMMAND_QUEUE_MAX: usize = 16 * 1024;
/// Peer messages the driver loop takes in one turn, at most.
pub const PEER_MESSAGES_PER_TURN_MAX: usize = 1024;
/// Ticks a removed member keeps running (so the entry that removed it reaches the others and
/// its reply goes out) before it stops.
pub const REMOVED_GRACE_TICKS: u32 = 10;

/// What the gRPC layer asks of the driver.
enum Command {
    Request {
        request: Request,
        reply: oneshot::Sender<Result<Response, Error>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    Members {
        reply: oneshot::Sender<Membership>,
    },
    /// A Watch stream opens: its responses go to `responses`.
    WatchOpen {
        stream: StreamId,
        responses: mpsc::Sender<WatchMessage>,
    },
    /// A create, cancel or progress request of a Watch stream.
    Watch(WatchInput),
}

/// What the driver sends a Watch stream: a response, or the reason the stream ends.
pub type WatchMessage = Result<WatchResponse, &'static str>;

/// A cheap, clonable handle to the driver, used by the gRPC services.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    /// Credits and closes of Watch streams: never waits, so a stream's `Drop` and `poll` can
    /// report them (bounded in practice by one message per window of responses read).
    watch_control: mpsc::UnboundedSender<WatchInput>,
    next_watch_stream: Arc<AtomicU64>,
    request_timeout: Duration,
    wal_bytes: Arc<AtomicU64>,
}

impl Handle {
    /// Sends a request through the node and waits for its typed reply, up to the request
    /// timeout.
    pub async fn call<R: Rpc>(&self, request: R) -> Result<R::Response, Error> {
        let response = self.request(request.into_request()).await?;
        match R::from_response(response) {
            Some(r) => Ok(r),
            // The node answers every request with a response of its own kind.
            None => panic!(
                "the node answered {} with another kind of response",
                R::NAME
            ),
        }
    }

    /// Sends a request through the node and waits for its reply, up to the request timeout.
    async fn request(&self, request: Request) -> Result<Response, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request { request, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Opens a Watch stream: returns its id and the receiver of its responses, which holds
    /// at most [`STREAM_WINDOW`] of them (the engine sends no more without credit).
    pub async fn watch_open(&self) -> Result<(StreamId, mpsc::Receiver<WatchMessage>), Error> {
        let stream = self.next_watch_stream.fetch_add(1, Ordering::Relaxed);
        let (responses, rx) = mpsc::channel(STREAM_WINDOW as usize);
        self.commands
            .send(Command::WatchOpen { stream, responses })
            .await
            .map_err(|_| Error::Stopped)?;
        Ok((stream, rx))
    }

    /// A create, cancel or progress request of a Watch stream (waits while the driver is
    /// busy: back-pressure on a client that floods requests).
    pub async fn watch(&self, input: WatchInput) -> Result<(), Error> {
        self.commands
            .send(Command::Watch(input))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Returns read credit to a Watch stream, or reports it closed; never waits.
    pub fn watch_control(&self, input: WatchInput) {
        // The driver is gone only when the node stopped; then nobody cares.
        let _ = self.watch_control.send(input);
    }

    /// Bytes of WAL on disk as of the last sync: keel's durable footprint, reported as etcd's
    /// `dbSize`.
    pub fn wal_bytes(&self) -> u64 {
        self.wal_bytes.load(Ordering::Relaxed)
    }

    /// The member table as of the applied index.
    pub async fn members(&self) -> Result<Membership, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Members { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// This member's raft status.
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Status { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The WAL failed (a failed fsync is fatal).
    #[error("WAL: {0}")]
    Wal(#[from] WalError),
    /// Saving a snapshot failed.
    #[error("snapshot: {0}")]
    Snap(#[from] SnapError),
    /// The node cannot go on.
    #[error("node stopped: {0}")]
    Node(String),
    /// A task of the driver died.
    #[error("driver task failed: {0}")]
    Task(String),
    /// This member was removed from the cluster (etcd's words).
    #[error("the member has been permanently removed from the cluster")]
    Removed,
}

/// The driver's settings.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// The length of one raft tick.
    pub tick: Duration,
    /// How long a client request waits for its reply.
    pub request_timeout: Duration,
    /// Deliberate bugs (simulation builds only; see `keel_engine::bugs`).
    pub bugs: Bugs,
}

/// Starts the driver tasks; returns the handle and a receiver that yields the fatal error
/// that stops the node.
/// `transport` carries the node's messages to its peers; `inbound` brings theirs.
pub fn start(
    node: Node,
    storage: Storage,
    clock: Arc<dyn Clock>,
    config: DriverConfig,
    transport: Arc<Transport>,
    inbound: Inbound,
) -> (Handle, oneshot::Receiver<DriverError>) {
    let DriverConfig {
        tick,
        request_timeout,
        bugs,
    } = config;
    let Inbound {
        messages: inbound,
        reports,
    } = inbound;
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (watch_control_tx, watch_control_rx) = mpsc::unbounded_channel();
    let (ticks_tx, ticks_rx) = mpsc::channel(1);
    let (persist_tx, persist_rx) = mpsc::unbounded_channel();
    let (durable_tx, durable_rx) = mpsc::unbounded_channel();
    let (fatal_tx, fatal_rx) = oneshot::channel();

    let wal_bytes = Arc::new(AtomicU64::new(storage.wal.disk_bytes()));
    tokio::spawn(ticker(clock, tick, ticks_tx));
    tokio::spawn(wal_writer(
        storage,
        persist_rx,
        durable_tx,
        Arc::clone(&wal_bytes),
        Arc::clone(&transport),
        bugs,
    ));
    let driver = DriverLoop {
        node,
        replies: BTreeMap::new(),
        next_token: 1,
        persist_tx,
        transport,
        watch_streams: BTreeMap::new(),
        fatal: None,
        removed_grace_ticks: None,
        bugs,
    };
    tokio::spawn(async move {
        let err = driver
            .run(
                commands_rx,
                ticks_rx,
                durable_rx,
                inbound,
                watch_control_rx,
                reports,
            )
            .await;
        tracing::error!(error = %err, "keel driver stopped");
        let _ = fatal_tx.send(err);
    });
    (
        Handle {
            commands: commands_tx,
            watch_control: watch_control_tx,
            next_watch_stream: Arc::new(AtomicU64::new(1)),
            request_timeout,
            wal_bytes,
        },
        fatal_rx,
    )
}

async fn ticker(clock: Arc<dyn Clock>, tick: Duration, ticks: mpsc::Sender<()>) {
    loop {
        clock.sleep(tick).await;
        match ticks.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => return,
        }
    }
}

/// What reaches the node from its peers.
pub struct Inbound {
    /// Raft messages received.
    pub messages: mpsc::Receiver<Message>,
    /// The transport's reports: snapshot outcomes, unreachable peers.
    pub reports: mpsc::UnboundedReceiver<Input>,
}

/// A member's durable storage: the WAL and the snapshot directory.
pub struct Storage {
    /// The write-ahead log.
    pub wal: Wal,
    /// The snapshot files.
    pub snaps: SnapDir,
}

/// Work for the WAL writer.
#[derive(Debug)]
enum Job {
    /// Make a persist batch durable.
    Persist(PersistBatch),
    /// Encode and save the node's own snapshot.
    Save(SnapshotJob),
}

/// What the WAL writer reports to the driver loop.
enum Done {
    /// Every batch up to this number is durable.
    Persisted(u64),
    /// This snapshot is durable (its data now read from the file).
    Saved(Snapshot),
}

/// A job's outcome; an error stops the member.
type Durable = Result<Done, DriverError>;

struct DriverLoop {
    node: Node,
    replies: BTreeMap<u64, oneshot::Sender<Result<Response, Error>>>,
    next_token: u64,
    persist_tx: mpsc::UnboundedSender<Job>,
    transport: Arc<Transport>,
    watch_streams: BTreeMap<StreamId, mpsc::Sender<WatchMessage>>,
    /// Set when the node asks to stop.
    fatal: Option<String>,
    /// Set once this member is removed: ticks left before it stops.
    removed_grace_ticks: Option<u32>,
    /// Deliberate bugs (simulation builds only).
    bugs: Bugs,
}

impl DriverLoop {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut ticks: mpsc::Receiver<()>,
        mut durable: mpsc::UnboundedReceiver<Durable>,
        mut inbound: mpsc::Receiver<Message>,
        mut watch_control: mpsc::UnboundedReceiver<WatchInput>,
        mut reports: mpsc::UnboundedReceiver<Input>,
    ) -> DriverError {
        self.dispatch();
        loop {
            if let Some(reason) = self.fatal.take() {
                return DriverError::Node(reason);
            }
            tokio::select! {
                biased;
                done = durable.recv() => match done {
                    Some(Ok(Done::Persisted(number))) => {
                        self.node.step(Input::Persisted { number })
                    }
                    Some(Ok(Done::Saved(snapshot))) => {
                        self.node.step(Input::SnapshotSaved { snapshot })
                    }
                    Some(Err(e)) => return e,
                    None => return DriverError::Task("WAL writer exited".into()),
                },
                Some(report) = reports.recv() => self.node.step(report),
                Some(()) = ticks.recv() => {
                    if self.removed_grace_ticks == Some(0) {
                        return DriverError::Removed;
                    }
                    self.removed_grace_ticks = self.removed_grace_ticks.map(|t| t - 1);
                    self.node.step(Input::Tick);
                    // Forget replies nobody waits for any more (the client timed out).
                    self.replies.retain(|_, reply| !reply.is_closed());
                }
                Some(input) = watch_control.recv() => {
                    self.on_watch_control(input);
                    for _ in 1..COMMANDS_PER_TURN_MAX {
                        match watch_control.try_recv() {
                            Ok(input) => self.on_watch_control(input),
                            Err(_) => break,
                        }
                    }
                }
                Some(message) = inbound.recv() => {
                    self.node.step(Input::Peer(Box::new(message)));
                    for _ in 1..PEER_MESSAGES_PER_TURN_MAX {
                        match inbound.try_recv() {
                            Ok(message) => self.node.step(Input::Peer(Box::new(message))),
                            Err(_) => break,
                        }
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else {
                        return DriverError::Task("all handles dropped".into());
                    };
                    self.on_command(command);
                    for _ in 1..COMMANDS_PER_TURN_MAX {
                        match commands.try_recv() {
                            Ok(command) => self.on_command(command),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.dispatch();
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request { request, reply } => {
                let token = self.next_token;
                self.next_token += 1;
                self.replies.insert(token, reply);
                self.node.step(Input::Request { token, request });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.node.status());
            }
            Command::Members { reply } => {
                let _ = reply.send(self.node.members().clone());
            }
            Command::WatchOpen { stream, responses } => {
                self.watch_streams.insert(stream, responses);
            }
            Command::Watch(input) => self.node.step(Input::Watch(input)),
        }
    }

    fn on_watch_control(&mut self, input: WatchInput) {
        if let WatchInput::Close { stream } = &input {
            self.watch_streams.remove(stream);
        }
        self.node.step(Input::Watch(input));
    }

    fn dispatch(&mut self) {
        loop {
            let outputs = self.node.take_outputs();
            if outputs.is_empty() {
                return;
            }
            self.dispatch_outputs(outputs);
        }
    }

    fn dispatch_outputs(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Persist(mut batch) => {
                    self.transport.send(forget_vote_bug(self.bugs, &mut batch));
                    if self.persist_tx.send(Job::Persist(batch)).is_err() {
                        tracing::error!("WAL writer is gone; dropping a persist batch");
                    }
                }
                Output::SaveSnapshot(job) => {
                    if self.persist_tx.send(Job::Save(job)).is_err() {
                        tracing::error!("WAL writer is gone; dropping a snapshot");
                    }
                }
                Output::Fatal(reason) => self.fatal = Some(reason),
                Output::Send(messages) => self.transport.send(messages),
                Output::Reply { token, result } => {
                    if let Some(reply) = self.replies.remove(&token) {
                        // The client may have given up (timeout); that is fine.
                        let _ = reply.send(result);
                    }
                }
                Output::Watch(outputs) => self.dispatch_watch(outputs),
                Output::Members { members, removed } => self.on_members(&members, removed),
            }
        }
    }

    /// The member table changed: the transport follows it; a removed member winds down.
    fn on_members(&mut self, members: &[Member], removed: bool) {
        self.transport.set_peers(peer_urls(members));
        if removed && self.removed_grace_ticks.is_none() {
            tracing::warn!("the member has been permanently removed from the cluster");
            self.removed_grace_ticks = Some(REMOVED_GRACE_TICKS);
        }
    }

    fn dispatch_watch(&mut self, outputs: Vec<WatchOutput>) {
        let mut gone = Vec::new();
        for output in outputs {
            let (stream, message) = match output {
                WatchOutput::Send(stream, response) => (stream, Ok(response)),
                WatchOutput::Close(stream, reason) => (stream, Err(reason)),
            };
            let Some(tx) = self.watch_streams.get(&stream) else {
                continue;
            };
            let closing = message.is_err();
            match tx.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The engine sends at most a window without credit; this is a keel bug.
                    // End the stream rather than drop a response silently.
                    tracing::error!(stream, "watch stream exceeded its window; closing it");
                    gone.push(stream);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(stream),
            }
            if closing {
                self.watch_streams.remove(&stream);
            }
        }
        for stream in gone {
            self.watch_streams.remove(&stream);
            self.node.step(Input::Watch(WatchInput::Close { stream }));
        }
    }
}

/// Writes persist batches to the WAL: everything queued goes out with one fsync. Saves
/// snapshots in the order they come, between batches.
async fn wal_writer(
    storage: Storage,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    durable: mpsc::UnboundedSender<Durable>,
    wal_bytes: Arc<AtomicU64>,
    transport: Arc<Transport>,
    bugs: Bugs,
) {
    let mut st = storage;
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        st = match first {
            Job::Save(job) => {
                let work = move |st: &mut Storage| save_own(st, job.into_snapshot());
                let Some((st, saved)) = run_blocking(st, work).await else {
                    return;
                };
                // A failed save is fatal, like a failed WAL write.
                let failed = saved.is_err();
                if durable.send(saved.map(Done::Saved)).is_err() || failed {
                    return;
                }
                st
            }
            Job::Persist(batch) => {
                let mut group = vec![batch];
                while group.len() < BATCHES_PER_SYNC_MAX {
                    match jobs.try_recv() {
                        Ok(Job::Persist(b)) => group.push(b),
                        Ok(save) => {
                            next = Some(save);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let Some(st) = persist_group(st, group, &durable, &transport, bugs).await else {
                    return;
                };
                st
            }
        };
        wal_bytes.store(st.wal.disk_bytes(), Ordering::Relaxed);
    }
}

/// Runs blocking disk work off the async workers; `None` if the task died.
async fn run_blocking<T: Send + 'static>(
    st: Storage,
    work: impl FnOnce(&mut Storage) -> T + Send + 'static,
) -> Option<(Storage, T)> {
    // Under madsim this runs the closure as a simulated task (madsim marks it deprecated to
    // discourage real blocking); the simulated disk never blocks, so that is exactly right.
    #[allow(deprecated)]
    let joined = tokio::task::spawn_blocking(move || {
        let mut st = st;
        let result = work(&mut st);
        (st, result)
    })
    .await;
    match joined {
        Ok(done) => Some(done),
        Err(e) => {
            tracing::error!(error = %e, "disk write task panicked");
            None
        }
    }
}

/// Writes a group of batches with one fsync, then sends what waited for it and reports the
/// newest batch durable. `None` if the member must stop (the error was reported).
async fn persist_group(
    st: Storage,
    mut group: Vec<PersistBatch>,
    durable: &mpsc::UnboundedSender<Durable>,
    transport: &Transport,
    bugs: Bugs,
) -> Option<Storage> {
    // Votes and append acks: raft allows them out only once the batch is durable.
    let then_send: Vec<Message> = group
        .iter_mut()
        .flat_map(|b| std::mem::take(&mut b.then_send))
        .collect();
    let newest = group.last().map_or(0, |b| b.number);
    let acked_early = bugs.has(Bug::AckBeforeFsync);
    if acked_early && durable.send(Ok(Done::Persisted(newest))).is_err() {
        return None;
    }
    let (st, result) = run_blocking(st, move |st| write_group(st, &group)).await?;
    simulated_fsync_latency().await;
    if let Err(e) = result {
        let _ = durable.send(Err(e));
        return None;
    }
    transport.send(then_send);
    if !acked_early && durable.send(Ok(Done::Persisted(newest))).is_err() {
        return None;
    }
    Some(st)
}

/// Saves the node's own snapshot, reads it back (mapped) for serving to followers, and
/// releases the WAL segments that the snapshot *before* it covers: one older snapshot plus
/// the WAL after it stay recoverable in case the newest file is found damaged at restart.
fn save_own(st: &mut Storage, mut snapshot: Snapshot) -> Result<Snapshot, DriverError> {
    let meta = snapshot.get_metadata();
    let (index, term) = (meta.index, meta.term);
    let conf = encode_conf_state(meta.get_conf_state());
    let path = st.snaps.save(index, term, &conf, &snapshot.data)?;
    // The encoded copy on the heap goes; followers are served from the mapped file.
    snapshot.data = st.snaps.read_data(&path)?;
    let kept = st.snaps.list()?;
    if let Some(&(_, previous)) = kept.iter().rev().nth(1) {
        let removed = st.wal.release_before(previous)?;
        tracing::info!(
            index,
            released_before = previous,
            segments = removed,
            "saved snapshot"
        );
    } else {
        tracing::info!(index, "saved snapshot");
    }
    Ok(snapshot)
}

/// Under simulation an fsync takes virtual time (0.5-3 ms, from madsim's per-run generator),
/// so that work racing a write in flight — a read, a second batch — really overlaps it, as on a
/// disk. (The simulated disk itself is synchronous and instant.)
#[cfg(madsim)]
async fn simulated_fsync_latency() {
    // madsim's generator is seeded per simulation run (a thread-local one would carry its
    // state from one run into the next and break same-seed-same-trace).
    use madsim::rand::RngCore as _;
    let micros = 500 + madsim::rand::thread_rng().next_u64() % 2500;
    tokio::time::sleep(Duration::from_micros(micros)).await;
}

/// Production fsyncs take the time they take.
#[cfg(not(madsim))]
async fn simulated_fsync_latency() {}

/// The simulator's `forget-vote` bug: the vote lives only in memory. The batch's hard state
/// is written with no vote (term and commit still are), and vote responses leave at once
/// instead of after the fsync. A member that votes, restarts and is asked again in the same
/// term can vote twice, so two candidates can win one term. Returns the messages to send now.
fn forget_vote_bug(bugs: Bugs, batch: &mut PersistBatch) -> Vec<Message> {
    use keel_engine::raftpb::MessageType;
    if !bugs.has(Bug::ForgetVote) {
        return Vec::new();
    }
    if let Some(hs) = batch.hard_state.as_mut() {
        hs.vote = 0;
    }
    let (now, later) = std::mem::take(&mut batch.then_send)
        .into_iter()
        .partition(|m| m.get_msg_type() == MessageType::MsgRequestVoteResponse);
    batch.then_send = later;
    now
}

/// Appends a group of batches to the WAL and fsyncs once. A batch that installs a leader's
/// snapshot saves the snapshot file first (durably), so the WAL's mark never points at a
/// snapshot that is not on disk.
fn write_group(st: &mut Storage, group: &[PersistBatch]) -> Result<(), DriverError> {
    for batch in group {
        if let Some(snapshot) = &batch.snapshot {
            let meta = snapshot.get_metadata();
            let conf = encode_conf_state(meta.get_conf_state());
            st.snaps
                .save(meta.index, meta.term, &conf, &snapshot.data)?;
            st.wal.append_snapshot(meta.index, meta.term)?;
        }
        for entry in &batch.entries {
            st.wal
                .append_entry(entry.index, entry.term, &encode_entry(entry))?;
        }
        if let Some(hs) = &batch.hard_state {
            st.wal.append_hard_state(&encode_hard_state(hs))?;
        }
    }
    Ok(st.wal.sync()?)
}

/// member id → the first peer URL, for the transport.
pub fn peer_urls(members: &[Member]) -> BTreeMap<u64, String> {
    members
        .iter()
        .filter_map(|m| m.peer_urls.first().map(|url| (m.id, url.clone())))
        .collect()
}
