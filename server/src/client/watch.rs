//! etcd's Watch service: one bidirectional stream carrying many watches.
//!
//! The engine's watch hub decides everything (which events, when, in what order, flow
//! control); this module only moves messages. Each stream has:
//!
//! * a task reading the client's requests and handing create / cancel / progress requests to
//!   the driver (waiting while the driver is busy, so a flooding client is slowed down);
//! * the response side, a `Responses` stream over the driver's channel. As the client reads
//!   responses it returns *credit* to the engine; the engine never sends more than a window
//!   without credit, so a client that stops reading costs a bounded amount of memory and
//!   delays nobody else (its watchers fall behind and catch up from MVCC later).
//!
//! When the client ends its side, or goes away, the stream closes and its watchers are freed.

use std::pin::Pin;
use std::task::{Context, Poll};

use keel_engine::error::Error;
use keel_engine::watch::{StreamId, WatchInput, STREAM_WINDOW};
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::watch_server::Watch;
use keel_proto::etcdserverpb::{WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tonic::codegen::BoxStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

use crate::driver::{Handle, WatchMessage};
use crate::status::to_status;

/// Credit is returned to the engine in batches of this many responses read (or sooner, when
/// the client has read everything queued).
pub const CREDIT_BATCH: u32 = STREAM_WINDOW / 16;

/// The Watch service of one member.
#[derive(Clone)]
pub struct WatchService {
    handle: Handle,
}

impl WatchService {
    /// The service, answering through `handle`.
    pub fn new(handle: Handle) -> WatchService {
        WatchService { handle }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: GrpcRequest<Streaming<WatchRequest>>,
    ) -> Result<GrpcResponse<BoxStream<WatchResponse>>, Status> {
        let auth_token = super::token::auth_token(&request);
        let mut requests = request.into_inner();
        // etcd 3.4 serves no stream on a learner.
        if self.handle.status().await.map_err(to_status)?.is_learner {
            return Err(to_status(Error::NotSupportedForLearner));
        }
        let (stream, responses) = self.handle.watch_open().await.map_err(to_status)?;
        let handle = self.handle.clone();
        tokio::spawn(async move {
            loop {
                let request = match requests.message().await {
                    Ok(Some(r)) => r,
                    // The client closed its side, or the connection failed: like etcd, the
                    // stream ends.
                    Ok(None) | Err(_) => break,
                };
                let input = match request.request_union {
                    Some(RequestUnion::CreateRequest(request)) => {
                        let token = auth_token.clone();
                        if handle.watch_create(stream, request, token).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Some(RequestUnion::CancelRequest(c)) => WatchInput::Cancel {
                        stream,
                        watch_id: c.watch_id,
                    },
                    Some(RequestUnion::ProgressRequest(_)) => WatchInput::Progress { stream },
                    None => continue,
                };
                if handle.watch(input).await.is_err() {
                    break;
                }
            }
            handle.watch_control(WatchInput::Close { stream });
        });
        let out = Responses {
            stream,
            responses,
            handle: self.handle.clone(),
            unreported: 0,
            ended: false,
        };
        Ok(GrpcResponse::new(Box::pin(out)))
    }
}

/// The response side of one Watch stream; returns credit as the client reads.
struct Responses {
    stream: StreamId,
    responses: mpsc::Receiver<WatchMessage>,
    handle: Handle,
    /// Responses read but not yet reported as credit.
    unreported: u32,
    ended: bool,
}

impl Responses {
    fn report(&mut self) {
        if self.unreported > 0 {
            self.handle.watch_control(WatchInput::Credit {
                stream: self.stream,
                responses: self.unreported,
            });
            self.unreported = 0;
        }
    }
}

impl futures::Stream for Responses {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.responses.poll_recv(cx) {
            Poll::Ready(Some(Ok(response))) => {
                self.unreported += 1;
                if self.unreported >= CREDIT_BATCH || self.responses.is_empty() {
                    self.report();
                }
                Poll::Ready(Some(Ok(response)))
            }
            Poll::Ready(Some(Err(reason))) => {
                self.ended = true;
                Poll::Ready(Some(Err(Status::resource_exhausted(reason))))
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                self.report();
                Poll::Pending
            }
        }
    }
}

impl Drop for Responses {
    fn drop(&mut self) {
        self.handle.watch_control(WatchInput::Close {
            stream: self.stream,
        });
    }
}
