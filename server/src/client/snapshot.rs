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
//! encoder stops, and the job (its views) is dropped. So does a client that stays connected
//! but stops reading for [`SNAPSHOT_STALL`]: while a backup is open its views pin the state
//! it started from (writes copy the paths they touch), so a reader that never reads must not
//! hold them, and a thread of the blocking pool, for ever.

use keel_proto::etcdserverpb::SnapshotResponse;
use tonic::codegen::BoxStream;
use tonic::Status;

use crate::driver::Handle;

/// The bytes of one response's blob (etcd's `snapshotSendBufferSize`, 32 KiB).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Chunks encoded ahead of the client, at most.
pub const SNAPSHOT_CHUNKS_QUEUED: usize = 4;
/// How long the encoder waits for the client to take one chunk before it gives up.
pub const SNAPSHOT_STALL: std::time::Duration = std::time::Duration::from_secs(60);

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
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || encode(&backup, tx, &runtime));
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
fn encode(backup: &crate::backup::Backup, tx: Sender, runtime: &tokio::runtime::Handle) {
    let total = backup.body_len();
    let mut chunks = Chunks::new(&tx, runtime, total, SNAPSHOT_STALL);
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
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            tracing::warn!(
                sent = total - chunks.remaining,
                bytes = total,
                stall_s = SNAPSHOT_STALL.as_secs(),
                "the client stopped reading a backup; stopped"
            );
            let _ = tx.try_send(Err(Status::deadline_exceeded(
                "backup stopped: the client did not read for too long",
            )));
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
    /// The runtime the sends wait on (the encoder runs on a thread of its blocking pool).
    runtime: &'a tokio::runtime::Handle,
    buf: Vec<u8>,
    /// Body bytes not yet sent.
    remaining: u64,
    /// How long one chunk may wait for the client.
    stall: std::time::Duration,
}

#[cfg(not(madsim))]
impl<'a> Chunks<'a> {
    fn new(
        tx: &'a Sender,
        runtime: &'a tokio::runtime::Handle,
        total: u64,
        stall: std::time::Duration,
    ) -> Self {
        Chunks {
            tx,
            runtime,
            buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
            remaining: total,
            stall,
        }
    }

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
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout(self.stall, self.tx.send(Ok(response))).await });
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client gone",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client stopped reading",
            )),
        }
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

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::time::Duration;

    /// A client that stays connected but never reads stops the encoder after the stall time
    /// (chunks queued up to the channel's bound, then a timed-out send), and one that goes
    /// away stops it at once.
    #[test]
    fn a_stalled_or_gone_reader_stops_the_encoder() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("a runtime for the test");
        let handle = runtime.handle().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut chunks = Chunks::new(
            &tx,
            &handle,
            10 * SNAPSHOT_CHUNK_BYTES as u64,
            Duration::from_millis(50),
        );
        let chunk = vec![7u8; SNAPSHOT_CHUNK_BYTES];
        chunks.write_all(&chunk).expect("first chunk queued");
        chunks.write_all(&chunk).expect("second chunk queued");
        let stalled = chunks
            .write_all(&chunk)
            .expect_err("a third chunk finds nobody reading");
        assert_eq!(
            stalled.kind(),
            std::io::ErrorKind::TimedOut,
            "stall reported: {stalled}"
        );
        assert_eq!(
            chunks.remaining,
            7 * SNAPSHOT_CHUNK_BYTES as u64,
            "three chunks counted: the third's remaining_bytes is set before its send times out"
        );
        drop(rx);
        let gone = chunks
            .flush()
            .and_then(|()| chunks.write_all(&chunk))
            .expect_err("nobody to send to");
        assert_eq!(
            gone.kind(),
            std::io::ErrorKind::BrokenPipe,
            "gone reported: {gone}"
        );
    }
}
