//! The load generator's plain-TCP connector, with keel's write coalescing under its h2 client
//! ([`keel_proto::io::Coalesced`], the same as keel's client port; the TLS connector in
//! `tls.rs` puts it under h2 too): requests of one scheduler turn on a connection leave in one
//! write. Without it the h2 client wrote each request's HEADERS and DATA in two `writev`s
//! (2.0 per put at 100 clients on 10 connections), costing the load generator, which shares
//! the cores with the server it measures, CPU that neither keel nor etcd should be charged.
//! `--no-coalesce` turns it off. It changes nothing either server sees but how the bytes of
//! requests are grouped into TCP writes.

use std::io;
use std::task::{Context, Poll};

use keel_proto::io::Coalesced;

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
