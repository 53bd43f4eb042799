//! A backup: the file `Maintenance.Snapshot` streams (what `etcdctl snapshot save` writes) and
//! `keelutl snapshot restore|status` reads. Not to be confused with the member's own snapshot
//! files (keel-storage's `SnapDir`): a backup carries the same state snapshot (the engine's
//! [`keel_engine::state_snapshot`], written by [`SnapshotJob::write_data`]), with a header
//! saying where it comes from and a sha256 trailer, as etcd's stream has.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! "KEELBKUP" | format u32 = 1 | header_len u32 | header | data_len u64 | data |
//! zero padding, so that the bytes so far are a multiple of 512 |
//! sha256 of everything before it (32 bytes)
//!
//! header = raft_index u64 | raft_term u64 | revision i64 | compact_revision i64 |
//!          key_count u64 | revision_count u64 | cluster_id u64 | member_id u64 |
//!          conf_state (raft's ConfState, protobuf; the rest of the header)
//! ```
//!
//! The padding is there for etcdctl: `etcdctl snapshot save` refuses a download whose length
//! is not a multiple of 512 plus the 32 bytes of the sha256 ("sha256 checksum not found"),
//! since bbolt files are page-sized. The sha256 is what etcd's server appends to its stream:
//! a truncated or damaged file fails it. Inside, the state snapshot and each of its sections
//! carry crc32s of their own (checked again on restore).
//!
//! Writing streams: [`Backup::write_body`] encodes the job (copy-on-write views of the store
//! and leases, see [`keel_engine::node::Node::backup_job`]) in bounded chunks, so neither the
//! server nor the encoding ever holds a second whole copy of the state.

pub mod read;

use std::io::{self, Write};

use keel_engine::node::{NodeStatus, SnapshotJob};
use keel_engine::raft_log::encode_conf_state;
use sha2::{Digest, Sha256};

/// The first bytes of every backup.
pub const MAGIC: &[u8; 8] = b"KEELBKUP";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// A backup's bytes before the sha256 are a multiple of this (see the module docs).
pub const ALIGN: u64 = 512;
/// The length of the sha256 trailer.
pub const SHA_BYTES: usize = 32;
/// The fixed part of the header: eight 8-byte fields.
const HEADER_FIXED_BYTES: usize = 8 * 8;

/// Where a backup comes from: what `keelutl snapshot status` prints and restore checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHeader {
    /// The raft index the state is as of (the member's applied index).
    pub raft_index: u64,
    /// The term of that entry.
    pub raft_term: u64,
    /// The store's revision.
    pub revision: i64,
    /// The store's compacted revision (-1: never compacted).
    pub compact_revision: i64,
    /// Keys with any stored history.
    pub key_count: u64,
    /// Stored revisions (versions and tombstones) over all keys.
    pub revision_count: u64,
    /// The cluster the backup was taken from.
    pub cluster_id: u64,
    /// The member that served it.
    pub member_id: u64,
    /// raft's `ConfState` at `raft_index`, encoded.
    pub conf_state: Vec<u8>,
}

impl BackupHeader {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_FIXED_BYTES + self.conf_state.len());
        for field in [
            self.raft_index,
            self.raft_term,
            self.revision as u64,
            self.compact_revision as u64,
            self.key_count,
            self.revision_count,
            self.cluster_id,
            self.member_id,
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        out.extend_from_slice(&self.conf_state);
        out
    }

    /// The header back from [`BackupHeader::encode`]'s bytes; `None` if too short.
    pub fn decode(bytes: &[u8]) -> Option<BackupHeader> {
        let (fixed, conf_state) = bytes.split_at_checked(HEADER_FIXED_BYTES)?;
        let mut fields = fixed
            .chunks_exact(8)
            .map(|c| c.try_into().map(u64::from_be_bytes));
        let mut next = || fields.next().and_then(Result::ok);
        Some(BackupHeader {
            raft_index: next()?,
            raft_term: next()?,
            revision: next()? as i64,
            compact_revision: next()? as i64,
            key_count: next()?,
            revision_count: next()?,
            cluster_id: next()?,
            member_id: next()?,
            conf_state: conf_state.to_vec(),
        })
    }
}

/// The bytes of a backup before its sha256, for a header of `header_len` bytes and data of
/// `data_len`: prefix, header, data, padding.
pub fn body_len(header_len: usize, data_len: u64) -> u64 {
    let unpadded = MAGIC.len() as u64 + 4 + 4 + header_len as u64 + 8 + data_len;
    unpadded.next_multiple_of(ALIGN)
}

/// A backup to write: a snapshot job and where it comes from.
#[derive(Debug)]
pub struct Backup {
    header: BackupHeader,
    job: SnapshotJob,
}

impl Backup {
    /// A backup of `job`, taken on the member whose status (at the same moment) is `status`.
    pub fn new(job: SnapshotJob, status: &NodeStatus) -> Backup {
        let metadata = job.metadata();
        let store = job.store();
        let header = BackupHeader {
            raft_index: metadata.index,
            raft_term: metadata.term,
            revision: store.current_revision(),
            compact_revision: store.compact_revision(),
            key_count: store.key_count() as u64,
            revision_count: store.stored_revision_count(),
            cluster_id: status.cluster_id,
            member_id: status.member_id,
            conf_state: encode_conf_state(metadata.get_conf_state()),
        };
        Backup { header, job }
    }

    /// Where the backup comes from.
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The bytes [`Backup::write_body`] writes: a walk over the store (O(keys) time, O(1)
    /// memory), once.
    pub fn body_len(&self) -> u64 {
        body_len(self.header.encode().len(), self.job.encoded_len())
    }

    /// Writes the backup up to its sha256 (exactly [`Backup::body_len`] bytes, in chunks of
    /// at most [`keel_engine::sink::CHUNK_BYTES`] apart from a single larger value) and
    /// returns the sha256 of them: the caller appends it.
    pub fn write_body(&self, out: &mut dyn Write) -> io::Result<[u8; SHA_BYTES]> {
        let mut w = HashingWriter {
            out,
            sha: Sha256::new(),
            written: 0,
        };
        let header = self.header.encode();
        let header_len = u32::try_from(header.len())
            .map_err(|_| io::Error::other("backup header over 4 GiB"))?;
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT.to_be_bytes())?;
        w.write_all(&header_len.to_be_bytes())?;
        w.write_all(&header)?;
        w.write_all(&self.job.encoded_len().to_be_bytes())?;
        self.job.write_data(&mut w)?;
        let padding = w.written.next_multiple_of(ALIGN) - w.written;
        w.write_all(&vec![0; padding as usize])?;
        w.flush()?;
        assert_eq!(
            w.written,
            self.body_len(),
            "a backup wrote other than its size"
        );
        Ok(w.sha.finalize().into())
    }
}

/// Passes bytes on, hashing and counting them.
struct HashingWriter<'a> {
    out: &'a mut dyn Write,
    sha: Sha256,
    written: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests;
