//! A member's peer service (`keelpb.Peer`) on a real loopback port (tokio build only).

use std::net::SocketAddr;
use std::time::Duration;

use keel_proto::keelpb::peer_server::PeerServer;
use keel_server::peer::PeerService;
use tokio::sync::oneshot;

/// Serves `service` on 127.0.0.1:`port` as a member does (two lanes:
/// `keel_server::peer::lanes`) until the returned sender is dropped or fired; returns once
/// the listener is bound.
pub async fn serve_peer(service: PeerService, port: u16) -> oneshot::Sender<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the peer port");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            served = keel_server::peer::lanes::serve(service, listener, None) => {
                if let Err(e) = served {
                    eprintln!("peer server on {addr} stopped: {e}");
                }
            }
            _ = stopped => {}
        }
    });
    stop
}

/// Serves `service` on 127.0.0.1:`port` with one lane, as a member without a snapshot lane
/// (an older keel) does: HTTP/2 from the first byte. Until the returned sender is dropped or
/// fired; returns once the listener had a moment to bind.
#[allow(dead_code)] // (not every test binary uses it)
pub async fn serve_peer_one_lane(service: PeerService, port: u16) -> oneshot::Sender<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(service))
            .serve_with_shutdown(addr, async {
                let _ = stopped.await;
            }),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop
}
