//! The streamed routes: `/v3/watch`, `/v3/lease/keepalive` (bidirectional in gRPC),
//! `/v3/maintenance/snapshot` and `/v3/election/observe` (server-streaming).
//!
//! As grpc-gateway streams them: each response is one line `{"result":RESPONSE}\n`; a failure
//! ends the stream with `{"error":{"grpc_code":..,"http_code":..,"message":..,"http_status":..}}`,
//! and when it comes before the first response, its HTTP status is the answer's.
//!
//! A bidirectional route takes its requests as JSON objects one after another in the body,
//! and hands them to the service as a `tonic::Streaming` of gRPC frames built in-process.
//! For a watch the request side then stays open until the HTTP client goes away (etcd's
//! watches outlive the request body); for a keepalive it ends with the body, which ends the
//! stream once the answers are out, as etcd's gateway does.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::stream::{self, BoxStream as FutBoxStream};
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use keel_proto::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tonic::codec::Streaming;
use tonic::codegen::BoxStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::json::{self, Reply};
use super::{grpc_request, Apis, Gateway, HttpRequest};
use futures::future::BoxFuture;

impl Gateway {
    /// A server-streaming call: one request message, the answers streamed.
    pub(super) async fn server_stream<Req, Resp, F, Fut>(
        self,
        request: HttpRequest,
        call: F,
    ) -> Reply
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize + Send + 'static,
        F: FnOnce(Arc<Apis>, GrpcRequest<Req>) -> Fut,
        Fut: Future<Output = Result<GrpcResponse<BoxStream<Resp>>, Status>>,
    {
        let (message, metadata) = match self.read_message::<Req>(request).await {
            Ok(m) => m,
            Err(reply) => return reply,
        };
        let answers = call(Arc::clone(&self.apis), grpc_request(message, metadata)).await;
        streamed(answers, None).await
    }
}

/// `/v3/watch`.
pub fn watch(gateway: Gateway, request: HttpRequest) -> BoxFuture<'static, Reply> {
    Box::pin(bidirectional::<WatchRequest, _, _, _>(
        gateway,
        request,
        true,
        |apis, grpc| async move { apis.watch.watch(grpc).await },
    ))
}

/// `/v3/lease/keepalive`.
pub fn keep_alive(gateway: Gateway, request: HttpRequest) -> BoxFuture<'static, Reply> {
    Box::pin(bidirectional::<LeaseKeepAliveRequest, _, _, _>(
        gateway,
        request,
        false,
        |apis, grpc| async move { apis.lease.lease_keep_alive(grpc).await },
    ))
}

/// A bidirectional call fed from the body's JSON objects. With `hold_open`, the request side
/// stays open until the answer is dropped (the client went away).
async fn bidirectional<Req, Resp, F, Fut>(
    gateway: Gateway,
    request: HttpRequest,
    hold_open: bool,
    call: F,
) -> Reply
where
    Req: DeserializeOwned + Message + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: FnOnce(Arc<Apis>, GrpcRequest<Streaming<Req>>) -> Fut,
    Fut: Future<Output = Result<GrpcResponse<BoxStream<Resp>>, Status>>,
{
    let (parts, body) = request.into_parts();
    let bytes = match json::read_body(body, gateway.body_bytes_max).await {
        Ok(b) => b,
        Err(e) => return e.reply(),
    };
    let messages = match json::parse_all::<Req>(&bytes) {
        Ok(m) => m,
        Err(e) => return e.reply(),
    };
    let (closed_tx, closed_rx) = oneshot::channel();
    let requests = request_stream(messages, hold_open.then_some(closed_rx));
    let grpc = grpc_request(requests, parts.headers.get("authorization").cloned());
    let answers = call(Arc::clone(&gateway.apis), grpc).await;
    streamed(answers, Some(closed_tx)).await
}

/// `messages` as the request side of a gRPC stream: length-prefixed frames, then the end of
/// the stream, or (with `hold`) the end once `hold` resolves.
fn request_stream<T>(messages: Vec<T>, hold: Option<oneshot::Receiver<()>>) -> Streaming<T>
where
    T: Message + Default + Send + 'static,
{
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = messages
        .iter()
        .map(|m| Ok(Frame::data(grpc_frame(m))))
        .collect();
    let held = stream::once(async move {
        if let Some(hold) = hold {
            // Err once the sender is dropped: the answer is gone.
            let _ = hold.await;
        }
    })
    .filter_map(|()| async { None });
    let body = StreamBody::new(stream::iter(frames).chain(held));
    Streaming::new_request(tonic_prost::ProstDecoder::<T>::default(), body, None, None)
}

/// One message as a gRPC frame: no compression, its length, its bytes.
fn grpc_frame<T: Message>(message: &T) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// The answer to a streaming call: waits for the first response (or failure), which decides
/// the status, then streams the rest. `guard` lives as long as the answer's body.
async fn streamed<Resp: Serialize + Send + 'static>(
    answers: Result<GrpcResponse<BoxStream<Resp>>, Status>,
    guard: Option<oneshot::Sender<()>>,
) -> Reply {
    let mut answers = match answers {
        Ok(a) => a.into_inner(),
        Err(status) => return stream_failure(&status),
    };
    let first = match answers.next().await {
        None => None,
        Some(Ok(first)) => Some(first),
        Some(Err(status)) => return stream_failure(&status),
    };
    let lines = stream::iter(first.map(Ok))
        .chain(answers)
        .scan(false, |failed, item| {
            let line = match item {
                _ if *failed => None,
                Ok(resp) => Some(result_line(&resp)),
                Err(status) => {
                    *failed = true;
                    Some(json::stream_error(&status))
                }
            };
            async move { line }
        });
    let guarded: FutBoxStream<'static, Result<Frame<Bytes>, Infallible>> = lines
        .map(move |line| {
            let _alive = &guard;
            Ok(Frame::data(line))
        })
        .boxed();
    let mut reply = Response::new(StreamBody::new(guarded).boxed_unsync());
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

/// `{"result":RESPONSE}` and a newline.
fn result_line<T: Serialize>(resp: &T) -> Bytes {
    let inner = json::to_json(resp);
    let mut line = BytesMut::with_capacity(inner.len() + 12);
    line.put_slice(b"{\"result\":");
    line.put_slice(&inner);
    line.put_slice(b"}\n");
    line.freeze()
}

/// A stream that failed before its first answer: the failure's status and its error object.
fn stream_failure(status: &Status) -> Reply {
    json::json_reply(json::http_status(status.code()), json::stream_error(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::WatchResponse;

    #[test]
    fn results_are_lines() {
        let line = result_line(&WatchResponse {
            created: true,
            ..Default::default()
        });
        assert_eq!(&line[..], b"{\"result\":{\"created\":true}}\n");
    }

    #[test]
    fn frames_carry_the_length() {
        let frame = grpc_frame(&LeaseKeepAliveRequest { id: 1 });
        assert_eq!(
            &frame[..],
            &[0, 0, 0, 0, 2, 8, 1],
            "flag, length, field 1 = 1"
        );
    }
}
