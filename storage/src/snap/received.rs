//! Snapshots received from the leader, written to a file of their own as they arrive.
//!
//! A follower that is sent the leader's snapshot streams it straight to a temporary file in
//! the snapshot directory ([`SnapDir::create_received`]: `recv<n>-<name>.tmp`, a name of its
//! own per transfer, so two transfers of one snapshot never share a file), fsyncs it, and maps
//! its data ([`SnapDir::hold_received`]): the follower never holds the snapshot on its heap,
//! and the bytes raft hands the node are that mapping. When the node installs it, the WAL
//! writer puts that file in place ([`SnapDir::save_installed`]: rename, directory fsync)
//! instead of writing the snapshot a second time, then writes the WAL's snapshot mark.
//!
//! Crash safety is the save's: the file is fsynced before the node sees it, and published
//! under its final name before the WAL's mark points at it; a crash before that leaves only a
//! `.tmp`, which [`SnapDir::open`] removes (the follower is then sent the snapshot again).
//! Only the newest received file is kept for installing: receiving another removes the one
//! before (a mapping of it stays valid; the node would then install the newer file of the
//! same snapshot, or write the data it holds).

use std::path::PathBuf;

use bytes::Bytes;

use super::{file_name, header, io_err, SnapDir, SnapError, SnapWriter, Synced, TMP_SUFFIX};
use crate::disk::IoOp;

/// The received file kept for installing.
#[derive(Debug)]
pub(super) struct ReceivedFile {
    index: u64,
    term: u64,
    data_len: u64,
    synced: Synced,
}

/// The snapshot directory's received files: the newest, and a counter naming the next.
#[derive(Debug, Default)]
pub(super) struct Received {
    next: u64,
    newest: Option<ReceivedFile>,
}

impl SnapDir {
    /// Starts the file of a snapshot (`index`, `term`, `meta`, `data_len` data bytes) being
    /// received from the leader: write the data to the [`SnapWriter`] as it arrives, then
    /// [`SnapWriter::finish`] and [`SnapDir::hold_received`].
    pub fn create_received(
        &self,
        index: u64,
        term: u64,
        meta: &[u8],
        data_len: u64,
    ) -> Result<SnapWriter, SnapError> {
        let n = {
            let mut received = self.lock_received();
            received.next += 1;
            received.next
        };
        let name = file_name(term, index);
        let tmp = self.dir.join(format!("recv{n}-{name}.tmp"));
        debug_assert!(
            tmp.to_string_lossy().ends_with(TMP_SUFFIX),
            "removed at open"
        );
        let file = self
            .disk
            .open_append(&tmp)
            .map_err(io_err(IoOp::Open, &tmp))?;
        let head = header(index, term, meta, data_len);
        Ok(SnapWriter::new(
            file,
            tmp,
            self.dir.join(name),
            head,
            data_len,
        ))
    }

    /// Maps the data of a received file, written and fsynced ([`SnapDir::create_received`]),
    /// and keeps the file for [`SnapDir::save_installed`] (removing the one kept before).
    pub fn hold_received(
        &self,
        synced: Synced,
        index: u64,
        term: u64,
        data_len: u64,
    ) -> Result<Bytes, SnapError> {
        let tmp = synced.tmp_path().to_path_buf();
        let file = self
            .disk
            .read_shared(&tmp)
            .map_err(io_err(IoOp::Read, &tmp))?;
        let data_end = file.len().checked_sub(4);
        let data_start = data_end.and_then(|end| end.checked_sub(data_len as usize));
        let (Some(start), Some(end)) = (data_start, data_end) else {
            return Err(SnapError::DataLength {
                path: tmp,
                announced: data_len,
                written: file.len() as u64,
            });
        };
        let data = file.slice(start..end);
        let kept = ReceivedFile {
            index,
            term,
            data_len,
            synced,
        };
        let before = self.lock_received().newest.replace(kept);
        if let Some(old) = before {
            self.remove_received(old.synced.tmp_path().to_path_buf());
        }
        Ok(data)
    }

    /// Saves the leader's snapshot a follower installs: puts the received file of this
    /// snapshot in place if one is kept (same index, term and data length), else writes
    /// `data` ([`SnapDir::save`]). Returns the file's path and whether `data` was written
    /// here (`false`: the received file was published).
    pub fn save_installed(
        &self,
        index: u64,
        term: u64,
        meta: &[u8],
        data: &[u8],
    ) -> Result<(PathBuf, bool), SnapError> {
        let found = {
            let mut received = self.lock_received();
            match &received.newest {
                Some(f) if (f.index, f.term, f.data_len) == (index, term, data.len() as u64) => {
                    received.newest.take()
                }
                _ => None,
            }
        };
        match found {
            Some(file) => Ok((self.publish(file.synced)?.path, false)),
            None => Ok((self.save(index, term, meta, data)?, true)),
        }
    }

    /// Removes a received temporary file that will not be installed (a failed or replaced
    /// transfer). A failure is logged: the file goes when the directory is next opened.
    pub fn remove_received(&self, tmp: PathBuf) {
        match self.disk.remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %tmp.display(), error = %e, "could not remove a received snapshot's file");
            }
        }
    }

    fn lock_received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::SimDisk;

    fn received(snaps: &SnapDir, index: u64, data: &[u8]) -> Bytes {
        let mut w = snaps
            .create_received(index, 2, b"meta", data.len() as u64)
            .expect("create");
        w.write_all(data).expect("write");
        let synced = w.finish().expect("finish");
        snaps
            .hold_received(synced, index, 2, data.len() as u64)
            .expect("hold")
    }

    #[test]
    fn a_received_file_is_published_not_written_again() {
        let disk: Arc<dyn crate::Disk> = Arc::new(SimDisk::new());
        let dir = Path::new("/m/snap");
        let snaps = SnapDir::open(disk.clone(), dir, 2).expect("open");
        let data = vec![5u8; 70_000];
        let held = received(&snaps, 9, &data);
        assert_eq!(&held[..], &data[..], "the mapped data is what was received");
        assert_eq!(
            snaps.list().expect("list"),
            vec![],
            "not in place before the install"
        );
        let (path, written) = snaps
            .save_installed(9, 2, b"meta", &held)
            .expect("installed");
        assert!(!written, "the received file is put in place");
        assert_eq!(snaps.list().expect("list"), vec![(2, 9)]);
        let loaded = snaps.read_data(&path).expect("crc holds");
        assert_eq!(&loaded[..], &data[..], "the published file loads");
        let names = disk.list_dir(dir).expect("list");
        assert!(
            !names.iter().any(|n| n.ends_with(".tmp")),
            "no temp file left: {names:?}"
        );
    }

    #[test]
    fn only_the_newest_received_file_is_kept_and_others_are_written() {
        let disk: Arc<dyn crate::Disk> = Arc::new(SimDisk::new());
        let dir = Path::new("/m/snap");
        let snaps = SnapDir::open(disk.clone(), dir, 2).expect("open");
        let first = received(&snaps, 9, &[1u8; 100]);
        let _second = received(&snaps, 12, &[2u8; 100]);
        let tmps = disk.list_dir(dir).expect("list");
        assert_eq!(
            tmps.len(),
            1,
            "the older received file is removed: {tmps:?}"
        );
        let (_, written) = snaps.save_installed(9, 2, b"meta", &first).expect("saved");
        assert!(
            written,
            "no received file of index 9 is kept: the data is written"
        );
        assert_eq!(
            &snaps.read_data(&dir.join(file_name(2, 9))).expect("read")[..],
            &[1u8; 100]
        );
        drop(snaps);
        let snaps = SnapDir::open(disk.clone(), dir, 2).expect("reopen");
        let left = disk.list_dir(dir).expect("list");
        assert!(
            !left.iter().any(|n| n.ends_with(".tmp")),
            "removed at open: {left:?}"
        );
        assert_eq!(snaps.list().expect("list"), vec![(2, 9)]);
    }
}
