//! `grpc_server_started_total` and `grpc_server_handled_total`, as go-grpc-prometheus (which
//! etcd uses) counts them: labels `grpc_type`, `grpc_service`, `grpc_method`, and on
//! completion `grpc_code` (Go's code names: `OK`, `NotFound`, ...).
//!
//! [`counted`] wraps one tonic service. A call is started when it arrives. It is handled when
//! its status is known: at once for a trailers-only answer (every error tonic returns up
//! front), else when the body's trailers pass by. A body dropped before its trailers (a client
//! that went away) is counted `Canceled`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntCounter;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

use super::registry::metrics;

/// `service`, counted.
pub fn counted<S>(service: S) -> Counted<S> {
    Counted { inner: service }
}

/// A tonic service whose calls are counted.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

/// A call's labels: type, service, method.
#[derive(Clone, Debug)]
struct Labels([String; 3]);

impl Labels {
    fn of(path: &str) -> Labels {
        let path = path.trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        Labels([
            grpc_type(service, method).to_string(),
            service.to_string(),
            method.to_string(),
        ])
    }
}

/// One method's counters, resolved once: the labels, its `started` counter and its
/// `handled{code="OK"}` counter (the common outcome), so a call neither allocates its label
/// strings nor hashes them into the families.
#[derive(Debug)]
struct Method {
    labels: Labels,
    started: IntCounter,
    /// Resolved at the first call handled OK (no series before, as before the cache).
    handled_ok: OnceLock<IntCounter>,
}

/// Methods resolved at most, so a client sending made-up paths cannot grow the cache without
/// bound (beyond it, calls resolve their labels each time, as before the cache).
const METHODS_CACHED_MAX: usize = 256;

impl Method {
    fn resolve(labels: Labels) -> Method {
        let [t, s, m] = &labels.0;
        let m = [t.as_str(), s.as_str(), m.as_str()];
        let families = metrics();
        Method {
            started: families.grpc_started.with_label_values(&m),
            handled_ok: OnceLock::new(),
            labels,
        }
    }

    /// The method of a request path, from the cache when it is there.
    fn of(path: &str) -> Arc<Method> {
        static CACHE: OnceLock<RwLock<BTreeMap<String, Arc<Method>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(method) = cache.read().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Arc::clone(method);
        }
        let method = Arc::new(Method::resolve(Labels::of(path)));
        let mut cache = cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() < METHODS_CACHED_MAX {
            cache.insert(path.to_string(), Arc::clone(&method));
        }
        method
    }

    fn handled(&self, code: &str) {
        let [t, s, m] = &self.labels.0;
        let resolve = || {
            metrics()
                .grpc_handled
                .with_label_values(&[t.as_str(), s.as_str(), m.as_str(), code])
        };
        match code {
            "OK" => self.handled_ok.get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
    }
}

/// go-grpc-prometheus's `grpc_type` of etcd's streaming methods; every other one is unary.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("v3electionpb.Election", "Observe")
        | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    }
}

impl<S> tower_service::Service<http::Request<Body>> for Counted<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let labels = Method::of(request.uri().path());
        labels.started.inc();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if let Some(code) = status_code(response.headers()) {
                labels.handled(code_name(code));
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    labels: Some(labels),
                })
            }))
        })
    }
}

/// A response body that counts its call handled when its trailers pass.
struct CountedBody {
    inner: Body,
    /// Taken once the call is counted.
    labels: Option<Arc<Method>>,
}

impl CountedBody {
    fn finish(&mut self, code: &str) {
        if let Some(labels) = self.labels.take() {
            labels.handled(code);
        }
    }
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(0);
                    self.finish(code_name(code));
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = code_name(status.code() as i32);
                self.finish(code);
            }
            Poll::Ready(None) => self.finish("OK"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

/// The `grpc-status` of a header map, if it has one.
fn status_code(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Go's name of a gRPC status code, as go-grpc-prometheus labels it.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_codes_as_go_grpc_prometheus() {
        let l = Labels::of("/etcdserverpb.Watch/Watch");
        assert_eq!(
            l.0,
            ["bidi_stream", "etcdserverpb.Watch", "Watch"].map(String::from)
        );
        let l = Labels::of("/etcdserverpb.KV/Range");
        assert_eq!(l.0, ["unary", "etcdserverpb.KV", "Range"].map(String::from));
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NotFound");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(99), "Unknown");
    }
}
