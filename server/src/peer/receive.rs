//! Receiving a snapshot transfer (`keelpb.Peer/SendSnapshot`, sent by [`super::snapshot`]).
//!
//! The first chunk carries the `MsgSnapshot` without its data, the data's length and its
//! crc32; the rest carry the data. With the member's snapshot directory at hand, the data
//! goes straight to a file of its own there as it arrives ([`SnapDir::create_received`]),
//! written on a thread at background priority (`crate::background::spawn`, as the leader's
//! save and send are) while the crc32 is computed on the way: the follower never holds the
//! snapshot on its heap, copies it once (into the page cache), and competes with the write
//! path as little as the leader's own snapshot work does. Once the length and the crc32 hold
//! and the file is fsynced, the message goes to the node with its data a mapping of that
//! file, and the WAL writer later puts the file in place rather than write the snapshot again
//! ([`SnapDir::save_installed`]). A short, long, damaged or abandoned transfer is refused
//! (an error status, which the leader's raft reports as a failed snapshot and retries) and
//! its file removed. Without a snapshot directory (tests of the transport) the data is
//! gathered in memory and checked the same way.

use bytes::Bytes;
use keel_engine::raft_log::{decode_message, encode_conf_state};
use keel_engine::raftpb::{Message, SnapshotMetadata};
use keel_proto::keelpb::SnapshotChunk;
use keel_storage::snap::{SnapDir, SnapWriter, Synced};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::link::LocalIdentity;
use super::snapshot::SNAPSHOT_BYTES_MAX;

/// Chunks received but not yet written, at most (each up to `CHUNK_BYTES`).
const CHUNKS_QUEUED: usize = 4;

/// Receives one snapshot transfer: returns the `MsgSnapshot` with its data restored, once the
/// length and crc32 match (and, with `snaps`, the data is in a fsynced file there, the data
/// returned a mapping of it). `local` is the receiving member.
pub async fn receive_snapshot(
    local: LocalIdentity,
    mut stream: Streaming<SnapshotChunk>,
    snaps: Option<&SnapDir>,
) -> Result<Message, Status> {
    let header = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("keel: empty snapshot stream"))?;
    let mut message = check_header(local, &header)?;
    let announced = Announced {
        len: header.data_len,
        crc: header.data_crc,
    };
    let data = match snaps {
        Some(snaps) => {
            let meta = message.get_snapshot().get_metadata();
            into_file(snaps, meta, announced, header.data, &mut stream).await?
        }
        None => into_memory(announced, header.data, &mut stream).await?,
    };
    message.mut_snapshot().data = data;
    Ok(message)
}

/// The data's length and crc32, as the first chunk announced them.
#[derive(Clone, Copy)]
struct Announced {
    len: u64,
    crc: u32,
}

impl Announced {
    /// Whether `len` bytes with crc `crc` are what was announced; the refusal if not.
    fn check(self, len: u64, crc: u32) -> Result<(), Status> {
        if len != self.len {
            return Err(Status::invalid_argument(format!(
                "keel: snapshot data ended at {len} of {} bytes",
                self.len
            )));
        }
        if crc != self.crc {
            return Err(Status::data_loss(format!(
                "keel: snapshot data crc32 {crc:08x}, announced {:08x}",
                self.crc
            )));
        }
        Ok(())
    }

    /// The refusal of a chunk that takes the data past its announced length.
    fn too_long() -> Status {
        Status::invalid_argument("keel: snapshot data longer than announced")
    }
}

/// The message of a transfer's first chunk, once it is for this member of this cluster and
/// not larger than [`SNAPSHOT_BYTES_MAX`].
fn check_header(local: LocalIdentity, header: &SnapshotChunk) -> Result<Message, Status> {
    if header.cluster_id != local.cluster_id {
        return Err(Status::failed_precondition(format!(
            "keel: snapshot from cluster {:x} sent to a member of cluster {:x}",
            header.cluster_id, local.cluster_id
        )));
    }
    let message = decode_message(&header.message)
        .map_err(|e| Status::invalid_argument(format!("keel: {e}")))?;
    if message.to != local.member_id {
        return Err(Status::invalid_argument(format!(
            "keel: snapshot for member {:x} sent to member {:x}",
            message.to, local.member_id
        )));
    }
    if header.data_len > SNAPSHOT_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "keel: snapshot of {} bytes exceeds the {SNAPSHOT_BYTES_MAX}-byte limit",
            header.data_len
        )));
    }
    Ok(message)
}

/// The data gathered in one buffer (no snapshot directory).
async fn into_memory(
    announced: Announced,
    first: Bytes,
    stream: &mut Streaming<SnapshotChunk>,
) -> Result<Bytes, Status> {
    let expected = usize::try_from(announced.len).map_err(|_| Announced::too_long())?;
    let mut data = Vec::with_capacity(expected.min(64 << 20));
    data.extend_from_slice(&first);
    while let Some(chunk) = stream.message().await? {
        if data.len() + chunk.data.len() > expected {
            return Err(Announced::too_long());
        }
        data.extend_from_slice(&chunk.data);
    }
    announced.check(data.len() as u64, crc32fast::hash(&data))?;
    Ok(Bytes::from(data))
}

/// What the writing thread is sent: data, then the end (a closed queue without it: the
/// transfer was abandoned).
enum Piece {
    Data(Bytes),
    End,
}

/// The data written to a received file in `snaps` as it arrives; returns its mapping.
async fn into_file(
    snaps: &SnapDir,
    meta: &SnapshotMetadata,
    announced: Announced,
    first: Bytes,
    stream: &mut Streaming<SnapshotChunk>,
) -> Result<Bytes, Status> {
    let (index, term) = (meta.index, meta.term);
    let conf = encode_conf_state(meta.get_conf_state());
    let writer = snaps
        .create_received(index, term, &conf, announced.len)
        .map_err(|e| Status::internal(format!("keel: receiving a snapshot: {e}")))?;
    let (pieces, queue) = mpsc::channel(CHUNKS_QUEUED);
    let (done_tx, done) = oneshot::channel();
    let dir = snaps.clone();
    crate::background::spawn("keel-snaprecv", async move {
        let _ = done_tx.send(write_pieces(writer, queue, dir).await);
    });
    let mut len = first.len() as u64;
    if len > announced.len {
        return Err(Announced::too_long());
    }
    if !first.is_empty() && pieces.send(Piece::Data(first)).await.is_err() {
        return Err(writer_gone(done).await);
    }
    // An early return drops `pieces` without `End`: the writer removes the file.
    while let Some(chunk) = stream.message().await? {
        len += chunk.data.len() as u64;
        if len > announced.len {
            return Err(Announced::too_long());
        }
        if pieces.send(Piece::Data(chunk.data)).await.is_err() {
            return Err(writer_gone(done).await);
        }
    }
    if len != announced.len {
        return Err(Status::invalid_argument(format!(
            "keel: snapshot data ended at {len} of {} bytes",
            announced.len
        )));
    }
    if pieces.send(Piece::End).await.is_err() {
        return Err(writer_gone(done).await);
    }
    let (synced, crc) = match done.await {
        Ok(Ok(written)) => written,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Status::internal("keel: the snapshot writer stopped")),
    };
    let tmp = synced.tmp_path().to_path_buf();
    if let Err(refused) = announced.check(len, crc) {
        snaps.remove_received(tmp);
        return Err(refused);
    }
    snaps
        .hold_received(synced, index, term, announced.len)
        .map_err(|e| {
            snaps.remove_received(tmp);
            Status::internal(format!("keel: mapping a received snapshot: {e}"))
        })
}

/// Why the writer stopped taking data (its error, once it has reported it).
async fn writer_gone(done: oneshot::Receiver<Result<(Synced, u32), Status>>) -> Status {
    match done.await {
        Ok(Err(e)) => e,
        _ => Status::internal("keel: the snapshot writer stopped"),
    }
}

/// The writing thread's work: every piece into `writer`, the data's crc32 computed on the way;
/// at the end, the file fsynced. Returns it with the crc32. On any failure, or a queue closed
/// before the end, the file is removed.
async fn write_pieces(
    mut writer: SnapWriter,
    mut queue: mpsc::Receiver<Piece>,
    snaps: SnapDir,
) -> Result<(Synced, u32), Status> {
    use std::io::Write as _;
    let tmp = writer.tmp_path().to_path_buf();
    let mut crc = crc32fast::Hasher::new();
    let failed = |snaps: &SnapDir, tmp, e: String| {
        snaps.remove_received(tmp);
        Status::internal(format!("keel: writing a received snapshot: {e}"))
    };
    loop {
        match queue.recv().await {
            Some(Piece::Data(data)) => {
                crc.update(&data);
                if let Err(e) = writer.write_all(&data) {
                    return Err(failed(&snaps, tmp, e.to_string()));
                }
            }
            Some(Piece::End) => break,
            None => {
                snaps.remove_received(tmp);
                return Err(Status::aborted("keel: snapshot transfer abandoned"));
            }
        }
    }
    match writer.finish() {
        Ok(synced) => Ok((synced, crc.finalize())),
        Err(e) => Err(failed(&snaps, tmp, e.to_string())),
    }
}
