//! Write coalescing under h2 (the `grpc` feature, tokio build only): the frames h2 writes in
//! one scheduler round leave in one write.
//!
//! h2 writes and flushes each message's frames as soon as they are ready, so every response
//! (on keel's client port) or request (in keel-bench's load generator) became one `writev`
//! of its own, and over TLS one record of its own, even when many were ready at once.
//!
//! [`Coalesced`] takes h2's writes into a buffer and, when h2 flushes, first lets the other
//! tasks already waiting to run go ahead (it wakes itself and answers `Pending` once): what
//! they hand to the same connection joins the buffer, and the next flush writes it all. A
//! connection with nothing else to run is flushed one scheduler turn later; nothing is held
//! back by time. A full buffer ([`WRITE_BUFFER_BYTES_MAX`]) is written without waiting for a
//! flush, so large messages stream through. Reads pass straight through.
//!
//! Users: keel's client port (`server/src/client/listener.rs`, always on) and keel-bench's
//! connectors (`benches/src/coalesce.rs`, off with `--no-coalesce`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered at most before a write goes to the connection without waiting for a flush
/// (large messages stream through rather than pile up).
pub const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// An I/O stream whose writes are gathered until a flush, which is deferred by one scheduler
/// turn (see the module docs).
pub struct Coalesced<T> {
    inner: T,
    /// Written by h2, not yet sent; `buf[sent..]` is what is left.
    buf: Vec<u8>,
    sent: usize,
    /// Whether the current flush already let the other tasks run once.
    deferred: bool,
    /// Off: every write goes straight to the connection, as tonic's own connector does.
    enabled: bool,
}

impl<T> Coalesced<T> {
    /// Wraps a connection; `enabled: false` passes writes straight through.
    pub fn new(inner: T, enabled: bool) -> Self {
        Coalesced {
            inner,
            buf: Vec::new(),
            sent: 0,
            deferred: false,
            enabled,
        }
    }

    /// Bytes buffered and not yet sent.
    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Sends everything buffered.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room: a full buffer is sent before more is taken.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending() >= WRITE_BUFFER_BYTES_MAX {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.enabled {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        ready!(this.poll_room(cx))?;
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.enabled {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        ready!(this.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    /// Buffered writes take slices cheaply; passed through, they are as vectored as the
    /// connection.
    fn is_write_vectored(&self) -> bool {
        self.enabled || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending() > 0 && !this.deferred {
            // Let the tasks already waiting run first; what they write on this connection
            // joins the buffer. Waking ourselves puts this task behind them (tokio schedules
            // a task woken while it runs as a yield, not in the LIFO slot).
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_send(cx))?;
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_wait_for_the_flush_then_leave_together() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut c = Coalesced::new(client, true);
        c.write_all(b"one ").await.expect("buffered");
        c.write_all(b"two").await.expect("buffered");
        let mut seen = [0u8; 7];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            server.read_exact(&mut seen),
        )
        .await;
        assert!(early.is_err(), "nothing leaves before the flush");
        c.flush().await.expect("flushed");
        server.read_exact(&mut seen).await.expect("read");
        assert_eq!(&seen, b"one two", "both writes, in order");
    }

    #[tokio::test]
    async fn a_full_buffer_is_sent_without_a_flush_and_shutdown_sends_the_rest() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut c = Coalesced::new(client, true);
        let big = vec![7u8; WRITE_BUFFER_BYTES_MAX + 10];
        c.write_all(&big).await.expect("buffered");
        c.write_all(b"tail")
            .await
            .expect("the full buffer went out first");
        let mut first = vec![0u8; big.len()];
        server.read_exact(&mut first).await.expect("sent unflushed");
        assert_eq!(first, big, "the full buffer, unflushed");
        c.shutdown().await.expect("shut down");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"tail", "shutdown sends what is buffered");
    }

    #[tokio::test]
    async fn disabled_writes_go_straight_through() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut c = Coalesced::new(client, false);
        c.write_all(b"now").await.expect("written");
        let mut seen = [0u8; 3];
        server
            .read_exact(&mut seen)
            .await
            .expect("read without a flush");
        assert_eq!(&seen, b"now", "the write, unbuffered");
    }
}
