//! Two lanes on the peer port: raft traffic, served by the member's async workers, and
//! snapshot transfers, served on a thread of their own below the write path's priority.
//!
//! A snapshot transfer is hundreds of MB at 1M keys, and receiving it costs CPU where the
//! bytes are read: the connection's task copies them out of the socket and tonic copies them
//! again to decode the chunks. Served with the raft traffic, that ran on the receiving
//! member's tokio workers at normal priority, beside the leader's and the other follower's
//! write path on a shared machine (benches/README.md, "Session 12": those workers at 8-18 %
//! of the machine for the transfer's first second, where the leader's p99 rose). So the
//! sender opens a transfer's connection (one of its own per transfer) with
//! [`SNAPSHOT_PREFACE`] before HTTP/2's own preface, and the peer port's accept loop
//! ([`serve`]) reads a connection's first bytes (after its TLS handshake) to tell which lane
//! it is for: the preface's connections go, without it, to a second server of the same
//! `keelpb.Peer` service on a `crate::background` thread (nice 10, a runtime of its own), so
//! their reads, decoding and writing to the file all run there; every other connection gets
//! its bytes back and goes to the raft lane. A sender without the preface (an older member, a
//! test's client) still reaches the whole service on the raft lane.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use keel_proto::keelpb::peer_server::PeerServer;
use tonic::transport::Server;

pub use super::link::SNAPSHOT_PREFACE;
use super::service::PeerService;
use crate::tls::stream::{handshake, ConnIo, HANDSHAKE_TIMEOUT};
use crate::tls::ServerTls;

/// Connections sorted and not yet taken by their server, at most, per lane.
const LANE_BACKLOG: usize = 64;
/// How long the accept loop waits after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The lane a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Raft messages and everything else: the member's async workers.
    Raft,
    /// One snapshot transfer: the background thread.
    Snapshot,
}

/// Reads `conn`'s first bytes: [`SNAPSHOT_PREFACE`] (consumed) makes it a snapshot
/// transfer's; any other bytes are put back and make it the raft lane's (an HTTP/2 client's
/// preface differs from the first byte on). An error if it closes before either is known.
pub async fn lane_of(conn: &mut ConnIo) -> io::Result<Lane> {
    let mut buf = [0u8; SNAPSHOT_PREFACE.len()];
    let mut seen = 0;
    while seen < buf.len() {
        let n = conn.read(&mut buf[seen..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer connection closed before its first bytes",
            ));
        }
        seen += n;
        if buf[..seen] != SNAPSHOT_PREFACE[..seen] {
            conn.unread(&buf[..seen]);
            return Ok(Lane::Raft);
        }
    }
    Ok(Lane::Snapshot)
}

/// The connections of the two lanes, as the servers take them.
pub struct Lanes {
    /// Raft traffic (and anything not opened with the preface).
    pub raft: ReceiverStream<io::Result<ConnIo>>,
    /// Snapshot transfers, their preface consumed.
    pub snapshots: ReceiverStream<io::Result<ConnIo>>,
}

/// Accepts on `listener` (TLS handshakes with `tls`, when given) and sorts each connection
/// into its lane, on a task of its own per connection so a slow one holds up no other. The
/// returned future is the accept loop: it never ends on its own, and dropping it closes the
/// listener and both lanes.
pub fn sort(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> (impl Future<Output = ()> + Send, Lanes) {
    let (raft_tx, raft_rx) = mpsc::channel(LANE_BACKLOG);
    let (snap_tx, snap_rx) = mpsc::channel(LANE_BACKLOG);
    let accept = async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (raft_tx, snap_tx, tls) = (raft_tx.clone(), snap_tx.clone(), tls.clone());
            tokio::spawn(async move {
                let Some(mut conn) = handshake(stream, remote, tls.as_deref()).await else {
                    return;
                };
                let lane = tokio::time::timeout(HANDSHAKE_TIMEOUT, lane_of(&mut conn)).await;
                let tx = match lane {
                    Ok(Ok(Lane::Raft)) => raft_tx,
                    Ok(Ok(Lane::Snapshot)) => snap_tx,
                    Ok(Err(e)) => return debug_dropped(remote, &e),
                    Err(_) => return debug_dropped(remote, &"no bytes in time"),
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    };
    let lanes = Lanes {
        raft: ReceiverStream::new(raft_rx),
        snapshots: ReceiverStream::new(snap_rx),
    };
    (accept, lanes)
}

/// Serves `service` on `listener` (TLS handshakes with `tls`, when given) in two lanes: the
/// raft lane on the current runtime, the snapshot lane on a `keel-snapserve` thread at
/// background priority with a runtime of its own. Returns only if the raft lane's server
/// fails; dropping the future closes the listener, and the snapshot lane's server then ends.
pub async fn serve(
    service: PeerService,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> Result<(), String> {
    let (accept, lanes) = sort(listener, tls);
    let snapshots = Server::builder().add_service(PeerServer::new(service.clone()));
    // Ends when the accept loop is dropped (its lane closes), with this future.
    crate::background::spawn("keel-snapserve", async move {
        if let Err(e) = snapshots.serve_with_incoming(lanes.snapshots).await {
            tracing::error!(error = %e, "the snapshot lane stopped");
        }
    });
    let router = Server::builder().add_service(PeerServer::new(service));
    tokio::select! {
        served = router.serve_with_incoming(lanes.raft) => served.map_err(|e| e.to_string()),
        () = accept => Err("the accept loop ended".to_string()),
    }
}

fn debug_dropped(remote: SocketAddr, why: &dyn std::fmt::Display) {
    tracing::debug!(remote_addr = %remote, reason = %why, "peer connection dropped before its lane was known");
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;

    /// A connected pair: the accepted end as the server sees it, and the dialing end.
    async fn pair() -> (ConnIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, remote) = listener.accept().await.expect("accept");
        (ConnIo::plain(server, remote), client)
    }

    async fn rest(conn: &mut ConnIo, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test]
    async fn the_preface_picks_the_snapshot_lane_and_anything_else_is_handed_back_whole() {
        // HTTP/2's preface: the raft lane, every byte still there.
        let (mut conn, mut client) = pair().await;
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        client.write_all(h2).await.expect("write");
        assert_eq!(lane_of(&mut conn).await.expect("a lane"), Lane::Raft);
        assert_eq!(rest(&mut conn, h2.len()).await, h2);

        // The preface, arriving in pieces: the snapshot lane, the preface consumed.
        let (mut conn, mut client) = pair().await;
        let task = tokio::spawn(async move {
            client.write_all(b"KEEL").await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"SNAPrest").await.expect("write");
            client
        });
        assert_eq!(lane_of(&mut conn).await.expect("a lane"), Lane::Snapshot);
        assert_eq!(rest(&mut conn, 4).await, b"rest");
        drop(task.await.expect("the writer"));

        // A prefix of the preface, then something else: the raft lane, all of it back.
        let (mut conn, mut client) = pair().await;
        client.write_all(b"KEELSAND").await.expect("write");
        assert_eq!(lane_of(&mut conn).await.expect("a lane"), Lane::Raft);
        assert_eq!(rest(&mut conn, 8).await, b"KEELSAND");

        // Closed part-way through the preface: neither lane.
        let (mut conn, mut client) = pair().await;
        client.write_all(b"KEE").await.expect("write");
        drop(client);
        let err = lane_of(&mut conn).await.expect_err("no lane");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
