//! What every connection to a peer shares: who this member is on the wire, how long
//! connecting may take, and how to dial ([`Dialer`]: plain for `http://` peer URLs, TLS for
//! `https://` ones in the tokio build).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The bytes a snapshot transfer's connection opens with, before anything else (after the
/// TLS handshake on an `https://` peer URL): they put it on the receiver's snapshot lane
/// (`super::lanes`, tokio build).
pub const SNAPSHOT_PREFACE: &[u8; 8] = b"KEELSNAP";

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Who this member is on the wire.
#[derive(Debug, Clone, Copy)]
pub struct LocalIdentity {
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
}

/// Opens channels to peers, over TLS where the peer URL says `https://`.
#[derive(Clone, Default)]
pub struct Dialer {
    /// The peer TLS client configuration (`--peer-cert-file` ...), if this member has one.
    #[cfg(not(madsim))]
    pub tls: Option<std::sync::Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
}

impl Dialer {
    /// Connects to the peer at `url`, waiting at most `timeout` for the connection (None:
    /// tonic's default, no connect timeout of its own).
    pub async fn connect(&self, url: &str, timeout: Option<Duration>) -> Result<Channel, String> {
        #[cfg(not(madsim))]
        if let Some(rest) = url.strip_prefix("https://") {
            return self.connect_tls(url, rest, timeout).await;
        }
        let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
        if let Some(timeout) = timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        endpoint.connect().await.map_err(|e| e.to_string())
    }

    /// Connects for one snapshot transfer, as [`Dialer::connect`] does, but opens the
    /// connection with [`SNAPSHOT_PREFACE`], so that the receiver serves
    /// it on its snapshot lane, below its write path's priority. (Under madsim: a plain
    /// connection, as the simulator's peer port has one lane.)
    pub async fn connect_snapshot(
        &self,
        url: &str,
        timeout: Option<Duration>,
    ) -> Result<Channel, String> {
        #[cfg(not(madsim))]
        {
            let preface: &'static [u8] = SNAPSHOT_PREFACE;
            if let Some(rest) = url.strip_prefix("https://") {
                return self
                    .connect_tls_with(url, rest, timeout, Some(preface))
                    .await;
            }
            let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
            if let Some(timeout) = timeout {
                endpoint = endpoint.connect_timeout(timeout);
            }
            endpoint
                .connect_with_connector(PrefacedConnector { preface })
                .await
                .map_err(|e| error_chain(&e))
        }
        #[cfg(madsim)]
        self.connect(url, timeout).await
    }

    #[cfg(not(madsim))]
    async fn connect_tls(
        &self,
        url: &str,
        rest: &str,
        timeout: Option<Duration>,
    ) -> Result<Channel, String> {
        self.connect_tls_with(url, rest, timeout, None).await
    }

    #[cfg(not(madsim))]
    async fn connect_tls_with(
        &self,
        url: &str,
        rest: &str,
        timeout: Option<Duration>,
        preface: Option<&'static [u8]>,
    ) -> Result<Channel, String> {
        let Some(tls) = &self.tls else {
            return Err(format!(
                "peer URL {url} needs peer TLS (--peer-cert-file and --peer-key-file, or \
                 --peer-auto-tls)"
            ));
        };
        // tonic sees a plain URL; the connector does the TLS.
        let plain = format!("http://{rest}");
        let mut endpoint = Endpoint::from_shared(plain).map_err(|e| e.to_string())?;
        if let Some(timeout) = timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        let host = endpoint.uri().host().unwrap_or_default().to_string();
        let mut connector =
            crate::tls::connector::PeerConnector::new(std::sync::Arc::clone(tls), &host)?;
        if let Some(preface) = preface {
            connector = connector.with_preface(preface);
        }
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| error_chain(&e))
    }
}

/// `e` and its sources, one after another.
#[cfg(not(madsim))]
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Dials a plain peer URL and writes `preface` on the connection before handing it to
/// HTTP/2.
#[cfg(not(madsim))]
#[derive(Clone, Copy)]
struct PrefacedConnector {
    preface: &'static [u8],
}

#[cfg(not(madsim))]
impl tower_service::Service<tonic::transport::Uri> for PrefacedConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::transport::Uri) -> Self::Future {
        let preface = self.preface;
        Box::pin(async move {
            use tokio::io::AsyncWriteExt as _;
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(2380);
            let mut tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            tcp.write_all(preface).await?;
            Ok(hyper_util::rt::TokioIo::new(tcp))
        })
    }
}
