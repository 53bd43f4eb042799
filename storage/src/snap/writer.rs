//! Streaming a snapshot file: [`SnapWriter`] takes the data as it is produced and appends it
//! through a bounded buffer, computing the crc32 on the way.
//!
//! Example, 2.5 MiB of data: the header and the first 1 MiB go out in one append, the next
//! 1 MiB in another, the last 0.5 MiB and the crc32 at [`SnapWriter::finish`], then one
//! fsync. Memory held: one buffer, whatever the snapshot's size. Every [`WRITE_BACK_BYTES`]
//! the file is sent on to the disk ([`DiskFile::write_back`]), so the fsync at the end finds
//! little left to write.

use std::io;
use std::path::{Path, PathBuf};

use crate::disk::{DiskFile, IoOp};

use super::{io_err, SnapError};

/// Bytes a [`SnapWriter`] buffers before appending them to the file.
pub const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Bytes a [`SnapWriter`] appends between two [`DiskFile::write_back`]s: the file goes to the
/// disk in steps of this size as it is written, with at most two steps not yet written out,
/// rather than in one flush at the end that the WAL's fsyncs would queue behind. Small, since
/// a WAL fsync issued meanwhile waits behind what is queued: at ~240 MB/s (this machine's
/// disk) 1 MiB is ~4 ms, 16 MiB ~70 ms.
pub const WRITE_BACK_BYTES: u64 = 1024 * 1024;

/// A snapshot file being written under its temporary name ([`super::SnapDir::create`]).
/// Write exactly the announced number of data bytes, then [`SnapWriter::finish`].
pub struct SnapWriter {
    file: Box<dyn DiskFile>,
    tmp: PathBuf,
    path: PathBuf,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    data_len: u64,
    data_written: u64,
    /// The file's length at the last write-back.
    written_back: u64,
}

impl std::fmt::Debug for SnapWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapWriter")
            .field("tmp", &self.tmp)
            .field("data_len", &self.data_len)
            .field("data_written", &self.data_written)
            .finish()
    }
}

/// A snapshot file written and fsynced under its temporary name, for
/// [`super::SnapDir::publish`].
#[derive(Debug)]
pub struct Synced {
    tmp: PathBuf,
    path: PathBuf,
}

impl Synced {
    /// The temporary file, written and fsynced.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// (temporary path, final path).
    pub(super) fn into_paths(self) -> (PathBuf, PathBuf) {
        (self.tmp, self.path)
    }
}

/// A snapshot file in place under its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The file.
    pub path: PathBuf,
    /// The index of the snapshot a damaged newest one falls back to: the second newest kept
    /// after this save (`None` if only one is kept). The WAL before it is no longer needed.
    pub fallback_index: Option<u64>,
}

impl SnapWriter {
    pub(super) fn new(
        file: Box<dyn DiskFile>,
        tmp: PathBuf,
        path: PathBuf,
        header: Vec<u8>,
        data_len: u64,
    ) -> SnapWriter {
        let mut buf = Vec::with_capacity(WRITE_BUFFER_BYTES.max(header.len()));
        buf.extend_from_slice(&header);
        SnapWriter {
            file,
            tmp,
            path,
            buf,
            crc: crc32fast::Hasher::new(),
            data_len,
            data_written: 0,
            written_back: 0,
        }
    }

    /// The temporary file written to.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Bytes of the file so far, buffered ones included.
    pub fn len(&self) -> u64 {
        self.file.len() + self.buf.len() as u64
    }

    /// Whether nothing was written yet (never: the header is written at creation).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the buffered bytes to the file.
    fn drain(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.crc.update(&self.buf);
        self.file.append(&self.buf)?;
        self.buf.clear();
        if self.file.len() >= self.written_back + WRITE_BACK_BYTES {
            self.file.write_back()?;
            self.written_back = self.file.len();
        }
        Ok(())
    }

    /// Ends the file: checks that the announced number of data bytes was written, appends what
    /// is buffered and the crc32, and fsyncs.
    pub fn finish(mut self) -> Result<Synced, SnapError> {
        self.end()?;
        self.file.sync().map_err(io_err(IoOp::Sync, &self.tmp))?;
        Ok(Synced {
            tmp: self.tmp,
            path: self.path,
        })
    }

    /// Checks the data length, appends what is buffered and the crc32.
    fn end(&mut self) -> Result<(), SnapError> {
        if self.data_written != self.data_len {
            return Err(SnapError::DataLength {
                path: self.tmp.clone(),
                announced: self.data_len,
                written: self.data_written,
            });
        }
        self.drain().map_err(io_err(IoOp::Append, &self.tmp))?;
        let crc = self.crc.clone().finalize();
        self.file
            .append(&crc.to_le_bytes())
            .map_err(io_err(IoOp::Append, &self.tmp))
    }
}

impl io::Write for SnapWriter {
    /// Takes data bytes; more than announced is an error.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.data_len - self.data_written;
        if data.len() as u64 > room {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("snapshot data beyond the announced {} bytes", self.data_len),
            ));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let take = rest
                .len()
                .min(WRITE_BUFFER_BYTES.saturating_sub(self.buf.len()));
            if take == 0 {
                self.drain()?;
                continue;
            }
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() >= WRITE_BUFFER_BYTES {
                self.drain()?;
            }
        }
        self.data_written += data.len() as u64;
        Ok(data.len())
    }

    /// Appends the buffered bytes to the file (not durable until [`SnapWriter::finish`]).
    fn flush(&mut self) -> io::Result<()> {
        self.drain()
    }
}
