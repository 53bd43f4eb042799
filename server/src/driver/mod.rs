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
//!
//! Files: [`Handle`] (what the gRPC layers hold, `handle.rs`), the loop (`event_loop.rs`), the
//! WAL writer (`wal_writer.rs`), [`Outbound`] (where the loop's raft messages go; the peer
//! transport implements it, `outbound.rs`) and [`DriverError`] (`error.rs`). This module
//! starts the three tasks.

mod error;
mod event_loop;
mod handle;
mod outbound;
mod wal_writer;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::bugs::Bugs;
use keel_engine::node::{Input, Node};
use keel_engine::raftpb::Message;
use tokio::sync::{mpsc, oneshot};

pub use error::DriverError;
pub use event_loop::{COMMANDS_PER_TURN_MAX, PEER_MESSAGES_PER_TURN_MAX, REMOVED_GRACE_TICKS};
pub use handle::{Handle, WatchMessage};
pub use outbound::{peer_urls, Outbound};
pub use wal_writer::{Storage, BATCHES_PER_SYNC_MAX};

use crate::clock::Clock;
use event_loop::DriverLoop;
use wal_writer::wal_writer;

/// Commands queued towards the driver, at most (back-pressure on clients beyond that).
pub const COMMAND_QUEUE_MAX: usize = 16 * 1024;
/// Reports of the WAL writer not yet taken by the driver loop, at most. The writer sends one
/// per fsync or saved snapshot, and the loop takes them ahead of everything else, so this is
/// reached only if the loop stalls; the writer then waits for it.
pub const DURABLE_REPORTS_MAX: usize = 64;

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
    transport: Arc<dyn Outbound>,
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
    // Unbounded, because a Watch stream returns credit from `poll_next` and reports its close
    // from `Drop`, and neither can wait. Bounded in practice per open Watch stream: at most
    // STREAM_WINDOW credits (each returns at least one response read, and the engine has at
    // most a window of responses out before credit comes back) plus two closes (request side
    // and response side).
    let (watch_control_tx, watch_control_rx) = mpsc::unbounded_channel();
    let (ticks_tx, ticks_rx) = mpsc::channel(1);
    // Unbounded, because the loop hands out the node's outputs without waiting: were it to
    // wait for the WAL writer while the writer waits for the loop to take its reports, both
    // would stop. Bounded in practice by what the batches carry. At most one snapshot save is
    // in flight (the node waits for `SnapshotSaved`). A leader's entries are requests whose
    // clients wait for the reply (at most COMMAND_QUEUE_MAX queued, each client waiting up to
    // the request timeout). A follower's come from the leader's appends, which raft caps per
    // follower (`max_inflight_msgs` messages of `max_size_per_msg`). The writer takes all that
    // is queued into one fsync (up to BATCHES_PER_SYNC_MAX batches), so the queue drains as
    // fast as the disk syncs.
    let (persist_tx, persist_rx) = mpsc::unbounded_channel();
    let (durable_tx, durable_rx) = mpsc::channel(DURABLE_REPORTS_MAX);
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
    let driver = DriverLoop::new(node, persist_tx, transport, bugs);
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
