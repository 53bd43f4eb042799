//! `/v2/keys`: etcd's `keysHandler`. Writes and quorum reads go through the node (the log, or
//! a ReadIndex round); other reads are local. A wait searches the store's history through the
//! node first and otherwise registers one entry in the member's [`V2Hub`]; its answer's
//! headers go out at once and the event when it comes, as etcd flushes them.

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use keel_engine::v2::error::{error, http_status, RAFT_INTERNAL};
use keel_proto::keelpb::{V2Error, V2Request, V2Response};

use super::form::{self, Form};
use super::render::{error_json, event_json};
use super::{V2Http, KEYS_PREFIX};
use crate::driver::V2Wait;
use crate::gateway::json::{self, Reply};

/// Go's `ParseForm` limit on a form body (`maxFormSize`), which is etcd's bound on a v2 value.
pub const MAX_FORM_BYTES: usize = 10 << 20;

impl V2Http {
    /// Serves one `/v2/keys` request.
    pub(super) async fn keys(&self, request: Request<Incoming>) -> Reply {
        let method = request.method().clone();
        if !matches!(
            method,
            Method::HEAD | Method::GET | Method::PUT | Method::POST | Method::DELETE
        ) {
            let mut reply = json::text_reply(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            let allow = HeaderValue::from_static("HEAD,GET,PUT,POST,DELETE");
            reply.headers_mut().insert(ALLOW, allow);
            return reply;
        }
        let (v2, stream) = match self.parse(request).await {
            Ok(parsed) => parsed,
            Err(e) => return self.error_reply(&e),
        };
        if v2.wait {
            return self.wait(v2, stream).await;
        }
        let head = method == Method::HEAD;
        match self.handle.call(v2).await {
            Ok(resp) => self.event_reply(resp, head),
            Err(e) => self.error_reply(&error(RAFT_INTERNAL, e.to_string(), 0)),
        }
    }

    /// The request's key, query and form as a `V2Request` (etcd's `parseKeyRequest`).
    async fn parse(&self, request: Request<Incoming>) -> Result<(V2Request, bool), V2Error> {
        let (parts, body) = request.into_parts();
        let raw_path = parts.uri.path();
        let key = form::unescape_path(&raw_path[KEYS_PREFIX.len().min(raw_path.len())..]);
        let method = parts.method.as_str().to_string();
        let form_body = matches!(parts.method, Method::PUT | Method::POST)
            && parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        let body = if form_body {
            // Go's ParseForm reads at most 10 MiB of form ("http: POST too large"); etcd
            // puts no other bound on a v2 value.
            match json::read_body(body, MAX_FORM_BYTES).await {
                Ok(b) => Some(b),
                Err(_) => return Err(form::invalid_form("http: POST too large".into())),
            }
        } else {
            None
        };
        let form = Form::parse(parts.uri.query(), body.as_deref()).map_err(form::invalid_form)?;
        form::key_request(&method, &key, &form, self.now_ns())
    }

    /// An event answer: 201 for a creation, etcd's index headers.
    fn event_reply(&self, resp: V2Response, head: bool) -> Reply {
        if let Some(e) = &resp.error {
            return self.error_reply(e);
        }
        let Some(event) = resp.event.as_deref() else {
            return self.error_reply(&error(RAFT_INTERNAL, "no event in the answer", 0));
        };
        let created =
            event.action == "create" || (event.action == "set" && event.prev_node.is_none());
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let body = if head {
            Bytes::new()
        } else {
            Bytes::from(event_json(event))
        };
        let mut reply = json::json_reply(status, body);
        self.index_headers(&mut reply, event.etcd_index, &resp);
        reply
    }

    fn index_headers(&self, reply: &mut Reply, etcd_index: u64, resp: &V2Response) {
        let h = reply.headers_mut();
        h.insert(
            "x-etcd-cluster-id",
            header(format!("{:x}", self.cluster_id)),
        );
        h.insert("x-etcd-index", header(etcd_index.to_string()));
        h.insert("x-raft-index", header(resp.raft_index.to_string()));
        let term = resp.header.as_ref().map_or(0, |h| h.raft_term);
        h.insert("x-raft-term", header(term.to_string()));
    }

    /// etcd's v2 error answer.
    pub(super) fn error_reply(&self, e: &V2Error) -> Reply {
        let status = StatusCode::from_u16(http_status(e.code)).unwrap_or(StatusCode::BAD_REQUEST);
        let mut reply = json::json_reply(status, Bytes::from(error_json(e)));
        let h = reply.headers_mut();
        h.insert(
            "x-etcd-cluster-id",
            header(format!("{:x}", self.cluster_id)),
        );
        h.insert("x-etcd-index", header(e.index.to_string()));
        reply
    }

    /// `wait=true`: the history's answer, or a registered wait whose events stream out.
    async fn wait(&self, mut v2: V2Request, stream: bool) -> Reply {
        loop {
            let resp = match self.handle.call(v2.clone()).await {
                Ok(resp) => resp,
                Err(e) => return self.error_reply(&error(RAFT_INTERNAL, e.to_string(), 0)),
            };
            if let Some(e) = &resp.error {
                return self.error_reply(e);
            }
            if let Some(event) = resp.event.as_deref() {
                let first = Bytes::from(event_json(event));
                if !stream {
                    let mut reply = json::json_reply(StatusCode::OK, first);
                    self.index_headers(&mut reply, resp.index, &resp);
                    return reply;
                }
                // A stream goes on after the history's event.
                let next = event.node.as_ref().map_or(0, |n| n.modified_index) + 1;
                v2.since = next;
                let path = keel_engine::v2::clean(&v2.path);
                let hub = self.handle.v2_hub();
                let Some(wait) = hub.register(&path, v2.recursive, true, next, resp.index) else {
                    continue;
                };
                return self.streamed(Some(first), wait, true, &resp);
            }
            let since = if v2.since == 0 {
                resp.index + 1
            } else {
                v2.since
            };
            let path = keel_engine::v2::clean(&v2.path);
            let hub = self.handle.v2_hub();
            if let Some(wait) = hub.register(&path, v2.recursive, stream, since, resp.index) {
                return self.streamed(None, wait, stream, &resp);
            }
            // A change came between the history read and the registration: read again.
        }
    }

    /// Headers now; the events as they come (one, unless `stream`).
    fn streamed(
        &self,
        first: Option<Bytes>,
        wait: V2Wait,
        stream: bool,
        resp: &V2Response,
    ) -> Reply {
        let events = futures::stream::unfold(wait, |mut wait| async move {
            let e = wait.events.recv().await?;
            Some((Bytes::from(event_json(&e)), wait))
        });
        let events = events.take(if stream { usize::MAX } else { 1 });
        let frames = futures::stream::iter(first)
            .chain(events)
            .map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let mut reply = hyper::Response::new(StreamBody::new(frames).boxed_unsync());
        reply
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.index_headers(&mut reply, resp.index, resp);
        reply
    }
}

fn header(text: String) -> HeaderValue {
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}
