//! The gRPC layer's side of the driver: a cheap, clonable [`Handle`] that queues commands
//! for the driver loop and waits for their replies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::auth::Credential;
use keel_engine::error::Error;
use keel_engine::membership::Membership;
use keel_engine::node::{NodeStatus, Request, Response, SnapshotJob};
use keel_engine::request::Rpc;
use keel_engine::watch::{StreamId, WatchInput, STREAM_WINDOW};
use keel_proto::etcdserverpb::{WatchCreateRequest, WatchResponse};
use tokio::sync::{mpsc, oneshot};

use crate::tokens::Tokens;

/// What the gRPC layer asks of the driver.
pub(super) enum Command {
    Request {
        request: Request,
        /// `Some`: a client's request, with its auth token if it sent one (checked against
        /// the caller's permissions); `None`: the member's own (unchecked).
        client: Option<Option<Credential>>,
        reply: oneshot::Sender<Result<Response, Error>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    /// Whether a client's credential is an admin's (no log entry).
    CheckAdmin {
        credential: Option<Credential>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Members {
        reply: oneshot::Sender<Membership>,
    },
    /// A backup's snapshot job as of the applied index, with the member's status then.
    Backup {
        reply: oneshot::Sender<Option<(SnapshotJob, NodeStatus)>>,
    },
    /// A Watch stream opens: its responses go to `responses`.
    WatchOpen {
        stream: StreamId,
        responses: mpsc::Sender<WatchMessage>,
    },
    /// A create, cancel or progress request of a Watch stream.
    Watch(WatchInput),
    /// A create request of a Watch stream, with the client's auth token.
    WatchCreate {
        stream: StreamId,
        request: WatchCreateRequest,
        auth_token: Option<Credential>,
    },
    /// `Maintenance.Defragment`: answered once a snapshot as of the applied index now is
    /// durable and the WAL before the snapshot kept as fallback is handed for release.
    Defragment {
        reply: oneshot::Sender<()>,
    },
}

/// What the driver sends a Watch stream: a response, or the reason the stream ends.
pub type WatchMessage = Result<WatchResponse, &'static str>;

/// A cheap, clonable handle to the driver, used by the gRPC services.
#[derive(Clone)]
pub struct Handle {
    pub(super) commands: mpsc::Sender<Command>,
    /// Credits and closes of Watch streams: never waits, so a stream's `Drop` and `poll` can
    /// report them (unbounded; [`super::start`] says what bounds it in practice).
    pub(super) watch_control: mpsc::UnboundedSender<WatchInput>,
    pub(super) next_watch_stream: Arc<AtomicU64>,
    pub(super) request_timeout: Duration,
    pub(super) wal_bytes: Arc<AtomicU64>,
    pub(super) snap_bytes: Arc<AtomicU64>,
    /// The member's kind of auth token: a JWT is verified here, before the driver sees it.
    pub(super) tokens: Tokens,
    pub(super) v2_hub: Arc<super::v2_hub::V2Hub>,
}

impl Handle {
    /// This handle with the member's kind of auth token (`--auth-token`).
    pub fn with_tokens(mut self, tokens: Tokens) -> Handle {
        self.tokens = tokens;
        self
    }

    /// The member's kind of auth token.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// A client's token as the node takes it (a JWT verified, or refused as etcd's
    /// `invalid auth token`).
    fn credential(&self, auth_token: Option<String>) -> Option<Credential> {
        auth_token.map(|t| self.tokens.credential(t))
    }

    /// The member's waiting v2 clients.
    pub fn v2_hub(&self) -> &Arc<super::v2_hub::V2Hub> {
        &self.v2_hub
    }

    /// Sends a request through the node and waits for its typed reply, up to the request
    /// timeout.
    pub async fn call<R: Rpc>(&self, request: R) -> Result<R::Response, Error> {
        self.call_with(request, None).await
    }

    /// Sends a client's request, with the auth token it came with, through the node: the node
    /// checks it against the caller's permissions.
    pub async fn call_as<R: Rpc>(
        &self,
        auth_token: Option<String>,
        request: R,
    ) -> Result<R::Response, Error> {
        let credential = self.credential(auth_token);
        self.call_with(request, Some(credential)).await
    }

    async fn call_with<R: Rpc>(
        &self,
        request: R,
        client: Option<Option<Credential>>,
    ) -> Result<R::Response, Error> {
        let response = self.request(request.into_request(), client).await?;
        match R::from_response(response) {
            Some(r) => Ok(r),
            // The node answers every request with a response of its own kind.
            None => panic!(
                "the node answered {} with another kind of response",
                R::NAME
            ),
        }
    }

    /// Sends a request through the node and waits for its reply, up to the request timeout.
    async fn request(
        &self,
        request: Request,
        client: Option<Option<Credential>>,
    ) -> Result<Response, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request {
                request,
                client,
                reply,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Opens a Watch stream: returns its id and the receiver of its responses, which holds
    /// at most [`STREAM_WINDOW`] of them (the engine sends no more without credit).
    pub async fn watch_open(&self) -> Result<(StreamId, mpsc::Receiver<WatchMessage>), Error> {
        let stream = self.next_watch_stream.fetch_add(1, Ordering::Relaxed);
        let (responses, rx) = mpsc::channel(STREAM_WINDOW as usize);
        self.commands
            .send(Command::WatchOpen { stream, responses })
            .await
            .map_err(|_| Error::Stopped)?;
        Ok((stream, rx))
    }

    /// A create, cancel or progress request of a Watch stream (waits while the driver is
    /// busy: back-pressure on a client that floods requests).
    pub async fn watch(&self, input: WatchInput) -> Result<(), Error> {
        self.commands
            .send(Command::Watch(input))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// A create request of a Watch stream with the client's auth token (checked by the node).
    pub async fn watch_create(
        &self,
        stream: StreamId,
        request: WatchCreateRequest,
        auth_token: Option<String>,
    ) -> Result<(), Error> {
        let auth_token = self.credential(auth_token);
        let command = Command::WatchCreate {
            stream,
            request,
            auth_token,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Returns read credit to a Watch stream, or reports it closed; never waits.
    pub fn watch_control(&self, input: WatchInput) {
        // The driver is gone only when the node stopped; then nobody cares.
        let _ = self.watch_control.send(input);
    }

    /// Bytes of WAL on disk as of the last sync: keel's durable footprint, reported as etcd's
    /// `dbSize`.
    pub fn wal_bytes(&self) -> u64 {
        self.wal_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of the snapshot files on disk, as of the last save, install or release.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snap_bytes.load(Ordering::Relaxed)
    }

    /// Reclaims what keel's storage leaves reclaimable (see [`Command::Defragment`]): makes a
    /// snapshot as of the applied index now, off the loop, so that the WAL and the snapshot
    /// files it makes redundant are released. Reads and writes go on meanwhile. Waits up to
    /// `timeout`.
    pub async fn defragment(&self, timeout: Duration) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Defragment { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The member table as of the applied index.
    pub async fn members(&self) -> Result<Membership, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Members { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// A snapshot job of the member's state as of its applied index, for a backup
    /// (`Maintenance.Snapshot`), with its status at that moment. The loop's share is O(1)
    /// (copy-on-write views); encoding the job is the caller's, off the loop.
    pub async fn backup_job(&self) -> Result<(SnapshotJob, NodeStatus), Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Backup { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?.ok_or(Error::Stopped)
    }

    /// Whether the client with `auth_token` may make admin requests (root, or auth off),
    /// against this member's applied auth store: etcd's `IsAdminPermitted`, as its
    /// Maintenance service checks it, without a log entry.
    pub async fn check_admin(&self, auth_token: Option<String>) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        let credential = self.credential(auth_token);
        self.commands
            .send(Command::CheckAdmin { credential, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// This member's raft status.
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Status { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }
}
