//! A member's peer service (`keelpb.Peer`) on a real loopback port (tokio build only).

use std::net::SocketAddr;
use std::time::Duration;

use keel_proto::keelpb::peer_server::PeerServer;
use keel_server::peer::PeerService;
use tokio::sync::oneshot;

/// Serves `service` on 127.0.0.1:`port` until the returned sender is dropped or fired; returns
/// once the listener had a moment to bind.
pub async fn serve_peer(service: PeerService, port: u16) -> oneshot::Sender<()> {
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
