//! `https://` endpoints: a TLS connector for tonic with etcdctl's `--cacert`, `--cert` and
//! `--key`, on rustls (ring), ALPN h2.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use hyper_util::rt::TokioIo;
use keel_proto::io::Coalesced;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use crate::Cli;

/// Dials one endpoint over TLS.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    coalesce: bool,
}

impl Connector {
    /// A connector for `uri`'s host with the CLI's certificates.
    pub fn new(cli: &Cli, uri: &Uri) -> Result<Connector> {
        let cacert = cli
            .cacert
            .as_ref()
            .context("https:// endpoints need --cacert")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cacert).context("reading --cacert")? {
            roots.add(cert.context("parsing --cacert")?)?;
        }
        #[allow(deprecated)] // ring's provider: the one keel serves with.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&cli.cert, &cli.key_file) {
            (Some(cert), Some(key)) => {
                let chain: Result<Vec<_>, _> = CertificateDer::pem_file_iter(cert)?.collect();
                let key = PrivateKeyDer::from_pem_file(key).context("reading --key")?;
                builder.with_client_auth_cert(chain.context("reading --cert")?, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let host = uri.host().unwrap_or("127.0.0.1").to_string();
        Ok(Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(host)?,
            coalesce: !cli.no_coalesce,
        })
    }
}

type Io = TokioIo<Coalesced<TlsStream<TcpStream>>>;
type Connecting = Pin<Box<dyn Future<Output = io::Result<Io>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Io;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let (tls, name, coalesce) = (self.tls.clone(), self.name.clone(), self.coalesce);
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let tcp = TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(2379))).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(Coalesced::new(stream, coalesce)))
        })
    }
}
