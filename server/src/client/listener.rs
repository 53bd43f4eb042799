//! One client listener, two protocols, as etcd's (cmux) does: each accepted connection is
//! told apart by its first bytes. One that opens with the HTTP/2 connection preface
//! (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) is gRPC and goes to tonic's router, behind the
//! `:authority` shim ([`super::authority`]), served on the connection's own task
//! ([`super::h2conn`]); anything else is HTTP/1.x and goes to the JSON gateway
//! ([`crate::gateway`]). Tokio build only.
//!
//! The bytes are peeked, not read, so both servers see the connection from its first byte.
//! Classifying runs on the connection's own task: a client that sends nothing holds up no
//! one else.
//!
//! On an `https://` listener the TLS handshake ([`crate::tls`]) comes first, on that same
//! task; then the ALPN protocol decides (`h2`: gRPC, `http/1.1`: the gateway), or, when the
//! client offered none, the first decrypted bytes do, read and put back.
//!
//! A gRPC connection's writes are coalesced ([`keel_proto::io::Coalesced`]): a batch of puts
//! is answered at once when its fsync is done, and without it h2 wrote and flushed every
//! response on its own, one `writev` (over TLS, one record) per response: 0.92 writes per put
//! with 100 clients on 10 connections (benches/README.md, "Coalesced writes"). The request
//! streams run on their connection's task ([`super::h2conn`]), which takes a wake of the
//! connection during its own poll as "poll the connection again": the deferred flush then
//! waits for one more pass over the connection's ready streams, whose answers join the
//! buffer, rather than for a scheduler turn.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::io::Coalesced;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::service::Routes;
use tonic::transport::server::Connected;

use super::authority::AuthorityFix;
use super::h2conn;
use crate::error::ServerError;
use crate::gateway::Gateway;
use crate::status::serve_error;
use crate::tls::stream::{handshake, ConnIo};
use crate::tls::ServerTls;

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long to wait for the rest of a preface that arrived in pieces, between peeks.
const PEEK_RETRY: Duration = Duration::from_millis(2);
/// A connection whose first bytes do not settle within this is dropped.
const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (e.g. out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge: gRPC.
    Grpc,
    /// Anything else: HTTP/1.x.
    Http1,
}

/// The protocol the bytes seen so far decide, or None while they are a proper prefix of the
/// HTTP/2 preface.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        return Some(Protocol::Http1);
    }
    (n == PREFACE.len()).then_some(Protocol::Grpc)
}

/// Tells a connection's protocol: peeked on a plain one, by ALPN or by its first bytes
/// (read, then put back) on a TLS one. None when it closed first.
async fn sniff(conn: &mut ConnIo) -> io::Result<Option<Protocol>> {
    if let Some(tcp) = conn.tcp() {
        return peek(tcp).await;
    }
    match conn.alpn() {
        Some(b"h2") => return Ok(Some(Protocol::Grpc)),
        Some(b"http/1.1") => return Ok(Some(Protocol::Http1)),
        _ => {}
    }
    let mut buf = [0u8; PREFACE.len()];
    let mut seen = 0;
    let protocol = loop {
        let n = conn.read(&mut buf[seen..]).await?;
        if n == 0 {
            return Ok(None);
        }
        seen += n;
        if let Some(protocol) = classify(&buf[..seen]) {
            break protocol;
        }
    };
    conn.unread(&buf[..seen]);
    Ok(Some(protocol))
}

/// Peeks at `stream` until its protocol is known. None when it closed first.
async fn peek(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut buf = [0u8; PREFACE.len()];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(protocol) = classify(&buf[..n]) {
            return Ok(Some(protocol));
        }
        if n == seen {
            // A partial preface, and nothing new yet: peek returns at once while unread
            // bytes wait, so pause rather than spin.
            tokio::time::sleep(PEEK_RETRY).await;
        }
        seen = n;
    }
}

/// Serves `routes` (gRPC) and `gateway` (HTTP/1.x) on `addr` until the listener fails, over
/// TLS when `tls` is given.
pub async fn serve(
    routes: Routes,
    gateway: Gateway,
    addr: SocketAddr,
    tls: Option<Arc<ServerTls>>,
) -> Result<(), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| serve_error(addr, e))?;
    let routes = routes.prepare();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accepting a client connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
        }
        let conn = Conn {
            stream,
            peer,
            tls: tls.clone(),
        };
        tokio::spawn(dispatch(conn, routes.clone(), gateway.clone()));
    }
}

/// Serves `gateway` alone (HTTP/1.1) on `addr` until the listener fails.
pub async fn serve_http(gateway: Gateway, addr: SocketAddr) -> Result<(), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| serve_error(addr, e))?;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(gateway.clone().serve_connection(stream));
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accepting a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// An accepted connection, before its handshake.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerTls>>,
}

/// Serves one connection with the server for its protocol, on this task.
async fn dispatch(conn: Conn, routes: Routes, gateway: Gateway) {
    let peer = conn.peer;
    let Some(mut stream) = handshake(conn.stream, peer, conn.tls.as_deref()).await else {
        return;
    };
    let protocol = match tokio::time::timeout(CLASSIFY_TIMEOUT, sniff(&mut stream)).await {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "reading a client connection's first bytes");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "client connection sent no request; dropped");
            return;
        }
    };
    match protocol {
        Protocol::Grpc => {
            let info = stream.connect_info();
            let io = AuthorityFix::new(Coalesced::new(stream, true));
            h2conn::serve(io, info, routes).await;
        }
        Protocol::Http1 => gateway.serve_connection(stream).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_grpc_and_anything_else_http1() {
        assert_eq!(classify(PREFACE), Some(Protocol::Grpc));
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(Protocol::Grpc)
        );
        assert_eq!(classify(b"PRI * HT"), None, "a partial preface waits");
        assert_eq!(
            classify(b"POST /v3/kv/range HTTP/1.1"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"GET /health HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Protocol::Http1));
    }
}
