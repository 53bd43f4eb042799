//! Write coalescing for the load generator's connections, the same as keel's client port
//! (`server/src/client/coalesce.rs`, which has the tests; this is a copy, so the benchmark
//! does not depend on the server): h2 writes go to a buffer, and a flush first lets the other
//! ready tasks run once, so the requests they send on the same connection leave in the same
//! write. Without it the h2 client wrote each request's HEADERS and DATA in two `writev`s
//! (2.0 per put at 100 clients on 10 connections), costing the load generator, which shares
//! the cores with the server it measures, CPU that neither keel nor etcd should be charged.
//! `--no-coalesce` turns it off. It changes nothing either server sees but how the bytes of
//! requests are grouped into TCP writes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered at most before a write goes to the connection without waiting for a flush
/// (large responses stream through rather than pile up).
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
    /// Off (`--no-coalesce`): every write goes straight to the connection, as tonic's own
    /// connector does.
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

    fn is_write_vectored(&self) -> bool {
        !self.enabled || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending() > 0 && !this.deferred {
            // Let the tasks already waiting run first; what they answer on this connection
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

/// Dials one `http://` endpoint: TCP with `TCP_NODELAY` (as tonic's own connector), writes
/// coalesced unless `--no-coalesce`.
#[derive(Clone)]
pub struct PlainConnector {
    pub coalesce: bool,
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = io::Result<hyper_util::rt::TokioIo<Coalesced<tokio::net::TcpStream>>>,
            > + Send,
    >,
>;

impl tower_service::Service<tonic::transport::Uri> for PlainConnector {
    type Response = hyper_util::rt::TokioIo<Coalesced<tokio::net::TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::transport::Uri) -> Connecting {
        let coalesce = self.coalesce;
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(2379);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(Coalesced::new(tcp, coalesce)))
        })
    }
}
