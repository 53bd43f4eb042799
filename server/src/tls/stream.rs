//! An accepted connection, plain or TLS, as the servers see it: its bytes (with any bytes
//! already read to tell its protocol put back in front), and what is known of the other end
//! ([`ConnInfo`], which tonic puts into every request's extensions).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// What is known of a connection's other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Its address.
    pub remote: SocketAddr,
    /// The CommonName of the client certificate it presented, when the handshake verified
    /// it and `--client-cert-auth` makes it a login ([`super::reload::ServerTls::common_name_login`]).
    pub common_name: Option<String>,
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection.
pub struct ConnIo {
    inner: Inner,
    /// Bytes read ahead (to tell the protocol) and not yet handed on, from `replay_pos`.
    replay: Vec<u8>,
    replay_pos: usize,
    info: ConnInfo,
}

impl ConnIo {
    /// A plain TCP connection.
    pub fn plain(stream: TcpStream, remote: SocketAddr) -> Self {
        ConnIo {
            inner: Inner::Plain(stream),
            replay: Vec::new(),
            replay_pos: 0,
            info: ConnInfo {
                remote,
                common_name: None,
            },
        }
    }

    /// A connection whose TLS handshake is done.
    pub fn tls(stream: TlsStream<TcpStream>, info: ConnInfo) -> Self {
        ConnIo {
            inner: Inner::Tls(Box::new(stream)),
            replay: Vec::new(),
            replay_pos: 0,
            info,
        }
    }

    /// The ALPN protocol the TLS handshake agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Plain(_) => None,
            Inner::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    /// Puts `bytes`, read from this connection, back in front of what it reads next.
    pub fn unread(&mut self, bytes: &[u8]) {
        self.replay.drain(..self.replay_pos);
        self.replay_pos = 0;
        self.replay.splice(0..0, bytes.iter().copied());
    }

    /// The plain stream, when this is one (to peek at).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.inner {
            Inner::Plain(s) => Some(s),
            Inner::Tls(_) => None,
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replay_pos < this.replay.len() {
            let rest = &this.replay[this.replay_pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replay_pos += n;
            if this.replay_pos == this.replay.len() {
                this.replay = Vec::new();
                this.replay_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Plain(s) => s.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for ConnIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Completes the TLS handshake of an accepted connection with `tls`'s current
/// configuration; the verified client certificate's CommonName is kept when `tls` makes it a
/// login.
pub async fn accept(
    tls: &super::reload::ServerTls,
    stream: TcpStream,
    remote: SocketAddr,
) -> io::Result<ConnIo> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.current());
    let stream = acceptor.accept(stream).await?;
    let common_name = if tls.common_name_login {
        let certs = stream.get_ref().1.peer_certificates();
        certs
            .and_then(|c| c.first())
            .and_then(super::verify::common_name)
    } else {
        None
    };
    Ok(ConnIo::tls(
        stream,
        ConnInfo {
            remote,
            common_name,
        },
    ))
}

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for their server, at most.
const INCOMING_BACKLOG: usize = 1024;
/// After a failed accept (e.g. out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Completes a connection's TLS handshake, if its listener has TLS (plain otherwise). None
/// when it failed, logged as etcd logs a rejected connection.
pub async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<&super::reload::ServerTls>,
) -> Option<ConnIo> {
    let Some(tls) = tls else {
        return Some(ConnIo::plain(stream, remote));
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tls, stream, remote)).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::warn!(remote_addr = %remote, error = %e, "rejected connection (TLS handshake)");
            None
        }
        Err(_) => {
            tracing::debug!(remote_addr = %remote, "TLS handshake timed out");
            None
        }
    }
}

/// The connections `listener` accepts, each handed on only after its TLS handshake
/// succeeded (run on a task of its own, so a slow client holds up no other): a client whose
/// certificate the configuration refuses never reaches the server behind.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<super::reload::ServerTls>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<ConnIo>> {
    let (tx, rx) = mpsc::channel(INCOMING_BACKLOG);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = stream.set_nodelay(true);
            let (tx, tls) = (tx.clone(), Arc::clone(&tls));
            tokio::spawn(async move {
                if let Some(conn) = handshake(stream, remote, Some(&tls)).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
