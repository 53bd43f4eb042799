//! `Maintenance.Snapshot`: streams a backup ([`crate::backup`]) of the member's state as of
//! its applied index, while it goes on serving.
//!
//! The driver loop's share is O(1): it hands over a snapshot job of copy-on-write views
//! ([`Handle::backup_job`]). A thread of the blocking pool encodes it and sends the bytes in
//! chunks of [`SNAPSHOT_CHUNK_BYTES`] (etcd's `snapshotSendBufferSize`) through a channel of
//! [`SNAPSHOT_CHUNKS_QUEUED`]: the encoder runs only as fast as the client reads, and the
//! server holds at most that many chunks, never a second copy of the state. As etcd does, each
//! chunk carries the bytes still to come (`remaining_bytes`), and a last message (remaining
//! 0) carries the sha256 of everything sent.
//!
//! A client that goes away ends the stream: the next chunk finds the channel closed, the
//! encoder stops, and the job (its views) is dropped.

use keel_proto::etcdserverpb::SnapshotResponse;
use tonic::codegen::BoxStream;
use tonic::Status;

use crate::driver::Handle;

/// The bytes of one response's blob (etcd's `snapshotSendBufferSize`, 32 KiB).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Chunks encoded ahead of the client, at most.
pub const SNAPSHOT_CHUNKS_QUEUED: usize = 4;

/// Starts streaming a backup of the member behind `handle`.
#[cfg(not(madsim))]
pub async fn stream(handle: &Handle) -> Result<BoxStream<SnapshotResponse>, Status> {
    use crate::backup::Backup;
    use crate::status::to_status;

    let (job, status) = handle.backup_job().await.map_err(to_status)?;
    let backup = Backup::new(job, &status);
    let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_QUEUED);
    let header = backup.header().clone();
    tracing::info!(
        revision = header.revision,
        raft_index = header.raft_index,
        "sending a backup to a client"
    );
    // A task of the blocking pool: encoding walks the whole store.
    tokio::task::spawn_blocking(move || encode(&backup, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Under simulation there are no threads to encode on; the simulator does not take backups.
#[cfg(madsim)]
pub async fn stream(_handle: &Handle) -> Result<BoxStream<SnapshotResponse>, Status> {
    Err(Status::unimplemented(
        "Maintenance.Snapshot is not served under simulation",
    ))
}

#[cfg(not(madsim))]
type Sender = tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>;

/// Encodes `backup` into responses on `tx` until done or the client is gone.
#[cfg(not(madsim))]
fn encode(backup: &crate::backup::Backup, tx: Sender) {
    let total = backup.body_len();
    let mut chunks = Chunks {
        tx: &tx,
        buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
        remaining: total,
    };
    let started = std::time::Instant::now();
    let sent = backup.write_body(&mut chunks).and_then(|sha| {
        use std::io::Write as _;
        chunks.flush()?;
        chunks.send(sha.to_vec())
    });
    match sent {
        Ok(()) => tracing::info!(
            bytes = total,
            took_ms = started.elapsed().as_millis() as u64,
            "sent a backup to a client"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            tracing::warn!(
                sent = total - chunks.remaining,
                bytes = total,
                "the client went away during a backup; stopped"
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding a backup failed");
            let _ = tx.blocking_send(Err(Status::internal(format!("backup failed: {e}"))));
        }
    }
}

#[cfg(not(madsim))]
/// A writer that cuts what it is given into responses of [`SNAPSHOT_CHUNK_BYTES`].
struct Chunks<'a> {
    tx: &'a Sender,
    buf: Vec<u8>,
    /// Body bytes not yet sent.
    remaining: u64,
}

#[cfg(not(madsim))]
impl Chunks<'_> {
    /// Sends `blob` as one response, counting it against the body's remaining bytes (the
    /// sha256 after the body counts nothing: remaining is 0 by then).
    fn send(&mut self, blob: Vec<u8>) -> std::io::Result<()> {
        self.remaining = self.remaining.saturating_sub(blob.len() as u64);
        let response = SnapshotResponse {
            header: None,
            remaining_bytes: self.remaining,
            blob: blob.into(),
            ..Default::default()
        };
        self.tx
            .blocking_send(Ok(response))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

#[cfg(not(madsim))]
impl std::io::Write for Chunks<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = SNAPSHOT_CHUNK_BYTES - self.buf.len();
        let n = room.min(bytes.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK_BYTES {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
            self.send(full)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.send(rest)?;
        }
        Ok(())
    }
}
