//! The WAL writer task: group commit of persist batches (saving a leader's snapshot a batch
//! installs, before its WAL mark), and releasing WAL segments that durable snapshots cover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
#[cfg(madsim)]
use std::time::Duration;

use keel_engine::bugs::{Bug, Bugs};
use keel_engine::node::PersistBatch;
use keel_engine::raft_log::{encode_conf_state, encode_entry, encode_hard_state};
use keel_engine::raftpb::Message;
use keel_storage::snap::SnapDir;
use keel_storage::wal::Wal;
use tokio::sync::mpsc;

use super::error::DriverError;
use super::outbound::Outbound;

/// Persist batches the WAL writer merges into one fsync, at most.
pub const BATCHES_PER_SYNC_MAX: usize = 4096;

/// A member's durable storage: the WAL and the snapshot directory.
pub struct Storage {
    /// The write-ahead log.
    pub wal: Wal,
    /// The snapshot files.
    pub snaps: SnapDir,
}

/// Work for the WAL writer.
#[derive(Debug)]
pub(super) enum Job {
    /// Make a persist batch durable.
    Persist(PersistBatch),
    /// Remove the WAL segments whose entries are all below `before` (a durable snapshot
    /// covers them, and the one a damaged newest falls back to).
    Release {
        /// The first index that must stay.
        before: u64,
    },
}

/// What the WAL writer reports to the driver loop.
pub(super) enum Done {
    /// Every batch up to this number is durable.
    Persisted(u64),
}

/// A job's outcome; an error stops the member.
pub(super) type Durable = Result<Done, DriverError>;

/// Writes persist batches to the WAL: everything queued goes out with one fsync. Releases
/// segments in the order the releases come, between batches.
pub(super) async fn wal_writer(
    storage: Storage,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    durable: mpsc::Sender<Durable>,
    wal_bytes: Arc<AtomicU64>,
    transport: Arc<dyn Outbound>,
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
            Job::Release { before } => {
                let work = move |st: &mut Storage| st.wal.release_before(before);
                let Some((st, released)) = run_blocking(st, work).await else {
                    return;
                };
                // A failed removal poisons the WAL: fatal, like a failed WAL write.
                match released {
                    Ok(0) => {}
                    Ok(segments) => {
                        tracing::info!(before, segments, "released WAL segments");
                    }
                    Err(e) => {
                        let _ = durable.send(Err(e.into())).await;
                        return;
                    }
                }
                st
            }
            Job::Persist(batch) => {
                let mut group = vec![batch];
                while group.len() < BATCHES_PER_SYNC_MAX {
                    match jobs.try_recv() {
                        Ok(Job::Persist(b)) => group.push(b),
                        Ok(release) => {
                            next = Some(release);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let Some(st) = persist_group(st, group, &durable, transport.as_ref(), bugs).await
                else {
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
    durable: &mpsc::Sender<Durable>,
    transport: &dyn Outbound,
    bugs: Bugs,
) -> Option<Storage> {
    // Votes and append acks: raft allows them out only once the batch is durable.
    let then_send: Vec<Message> = group
        .iter_mut()
        .flat_map(|b| std::mem::take(&mut b.then_send))
        .collect();
    let newest = group.last().map_or(0, |b| b.number);
    // The simulator's `ack-before-fsync` bug reports the batch durable before it is written.
    let acked_early = bugs.has(Bug::AckBeforeFsync);
    if acked_early && durable.send(Ok(Done::Persisted(newest))).await.is_err() {
        return None;
    }
    let (st, result) = run_blocking(st, move |st| write_group(st, &group)).await?;
    simulated_fsync_latency().await;
    if let Err(e) = result {
        let _ = durable.send(Err(e)).await;
        return None;
    }
    transport.send(then_send);
    if !acked_early && durable.send(Ok(Done::Persisted(newest))).await.is_err() {
        return None;
    }
    Some(st)
}

/// Under simulation an fsync takes virtual time (0.5-3 ms, from madsim's per-run generator),
/// so that work racing a write in flight — a read, a second batch — really overlaps it, as on a
/// disk. (The simulated disk itself is synchronous and instant.)
#[cfg(madsim)]
pub(super) async fn simulated_fsync_latency() {
    // madsim's generator is seeded per simulation run (a thread-local one would carry its
    // state from one run into the next and break same-seed-same-trace).
    use madsim::rand::RngCore as _;
    let micros = 500 + madsim::rand::thread_rng().next_u64() % 2500;
    tokio::time::sleep(Duration::from_micros(micros)).await;
}

/// Production fsyncs take the time they take.
#[cfg(not(madsim))]
pub(super) async fn simulated_fsync_latency() {}

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
