//! Peer transport: raft messages between members, over gRPC streams on the peer port.
//!
//! Outbound, every peer has its own task and its own bounded queue. [`Transport::send`] never
//! waits: when a peer's queue is full (the peer is slow or gone) the message is dropped and
//! counted. Raft tolerates lost messages (it retransmits appends and heartbeats), so a slow or
//! dead peer costs the others nothing. The task connects lazily, when it has something to send,
//! streams messages in batches (everything queued goes in one [`MessageBatch`]), and reconnects
//! with exponential backoff after a failure.
//!
//! Inbound, [`PeerService`](super::service::PeerService) accepts `keelpb.Peer/Send` streams, checks the cluster id and hands
//! every decoded message to the driver.
//!
//! ```text
//! driver ──send(msgs)──▶ queue[peer 2] ──▶ task ──stream MessageBatch──▶ peer 2: PeerService
//!                     └─▶ queue[peer 3] ──▶ task ──stream MessageBatch──▶ peer 3: PeerService
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keel_engine::node::Input;
use keel_engine::raft_log::encode_message;
use keel_engine::raftpb::{Message, MessageType};
use keel_proto::keelpb::peer_client::PeerClient;
use keel_proto::keelpb::MessageBatch;
use tokio::sync::mpsc;

use super::link::{Dialer, LocalIdentity, CONNECT_TIMEOUT};
use super::snapshot::send_snapshot;
use super::stats::PeerStats;
use crate::clock::Clock;
use crate::driver::Outbound;
use crate::metrics::metrics;
use prometheus::IntCounter;

/// Messages queued towards one peer, at most; beyond that new messages are dropped.
pub const PEER_QUEUE_MAX: usize = 4096;
/// Messages in one batch on the wire, at most.
pub const BATCH_MESSAGES_MAX: usize = 512;
/// Batches in flight on one stream, at most.
pub const STREAM_BATCHES_MAX: usize = 16;
/// The first reconnect delay; it doubles after each failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One peer's outbound queue and where its task sends.
struct PeerQueue {
    url: String,
    queue: mpsc::Sender<Message>,
    /// Whether the next snapshot to this peer goes on its snapshot lane (`super::lanes`);
    /// flipped by each failed transfer (see [`send_snapshot`]).
    snapshot_lane: Arc<AtomicBool>,
}

/// Outbound raft traffic to every peer.
pub struct Transport {
    local: LocalIdentity,
    clock: Arc<dyn Clock>,
    /// The peers as of the newest member table; a peer's task ends when its queue is dropped.
    peers: Mutex<BTreeMap<u64, PeerQueue>>,
    dropped: Arc<AtomicU64>,
    /// Snapshot outcomes and unreachable peers, for the node.
    reports: mpsc::UnboundedSender<Input>,
    /// How connections are opened (TLS for `https://` peer URLs).
    dialer: Dialer,
    /// Appends sent and each follower's latency (etcd's v2 stats).
    stats: Arc<PeerStats>,
}

impl Transport {
    /// Starts one sender task per peer (`member id → peer URL`, e.g. `http://10.0.0.2:2380`).
    /// Snapshot outcomes and unreachable peers are reported to the node through `reports`.
    pub fn start(
        local: LocalIdentity,
        peers: BTreeMap<u64, String>,
        clock: Arc<dyn Clock>,
        reports: mpsc::UnboundedSender<Input>,
    ) -> Transport {
        Transport::start_with(local, peers, clock, reports, Dialer::default())
    }

    /// [`Transport::start`], dialing peers through `dialer` (peer TLS).
    pub fn start_with(
        local: LocalIdentity,
        peers: BTreeMap<u64, String>,
        clock: Arc<dyn Clock>,
        reports: mpsc::UnboundedSender<Input>,
        dialer: Dialer,
    ) -> Transport {
        let transport = Transport {
            local,
            clock,
            peers: Mutex::new(BTreeMap::new()),
            dropped: Arc::new(AtomicU64::new(0)),
            reports,
            dialer,
            stats: Arc::default(),
        };
        transport.set_peers(peers);
        transport
    }

    /// Follows the member table: starts senders for new peers (or changed URLs) and ends
    /// those of peers no longer listed.
    pub fn set_peers(&self, wanted: BTreeMap<u64, String>) {
        let mut peers = self.lock();
        peers.retain(|id, p| wanted.get(id) == Some(&p.url));
        for (peer, url) in wanted {
            if peer == self.local.member_id || peers.contains_key(&peer) {
                continue;
            }
            tracing::info!(peer = format_args!("{peer:x}"), %url, "peer added to transport");
            self.stats.add_follower(peer);
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            let sender = PeerSender {
                local: self.local,
                peer,
                url: url.clone(),
                clock: Arc::clone(&self.clock),
                reports: self.reports.clone(),
                dialer: self.dialer.clone(),
                stats: Arc::clone(&self.stats),
            };
            tokio::spawn(sender.run(rx));
            peers.insert(
                peer,
                PeerQueue {
                    url,
                    queue: tx,
                    snapshot_lane: Arc::new(AtomicBool::new(true)),
                },
            );
        }
    }

    /// The raft traffic statistics this transport keeps (shared with the peer service and
    /// the v2 API).
    pub fn stats(&self) -> Arc<PeerStats> {
        Arc::clone(&self.stats)
    }

    /// How this transport opens connections to peers.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The peer URL the transport reaches `member` at.
    pub fn peer_url(&self, member: u64) -> Option<String> {
        self.lock().get(&member).map(|p| p.url.clone())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, PeerQueue>> {
        // The map is consistent after every statement; a panic elsewhere leaves it usable.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues each message for its peer; never waits. Messages to unknown peers, or to peers
    /// whose queue is full, are dropped (raft retransmits).
    pub fn send(&self, messages: Vec<Message>) {
        let peers = self.lock();
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(&peers, message);
                continue;
            }
            let Some(PeerQueue { queue, .. }) = peers.get(&message.to) else {
                tracing::debug!(to = message.to, "raft message to an unknown peer dropped");
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if queue.try_send(message).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Streams a snapshot to its peer on a thread of its own (`crate::background::spawn`).
    fn send_snapshot(&self, peers: &BTreeMap<u64, PeerQueue>, message: Message) {
        let to = message.to;
        let Some(PeerQueue {
            url, snapshot_lane, ..
        }) = peers.get(&to)
        else {
            tracing::debug!(to, "snapshot to an unknown peer dropped");
            let _ = self.reports.send(Input::SnapshotStatus { to, ok: false });
            return;
        };
        // The crc pass and the chunks' encoding and sending run below the write path's
        // priority, on a thread and connection of their own.
        crate::background::spawn(
            "keel-snapsend",
            send_snapshot(
                self.local,
                self.dialer.clone(),
                url.clone(),
                message,
                self.reports.clone(),
                Arc::clone(snapshot_lane),
            ),
        );
    }

    /// Messages dropped so far (full queues, unknown peers).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Outbound for Transport {
    fn send(&self, messages: Vec<Message>) {
        Transport::send(self, messages);
    }

    fn set_peers(&self, peers: BTreeMap<u64, String>) {
        Transport::set_peers(self, peers);
    }
}

/// One peer's sender: connect when there is something to send, stream batches, reconnect with
/// backoff. Ends when the [`Transport`] is dropped.
struct PeerSender {
    local: LocalIdentity,
    peer: u64,
    url: String,
    clock: Arc<dyn Clock>,
    reports: mpsc::UnboundedSender<Input>,
    dialer: Dialer,
    stats: Arc<PeerStats>,
}

impl PeerSender {
    /// raft slows down replication to a peer it cannot reach (probe instead of pipeline).
    fn unreachable(&self) {
        let _ = self.reports.send(Input::Unreachable { to: self.peer });
    }

    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let PeerSender {
            local,
            peer,
            ref url,
            ref clock,
            ..
        } = self;
        let url = url.clone();
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(first) = queue.recv().await else {
                return;
            };
            if let Err(e) = tonic::transport::Uri::try_from(url.as_str()) {
                tracing::error!(peer, %url, error = %e, "unusable peer URL; dropping its traffic");
                while queue.recv().await.is_some() {}
                return;
            }
            let connected = self.dialer.connect(&url, Some(CONNECT_TIMEOUT)).await;
            let channel = match connected {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::debug!(peer, %url, error = %e, "peer unreachable; retrying");
                    self.unreachable();
                    if first.get_msg_type() == MessageType::MsgAppend {
                        self.stats.append_failed(peer);
                    }
                    // `first` is dropped: raft will send again.
                    clock.sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            let (batches, stream) = mpsc::channel(STREAM_BATCHES_MAX);
            let mut client = PeerClient::new(channel);
            let call = tokio::spawn(async move {
                client
                    .send(tokio_stream::wrappers::ReceiverStream::new(stream))
                    .await
            });
            let sent = metrics()
                .peer_sent
                .with_label_values(&[format!("{:x}", self.peer).as_str()]);
            let out = Out {
                batches,
                sent: &sent,
                stats: &self.stats,
                clock: clock.as_ref(),
                peer,
            };
            let ended = pump(local, first, &mut queue, out).await;
            match call.await {
                Ok(Ok(_)) => tracing::debug!(peer, "peer stream closed"),
                Ok(Err(status)) => {
                    tracing::debug!(peer, %status, "peer stream failed");
                    self.unreachable();
                }
                Err(e) => tracing::debug!(peer, error = %e, "peer stream task failed"),
            }
            if ended {
                return;
            }
            clock.sleep(backoff).await;
        }
    }
}

/// Where [`pump`] puts batches, and what it counts.
struct Out<'a> {
    batches: mpsc::Sender<MessageBatch>,
    sent: &'a IntCounter,
    stats: &'a PeerStats,
    clock: &'a dyn Clock,
    peer: u64,
}

/// Moves queued messages into batches on one stream until the stream breaks (returns false) or
/// the transport is dropped (returns true).
async fn pump(
    local: LocalIdentity,
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
    out: Out<'_>,
) -> bool {
    let mut pending = vec![first];
    loop {
        while pending.len() < BATCH_MESSAGES_MAX {
            match queue.try_recv() {
                Ok(m) => pending.push(m),
                Err(_) => break,
            }
        }
        // The sizes of the batch's appends, for etcd's v2 stats.
        let mut appends = Vec::new();
        let batch = MessageBatch {
            from: local.member_id,
            cluster_id: local.cluster_id,
            messages: pending
                .drain(..)
                .map(|m| {
                    if m.get_msg_type() == MessageType::MsgHeartbeat {
                        metrics().heartbeat_sent(m.from, m.to);
                    }
                    let bytes = encode_message(&m);
                    if m.get_msg_type() == MessageType::MsgAppend {
                        appends.push(bytes.len());
                    }
                    bytes.into()
                })
                .collect(),
        };
        let bytes: usize = batch.messages.iter().map(|m| m.len()).sum();
        out.sent.inc_by(bytes as u64);
        let start = tokio::time::Instant::now();
        if out.batches.send(batch).await.is_err() {
            for _ in appends {
                out.stats.append_failed(out.peer);
            }
            return false; // the stream ended; what was in it is lost, raft retransmits
        }
        let took = start.elapsed();
        let now_ns = out
            .clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        for size in appends {
            out.stats
                .append_sent(local.member_id, out.peer, size, took, now_ns);
        }
        match queue.recv().await {
            Some(m) => pending.push(m),
            None => return true,
        }
    }
}
