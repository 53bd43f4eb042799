//! One gRPC connection served on one task (tokio build only).
//!
//! tonic's server hands each connection to hyper's HTTP/2 server with tokio's executor, so
//! every request stream became a task of its own: a response was made on the stream's task
//! and handed across to the connection's task, a wakeup and a scheduling each way per request.
//! Here hyper's executor is a queue ([`StreamQueue`]): what hyper would spawn is polled on the
//! connection's own task, next to the connection, in a `FuturesUnordered` ([`drive`]). Each
//! stream keeps its own waker there, so a pending stream (a Watch, a LeaseKeepAlive, a put
//! waiting for its fsync) only costs the poll it is woken for and holds up neither the other
//! streams nor the connection; when the connection ends, its streams are dropped with it.
//!
//! What tonic's server did around the router is done here as well: every request carries the
//! connection's [`ConnInfo`] in its extensions (auth's client-certificate login reads it), a
//! client's `grpc-timeout` bounds the wait for the response headers (answered `Cancelled`,
//! "Timeout expired", as tonic does), and hyper's HTTP/2 settings are tonic's defaults (no
//! limit on concurrent streams, no keepalive pings, 20 s keepalive timeout, hyper's windows).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::Status;
use tower_service::Service;

use crate::tls::stream::ConnInfo;

/// How long a keepalive ping may go unanswered (tonic's default; pings themselves are off).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The gRPC request header that carries the client's deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";
/// Rounds of connection, then streams, in one poll of [`drive`] at most before it lets the
/// other tasks run.
const ROUNDS_MAX: usize = 4;

/// A request stream (or an upgraded stream's sender) that hyper would have spawned.
type Queued = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: it queues what it is given, for [`drive`] to poll on
/// the connection's task. hyper calls it while the connection (or a stream) is polled, so the
/// lock is never contended.
#[derive(Clone, Default)]
struct StreamQueue(Arc<Mutex<Vec<Queued>>>);

impl StreamQueue {
    /// Moves everything queued into `streams`; false when nothing was.
    fn drain_into(&self, streams: &mut FuturesUnordered<Queued>) -> bool {
        let mut queued = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if queued.is_empty() {
            return false;
        }
        streams.extend(queued.drain(..));
        true
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for StreamQueue {
    fn execute(&self, future: F) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(future));
    }
}

/// Serves `io` as one HTTP/2 connection answered by `routes`, until the connection ends. Every
/// request stream runs on the caller's task.
pub async fn serve<I>(io: I, info: ConnInfo, routes: Routes)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = info.remote;
    let queue = StreamQueue::default();
    let mut builder = http2::Builder::new(queue.clone());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(None)
        .max_local_error_reset_streams(None)
        .keep_alive_interval(None)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .adaptive_window(false);
    let service = GrpcService { routes, info };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = drive(conn, &queue).await {
        tracing::debug!(%remote, error = %e, "serving a gRPC connection");
    }
}

/// Polls `conn` and the streams it queues on `queue` together, on this task, until `conn`
/// ends; the streams still running are dropped then.
async fn drive<C: Future>(conn: C, queue: &StreamQueue) -> C::Output {
    let mut conn = pin!(conn);
    let mut streams = FuturesUnordered::new();
    let signal = Arc::new(ConnSignal::default());
    let conn_waker = Waker::from(signal.clone());
    poll_fn(|cx| {
        signal.task.register(cx.waker());
        let mut conn_cx = Context::from_waker(&conn_waker);
        let turn = Turn {
            conn: conn.as_mut(),
            conn_cx: &mut conn_cx,
            streams: &mut streams,
            queue,
            signal: &signal,
        };
        turn.poll(cx)
    })
    .await
}

/// The connection's waker. A wake while [`Turn::poll`] runs (a stream handing the connection
/// an answer to write) only leaves a mark, and the turn polls the connection again before it
/// ends; any other wake (the socket, a timer) wakes the task.
#[derive(Default)]
struct ConnSignal {
    task: AtomicWaker,
    /// Set while a turn runs.
    polling: AtomicBool,
    /// Set by a wake during a turn.
    woken: AtomicBool,
}

impl Wake for ConnSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst on both sides: either this sees the turn still running, or the turn's last
        // look at `woken` sees this mark.
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// One poll of [`drive`].
struct Turn<'a, 'b, C> {
    conn: Pin<&'a mut C>,
    conn_cx: &'a mut Context<'b>,
    streams: &'a mut FuturesUnordered<Queued>,
    queue: &'a StreamQueue,
    signal: &'a ConnSignal,
}

impl<C: Future> Turn<'_, '_, C> {
    /// The connection (which reads requests, queues their streams and writes what the
    /// streams answered), then the streams that are ready, again while either gave the other
    /// work.
    fn poll(mut self, cx: &mut Context<'_>) -> Poll<C::Output> {
        for _ in 0..ROUNDS_MAX {
            self.signal.polling.store(true, Ordering::SeqCst);
            self.signal.woken.store(false, Ordering::SeqCst);
            if let Poll::Ready(out) = self.conn.as_mut().poll(self.conn_cx) {
                return Poll::Ready(out);
            }
            self.queue.drain_into(self.streams);
            // Each stream is polled only when its own waker fired; `Ready(None)`: none left.
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
            let queued = self.queue.drain_into(self.streams);
            self.signal.polling.store(false, Ordering::SeqCst);
            if !self.signal.woken.swap(false, Ordering::SeqCst) && !queued {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// tonic's router as hyper's service for one connection.
#[derive(Clone)]
struct GrpcService {
    routes: Routes,
    info: ConnInfo,
}

type RoutesFuture = <Routes as Service<http::Request<Incoming>>>::Future;

impl hyper::service::Service<http::Request<Incoming>> for GrpcService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Deadline<RoutesFuture>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        let sleep = grpc_timeout(request.headers()).map(|t| Box::pin(tokio::time::sleep(t)));
        // The router (axum's) is always ready: it needs no `poll_ready` before a call.
        let mut routes = self.routes.clone();
        Deadline {
            inner: routes.call(request),
            sleep,
        }
    }
}

/// A response future cut short by the client's `grpc-timeout`, if it sent one.
pub struct Deadline<F> {
    inner: F,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<F> Future for Deadline<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(response) = Pin::new(&mut this.inner).poll(cx) {
            return Poll::Ready(response);
        }
        match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Ok(Status::cancelled("Timeout expired").into_http()))
            }
            _ => Poll::Pending,
        }
    }
}

/// The deadline a `grpc-timeout` header gives (gRPC over HTTP/2: at most 8 digits and a unit
/// of `H`, `M`, `S`, `m`, `u` or `n`); None without one or when it does not parse.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match value.as_bytes().last()? {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            GRPC_TIMEOUT,
            http::HeaderValue::from_str(value).expect("a valid header value"),
        );
        h
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_rest() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(grpc_timeout(&headers("3M")), Some(Duration::from_secs(180)));
        assert_eq!(
            grpc_timeout(&headers("99999999m")),
            Some(Duration::from_millis(99_999_999))
        );
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(&headers("8n")), Some(Duration::from_nanos(8)));
        assert_eq!(grpc_timeout(&headers("123456789m")), None, "9 digits");
        assert_eq!(grpc_timeout(&headers("S")), None, "no digits");
        assert_eq!(grpc_timeout(&headers("5s")), None, "no such unit");
        assert_eq!(grpc_timeout(&headers("-5S")), None, "a sign");
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None, "no header");
    }
}
