//! What every connection to a peer shares: who this member is on the wire, how long
//! connecting may take, and how to dial ([`Dialer`]: plain for `http://` peer URLs, TLS for
//! `https://` ones in the tokio build).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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

    #[cfg(not(madsim))]
    async fn connect_tls(
        &self,
        url: &str,
        rest: &str,
        timeout: Option<Duration>,
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
        let connector =
            crate::tls::connector::PeerConnector::new(std::sync::Arc::clone(tls), &host)?;
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                text
            })
    }
}
