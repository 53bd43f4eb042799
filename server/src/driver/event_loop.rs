//! The driver loop: owns the node, feeds it commands, ticks, peer messages and disk
//! completions, and carries out its outputs.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_engine::bugs::{Bug, Bugs};
use keel_engine::error::Error;
use keel_engine::membership::Member;
use keel_engine::node::{Input, Node, Output, PersistBatch, Response, SnapshotJob};
use keel_engine::raftpb::Message;
use keel_engine::watch::{StreamId, WatchInput, WatchOutput};
use tokio::sync::{mpsc, oneshot};

use super::error::DriverError;
use super::handle::{Command, WatchMessage};
use super::outbound::{peer_urls, Outbound};
use super::snapshotter::Saved;
use super::wal_writer::{Done, Durable, Job};
use crate::metrics::metrics;

/// Commands the driver loop takes in one turn before it handles outputs, at most.
pub const COMMANDS_PER_TURN_MAX: usize = 1024;
/// Peer messages the driver loop takes in one turn, at most.
pub const PEER_MESSAGES_PER_TURN_MAX: usize = 1024;
/// Ticks a removed member keeps running (so the entry that removed it reaches the others and
/// its reply goes out) before it stops.
pub const REMOVED_GRACE_TICKS: u32 = 10;

/// What the disk tasks report to the driver loop.
pub(super) struct DiskReports {
    /// The WAL writer's: batches durable, or the error that stops the member.
    pub(super) durable: mpsc::Receiver<Durable>,
    /// The snapshot saver's: the node's own snapshots saved or failed.
    pub(super) saved: mpsc::Receiver<Saved>,
}

/// The driver loop's state: the node, and who waits for what it says.
pub(super) struct DriverLoop {
    node: Node,
    replies: BTreeMap<u64, oneshot::Sender<Result<Response, Error>>>,
    next_token: u64,
    persist_tx: mpsc::UnboundedSender<Job>,
    save_tx: mpsc::UnboundedSender<SnapshotJob>,
    transport: Arc<dyn Outbound>,
    watch_streams: BTreeMap<StreamId, mpsc::Sender<WatchMessage>>,
    /// Set when the node asks to stop.
    fatal: Option<String>,
    /// Set once this member is removed: ticks left before it stops.
    removed_grace_ticks: Option<u32>,
    /// Defragmentations waiting for a snapshot as of (at least) their applied index.
    defrags: Vec<(u64, oneshot::Sender<()>)>,
    /// Deliberate bugs (simulation builds only).
    bugs: Bugs,
    /// The last leader seen, for `etcd_server_leader_changes_seen_total`.
    last_leader: u64,
    /// Waiting v2 clients, woken by applied v2 changes.
    v2_hub: Arc<super::v2_hub::V2Hub>,
    /// A received snapshot's store, decoded off the loop by the peer service.
    decoded: super::decoded::DecodedSlot,
}

impl DriverLoop {
    /// A loop around `node`, handing persist work to the WAL writer through `persist_tx`,
    /// snapshot jobs to the snapshot saver through `save_tx` and messages to `transport`.
    pub(super) fn new(
        node: Node,
        persist_tx: mpsc::UnboundedSender<Job>,
        save_tx: mpsc::UnboundedSender<SnapshotJob>,
        transport: Arc<dyn Outbound>,
        bugs: Bugs,
        v2_hub: Arc<super::v2_hub::V2Hub>,
    ) -> DriverLoop {
        DriverLoop {
            node,
            replies: BTreeMap::new(),
            next_token: 1,
            persist_tx,
            save_tx,
            transport,
            watch_streams: BTreeMap::new(),
            fatal: None,
            removed_grace_ticks: None,
            defrags: Vec::new(),
            bugs,
            last_leader: 0,
            v2_hub,
            decoded: super::decoded::DecodedSlot::default(),
        }
    }

    /// This loop taking the stores of received snapshots from `decoded`.
    pub(super) fn with_decoded(mut self, decoded: super::decoded::DecodedSlot) -> Self {
        self.decoded = decoded;
        self
    }

    /// Steps a peer's message; a `MsgSnapshot` after the store decoded from it, if the peer
    /// service left one.
    fn on_peer(&mut self, message: Message) {
        if message.get_msg_type() == keel_engine::raftpb::MessageType::MsgSnapshot {
            if let Some(store) = self.decoded.take() {
                self.node.step(Input::StoreDecoded(store));
            }
        }
        self.node.step(Input::Peer(Box::new(message)));
    }

    /// Runs until the node cannot go on; returns why.
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut ticks: mpsc::Receiver<()>,
        disk: DiskReports,
        mut inbound: mpsc::Receiver<Message>,
        mut watch_control: mpsc::UnboundedReceiver<WatchInput>,
        mut reports: mpsc::UnboundedReceiver<Input>,
    ) -> DriverError {
        let DiskReports {
            mut durable,
            mut saved,
        } = disk;
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
                    Some(Ok(Done::Installed(snapshot))) => {
                        self.node.step(Input::InstalledSnapshotSaved { snapshot })
                    }
                    Some(Ok(Done::NoSpace)) => self.node.step(Input::DiskFull { full: true }),
                    Some(Ok(Done::SpaceAgain)) => {
                        self.node.step(Input::DiskFull { full: false })
                    }
                    Some(Err(e)) => return e,
                    None => return DriverError::Task("WAL writer exited".into()),
                },
                report = saved.recv() => match report {
                    Some(Saved::Done { snapshot, fallback_index }) => {
                        self.on_saved(snapshot, fallback_index)
                    }
                    Some(Saved::Failed) => self.node.step(Input::SnapshotFailed),
                    None => return DriverError::Task("snapshot saver exited".into()),
                },
                Some(report) = reports.recv() => self.node.step(report),
                Some(()) = ticks.recv() => {
                    if self.removed_grace_ticks == Some(0) {
                        return DriverError::Removed;
                    }
                    self.removed_grace_ticks = self.removed_grace_ticks.map(|t| t - 1);
                    self.node.step(Input::Tick);
                    metrics().observe_node(
                        &self.node.gauges(),
                        self.replies.len(),
                        self.watch_streams.len(),
                        &mut self.last_leader,
                    );
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
                    self.on_peer(message);
                    for _ in 1..PEER_MESSAGES_PER_TURN_MAX {
                        match inbound.try_recv() {
                            Ok(message) => self.on_peer(message),
                            Err(_) => break,
                        }
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else {
                        return DriverError::Task("all handles dropped".into());
                    };
                    let mut requests = Vec::new();
                    self.on_command(command, &mut requests);
                    for _ in 1..COMMANDS_PER_TURN_MAX {
                        match commands.try_recv() {
                            Ok(command) => self.on_command(command, &mut requests),
                            Err(_) => break,
                        }
                    }
                    self.step_requests(&mut requests);
                }
            }
            self.dispatch();
            metrics().driver_turns.inc();
            if !self.defrags.is_empty() {
                self.finish_defrags();
            }
        }
    }

    /// Answers the defragmentations whose snapshot is durable (their WAL release is queued
    /// by then: `on_saved` hands it to the WAL writer before this runs).
    fn finish_defrags(&mut self) {
        let node = &self.node;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.defrags)
            .into_iter()
            .partition(|(applied, _)| node.defragmented_to(*applied));
        self.defrags = waiting;
        for (applied, reply) in done {
            tracing::info!(applied, "finished defragment");
            let _ = reply.send(());
        }
    }

    /// The node's own snapshot is durable: the node serves it from now on, then the WAL writer
    /// releases the segments before the snapshot a damaged newest one falls back to.
    fn on_saved(&mut self, snapshot: keel_engine::raftpb::Snapshot, fallback_index: Option<u64>) {
        self.node.step(Input::SnapshotSaved { snapshot });
        if let Some(before) = fallback_index {
            self.release_wal(before);
        }
    }

    fn release_wal(&mut self, before: u64) {
        if self.persist_tx.send(Job::Release { before }).is_err() {
            tracing::error!("WAL writer is gone; not releasing WAL segments");
        }
    }

    /// Steps the client requests gathered from the commands of this turn together: their
    /// linearizable reads share one ReadIndex round (`Node::step_requests`).
    fn step_requests(&mut self, requests: &mut Vec<Input>) {
        if !requests.is_empty() {
            self.node.step_requests(std::mem::take(requests));
        }
    }

    /// Takes one command: a client request joins `requests` (stepped with the others of the
    /// turn); any other command is handled now, after the requests before it.
    fn on_command(&mut self, command: Command, requests: &mut Vec<Input>) {
        if !matches!(command, Command::Request { .. }) {
            self.step_requests(requests);
        }
        match command {
            Command::Request {
                request,
                client,
                reply,
            } => {
                let token = self.next_token;
                self.next_token += 1;
                self.replies.insert(token, reply);
                requests.push(match client {
                    None => Input::Request { token, request },
                    Some(auth_token) => Input::AuthRequest {
                        token,
                        request,
                        auth_token,
                    },
                });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.node.status());
            }
            Command::CheckAdmin { credential, reply } => {
                let _ = reply.send(self.node.check_admin(credential.as_ref()));
            }
            Command::Members { reply } => {
                let _ = reply.send(self.node.members().clone());
            }
            Command::Backup { reply } => {
                let job = self.node.backup_job().map(|job| (job, self.node.status()));
                let _ = reply.send(job);
            }
            Command::WatchOpen { stream, responses } => {
                self.watch_streams.insert(stream, responses);
            }
            Command::Watch(input) => self.node.step(Input::Watch(input)),
            Command::WatchCreate {
                stream,
                request,
                auth_token,
            } => self.node.step(Input::WatchCreate {
                stream,
                request,
                auth_token,
            }),
            Command::Defragment { reply } => {
                let applied = self.node.status().raft_applied_index;
                tracing::info!(applied, "starting defragment");
                self.node.step(Input::Defragment);
                self.defrags.push((applied, reply));
            }
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
                    if self.bugs.has(Bug::ReleaseWalEarly) {
                        // The simulator's bug: the WAL goes before the snapshot is durable.
                        self.release_wal(job.index());
                    }
                    if self.save_tx.send(job).is_err() {
                        tracing::error!("the snapshot saver is gone; dropping a snapshot");
                    }
                }
                Output::Fatal(reason) => self.fatal = Some(reason),
                Output::Send(messages) => self.transport.send(messages),
                Output::Reply { token, result } => {
                    if let Err(e) = &result {
                        count_failed_proposal(e);
                    }
                    if let Some(reply) = self.replies.remove(&token) {
                        // The client may have given up (timeout); that is fine.
                        let _ = reply.send(result);
                    }
                }
                Output::Watch(outputs) => self.dispatch_watch(outputs),
                Output::Members { members, removed } => self.on_members(&members, removed),
                Output::V2Events(events) => self.v2_hub.dispatch(&events),
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

/// The simulator's `forget-vote` bug: the vote lives only in memory. The batch's hard state
/// is written with no vote (term and commit still are), and vote responses leave at once
/// instead of after the fsync. A member that votes, restarts and is asked again in the same
/// term can vote twice, so two candidates can win one term. Returns the messages to send now.
/// `etcd_server_proposals_failed_total` counts requests that did not make it through the log
/// (no leader, a leader change, a timeout, too many in flight), not requests the state machine
/// refused.
fn count_failed_proposal(e: &Error) {
    if matches!(
        e,
        Error::NoLeader
            | Error::NotLeader
            | Error::LeaderChanged
            | Error::Timeout
            | Error::TooManyRequests
            | Error::Stopped
    ) {
        metrics().proposals_failed.inc();
    }
}

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
