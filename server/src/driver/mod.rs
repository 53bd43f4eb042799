//! The runtime driver: owns the engine [`Node`], feeds it inputs, carries out its outputs.
//!
//! Four tasks:
//! - the **driver loop** owns the node: commands from the gRPC layer, ticks, disk completions
//!   go in; replies, messages, persist batches and snapshot jobs come out;
//! - the **WAL writer** takes persist batches, writes every batch queued behind the first one
//!   and fsyncs once (group commit), then reports the newest durable batch back; a batch that
//!   installs a leader's snapshot has the snapshot file saved before its WAL mark. It also
//!   releases WAL segments when the loop asks (once a snapshot covering them is durable);
//! - the **snapshot saver** streams the node's own snapshots to their files, on its own (the
//!   WAL's fsyncs never wait behind one), reports each saved — the loop then asks the WAL
//!   writer to release the WAL before the snapshot a damaged newest one falls back to — or,
//!   after a backoff, failed (not fatal; the node offers a fresh job);
//! - the **ticker** sleeps one heartbeat interval on the node's [`Clock`] and sends a tick.
//!
//! A client's reply is released only when the engine applies its entry, which it can do only
//! after the WAL writer reported the entry durable: acknowledgement after fsync, by
//! construction.
//!
//! Files: [`Handle`] (what the gRPC layers hold, `handle.rs`), the loop (`event_loop.rs`), the
//! WAL writer (`wal_writer.rs`), the snapshot saver (`snapshotter.rs`), [`Outbound`] (where the loop's raft messages go; the peer
//! transport implements it, `outbound.rs`) and [`DriverError`] (`error.rs`). This module
//! starts the four tasks.

mod decoded;
mod disk_bytes;
mod error;
mod event_loop;
mod handle;
mod outbound;
mod snapshotter;
mod v2_hub;
mod wal_writer;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::bugs::Bugs;
use keel_engine::node::{Input, Node};
use keel_engine::raftpb::Message;
use tokio::sync::{mpsc, oneshot};

pub use decoded::DecodedSlot;
pub use error::DriverError;
pub use event_loop::{COMMANDS_PER_TURN_MAX, PEER_MESSAGES_PER_TURN_MAX, REMOVED_GRACE_TICKS};
pub use handle::{Handle, WatchMessage};
pub use outbound::{peer_urls, Outbound};
pub use snapshotter::{SAVE_RETRY_MAX, SAVE_RETRY_MIN};
pub use v2_hub::{V2Hub, V2Wait, STREAM_QUEUE};
pub use wal_writer::{Storage, BATCHES_PER_SYNC_MAX};

use crate::clock::Clock;
use disk_bytes::{snap_dir_bytes, DiskBytes};
use event_loop::{DiskReports, DriverLoop};
use snapshotter::snapshotter;
use wal_writer::wal_writer;

/// Commands queued towards the driver, at most (back-pressure on clients beyond that).
pub const COMMAND_QUEUE_MAX: usize = 16 * 1024;
/// Reports of the WAL writer not yet taken by the driver loop, at most. The writer sends one
/// per fsync, and the loop takes them ahead of everything else, so this is reached only if
/// the loop stalls; the writer then waits for it.
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
        decoded,
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
    // would stop. Bounded in practice by what the batches carry, plus one release per saved
    // snapshot. A leader's entries are requests whose
    // clients wait for the reply (at most COMMAND_QUEUE_MAX queued, each client waiting up to
    // the request timeout). A follower's come from the leader's appends, which raft caps per
    // follower (`max_inflight_msgs` messages of `max_size_per_msg`). The writer takes all that
    // is queued into one fsync (up to BATCHES_PER_SYNC_MAX batches), so the queue drains as
    // fast as the disk syncs.
    let (persist_tx, persist_rx) = mpsc::unbounded_channel();
    // Unbounded, for the same reason (the loop never waits). Bounded in practice to one job:
    // the node makes the next snapshot job only once this one is reported saved or failed.
    let (save_tx, save_rx) = mpsc::unbounded_channel();
    let (durable_tx, durable_rx) = mpsc::channel(DURABLE_REPORTS_MAX);
    // One job at a time: at most one report.
    let (saved_tx, saved_rx) = mpsc::channel(1);
    let (fatal_tx, fatal_rx) = oneshot::channel();

    let wal_bytes = Arc::new(AtomicU64::new(storage.wal.disk_bytes()));
    let snap_bytes = Arc::new(AtomicU64::new(snap_dir_bytes(&storage.snaps)));
    tokio::spawn(ticker(clock, tick, ticks_tx));
    tokio::spawn(snapshotter(
        storage.snaps.clone(),
        save_rx,
        saved_tx,
        Arc::clone(&snap_bytes),
    ));
    tokio::spawn(wal_writer(
        storage,
        persist_rx,
        durable_tx,
        DiskBytes {
            wal: Arc::clone(&wal_bytes),
            snaps: Arc::clone(&snap_bytes),
        },
        Arc::clone(&transport),
        bugs,
    ));
    let v2_hub = Arc::new(V2Hub::default());
    let driver = DriverLoop::new(
        node,
        persist_tx,
        save_tx,
        transport,
        bugs,
        Arc::clone(&v2_hub),
    )
    .with_decoded(decoded);
    tokio::spawn(async move {
        let err = driver
            .run(
                commands_rx,
                ticks_rx,
                DiskReports {
                    durable: durable_rx,
                    saved: saved_rx,
                },
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
            snap_bytes,
            tokens: crate::tokens::Tokens::Simple,
            v2_hub,
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
    /// The store of a received snapshot, decoded off the loop by the peer service.
    pub decoded: DecodedSlot,
}
