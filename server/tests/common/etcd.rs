//! A client of a test's server through the Rust `etcd-client` crate (tokio build only).

use std::time::Duration;

use anyhow::{ensure, Result};
use etcd_client::Client;

use super::Server;

/// How long [`serving_client`] waits for a server to serve a read.
pub const SERVING_TIMEOUT: Duration = Duration::from_secs(20);

/// A client of `server`, once the server serves linearizable reads (it has a leader).
pub async fn serving_client(server: &Server) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + SERVING_TIMEOUT;
    loop {
        if let Ok(mut client) = Client::connect([server.endpoint()], None).await {
            if client.get("probe", None).await.is_ok() {
                return Ok(client);
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{} never served a read",
            server.label()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
