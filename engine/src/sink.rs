//! Where encoders put their bytes: one encoding routine serves a whole buffer (a `Vec<u8>`),
//! a size walk that stores nothing ([`Counter`]) and a bounded streaming writer with running
//! crc32s ([`CrcWriter`]), so the three cannot disagree on a single byte.
//!
//! ```
//! use keel_engine::sink::{Counter, CrcWriter, Sink};
//! let mut counter = Counter::default();
//! let Ok(()) = counter.put(b"abc");
//! assert_eq!(counter.0, 3);
//! let mut out = Vec::new();
//! let mut writer = CrcWriter::new(&mut out);
//! writer.begin_inner().unwrap();
//! writer.put(b"inner").unwrap();
//! let inner = writer.end_inner().unwrap();
//! writer.put(&inner.to_be_bytes()).unwrap();
//! writer.finish().unwrap();
//! let mut expected = b"inner".to_vec();
//! expected.extend_from_slice(&crc32fast::hash(b"inner").to_be_bytes());
//! let outer = crc32fast::hash(&expected);
//! expected.extend_from_slice(&outer.to_be_bytes());
//! assert_eq!(out, expected);
//! ```

use std::convert::Infallible;
use std::io;

/// Bytes a [`CrcWriter`] buffers before handing them to its writer.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Takes encoded bytes in order.
pub trait Sink {
    /// What can go wrong putting bytes.
    type Error;
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

impl Sink for Vec<u8> {
    type Error = Infallible;
    fn put(&mut self, bytes: &[u8]) -> Result<(), Infallible> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// Counts the bytes put, keeping none of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter(pub u64);

impl Sink for Counter {
    type Error = Infallible;
    fn put(&mut self, bytes: &[u8]) -> Result<(), Infallible> {
        self.0 += bytes.len() as u64;
        Ok(())
    }
}

/// Streams to a writer in chunks of at most [`CHUNK_BYTES`] (larger single puts go straight
/// through), keeping a crc32 of everything written and, between
/// [`CrcWriter::begin_inner`] and [`CrcWriter::end_inner`], one of a nested part.
pub struct CrcWriter<'w> {
    out: &'w mut dyn io::Write,
    buf: Vec<u8>,
    outer: crc32fast::Hasher,
    inner: Option<crc32fast::Hasher>,
    written: u64,
}

impl std::fmt::Debug for CrcWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrcWriter")
            .field("buffered", &self.buf.len())
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<'w> CrcWriter<'w> {
    /// A writer to `out`, nothing written yet.
    pub fn new(out: &'w mut dyn io::Write) -> CrcWriter<'w> {
        CrcWriter {
            out,
            buf: Vec::with_capacity(CHUNK_BYTES),
            outer: crc32fast::Hasher::new(),
            inner: None,
            written: 0,
        }
    }

    /// Hashes and writes `bytes` through.
    fn pass(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.outer.update(bytes);
        if let Some(inner) = &mut self.inner {
            inner.update(bytes);
        }
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Hashes and writes what is buffered.
    fn flush_buf(&mut self) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let passed = self.pass(&buf);
        self.buf = buf;
        self.buf.clear();
        passed
    }

    /// Starts the crc32 of a nested part (a section with its own checksum).
    pub fn begin_inner(&mut self) -> io::Result<()> {
        assert!(self.inner.is_none(), "nested parts do not nest further");
        self.flush_buf()?;
        self.inner = Some(crc32fast::Hasher::new());
        Ok(())
    }

    /// Ends the nested part and returns its crc32.
    pub fn end_inner(&mut self) -> io::Result<u32> {
        self.flush_buf()?;
        let inner = self.inner.take();
        Ok(inner.map_or_else(|| crc32fast::Hasher::new().finalize(), |h| h.finalize()))
    }

    /// Writes the crc32 of everything written (big-endian), flushes, and returns how many
    /// bytes went out, the crc included.
    pub fn finish(mut self) -> io::Result<u64> {
        assert!(self.inner.is_none(), "a nested part was left open");
        self.flush_buf()?;
        let crc = self.outer.clone().finalize();
        self.pass(&crc.to_be_bytes())?;
        self.out.flush()?;
        Ok(self.written)
    }
}

impl Sink for CrcWriter<'_> {
    type Error = io::Error;
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buf.len() + bytes.len() > CHUNK_BYTES {
            self.flush_buf()?;
        }
        if bytes.len() >= CHUNK_BYTES {
            return self.pass(bytes);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}
