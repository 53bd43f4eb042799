//! What keel's metrics cost a put: the gRPC call counting every request goes through
//! (`metrics::counted`), timed around a service that does nothing, and the per-commit WAL
//! histograms. Prints nanoseconds per operation and the share of a put's CPU at a given
//! throughput (default: 28 000 puts/s on 2 cores, keel's figure in benches/README.md).
//!
//! `cargo run --release -p keel-server --example metrics_cost [PUTS_PER_SEC] [CORES]`

#[cfg(madsim)]
fn main() {
    eprintln!("metrics_cost measures the tokio build; the simulator's tonic has no tower layers");
}

#[cfg(not(madsim))]
fn main() {
    real::main();
}

#[cfg(not(madsim))]
mod real {
    use std::convert::Infallible;
    use std::future::{ready, Future};
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Instant;

    use http_body::Body as _;
    use keel_server::metrics::{counted, metrics};
    use tonic::body::Body;
    use tower_service::Service;

    /// A service that answers at once with an empty OK body, standing in for KV.Put.
    #[derive(Clone)]
    struct Nothing;

    impl tonic::server::NamedService for Nothing {
        const NAME: &'static str = "etcdserverpb.KV";
    }

    impl Service<http::Request<Body>> for Nothing {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
            ready(Ok(http::Response::new(Body::empty())))
        }
    }

    /// Drives one call to completion: the future, then the body to its end.
    fn one_call<S>(service: &mut S, cx: &mut Context<'_>)
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    {
        let request = http::Request::builder()
            .uri("/etcdserverpb.KV/Put")
            .body(Body::empty())
            .unwrap_or_default();
        let mut call = std::pin::pin!(service.call(request));
        let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) else {
            return;
        };
        let mut body = response.into_body();
        while let Poll::Ready(Some(_)) = Pin::new(&mut body).poll_frame(cx) {}
    }

    fn per_call_ns<S>(service: &mut S, calls: u32) -> f64
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    {
        let mut cx = Context::from_waker(Waker::noop());
        let start = Instant::now();
        for _ in 0..calls {
            one_call(service, &mut cx);
        }
        start.elapsed().as_nanos() as f64 / f64::from(calls)
    }

    pub fn main() {
        let mut args = std::env::args().skip(1);
        let puts_per_sec: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(28_000.0);
        let cores: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2.0);
        let calls = 1_000_000;
        // Warm up both paths, then take the better of three runs each.
        let mut bare = Nothing;
        let mut with_metrics = counted(Nothing);
        per_call_ns(&mut bare, calls / 10);
        per_call_ns(&mut with_metrics, calls / 10);
        let best = |f: &mut dyn FnMut() -> f64| (0..3).map(|_| f()).fold(f64::MAX, f64::min);
        let bare_ns = best(&mut || per_call_ns(&mut bare, calls));
        let counted_ns = best(&mut || per_call_ns(&mut with_metrics, calls));
        let m = metrics();
        let start = Instant::now();
        for i in 0..calls {
            m.wal_fsync.observe(f64::from(i % 7) * 0.001);
            m.backend_commit.observe(f64::from(i % 5) * 0.001);
        }
        let commit_ns = start.elapsed().as_nanos() as f64 / f64::from(calls);
        let put_cpu_ns = cores * 1e9 / puts_per_sec;
        // At most one group commit per put (there are far fewer: one per batch).
        let added_ns = (counted_ns - bare_ns) + commit_ns;
        println!("gRPC call, bare:              {bare_ns:8.1} ns");
        println!("gRPC call, counted:           {counted_ns:8.1} ns");
        println!("WAL commit histograms:        {commit_ns:8.1} ns per group commit");
        println!(
            "a put's CPU at {puts_per_sec:.0} puts/s on {cores} cores: {put_cpu_ns:.0} ns; \
             metrics add at most {added_ns:.0} ns = {:.2}%",
            100.0 * added_ns / put_cpu_ns
        );
    }
}
