//! etcd's v2 HTTP API on the client port (`--enable-v2`): `/v2/keys` ([`keys`]: reads,
//! writes, waits), `/v2/members`, `/v2/machines` and `/v2/stats/*` ([`admin`]). The store is
//! the engine's (`keel_engine::v2`); this module parses requests as etcd does ([`form`]),
//! writes etcd's JSON ([`render`]), and runs the leader's expiry loop ([`expire_ttls`]).

mod admin;
pub mod form;
pub mod keys;
pub mod render;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use keel_proto::keelpb::V2Request;

use crate::bootstrap::Identity;
use crate::clock::Clock;
use crate::driver::Handle;
use crate::gateway::json::{self, Reply};

/// The path prefix of the keys API.
pub const KEYS_PREFIX: &str = "/v2/keys";

/// How often the leader looks for expired TTL keys (etcd's SYNC ticker).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// The v2 API of one member.
pub struct V2Http {
    handle: Handle,
    identity: Identity,
    cluster_id: u64,
    clock: Arc<dyn Clock>,
    max_request_bytes: usize,
    started_ns: i64,
    /// The raft traffic statistics `/v2/stats/self` and `/v2/stats/leader` show.
    peer_stats: Arc<crate::peer::stats::PeerStats>,
}

impl V2Http {
    /// The v2 API answering through `handle`.
    pub fn new(
        handle: Handle,
        identity: Identity,
        clock: Arc<dyn Clock>,
        max_request_bytes: usize,
    ) -> V2Http {
        let started_ns = unix_ns(clock.as_ref());
        V2Http {
            handle,
            cluster_id: identity.cluster_id,
            identity,
            clock,
            max_request_bytes,
            started_ns,
            peer_stats: Arc::default(),
        }
    }

    /// This API showing `stats` (the member's transport's) in `/v2/stats/self|leader`.
    pub fn with_peer_stats(mut self, stats: Arc<crate::peer::stats::PeerStats>) -> V2Http {
        self.peer_stats = stats;
        self
    }

    fn now_ns(&self) -> i64 {
        unix_ns(self.clock.as_ref())
    }

    /// Serves a request under `/v2/`.
    pub async fn serve(&self, request: Request<Incoming>) -> Reply {
        let path = request.uri().path().to_string();
        if path == KEYS_PREFIX || path.starts_with("/v2/keys/") {
            return self.keys(request).await;
        }
        if path == "/v2/members" || path.starts_with("/v2/members/") {
            return self.members(request).await;
        }
        if path == "/v2/machines" {
            return self.machines().await;
        }
        if let Some(which) = path.strip_prefix("/v2/stats/") {
            return self.stats(which).await;
        }
        json::text_reply(StatusCode::NOT_FOUND, "404 page not found")
    }
}

/// Now by `clock`, in Unix nanoseconds.
pub fn unix_ns(clock: &dyn Clock) -> i64 {
    let since = clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

/// etcd's SYNC: while this member leads, every [`SYNC_INTERVAL`] it asks the store for its
/// earliest expiration and, once that has passed by this member's clock, proposes a `SYNC`
/// carrying its time; every member removes the expired nodes when it applies the entry.
pub async fn expire_ttls(handle: Handle, clock: Arc<dyn Clock>, member_id: u64) {
    loop {
        clock.sleep(SYNC_INTERVAL).await;
        let leads = handle.status().await.is_ok_and(|s| s.leader == member_id);
        if !leads {
            continue;
        }
        let earliest = V2Request {
            method: "EXPIRY".into(),
            ..V2Request::default()
        };
        let Ok(resp) = handle.call(earliest).await else {
            continue;
        };
        let now = unix_ns(clock.as_ref());
        if resp.index == 0 || resp.index > now as u64 {
            continue;
        }
        let sync = V2Request {
            method: "SYNC".into(),
            time: now,
            ..V2Request::default()
        };
        if let Err(e) = handle.call(sync).await {
            tracing::debug!(error = %e, "v2 SYNC not applied; trying again");
        }
    }
}
