//! The snapshot saver task: saves the member's own snapshots, streamed, off the driver loop
//! and off the WAL writer (whose fsyncs never wait behind a snapshot).
//!
//! One job at a time (the node makes the next only once this one is reported). A job goes to
//! its file in three steps on the blocking pool: the header and the state snapshot streamed
//! through [`SnapDir::create`]'s writer ([`SnapshotJob::write_data`], exactly
//! [`SnapshotJob::encoded_len`] bytes); the crc32 and the fsync ([`SnapWriter::finish`]); the
//! rename into place and pruning ([`SnapDir::publish`]), after which the file is read back
//! mapped and reported [`Saved::Done`], with the snapshot a damaged newest falls back to. The
//! driver loop hands the snapshot to the node and only then has the WAL writer release the WAL
//! before that fallback: segments go once the snapshots that cover them are durable.
//!
//! A failed save (any [`SnapError`]: a full disk, a failed fsync) is not fatal: the WAL still
//! holds everything. It is logged, its temporary file removed, and after a backoff
//! ([`SAVE_RETRY_MIN`] doubling up to [`SAVE_RETRY_MAX`]; reset by a success) reported
//! [`Saved::Failed`]; the node then offers a fresh job, as of its applied index then.
//!
//! The steps run on threads of their own at a lower scheduling priority (`crate::background`):
//! the encoding takes the CPU the driver loop, the WAL writer and the client workers leave.
//!
//! Under simulation the save takes virtual time (per buffer written, and per fsync), so that
//! a power cut can land while a snapshot is being written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::node::SnapshotJob;
use keel_engine::raft_log::encode_conf_state;
use keel_engine::raftpb::Snapshot;
use keel_storage::snap::{Published, SnapDir, SnapError, SnapWriter};
use keel_storage::IoOp;
use tokio::sync::mpsc;

use super::wal_writer::simulated_fsync_latency;

/// The wait after a first failed save before the node is asked for a new one.
pub const SAVE_RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two failed saves (the backoff doubles up to it).
pub const SAVE_RETRY_MAX: Duration = Duration::from_secs(30);

/// What the snapshot saver reports to the driver loop.
pub(super) enum Saved {
    /// The node's own snapshot is durable (its data now read from the file).
    Done {
        /// The snapshot.
        snapshot: Snapshot,
        /// The snapshot a damaged newest falls back to: the WAL before it may go.
        fallback_index: Option<u64>,
    },
    /// Saving the node's own snapshot failed (and the retry backoff passed).
    Failed,
}

/// Saves the snapshot jobs that come, one at a time; reports each saved or failed. Returns
/// (closing `done`, which stops the member) if a blocking step panicked.
pub(super) async fn snapshotter(
    snaps: SnapDir,
    mut jobs: mpsc::UnboundedReceiver<SnapshotJob>,
    done: mpsc::Sender<Saved>,
    snap_bytes: Arc<AtomicU64>,
) {
    let mut backoff = SAVE_RETRY_MIN;
    while let Some(job) = jobs.recv().await {
        let (index, term) = (job.index(), job.metadata().term);
        let report = match save(&snaps, job).await {
            Ok(Some((snapshot, published))) => {
                backoff = SAVE_RETRY_MIN;
                snap_bytes.store(published.dir_bytes, Ordering::Relaxed);
                let published = published.published;
                tracing::info!(index, file = %published.path.display(), "saved snapshot");
                Saved::Done {
                    snapshot,
                    fallback_index: published.fallback_index,
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::error!(
                    index,
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "saving a snapshot failed; the WAL keeps the log until one is saved"
                );
                remove_tmp(&snaps, index, term).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(SAVE_RETRY_MAX);
                Saved::Failed
            }
        };
        if done.send(report).await.is_err() {
            return;
        }
    }
}

/// Saves `job` and reads the file back mapped. `Ok(None)` if a blocking step panicked.
async fn save(
    snaps: &SnapDir,
    job: SnapshotJob,
) -> Result<Option<(Snapshot, PublishedSized)>, SnapError> {
    let started = std::time::Instant::now();
    let metadata = job.metadata().clone();
    let (index, term) = (metadata.index, metadata.term);
    let conf = encode_conf_state(metadata.get_conf_state());
    let dir = snaps.clone();
    let written = blocking(move || write(&dir, job, index, term, &conf)).await;
    let Some(writer) = written.transpose()? else {
        return Ok(None);
    };
    simulated_write_latency(writer.len()).await;
    let Some(synced) = blocking(move || writer.finish()).await.transpose()? else {
        return Ok(None);
    };
    simulated_fsync_latency().await;
    let dir = snaps.clone();
    let published = blocking(move || {
        let published = dir.publish(synced)?;
        // Followers are served from the mapped file; the job's store view is gone already.
        let data = dir.read_data(&published.path)?;
        let dir_bytes = super::disk_bytes::snap_dir_bytes(&dir);
        Ok::<_, SnapError>((
            data,
            PublishedSized {
                published,
                dir_bytes,
            },
        ))
    })
    .await;
    let Some((data, published)) = published.transpose()? else {
        return Ok(None);
    };
    let snapshot = Snapshot {
        data,
        metadata: Some(metadata).into(),
        ..Default::default()
    };
    crate::metrics::metrics()
        .snapshot_save
        .observe(started.elapsed().as_secs_f64());
    Ok(Some((snapshot, published)))
}

/// A snapshot file put in place, and the bytes of every snapshot file after its pruning.
struct PublishedSized {
    published: Published,
    dir_bytes: u64,
}

/// Streams `job` into a new snapshot file (not yet fsynced); the job is dropped after.
fn write(
    snaps: &SnapDir,
    job: SnapshotJob,
    index: u64,
    term: u64,
    conf: &[u8],
) -> Result<SnapWriter, SnapError> {
    use std::io::Write as _;
    let mut out = snaps.create(index, term, conf, job.encoded_len())?;
    let appended = job.write_data(&mut out).and_then(|()| out.flush());
    appended.map_err(|source| SnapError::Io {
        op: IoOp::Append,
        path: out.tmp_path().to_path_buf(),
        source,
    })?;
    Ok(out)
}

/// Removes a failed save's temporary file (logged if that fails too: the next open of the
/// directory removes it).
async fn remove_tmp(snaps: &SnapDir, index: u64, term: u64) {
    let dir = snaps.clone();
    if let Some(Err(e)) = blocking(move || dir.remove_tmp(index, term)).await {
        tracing::warn!(index, error = %e, "could not remove a failed snapshot's temp file");
    }
}

/// Runs blocking disk work off the async workers, on a thread below the write path's priority
/// (`crate::background`); `None` if it panicked.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    crate::background::run("keel-snapsave", work).await
}

/// Under simulation writing a snapshot takes virtual time: one fsync's worth per buffer of
/// [`keel_storage::snap::WRITE_BUFFER_BYTES`] (at least one), during which the file is written
/// but not durable.
async fn simulated_write_latency(bytes: u64) {
    let chunks = bytes
        .div_ceil(keel_storage::snap::WRITE_BUFFER_BYTES as u64)
        .max(1);
    for _ in 0..chunks {
        simulated_fsync_latency().await;
    }
}
