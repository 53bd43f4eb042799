//! Streaming a snapshot to a follower: `keelpb.Peer/SendSnapshot`.
//!
//! raft-rs hands the transport a `MsgSnapshot` whose snapshot carries the whole state machine.
//! It goes on a stream of its own (one task per transfer) in [`CHUNK_BYTES`] chunks, so the
//! peer's ordinary message stream — heartbeats, appends — and every other peer carry on while
//! it is in flight. The first chunk carries the message without its data plus the data's length
//! and crc32; the receiver ([`super::receive`]) writes the data to a file as it arrives, checks
//! both, and only then hands the message to its node. The sender reports the outcome to its node ([`Input::SnapshotStatus`]), which
//! raft-rs needs to leave its "snapshot in flight" state for that follower.
//!
//! ```text
//! leader node ─MsgSnapshot─▶ Transport::send ─spawn─▶ send_snapshot ══chunks══▶ follower
//!      ▲                                                   │              receive_snapshot
//!      └──────────── Input::SnapshotStatus{to, ok} ◀──────┘                 │ crc ok
//!                                                                  follower node ◀┘
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_engine::node::Input;
use keel_engine::raft_log::encode_message;
use keel_engine::raftpb::Message;
use keel_proto::keelpb::peer_client::PeerClient;
use keel_proto::keelpb::SnapshotChunk;
use tokio::sync::mpsc;

use super::link::{Dialer, LocalIdentity, CONNECT_TIMEOUT};

/// Bytes of snapshot data per chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks in flight on one transfer, at most.
const CHUNKS_IN_FLIGHT: usize = 4;
/// A transfer may take this long plus [`TRANSFER_MS_PER_MIB`] per MiB before it is abandoned.
const TRANSFER_BASE: Duration = Duration::from_secs(10);
const TRANSFER_MS_PER_MIB: u64 = 1000;
/// A snapshot larger than this is refused by the receiver.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;

/// Sends one `MsgSnapshot` to `url` and reports the outcome to the node through `reports`.
/// With `lane` set the connection asks for the receiver's snapshot lane (`super::lanes`);
/// a failed transfer flips it, so a receiver that refuses the lane's preface (a member not
/// yet upgraded) gets every other attempt without it, and one that failed for another reason
/// is tried on the lane again next time.
pub async fn send_snapshot(
    local: LocalIdentity,
    dialer: Dialer,
    url: String,
    mut message: Message,
    reports: mpsc::UnboundedSender<Input>,
    lane: Arc<AtomicBool>,
) {
    let to = message.to;
    let data: Bytes = std::mem::take(&mut message.mut_snapshot().data);
    let index = message.get_snapshot().get_metadata().index;
    let mib = (data.len() as u64).div_ceil(1 << 20);
    let limit = TRANSFER_BASE + Duration::from_millis(TRANSFER_MS_PER_MIB * mib);
    let on_lane = lane.load(Ordering::Relaxed);
    let result = tokio::time::timeout(
        limit,
        transfer(local, &dialer, &url, &message, data, on_lane),
    )
    .await;
    let ok = match result {
        Ok(Ok(())) => {
            tracing::info!(to, index, "snapshot sent");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(to, index, on_lane, error = %e, "snapshot send failed");
            false
        }
        Err(_) => {
            tracing::warn!(to, index, on_lane, ?limit, "snapshot send timed out");
            false
        }
    };
    if !ok {
        lane.store(!on_lane, Ordering::Relaxed);
    }
    // The node is gone only when the member stops.
    let _ = reports.send(Input::SnapshotStatus { to, ok });
}

async fn transfer(
    local: LocalIdentity,
    dialer: &Dialer,
    url: &str,
    message: &Message,
    data: Bytes,
    on_lane: bool,
) -> Result<(), String> {
    // A connection of its own, on the receiver's snapshot lane (`super::lanes`) if asked.
    let channel = if on_lane {
        dialer.connect_snapshot(url, Some(CONNECT_TIMEOUT)).await?
    } else {
        dialer.connect(url, Some(CONNECT_TIMEOUT)).await?
    };
    let mut client = PeerClient::new(channel)
        .max_decoding_message_size(2 * CHUNK_BYTES)
        .max_encoding_message_size(2 * CHUNK_BYTES);
    let (chunks, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let header = SnapshotChunk {
        from: local.member_id,
        cluster_id: local.cluster_id,
        message: encode_message(message).into(),
        data_len: data.len() as u64,
        data_crc: crc32fast::hash(&data),
        data: Bytes::new(),
    };
    let feeder = tokio::spawn(async move {
        if chunks.send(header).await.is_err() {
            return;
        }
        let mut at = 0;
        while at < data.len() {
            let end = (at + CHUNK_BYTES).min(data.len());
            let chunk = SnapshotChunk {
                data: data.slice(at..end),
                ..Default::default()
            };
            if chunks.send(chunk).await.is_err() {
                return; // the call failed; its error says why
            }
            at = end;
        }
    });
    let result = client
        .send_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    feeder.abort();
    result.map(|_| ()).map_err(|status| status.to_string())
}
