//! The WAL writer task: group commit of persist batches (saving a leader's snapshot a batch
//! installs, before its WAL mark), and releasing WAL segments that durable snapshots cover
//! (their files deleted on a thread of their own: unlinking a 64 MiB segment and syncing the
//! directory took tens of ms on the writer's thread, while every put waited for its fsync).
//!
//! # A full disk
//! A persist group whose write fails for lack of space (`ENOSPC` while appending to the WAL or
//! starting a segment, or while saving a leader's snapshot) is not fatal and is never
//! reported durable. The writer tells the loop ([`Done::NoSpace`]; the node then refuses
//! writes, serves reads and raises its `NOSPACE` alarm), keeps the group, and retries it with
//! backoff: it reopens the WAL ([`Wal::reopen`]: the half-written tail is cut, whole records
//! are synced and kept), writes the whole group again and fsyncs. Nothing queued behind the
//! group is written before it, so raft's durable state never runs ahead of the disk and the
//! WAL stays one contiguous log. Once a retry succeeds the writer reports
//! [`Done::SpaceAgain`], then the group durable, as usual. A failed fsync stays fatal, whatever
//! its error: after one, the kernel may have dropped pages that still read back fine.
//!
//! With preallocated WAL segments (storage that reserves the next segment before the current
//! one fills), `ENOSPC` shows up while the current segment still has room; the same seam
//! serves: the reservation's failure is reported as [`Done::NoSpace`] and retried here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::bugs::{Bug, Bugs};
use keel_engine::node::PersistBatch;
use keel_engine::raft_log::{encode_conf_state, encode_entry_into, encode_hard_state};
use keel_engine::raftpb::{Message, Snapshot};
use keel_storage::snap::{SnapDir, SnapError};
use keel_storage::wal::{Wal, WalError};
use keel_storage::IoOp;
use tokio::sync::mpsc;

use crate::metrics::metrics;

use super::error::DriverError;
use super::outbound::Outbound;

/// Persist batches the WAL writer merges into one fsync, at most.
pub const BATCHES_PER_SYNC_MAX: usize = 4096;
/// Times the WAL writer lets the other ready tasks run, gathering the batches they queue, before
/// it writes a group (`gather`). Under load the tasks ready to run are requests on their way
/// to the driver loop, whose batches then share the fsync: measured at 100 clients, 25 % fewer
/// fsyncs per put (benches/README.md, "Coalesced writes"). With nothing else ready a yield
/// returns at once, so a lone write waits for nothing. The simulator runs the same path.
pub const GATHER_YIELDS: usize = 3;
/// The first wait before a write that failed for lack of space is tried again; each failure
/// doubles it, up to [`NO_SPACE_RETRY_MAX`].
pub const NO_SPACE_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a write that failed for lack of space. (A try reads
/// the WAL back, [`Wal::reopen`], so tries are spaced out.)
pub const NO_SPACE_RETRY_MAX: Duration = Duration::from_secs(4);

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
    /// A leader's snapshot a batch installed is durable; here it is read back from its file
    /// (data a mapping), for the node to hold instead of the received copy. Comes before the
    /// batch's `Persisted`.
    Installed(Snapshot),
    /// A persist group could not be written for lack of space: it waits, unwritten and not
    /// durable, and is retried with backoff; nothing queued behind it is written first.
    NoSpace,
    /// A retried group was written: the disk takes writes again (its `Persisted` follows).
    SpaceAgain,
}

/// A job's outcome; an error stops the member.
pub(super) type Durable = Result<Done, DriverError>;

/// Writes persist batches to the WAL: everything queued goes out with one fsync. Releases
/// segments in the order the releases come, between batches.
pub(super) async fn wal_writer(
    storage: Storage,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    durable: mpsc::Sender<Durable>,
    bytes: super::disk_bytes::DiskBytes,
    transport: Arc<dyn Outbound>,
    bugs: Bugs,
) {
    let mut st = storage;
    let mut next: Option<Job> = None;
    let mut low = LowSpace::default();
    // Unbounded, so that handing released segments over never waits: in practice it holds at
    // most the segments of a snapshot or two (a release comes once per saved snapshot).
    let (remove_tx, remove_rx) = mpsc::unbounded_channel();
    tokio::spawn(remove_released(remove_rx, durable.clone()));
    loop {
        // The reservation is retried when due even while jobs keep coming: a member that gets
        // a batch more often than the backoff (heartbeats' commits, its own NOSPACE proposals)
        // would otherwise never find its disk has room again.
        if low.is_due() {
            let Some(back) = low.retry_reserve(st, &durable).await else {
                return;
            };
            st = back;
        }
        let first = match next.take() {
            Some(job) => job,
            None => match low.due {
                None => match jobs.recv().await {
                    Some(job) => job,
                    None => return,
                },
                Some(due) => {
                    let left = due.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left, jobs.recv()).await {
                        Ok(Some(job)) => job,
                        Ok(None) => return,
                        Err(_elapsed) => continue, // the retry is due
                    }
                }
            },
        };
        // Snapshot files change with a release (the saver pruned some) or an install.
        let snaps_changed = match &first {
            Job::Release { .. } => true,
            Job::Persist(batch) => batch.snapshot.is_some(),
        };
        st = match first {
            Job::Release { before } => {
                // Only the in-memory list changes here; the files go on a thread of their own
                // (`remove_released`), so no fsync waits for the file system to free them.
                match st.wal.detach_before(before) {
                    Ok(released) if released.is_empty() => {}
                    Ok(released) => {
                        tracing::info!(before, segments = released.len(), "released WAL segments");
                        if remove_tx.send(released).is_err() {
                            return; // the remover stopped: it reported why
                        }
                    }
                    Err(e) => {
                        let _ = durable.send(Err(e.into())).await;
                        return;
                    }
                }
                st
            }
            Job::Persist(batch) => {
                let group = gather(batch, &mut jobs, &mut next).await;
                let Some(st) = persist_group(st, group, &durable, transport.as_ref(), bugs).await
                else {
                    return;
                };
                let out_of_space = st.wal.is_out_of_space();
                if low.note(out_of_space, &durable).await.is_none() {
                    return;
                }
                st
            }
        };
        bytes.wal.store(st.wal.disk_bytes(), Ordering::Relaxed);
        if snaps_changed {
            bytes.snaps.store(
                super::disk_bytes::snap_dir_bytes(&st.snaps),
                Ordering::Relaxed,
            );
        }
        let total = bytes.wal.load(Ordering::Relaxed) + bytes.snaps.load(Ordering::Relaxed);
        metrics().db_total_size.set(total as i64);
    }
}

/// Deletes released WAL segments' files, in the order they were released, below the write
/// path's priority (`crate::background`). A failed removal is fatal, like a failed WAL write:
/// it is reported to the loop, and nothing after it is removed (the segments on disk stay
/// contiguous).
async fn remove_released(
    mut released: mpsc::UnboundedReceiver<keel_storage::wal::Released>,
    durable: mpsc::Sender<Durable>,
) {
    while let Some(segments) = released.recv().await {
        match crate::background::run("keel-walrm", move || segments.remove()).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let _ = durable.send(Err(e.into())).await;
                return;
            }
            None => return, // panicked: logged by `background::run`
        }
    }
}

/// The group that goes out with `first`: every persist batch queued behind it, up to a
/// [`Job::Release`] (left in `next`, it waits for the group) or [`BATCHES_PER_SYNC_MAX`],
/// gathered again after each of [`GATHER_YIELDS`] turns given to the other ready tasks.
async fn gather(
    first: PersistBatch,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    next: &mut Option<Job>,
) -> Vec<PersistBatch> {
    let mut group = vec![first];
    let mut yields = GATHER_YIELDS;
    loop {
        while next.is_none() && group.len() < BATCHES_PER_SYNC_MAX {
            match jobs.try_recv() {
                Ok(Job::Persist(b)) => group.push(b),
                Ok(release) => *next = Some(release),
                Err(_) => break,
            }
        }
        if yields == 0 || next.is_some() || group.len() >= BATCHES_PER_SYNC_MAX {
            return group;
        }
        yields -= 1;
        tokio::task::yield_now().await;
    }
}

/// The early warning of a full disk: the WAL could not preallocate its next segment
/// ([`Wal::is_out_of_space`]) while the active one still has room. The loop hears
/// [`Done::NoSpace`] at once (the node raises its `NOSPACE` alarm while it can still write it)
/// and the writer retries the reservation with backoff, between jobs once each try is due
/// (however often jobs come); once one succeeds, or a rotation found room for a new segment,
/// the loop hears [`Done::SpaceAgain`].
#[derive(Default)]
struct LowSpace {
    /// `Some(wait before the next try)` while the reservation fails.
    wait: Option<Duration>,
    /// When the next try is due (set with `wait`).
    due: Option<tokio::time::Instant>,
}

impl LowSpace {
    /// After a written group: reports a reservation that just failed, or room found again by
    /// the group's own rotation. `None`: the loop is gone.
    async fn note(&mut self, out_of_space: bool, durable: &mpsc::Sender<Durable>) -> Option<()> {
        match (self.wait.is_some(), out_of_space) {
            (false, true) => {
                tracing::warn!("disk full: the next WAL segment cannot be preallocated");
                durable.send(Ok(Done::NoSpace)).await.ok()?;
                self.retry_in(NO_SPACE_RETRY_MIN);
            }
            (true, false) => {
                tracing::info!("disk full: the WAL found room for a new segment");
                self.wait = None;
                self.due = None;
                durable.send(Ok(Done::SpaceAgain)).await.ok()?;
            }
            _ => {}
        }
        Some(())
    }

    /// Schedules the next try `wait` from now.
    fn retry_in(&mut self, wait: Duration) {
        self.wait = Some(wait);
        self.due = Some(tokio::time::Instant::now() + wait);
    }

    /// Whether a try is due now.
    fn is_due(&self) -> bool {
        self.due
            .is_some_and(|due| tokio::time::Instant::now() >= due)
    }

    /// Tries the reservation again. `None` if the member must stop (reported) or the loop is
    /// gone.
    async fn retry_reserve(
        &mut self,
        st: Storage,
        durable: &mpsc::Sender<Durable>,
    ) -> Option<Storage> {
        let (st, result) = run_blocking(st, |st| st.wal.try_reserve()).await?;
        match result {
            Ok(()) => {
                tracing::info!("disk full: the next WAL segment is preallocated again");
                self.wait = None;
                self.due = None;
                durable.send(Ok(Done::SpaceAgain)).await.ok()?;
            }
            Err(e) if e.is_no_space() => {
                let wait = self.wait.unwrap_or(NO_SPACE_RETRY_MIN);
                self.retry_in((wait * 2).min(NO_SPACE_RETRY_MAX));
            }
            Err(e) => {
                let _ = durable.send(Err(e.into())).await;
                return None;
            }
        }
        Some(st)
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
    let (st, (group, result)) = run_blocking(st, move |st| {
        let result = write_group(st, &group);
        (group, result)
    })
    .await?;
    simulated_fsync_latency().await;
    let (st, installed) = match result {
        Ok(installed) => (st, installed),
        Err(e) if is_no_space(&e) => {
            tracing::warn!(error = %e, "disk full: persist batches wait, writes are refused");
            durable.send(Ok(Done::NoSpace)).await.ok()?;
            let written = write_when_space(st, group, durable).await?;
            tracing::info!("disk full: the waiting persist batches are written");
            durable.send(Ok(Done::SpaceAgain)).await.ok()?;
            written
        }
        Err(e) => {
            let _ = durable.send(Err(e)).await;
            return None;
        }
    };
    transport.send(then_send);
    if let Some(snapshot) = installed {
        durable.send(Ok(Done::Installed(snapshot))).await.ok()?;
    }
    if !acked_early && durable.send(Ok(Done::Persisted(newest))).await.is_err() {
        return None;
    }
    Some(st)
}

/// Retries a group that failed for lack of space, with backoff, until it is written: each try
/// reopens the WAL (cutting what the failed write left half-written) and writes the whole
/// group again. `None` if the member must stop (another error, reported; or the loop is gone).
/// Returns the storage and what [`write_group`] returns.
async fn write_when_space(
    st: Storage,
    group: Vec<PersistBatch>,
    durable: &mpsc::Sender<Durable>,
) -> Option<(Storage, Option<Snapshot>)> {
    let (mut st, mut group) = (st, group);
    let mut wait = NO_SPACE_RETRY_MIN;
    for attempt in 1u64.. {
        tokio::time::sleep(wait).await;
        if durable.is_closed() {
            return None;
        }
        wait = (wait * 2).min(NO_SPACE_RETRY_MAX);
        let (back, (g, result)) = run_blocking(st, move |st| {
            let result = reopen_wal(st).and_then(|()| write_group(st, &group));
            (group, result)
        })
        .await?;
        (st, group) = (back, g);
        match result {
            Ok(installed) => return Some((st, installed)),
            Err(e) if is_no_space(&e) => {
                tracing::debug!(attempt, error = %e, "disk still full");
            }
            Err(e) => {
                let _ = durable.send(Err(e)).await;
                return None;
            }
        }
    }
    None
}

/// Replaces a WAL poisoned by a failed write with the directory opened again.
fn reopen_wal(st: &mut Storage) -> Result<(), DriverError> {
    // (The storage logs what it cut; the entries it read back are the node's already.)
    let (wal, _recovered) = st.wal.reopen()?;
    st.wal = wal;
    Ok(())
}

/// Whether `e` is a lack of space the writer may wait out: `ENOSPC` from a write, a file
/// creation, a truncation or a rename — never from an fsync (see the module docs).
fn is_no_space(e: &DriverError) -> bool {
    let (op, source) = match e {
        DriverError::Wal(WalError::Io { op, source, .. }) => (*op, source),
        DriverError::Snap(SnapError::Io { op, source, .. }) => (*op, source),
        _ => return false,
    };
    !matches!(op, IoOp::Sync | IoOp::SyncDir) && io_no_space(source)
}

/// `ENOSPC` anywhere in an I/O error's source chain.
fn io_no_space(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::StorageFull {
        return true;
    }
    let mut source = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull {
                return true;
            }
        }
        source = err.source();
    }
    false
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
/// snapshot saves the snapshot file first, so the WAL's mark never points at a snapshot that
/// is not on disk: the file it was received into is put in place (rename), or, if there is
/// none, the data is written (durably, streamed through the writer's buffer). After the
/// fsync, a snapshot whose data was written here is read back mapped (`Some`), for the node
/// to hold instead of the received copy.
fn write_group(st: &mut Storage, group: &[PersistBatch]) -> Result<Option<Snapshot>, DriverError> {
    let started = std::time::Instant::now();
    let mut installed = None;
    // One buffer for every entry's encoding (the WAL copies it into its own batch buffer).
    let mut scratch = Vec::new();
    for batch in group {
        if let Some(snapshot) = &batch.snapshot {
            let meta = snapshot.get_metadata();
            let conf = encode_conf_state(meta.get_conf_state());
            // A snapshot received into a file of its own is put in place, not written again;
            // its data is already a mapping of that file (peer/snapshot.rs).
            let (path, written) =
                st.snaps
                    .save_installed(meta.index, meta.term, &conf, &snapshot.data)?;
            st.wal.append_snapshot(meta.index, meta.term)?;
            installed = written.then_some((snapshot, path));
        }
        for entry in &batch.entries {
            scratch.clear();
            encode_entry_into(entry, &mut scratch);
            st.wal.append_entry(entry.index, entry.term, &scratch)?;
        }
        if let Some(hs) = &batch.hard_state {
            st.wal.append_hard_state(&encode_hard_state(hs))?;
        }
    }
    let fsync_started = std::time::Instant::now();
    st.wal.sync()?;
    let m = metrics();
    m.wal_fsync.observe(fsync_started.elapsed().as_secs_f64());
    m.backend_commit.observe(started.elapsed().as_secs_f64());
    Ok(installed.and_then(|(snapshot, path)| read_back(&st.snaps, snapshot, &path)))
}

/// The installed `snapshot`, its data read back mapped from its file at `path` (crc checked).
/// `None` if that fails: the node then keeps the received copy (the file is durable; a damaged
/// one is found and set aside at the next start).
fn read_back(snaps: &SnapDir, snapshot: &Snapshot, path: &std::path::Path) -> Option<Snapshot> {
    match snaps.read_data(path) {
        Ok(data) if data.len() == snapshot.data.len() => Some(Snapshot {
            data,
            metadata: snapshot.metadata.clone(),
            ..Default::default()
        }),
        Ok(data) => {
            tracing::warn!(
                path = %path.display(),
                read = data.len(),
                written = snapshot.data.len(),
                "an installed snapshot read back at another length; keeping it in memory"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read back an installed snapshot; keeping it in memory");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error as IoError, ErrorKind};
    use std::path::PathBuf;

    use super::*;

    fn wal_io(op: IoOp, source: IoError) -> DriverError {
        DriverError::Wal(WalError::Io {
            op,
            path: PathBuf::from("/wal/0.wal"),
            source,
        })
    }

    #[test]
    fn an_installed_snapshot_is_saved_then_read_back_from_its_file() {
        use keel_engine::raftpb::SnapshotMetadata;
        use keel_storage::wal::WalOptions;
        use keel_storage::SimDisk;

        let disk: Arc<dyn keel_storage::Disk> = Arc::new(SimDisk::new());
        let wal_dir = PathBuf::from("/m/wal");
        let (wal, _) = Wal::open(disk.clone(), &wal_dir, WalOptions::default()).expect("wal");
        let snaps = SnapDir::open(disk.clone(), &PathBuf::from("/m/snap"), 2).expect("snaps");
        let mut st = Storage { wal, snaps };
        let received = Snapshot {
            data: vec![7u8; 3000].into(),
            metadata: Some(SnapshotMetadata {
                index: 40,
                term: 3,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let batch = PersistBatch {
            number: 1,
            snapshot: Some(received.clone()),
            ..Default::default()
        };
        let held = write_group(&mut st, &[batch])
            .expect("written")
            .expect("read back");
        assert_eq!(held, received, "the same snapshot");
        assert_ne!(
            held.data.as_ptr(),
            received.data.as_ptr(),
            "not the received copy"
        );
        assert_eq!(st.snaps.list().expect("list"), vec![(3, 40)]);
        let plain = PersistBatch {
            number: 2,
            hard_state: Some(Default::default()),
            ..Default::default()
        };
        let none = write_group(&mut st, &[plain]).expect("written");
        assert_eq!(none, None, "no snapshot installed, none read back");
        let (_, recovered) = Wal::open(disk, &wal_dir, WalOptions::default()).expect("reopen");
        assert_eq!(
            recovered.snapshot.map(|m| (m.index, m.term)),
            Some((40, 3)),
            "the WAL's mark"
        );
    }

    /// A transport that drops everything (the writer's `then_send`).
    struct NoPeers;

    impl Outbound for NoPeers {
        fn send(&self, _messages: Vec<Message>) {}
        fn set_peers(&self, _peers: std::collections::BTreeMap<u64, String>) {}
    }

    /// Regression (keel-sim `--auth --nodes 3`, seeds 156 and 218): the reservation of the
    /// next segment failed on a full disk, and the writer retried it only once no job had come
    /// for a whole backoff. A member gets batches more often than that (commits, its own
    /// NOSPACE proposals), so it never found the room freed: it refused every write, the
    /// alarm disarm included, for good. Here batches come every 20 ms, well inside the
    /// backoff, and the writer must still report [`Done::SpaceAgain`] once room is back.
    #[test]
    fn room_freed_is_found_while_batches_keep_coming() {
        use keel_engine::raftpb::{Entry, HardState};
        use keel_storage::wal::WalOptions;
        use keel_storage::SimDisk;

        block_on(async {
            let sim = Arc::new(SimDisk::new());
            let disk: Arc<dyn keel_storage::Disk> = sim.clone();
            // (Simulation builds have one more field: the update is needed there.)
            #[allow(clippy::needless_update)]
            let opts = WalOptions {
                segment_bytes_max: 16 << 10,
                ..WalOptions::default()
            };
            let (wal, _) = Wal::open(disk.clone(), &PathBuf::from("/m/wal"), opts).expect("wal");
            let snaps = SnapDir::open(disk, &PathBuf::from("/m/snap"), 2).expect("snaps");
            // Unbounded, because the writer's job queue is (as in the driver); in practice this
            // test sends a few dozen batches.
            let (jobs, rx) = mpsc::unbounded_channel();
            let (durable, mut reports) = mpsc::channel(64);
            let bytes = super::super::disk_bytes::DiskBytes {
                wal: Default::default(),
                snaps: Default::default(),
            };
            let storage = Storage { wal, snaps };
            let writer = wal_writer(storage, rx, durable, bytes, Arc::new(NoPeers), Bugs::none());
            let writer = tokio::spawn(writer);
            sim.fill(); // the active segment is preallocated: appends still fit
            let mut number = 0;
            let mut send = |entries: Vec<Entry>, commit: u64| {
                number += 1;
                let hard_state = Some(HardState {
                    term: 1,
                    commit,
                    ..Default::default()
                });
                let batch = PersistBatch {
                    number,
                    hard_state,
                    entries,
                    ..Default::default()
                };
                jobs.send(Job::Persist(batch)).expect("writer alive");
            };
            // Past half the segment: the reservation of the next one is tried, and fails.
            let entries = (1..=10u64)
                .map(|index| Entry {
                    index,
                    term: 1,
                    data: vec![1u8; 1000].into(),
                    ..Default::default()
                })
                .collect();
            send(entries, 0);
            let mut heard = Vec::new();
            let (mut freed, mut found_at) = (false, 0);
            for tick in 1..=200u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if tick == 10 {
                    sim.set_capacity(None);
                    freed = true;
                }
                send(Vec::new(), tick);
                while let Ok(report) = reports.try_recv() {
                    match report.expect("no fatal error") {
                        Done::NoSpace => heard.push(("no space", freed)),
                        Done::SpaceAgain => heard.push(("space again", freed)),
                        _ => {}
                    }
                }
                if heard.last() == Some(&("space again", true)) {
                    found_at = tick;
                    break;
                }
            }
            // The retries come 100, 300, 700 ms after the failure: the one after the room
            // was freed (at 200 ms) finds it, long before the batches fill the segment.
            assert!(found_at <= 40, "room found only at tick {found_at}");
            assert_eq!(
                heard,
                vec![("no space", false), ("space again", true)],
                "the failed reservation is reported, then the room found once freed, though \
                 a batch came every 20 ms"
            );
            drop(jobs);
            writer.await.expect("the writer ends when its jobs do");
        });
    }

    /// Runs `f` to completion on the build's runtime (simulated time under madsim).
    #[cfg(madsim)]
    fn block_on(f: impl std::future::Future<Output = ()> + 'static) {
        madsim::runtime::Runtime::new().block_on(f);
    }

    #[cfg(not(madsim))]
    fn block_on(f: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(f);
    }

    #[test]
    fn only_a_write_that_found_no_space_is_waited_out() {
        let full = || IoError::from(ErrorKind::StorageFull);
        assert!(is_no_space(&wal_io(IoOp::Append, full())));
        assert!(is_no_space(&wal_io(IoOp::Open, full())));
        // ENOSPC from the raw OS error, and wrapped inside another I/O error.
        assert!(is_no_space(&wal_io(
            IoOp::Append,
            IoError::from_raw_os_error(28)
        )));
        assert!(is_no_space(&wal_io(IoOp::Append, IoError::other(full()))));
        let snap = DriverError::Snap(SnapError::Io {
            op: IoOp::Append,
            path: PathBuf::from("/snap/1-1.snap.tmp"),
            source: full(),
        });
        assert!(is_no_space(&snap));
        // A failed fsync stays fatal, whatever its error; so does any other error.
        assert!(!is_no_space(&wal_io(IoOp::Sync, full())));
        assert!(!is_no_space(&wal_io(IoOp::SyncDir, full())));
        assert!(!is_no_space(&wal_io(
            IoOp::Append,
            IoError::from_raw_os_error(5)
        )));
        assert!(!is_no_space(&DriverError::Wal(WalError::Poisoned)));
    }
}
