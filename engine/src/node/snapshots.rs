//! Snapshots of the state machine and compaction of the in-memory raft log.
//!
//! * **Making one.** Every `snapshot_count` applied entries the node encodes its state (store
//!   and leases, [`crate::snapshot`]) as of the applied index and emits
//!   [`Output::SaveSnapshot`]. Once the driver reports it durable ([`Input::SnapshotSaved`]) it
//!   becomes the snapshot raft sends to followers behind the log, and the in-memory log is
//!   compacted up to it, keeping `min(LOG_ENTRIES_KEPT_MAX, snapshot_count)` entries for
//!   followers only a little behind.
//! * **Installing one.** A follower too far behind gets the leader's snapshot in a `Ready`: the
//!   node replaces its store, leases and member table at once (the contents are committed), moves every
//!   watcher to catch up from the new store, and hands the snapshot to the driver in the
//!   [`PersistBatch`] to save before the WAL records its mark. Its own proposals still in
//!   flight may or may not be inside the snapshot; they are answered "request timed out"
//!   (an outcome the client must treat as unknown) rather than left hanging.
//! * **Restart.** The driver hands over the newest valid snapshot and the WAL; the node starts
//!   from the snapshot and replays the entries after it.

use raft::eraftpb::{Entry, Snapshot, SnapshotMetadata};
use raft::Storage as _;

use super::{Node, Output, PersistBatch, Recovered, StartError, LOG_ENTRIES_KEPT_MAX};
use crate::error::Error;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::raft_storage::RaftStorage;
use crate::snapshot::{self, StateSnapshotError, SECTION_LEASES, SECTION_MEMBERS, SECTION_MVCC};

/// Loads the recovered snapshot and log into raft's storage. Returns the snapshot the node
/// must restore its state from, if any.
pub(super) fn recover_log(
    storage: &mut RaftStorage,
    recovered: &Recovered,
) -> Result<Option<Snapshot>, StartError> {
    let snap_index = recovered
        .snapshot
        .as_ref()
        .map_or(0, |s| s.get_metadata().index);
    if let Some(snapshot) = &recovered.snapshot {
        storage.apply_snapshot(snapshot.clone())?;
    }
    let entries: Vec<Entry> = recovered
        .entries
        .iter()
        .filter(|e| e.index > snap_index)
        .cloned()
        .collect();
    if let Some(first) = entries.first() {
        if first.index != snap_index + 1 {
            return Err(StartError::Config(format!(
                "the WAL continues at entry {} but the newest valid snapshot ends at entry \
                 {snap_index}: entries in between are lost (was a newer snapshot removed?)",
                first.index
            )));
        }
    }
    storage.append(&entries)?;
    if let Some(mut hs) = recovered.hard_state.clone() {
        // A snapshot may be of entries applied before the hard state recording their commit
        // was written; they were committed all the same.
        hs.commit = hs.commit.max(snap_index);
        storage.set_hard_state(hs);
    }
    Ok(recovered.snapshot.clone())
}

impl Node {
    /// Entries the in-memory log keeps behind the applied index for slow followers.
    fn log_entries_kept(&self) -> u64 {
        LOG_ENTRIES_KEPT_MAX.min(self.cfg.snapshot_count)
    }

    /// Starts from a recovered snapshot (the log was loaded by [`recover_log`]).
    pub(super) fn restore_recovered(&mut self, snapshot: &Snapshot) -> Result<(), StartError> {
        self.restore_state(snapshot)
            .map_err(|e| StartError::Config(format!("the newest snapshot does not load: {e}")))?;
        let index = snapshot.get_metadata().index;
        self.applied_index = index;
        self.snapshot_index = index;
        Ok(())
    }

    /// Replaces the store and leases by a snapshot's.
    fn restore_state(&mut self, snapshot: &Snapshot) -> Result<(), StateSnapshotError> {
        let sections = snapshot::decode_known(&snapshot.data)?;
        let store = Store::decode_snapshot(sections[&SECTION_MVCC])?;
        let membership = Membership::decode(sections[&SECTION_MEMBERS])?;
        self.leases.restore_snapshot(sections[&SECTION_LEASES])?;
        if membership != self.membership {
            self.membership = membership;
            self.outputs
                .push(Output::Members(self.membership.members()));
        }
        let old_revision = self.store.current_revision();
        self.store = store;
        self.watches.desync_all(old_revision + 1);
        if let Some(stale) = &mut self.stale_reads {
            stale.copy = self.store.clone();
            stale.applied_since_refresh = 0;
        }
        let leading =
            self.raw.raft.state == raft::StateRole::Leader || self.lease_expiry_on_followers;
        if leading {
            let extend_ms = self.cfg.election_ticks as u64 * self.cfg.tick_ms;
            self.leases
                .set_leader(true, self.lease_stamp_ms(), extend_ms);
        }
        Ok(())
    }

    /// A snapshot from the leader replaced the log (see the module doc).
    pub(super) fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let index = snapshot.get_metadata().index;
        if let Err(e) = self.restore_state(snapshot) {
            let reason = format!("the leader's snapshot at index {index} does not load: {e}");
            tracing::error!("{reason}");
            self.outputs.push(Output::Fatal(reason));
            return;
        }
        tracing::info!(index, "installed the leader's snapshot");
        self.applied_index = index;
        self.snapshot_index = self.snapshot_index.max(index);
        self.snapshot_unacked = Some(index);
        for (_, token) in std::mem::take(&mut self.proposals) {
            self.reply(token, Err(Error::Timeout));
        }
    }

    /// Once an installed snapshot is durable, raft counts it as applied.
    pub(super) fn ack_installed_snapshot(&mut self) {
        let Some(index) = self.snapshot_unacked else {
            return;
        };
        let log = &self.raw.raft.raft_log;
        if log.persisted < index || log.committed < index {
            return;
        }
        self.snapshot_unacked = None;
        if log.applied < index {
            self.raw.advance_apply_to(index);
        }
    }

    /// Emits a snapshot when `snapshot_count` entries were applied since the last one, or when
    /// raft needs a newer one for a follower.
    pub(super) fn maybe_snapshot(&mut self) {
        if self.snapshot_saving.is_some() || self.applied_index <= self.snapshot_index {
            return;
        }
        let due = self.applied_index >= self.snapshot_index + self.cfg.snapshot_count;
        if !due && self.raw.store().take_wanted() == 0 {
            return;
        }
        let term = match self.raw.raft.raft_log.term(self.applied_index) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(index = self.applied_index, error = %e, "no term to snapshot at");
                return;
            }
        };
        let mut metadata = SnapshotMetadata {
            index: self.applied_index,
            term,
            ..Default::default()
        };
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        // The store is cloned (keys and values are shared, reference-counted bytes) rather than
        // encoded here: encoding copies every value and runs on the driver's blocking thread.
        let job = SnapshotJob {
            metadata,
            store: self.store.clone(),
            leases: self.leases.encode_snapshot(),
            members: self.membership.encode(),
        };
        self.snapshot_saving = Some(self.applied_index);
        self.outputs.push(Output::SaveSnapshot(job));
    }

    /// The driver saved the snapshot durably.
    pub(super) fn on_snapshot_saved(&mut self, snapshot: Snapshot) {
        self.snapshot_saving = None;
        let index = snapshot.get_metadata().index;
        self.snapshot_index = self.snapshot_index.max(index);
        self.raw.mut_store().set_snapshot(snapshot);
        self.compact_log();
    }

    /// Frees in-memory log entries well behind the applied index (the WAL keeps them until a
    /// snapshot covers them). With followers, never past the newest durable snapshot: a
    /// follower that needs a dropped entry is sent that snapshot instead.
    pub(super) fn compact_log(&mut self) {
        let kept = self.log_entries_kept();
        let first = match self.raw.store().first_index() {
            Ok(i) => i,
            Err(e) => panic!("in-memory raft log has no first index: {e}"),
        };
        let mut limit = self.applied_index.saturating_sub(kept);
        if self.raw.raft.prs().iter().count() > 1 {
            let held = self.raw.store().snapshot_held().get_metadata().index;
            limit = limit.min(held);
        }
        // Compact in steps of `kept` entries, not after every apply.
        if limit < first + kept {
            return;
        }
        if let Err(e) = self.raw.mut_store().compact(limit) {
            panic!("compacting the in-memory raft log to {limit}: {e}");
        }
    }

    /// The index of the newest snapshot made or installed (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }
}

/// A snapshot of the state machine as of one index, not yet encoded.
#[derive(Debug)]
pub struct SnapshotJob {
    metadata: SnapshotMetadata,
    store: Store,
    leases: Vec<u8>,
    members: Vec<u8>,
}

impl SnapshotJob {
    /// The raft index the snapshot covers up to.
    pub fn index(&self) -> u64 {
        self.metadata.index
    }

    /// Encodes the state ([`crate::snapshot`]) into a raft snapshot.
    pub fn into_snapshot(self) -> Snapshot {
        let mvcc = self.store.encode_snapshot();
        let data = snapshot::encode_sections(&[
            (SECTION_MVCC, &mvcc),
            (SECTION_LEASES, &self.leases),
            (SECTION_MEMBERS, &self.members),
        ]);
        Snapshot {
            data: data.into(),
            metadata: Some(self.metadata).into(),
            ..Default::default()
        }
    }
}

impl PersistBatch {
    /// The index of the snapshot this batch installs, if any.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.get_metadata().index)
    }
}
