//! State snapshots (the encoded state-machine image of [`crate::state_snapshot`]) and compaction
//! of the in-memory raft log.
//!
//! Four things are easily called "snapshot"; here they are kept apart:
//! * the **state snapshot**: the encoded image of the state machine, four sections (MVCC
//!   store, leases, member table, alarms; [`crate::state_snapshot`]), carried as the data of raft's
//!   `Snapshot` message;
//! * the **snapshot job** ([`SnapshotJob`]): the not yet encoded parts of a state snapshot,
//!   handed to the driver, whose snapshot saver streams it to a file off the loop;
//! * the **MVCC section** ([`crate::mvcc::section`]): the store's part of a state snapshot;
//! * the **snapshot files**: keel-storage's `SnapDir`, where the driver keeps state snapshots.
//!
//! What happens to them:
//! * **Making one.** Every `snapshot_count` applied entries the node takes a snapshot job
//!   (store, leases and member table) as of the applied index and emits
//!   [`Output::SaveSnapshot`]. The driver's snapshot saver streams it to its file
//!   ([`SnapshotJob::encoded_len`], [`SnapshotJob::write_data`]) on a thread of its own. Once
//!   the driver reports it durable ([`Input::SnapshotSaved`]) it becomes the snapshot raft
//!   sends to followers behind the log, and the in-memory log is compacted up to it, keeping
//!   `min(LOG_ENTRIES_KEPT_MAX, snapshot_count)` entries for followers only a little behind;
//!   the driver then releases the WAL before the previous snapshot (never earlier: a WAL
//!   released before its snapshot is durable is the simulator's `release-wal-early` bug).
//! * **A failed save** is not fatal (the WAL holds everything). The driver retries after a
//!   backoff of its own and then reports [`Input::SnapshotFailed`]; the node forgets the job
//!   and makes a fresh one, as of its applied index then, as soon as one is due. No time
//!   enters the node: it reacts to the report, whenever it comes.
//! * **Bounding the log.** Snapshots of a big store are rare, so the log since the last one
//!   can be large; the applied part of the in-memory log is also bounded by bytes
//!   (`NodeConfig::raft_log_bytes_max`). Past the bound the oldest entries are freed even if
//!   no snapshot covers them yet (the WAL still holds them): a follower that needs one asks
//!   raft for a snapshot, the held one is too old (`RaftStorage::snapshot` answers
//!   "temporarily unavailable" and remembers the request), the node makes a new one at once,
//!   and raft sends it on its next try, once it is durable. While that follower catches up,
//!   the entries after its snapshot stay in memory whatever the bound.
//! * **Installing one.** A follower too far behind gets the leader's snapshot in a `Ready`: the
//!   node replaces its store, leases and member table at once (the contents are committed),
//!   moves every watcher to catch up from the new store, and hands the snapshot to the driver
//!   in the [`PersistBatch`] to save before the WAL records its mark. Once that is durable the
//!   driver reads the file back ([`Input::InstalledSnapshotSaved`]) and the node holds and
//!   serves that copy (on a real disk a mapping) instead of the received one. Its own
//!   proposals still in flight may or may not be inside the snapshot; they are answered
//!   "request timed out" (an outcome the client must treat as unknown) rather than left
//!   hanging.
//! * **Restart.** The driver hands over the newest valid snapshot and the WAL; the node starts
//!   from the snapshot and replays the entries after it.
//!
//! [`Output::SaveSnapshot`]: super::Output::SaveSnapshot
//! [`Input::SnapshotSaved`]: super::Input::SnapshotSaved
//! [`Input::SnapshotFailed`]: super::Input::SnapshotFailed
//! [`Input::InstalledSnapshotSaved`]: super::Input::InstalledSnapshotSaved
//! [`PersistBatch`]: super::PersistBatch

use std::sync::OnceLock;

use raft::eraftpb::{Snapshot, SnapshotMetadata};

use super::raft_core::{Compaction, RaftCore};
use super::state_machine::{SnapshotParts, StateMachine};
use crate::lease::LeaseSection;
use crate::mvcc::Store;
use crate::sink::{CrcWriter, Sink};
use crate::state_snapshot::{
    self, SECTION_ALARMS, SECTION_AUTH, SECTION_LEASES, SECTION_MEMBERS, SECTION_MVCC, SECTION_V2,
};

/// Raft log entries kept in memory behind the applied index, for slow followers (etcd's
/// `SnapshotCatchUpEntries`); a follower further behind gets a snapshot.
pub const LOG_ENTRIES_KEPT_MAX: u64 = 5_000;
/// The bytes of applied entries the in-memory raft log holds at most, by default
/// (`--max-raft-log-bytes`): with a big store snapshots are rare (see
/// [`SNAPSHOT_LOG_PERCENT_DEFAULT`]), and the log since the last one would otherwise stay in
/// memory for followers that may never need it.
pub const RAFT_LOG_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Applied entries between two state snapshots, by default (etcd 3.6's `--snapshot-count`).
pub const SNAPSHOT_COUNT_DEFAULT: u64 = 10_000;
/// By default a state snapshot waits until the log applied since the last one is as large as
/// that snapshot (100 %), so writing snapshots costs at most about one byte per byte written
/// to the log, whatever the store's size (Redis sizes its AOF rewrites the same way).
pub const SNAPSHOT_LOG_PERCENT_DEFAULT: u64 = 100;

/// Which state snapshots exist, are being saved, or wait to be acknowledged to raft.
#[derive(Debug)]
pub(super) struct Snapshots {
    /// Applied entries between two state snapshots, at least.
    count: u64,
    /// The bytes of applied entries the in-memory log may hold (`None`: no bound).
    log_bytes_max: Option<u64>,
    /// The log applied since the last snapshot must reach this percentage of that snapshot's
    /// size before the next one (0: `count` alone decides).
    log_percent: u64,
    /// Bytes of log entries applied since the newest snapshot.
    log_bytes_since: u64,
    /// The size of the newest state snapshot made, recovered or installed (0: none).
    snapshot_bytes: u64,
    /// The index of the newest snapshot made or installed (0: none).
    index: u64,
    /// The index of the snapshot being saved, if one is.
    saving: Option<u64>,
    /// An installed snapshot's index raft must count as applied once it is durable.
    unacked: Option<u64>,
    /// A defragmentation asked for a snapshot as of at least this applied index.
    forced: Option<u64>,
}

impl Snapshots {
    /// No snapshot yet; one is made after at least `count` applied entries, once the log
    /// applied since the last snapshot reaches `log_percent` % of its size.
    /// The in-memory log holds at most `log_bytes_max` bytes of applied entries.
    pub(super) fn new(count: u64, log_percent: u64, log_bytes_max: Option<u64>) -> Snapshots {
        assert!(count > 0, "snapshot count must be positive");
        Snapshots {
            count,
            log_bytes_max,
            log_percent,
            log_bytes_since: 0,
            snapshot_bytes: 0,
            index: 0,
            saving: None,
            unacked: None,
            forced: None,
        }
    }

    /// A defragmentation: the next snapshot is made as soon as none is being saved, as of the
    /// applied index then (at least `applied`), whatever the thresholds say. Nothing is made
    /// when the newest snapshot is already at `applied`.
    pub(super) fn force(&mut self, applied: u64) {
        if applied > self.index {
            self.forced = Some(self.forced.map_or(applied, |f| f.max(applied)));
        }
    }

    /// Whether a defragmentation asked at `applied` is done: a snapshot at or after it is
    /// durable (saved by this node, recovered, or installed and acknowledged).
    pub(super) fn covers(&self, applied: u64) -> bool {
        self.forced.is_none()
            && self.saving.is_none()
            && self.unacked.is_none()
            && self.index >= applied
    }

    /// The index of the newest snapshot made or installed (0: none).
    pub(super) fn index(&self) -> u64 {
        self.index
    }

    fn advance(&mut self, index: u64) {
        self.index = self.index.max(index);
    }

    /// The node started from a recovered snapshot.
    pub(super) fn recovered(&mut self, snapshot: &Snapshot) {
        assert!(self.index == 0, "recovered a snapshot after starting");
        self.index = snapshot.get_metadata().index;
        self.sized(snapshot);
    }

    /// The node installed the leader's snapshot; raft must count it applied once durable
    /// ([`Snapshots::ack_installed`]).
    pub(super) fn installed(&mut self, snapshot: &Snapshot) {
        let index = snapshot.get_metadata().index;
        self.advance(index);
        self.unacked = Some(index);
        self.sized(snapshot);
    }

    /// `snapshot` is now the newest: the log applied since it starts from nothing.
    fn sized(&mut self, snapshot: &Snapshot) {
        self.snapshot_bytes = snapshot.data.len() as u64;
        self.log_bytes_since = 0;
    }

    /// Entries were applied: their bytes count towards the next snapshot.
    pub(super) fn note_applied(&mut self, entries: &[raft::eraftpb::Entry]) {
        let bytes: u64 = entries.iter().map(|e| e.data.len() as u64).sum();
        self.log_bytes_since = self.log_bytes_since.saturating_add(bytes);
    }

    /// Whether enough log was applied since the newest snapshot to make another: at least
    /// `count` entries, and log bytes of at least `log_percent` % of the newest snapshot.
    ///
    /// Example, count 10 000 and 100 %: a store whose snapshot is 300 MB gets its next one
    /// after 300 MB more of log (a million 300-byte puts), not after 10 000 entries (3 MB), so
    /// 30 GB of snapshot writes for those puts become 300 MB. An empty store's first
    /// snapshot still waits for 10 000 entries.
    fn due(&self, applied: u64) -> bool {
        if applied < self.index.saturating_add(self.count) {
            return false;
        }
        let wanted = u128::from(self.snapshot_bytes) * u128::from(self.log_percent) / 100;
        u128::from(self.log_bytes_since) >= wanted
    }

    /// Once an installed snapshot is durable, raft counts it as applied.
    pub(super) fn ack_installed(&mut self, core: &mut RaftCore) {
        let Some(index) = self.unacked else {
            return;
        };
        if core.ack_installed_snapshot(index) {
            self.unacked = None;
        }
    }

    /// A snapshot job when `count` entries were applied since the last snapshot, or when
    /// raft needs a newer one for a follower.
    pub(super) fn maybe_make(&mut self, sm: &StateMachine, core: &RaftCore) -> Option<SnapshotJob> {
        let applied = sm.applied_index();
        if self.forced.is_some_and(|f| f <= self.index) {
            self.forced = None; // a snapshot installed since covers it
        }
        if self.saving.is_some() || applied <= self.index {
            return None;
        }
        let forced = self.forced.is_some();
        if !self.due(applied) && !core.take_snapshot_wanted() && !forced {
            return None;
        }
        let metadata = core.snapshot_metadata(applied)?;
        let parts = sm.snapshot_parts();
        self.saving = Some(applied);
        if self.forced.is_some_and(|f| f <= applied) {
            self.forced = None;
        }
        Some(SnapshotJob::new(metadata, parts))
    }

    /// The driver saved the snapshot durably: raft serves it to followers from now on.
    pub(super) fn on_saved(&mut self, snapshot: Snapshot, core: &mut RaftCore, applied: u64) {
        self.saving = None;
        self.advance(snapshot.get_metadata().index);
        self.snapshot_bytes = snapshot.data.len() as u64;
        // Entries applied while it was saved count towards the next one; those it covers no
        // longer do. The job's bytes are not known per entry, so the whole count restarts:
        // the next snapshot comes at most one save's worth of entries later than exact.
        self.log_bytes_since = 0;
        core.set_snapshot(snapshot);
        self.compact_log(core, applied);
    }

    /// The driver could not save the snapshot: the next one may be made (a fresh job, as of
    /// the applied index then); until one is saved, the WAL keeps the log.
    pub(super) fn on_failed(&mut self) {
        assert!(
            self.saving.take().is_some(),
            "a snapshot save failed, but none was being saved"
        );
    }

    /// Frees in-memory log entries well behind the applied index (the WAL keeps them until a
    /// snapshot covers them). By entries: `min(LOG_ENTRIES_KEPT_MAX, snapshot_count)` stay,
    /// older ones go in steps of that many and, with followers, never past the newest durable
    /// snapshot (a follower that needs a dropped entry is sent that snapshot instead). By
    /// bytes: the applied entries never hold more than `log_bytes_max` for long, even when
    /// that means going past the durable snapshot; a follower that then needs a dropped
    /// entry gets a new snapshot, made for it (see `RaftCore::compact_log`).
    pub(super) fn compact_log(&self, core: &mut RaftCore, applied: u64) {
        let rule = Compaction {
            kept: LOG_ENTRIES_KEPT_MAX.min(self.count),
            bytes_max: self.log_bytes_max,
            saving: self.saving,
        };
        core.compact_log(applied, rule);
    }

    /// What must always hold.
    pub(super) fn check(&self) {
        if let Some(unacked) = self.unacked {
            assert!(
                unacked <= self.index,
                "installed snapshot {unacked} is newer than the newest known {}",
                self.index
            );
        }
    }
}

/// A snapshot job: the parts of a state snapshot as of one index, not yet encoded.
///
/// Taking one is O(1) on the driver loop (the store and the leases are copy-on-write
/// views, [`Store::view`] and [`crate::lease::Leases::section`]; the member table is small); encoding it is left to whoever saves it, on its own thread:
/// [`SnapshotJob::encoded_len`] sizes it and [`SnapshotJob::write_data`] streams it in
/// bounded chunks, never holding the whole encoding. It is `Send + 'static`.
#[derive(Debug)]
pub struct SnapshotJob {
    metadata: SnapshotMetadata,
    store: Store,
    leases: LeaseSection,
    members: Vec<u8>,
    alarms: Vec<u8>,
    auth: Vec<u8>,
    v2: Vec<u8>,
    /// The lengths of the MVCC and lease sections, once a size walk found them.
    lens: OnceLock<(u64, u64)>,
}

impl PartialEq for SnapshotJob {
    /// Two jobs are equal when they would encode alike (for exact-output tests; this encodes
    /// both stores).
    fn eq(&self, other: &Self) -> bool {
        self.metadata == other.metadata
            && self.leases.encode() == other.leases.encode()
            && self.members == other.members
            && self.alarms == other.alarms
            && self.auth == other.auth
            && self.v2 == other.v2
            && self.store.encode_section() == other.store.encode_section()
    }
}

impl SnapshotJob {
    /// A job for these parts: views of the store and the leases, the encoded member table.
    pub(super) fn new(metadata: SnapshotMetadata, parts: SnapshotParts) -> SnapshotJob {
        SnapshotJob {
            metadata,
            store: parts.store,
            leases: parts.leases,
            members: parts.members,
            alarms: parts.alarms,
            auth: parts.auth,
            v2: parts.v2,
            lens: OnceLock::new(),
        }
    }

    /// The raft index the snapshot covers up to.
    pub fn index(&self) -> u64 {
        self.metadata.index
    }

    /// The raft metadata of the snapshot (index, term, configuration).
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.metadata
    }

    /// The view of the MVCC store the job encodes (its revisions and counts, for a backup's
    /// header).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The MVCC and lease sections' lengths (one walk over each, the first time).
    fn lens(&self) -> (u64, u64) {
        *self
            .lens
            .get_or_init(|| (self.store.section_len(), self.leases.encoded_len()))
    }

    /// How many bytes [`SnapshotJob::write_data`] writes: a walk over the store that stores
    /// nothing (O(keys) time, O(1) memory), done once per job.
    pub fn encoded_len(&self) -> u64 {
        let (mvcc, leases) = self.lens();
        state_snapshot::encoded_len(&[
            mvcc,
            leases,
            self.members.len() as u64,
            self.alarms.len() as u64,
            self.auth.len() as u64,
            self.v2.len() as u64,
        ])
    }

    /// Writes the state snapshot (the `data` of the raft snapshot, byte for byte what
    /// [`SnapshotJob::into_snapshot`] holds) to `out`, in order, in chunks of at most
    /// [`crate::sink::CHUNK_BYTES`] (a single larger value goes through whole), so a saver can
    /// stream it to a file without a whole encoded copy in memory. It writes exactly
    /// [`SnapshotJob::encoded_len`] bytes and flushes `out` at the end; syncing is the
    /// caller's.
    pub fn write_data(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let (mvcc, leases) = self.lens();
        let mut w = CrcWriter::new(out);
        state_snapshot::put_head(&mut w, 6)?;
        state_snapshot::put_section_head(&mut w, SECTION_MVCC, mvcc)?;
        self.store.write_section(&mut w)?;
        state_snapshot::put_section_head(&mut w, SECTION_LEASES, leases)?;
        self.leases.write(&mut w)?;
        state_snapshot::put_section_head(&mut w, SECTION_MEMBERS, self.members.len() as u64)?;
        w.put(&self.members)?;
        state_snapshot::put_section_head(&mut w, SECTION_ALARMS, self.alarms.len() as u64)?;
        w.put(&self.alarms)?;
        state_snapshot::put_section_head(&mut w, SECTION_AUTH, self.auth.len() as u64)?;
        w.put(&self.auth)?;
        state_snapshot::put_section_head(&mut w, SECTION_V2, self.v2.len() as u64)?;
        w.put(&self.v2)?;
        let written = w.finish()?;
        assert_eq!(
            written,
            self.encoded_len(),
            "a state snapshot wrote other than its size"
        );
        Ok(())
    }

    /// The state snapshot encoded whole, the old way (the reference the streaming encoder
    /// is tested against).
    #[cfg(test)]
    pub(super) fn encode_whole(&self) -> Vec<u8> {
        let mvcc = self.store.encode_section();
        let leases = self.leases.encode();
        state_snapshot::encode_sections(&[
            (SECTION_MVCC, &mvcc),
            (SECTION_LEASES, &leases),
            (SECTION_MEMBERS, &self.members),
            (SECTION_ALARMS, &self.alarms),
            (SECTION_AUTH, &self.auth),
            (SECTION_V2, &self.v2),
        ])
    }

    /// Encodes the state snapshot ([`crate::state_snapshot`]) into a raft snapshot, in memory
    /// (a saver streams it with [`SnapshotJob::write_data`] instead).
    pub fn into_snapshot(self) -> Snapshot {
        let len = usize::try_from(self.encoded_len())
            .unwrap_or_else(|_| panic!("a state snapshot larger than memory"));
        let mut data = Vec::with_capacity(len);
        if let Err(e) = self.write_data(&mut data) {
            unreachable!("writing to memory failed: {e}");
        }
        Snapshot {
            data: data.into(),
            metadata: Some(self.metadata).into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests;
