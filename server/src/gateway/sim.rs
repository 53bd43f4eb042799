//! The HTTP/1.1 surface of the simulation build (`--cfg madsim`): etcd's v2 API only.
//!
//! Under madsim the client port's gRPC goes through madsim-tonic's simulated transport, and
//! the JSON gateway's `/v3/` routes are not built; but hyper runs unchanged over madsim's
//! simulated TCP, so a member started with `--enable-v2` serves `/v2/` on its client address
//! (madsim's TCP and its gRPC endpoints are separate protocols on one address) through the
//! very [`v2::V2Http`] the tokio build serves: same parsing, same store calls, same JSON.
//! keel-sim's v2 clients speak HTTP to it (sim/src/v2.rs).

pub mod json;
pub mod v2;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;

use crate::error::ServerError;
use crate::status::serve_error;

/// After a failed accept, wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `/v2/` (anything else: 404) on `addr` until the listener fails.
pub async fn serve_v2(v2: Arc<v2::V2Http>, addr: SocketAddr) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| serve_error(addr, e))?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "v2 accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let v2 = Arc::clone(&v2);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                let v2 = Arc::clone(&v2);
                async move {
                    let reply = if request.uri().path().starts_with("/v2/") {
                        v2.serve(request).await
                    } else {
                        json::text_reply(StatusCode::NOT_FOUND, "404 page not found")
                    };
                    Ok::<_, Infallible>(reply)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "v2 HTTP/1 connection ended");
            }
        });
    }
}
