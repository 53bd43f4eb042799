//! Outbound TLS for peer channels: a connector tonic dials `https://` peer URLs through,
//! with the member's peer certificate as its client certificate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use super::reload::Reloading;

/// Dials a peer over TLS; the handshake uses the configuration current at the time.
#[derive(Clone)]
pub struct PeerConnector {
    config: Arc<Reloading<ClientConfig>>,
    /// The name the peer's certificate must carry: the peer URL's host.
    server_name: ServerName<'static>,
    /// Bytes written first, once the handshake is done (see `crate::peer::lanes`).
    preface: Option<&'static [u8]>,
}

impl PeerConnector {
    /// A connector for the peer at `host` (an IP address or a DNS name).
    pub fn new(config: Arc<Reloading<ClientConfig>>, host: &str) -> Result<Self, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("peer host {host:?} is not a TLS server name: {e}"))?;
        Ok(PeerConnector {
            config,
            server_name,
            preface: None,
        })
    }

    /// This connector writing `preface` on each connection before handing it to HTTP/2.
    pub fn with_preface(mut self, preface: &'static [u8]) -> Self {
        self.preface = Some(preface);
        self
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        let name = self.server_name.clone();
        let preface = self.preface;
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let port = uri.port_u16().unwrap_or(2380);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let mut tls = connector.connect(name, tcp).await?;
            if let Some(preface) = preface {
                use tokio::io::AsyncWriteExt as _;
                tls.write_all(preface).await?;
                tls.flush().await?;
            }
            Ok(TokioIo::new(tls))
        })
    }
}
