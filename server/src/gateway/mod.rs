//! etcd's HTTP/1.1 JSON surface on the client port: the grpc-gateway routes under `/v3/`,
//! `/health` and `/version` (tokio build only; the listener that tells HTTP/1.x from HTTP/2
//! gRPC is [`crate::client::listener`]).
//!
//! Every `/v3/` route calls the gRPC service objects in-process, the very objects the gRPC
//! router serves ([`Apis`]), so a service answers the same through both doors: a method still
//! answering `Unimplemented` gives etcd's JSON error for it (HTTP 501, code 12), and starts
//! working through the gateway the moment its implementation is registered.
//!
//! Requests and responses are etcd 3.4.23's: see [`json`] for the mapping, [`routes`] for the
//! table (one line a route), [`stream`] for the streamed routes.

pub mod json;
pub mod routes;
mod stream;
pub mod v2;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, StatusCode};
use keel_proto::etcdserverpb::auth_server::Auth;
use keel_proto::etcdserverpb::cluster_server::Cluster;
use keel_proto::etcdserverpb::kv_server::Kv;
use keel_proto::etcdserverpb::lease_server::Lease;
use keel_proto::etcdserverpb::maintenance_server::Maintenance;
use keel_proto::etcdserverpb::watch_server::Watch;
use keel_proto::etcdserverpb::{RangeRequest, StatusRequest};
use keel_proto::v3electionpb::election_server::Election;
use keel_proto::v3lockpb::lock_server::Lock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use json::Reply;

/// An HTTP request as hyper hands it over.
pub type HttpRequest = Request<Incoming>;
/// One route's handler.
pub type Handler = fn(Gateway, HttpRequest) -> BoxFuture<'static, Reply>;

/// The versions `/version` reports: etcd's, whose wire behaviour keel matches.
pub const VERSION_JSON: &str = r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#;
/// How long `/health` waits for its read, as etcd's health check does.
pub const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The gRPC service objects of one member, shared by the gRPC router and the gateway.
pub struct Apis {
    /// KV.
    pub kv: Arc<dyn Kv>,
    /// Watch.
    pub watch: Arc<dyn Watch>,
    /// Lease.
    pub lease: Arc<dyn Lease>,
    /// Cluster.
    pub cluster: Arc<dyn Cluster>,
    /// Maintenance.
    pub maintenance: Arc<dyn Maintenance>,
    /// Auth.
    pub auth: Arc<dyn Auth>,
    /// v3lockpb.Lock.
    pub lock: Arc<dyn Lock>,
    /// v3electionpb.Election.
    pub election: Arc<dyn Election>,
}

/// The JSON gateway of one member.
#[derive(Clone)]
pub struct Gateway {
    apis: Arc<Apis>,
    routes: Arc<BTreeMap<&'static str, (Method, Handler)>>,
    body_bytes_max: usize,
    /// etcd's v2 API under `/v2/` (`--enable-v2`); without it `/v2/` is not found.
    v2: Option<Arc<v2::V2Http>>,
}

impl Gateway {
    /// A gateway over `apis` answering `routes` (etcd's: `routes::table()`), refusing request
    /// bodies above `body_bytes_max`.
    pub fn new(
        apis: Apis,
        routes: Vec<(Method, &'static str, Handler)>,
        body_bytes_max: usize,
    ) -> Gateway {
        Gateway {
            apis: Arc::new(apis),
            routes: Arc::new(routes.into_iter().map(|(m, p, h)| (p, (m, h))).collect()),
            body_bytes_max,
            v2: None,
        }
    }

    /// This gateway serving etcd's v2 API under `/v2/` as well.
    pub fn with_v2(mut self, v2: Arc<v2::V2Http>) -> Gateway {
        self.v2 = Some(v2);
        self
    }

    /// Serves one HTTP/1.x connection until it closes.
    pub async fn serve_connection<T>(self, io: T)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let gateway = self.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "HTTP/1 connection ended");
        }
    }

    /// Answers one request.
    pub async fn handle(self, request: HttpRequest) -> Reply {
        let mut reply = self.route(request).await;
        let headers = reply.headers_mut();
        // etcd's default CORS answer (`--cors` unset means every origin).
        headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("accept, content-type, authorization"),
        );
        reply
    }

    async fn route(self, request: HttpRequest) -> Reply {
        if request.method() == Method::OPTIONS {
            return json::empty_reply(StatusCode::OK);
        }
        if let (Some(v2), true) = (&self.v2, request.uri().path().starts_with("/v2/")) {
            return v2.serve(request).await;
        }
        let path = canonical_path(request.uri().path());
        let Some((method, handler)) = self.routes.get(path.as_str()).cloned() else {
            return if path.starts_with("/v3/") {
                json::text_reply(StatusCode::NOT_FOUND, "Not Found")
            } else {
                json::text_reply(StatusCode::NOT_FOUND, "404 page not found")
            };
        };
        if request.method() != method {
            let mut reply = json::text_reply(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            if method == Method::GET {
                // etcd's own handlers (/health, /version) name the method they take.
                reply
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET"));
            }
            return reply;
        }
        handler(self, request).await
    }

    /// `/version`.
    pub fn version(_gateway: Gateway, _request: HttpRequest) -> BoxFuture<'static, Reply> {
        Box::pin(async {
            json::json_reply(
                StatusCode::OK,
                bytes::Bytes::from_static(VERSION_JSON.as_bytes()),
            )
        })
    }

    /// `/metrics`: every metric in Prometheus's text format ([`crate::metrics::render`]).
    pub fn metrics(_gateway: Gateway, _request: HttpRequest) -> BoxFuture<'static, Reply> {
        Box::pin(async {
            let text = crate::metrics::render();
            let mut reply = json::empty_reply(StatusCode::OK);
            *reply.body_mut() = json::full(bytes::Bytes::from(text));
            reply.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            reply
        })
    }

    /// `/health` (`?exclude=NAME` ignores that alarm).
    pub fn health_route(gateway: Gateway, request: HttpRequest) -> BoxFuture<'static, Reply> {
        Box::pin(async move {
            let excluded = excluded_alarms(request.uri().query());
            gateway.health(&excluded).await
        })
    }

    /// A unary call: the body as the request message, the answer as JSON.
    async fn unary<Req, Resp, F, Fut>(self, request: HttpRequest, call: F) -> Reply
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize,
        F: FnOnce(Arc<Apis>, GrpcRequest<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<GrpcResponse<Resp>, Status>>,
    {
        let (message, metadata) = match self.read_message::<Req>(request).await {
            Ok(m) => m,
            Err(reply) => return reply,
        };
        let grpc = grpc_request(message, metadata);
        match call(Arc::clone(&self.apis), grpc).await {
            Ok(resp) => json::ok(resp.get_ref()),
            Err(status) => json::status_reply(&status),
        }
    }

    /// Reads and parses a request's body; the answer to send instead when that fails.
    async fn read_message<Req: DeserializeOwned + Default>(
        &self,
        request: HttpRequest,
    ) -> Result<(Req, Option<HeaderValue>), Reply> {
        let (parts, body) = request.into_parts();
        let bytes = json::read_body(body, self.body_bytes_max)
            .await
            .map_err(|e| e.reply())?;
        let message = json::parse::<Req>(&bytes).map_err(|e| e.reply())?;
        Ok((message, parts.headers.get("authorization").cloned()))
    }

    /// etcd 3.4's health check: no alarm (bar `?exclude=NAME` ones), a leader, and a read
    /// that succeeds within [`HEALTH_READ_TIMEOUT`]. etcd 3.4 gives no reason in the body.
    async fn health(&self, excluded: &[String]) -> Reply {
        let healthy = self.check_health(excluded).await;
        if healthy {
            // Go sniffs the type of etcd's answer: text.
            let mut reply = json::empty_reply(StatusCode::OK);
            *reply.body_mut() = json::full(bytes::Bytes::from_static(br#"{"health":"true"}"#));
            reply.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            reply
        } else {
            json::text_reply(StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
        }
    }

    async fn check_health(&self, excluded: &[String]) -> bool {
        let status = match self
            .apis
            .maintenance
            .status(GrpcRequest::new(StatusRequest {}))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(_) => return false,
        };
        let alarmed = status.errors.iter().any(|e| match alarm_name(e) {
            Some(name) => !excluded.iter().any(|x| x == name),
            None => true,
        });
        if alarmed || status.leader == 0 {
            return false;
        }
        let read = RangeRequest {
            key: bytes::Bytes::from_static(b"health"),
            serializable: true,
            ..Default::default()
        };
        let range = self.apis.kv.range(GrpcRequest::new(read));
        matches!(
            tokio::time::timeout(HEALTH_READ_TIMEOUT, range).await,
            Ok(Ok(_))
        )
    }
}

/// `/v3beta/...` and `/v3alpha/...` are `/v3/...` (etcd 3.4.23 rewrites `/v3beta/`; keel also
/// `/v3alpha/`, for clients written for etcd 3.3, where etcd 3.4.23 answers 404).
fn canonical_path(path: &str) -> String {
    for old in ["/v3beta/", "/v3alpha/"] {
        if let Some(rest) = path.strip_prefix(old) {
            return format!("/v3/{rest}");
        }
    }
    path.to_string()
}

/// The alarms `?exclude=NAME&exclude=...` names.
fn excluded_alarms(query: Option<&str>) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("exclude="))
        .map(str::to_string)
        .collect()
}

/// The alarm name in a Status `errors` entry (`memberID:1 alarm:NOSPACE `).
fn alarm_name(entry: &str) -> Option<&str> {
    entry
        .split_whitespace()
        .find_map(|field| field.strip_prefix("alarm:"))
}

/// A gRPC request carrying the HTTP `Authorization` header as the `authorization` metadata
/// etcd's auth reads (as grpc-gateway forwards it).
fn grpc_request<T>(message: T, authorization: Option<HeaderValue>) -> GrpcRequest<T> {
    let mut request = GrpcRequest::new(message);
    if let Some(value) = authorization.and_then(|v| v.to_str().ok().map(str::to_string)) {
        if let Ok(value) = value.parse() {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_prefixes_are_v3() {
        assert_eq!(canonical_path("/v3beta/kv/range"), "/v3/kv/range");
        assert_eq!(canonical_path("/v3alpha/kv/put"), "/v3/kv/put");
        assert_eq!(canonical_path("/v3/watch"), "/v3/watch");
        assert_eq!(canonical_path("/v2/keys"), "/v2/keys");
    }

    #[test]
    fn the_authorization_header_becomes_metadata() {
        let token = HeaderValue::from_static("abc.def");
        let request = grpc_request((), Some(token));
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("abc.def"),
            "forwarded as grpc-gateway forwards it"
        );
        assert!(
            grpc_request((), None).metadata().is_empty(),
            "no header, no metadata"
        );
    }

    #[test]
    fn health_reads_alarm_names_and_exclusions() {
        assert_eq!(alarm_name("memberID:1 alarm:NOSPACE "), Some("NOSPACE"));
        assert_eq!(alarm_name("alarm:CORRUPT "), Some("CORRUPT"));
        assert_eq!(
            excluded_alarms(Some("exclude=NOSPACE&x=1&exclude=CORRUPT")),
            vec!["NOSPACE".to_string(), "CORRUPT".to_string()]
        );
        assert!(excluded_alarms(None).is_empty(), "no query, no exclusion");
    }
}
