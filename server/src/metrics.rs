//! Prometheus metrics, with etcd's names where etcd's dashboards and alerts use them.
//!
//! Recording stays off the hot path:
//! - the driver loop sets its gauges once per tick from [`keel_engine::node::Node::gauges`],
//!   O(1) counts, not per request, and counts its own turns (a relaxed atomic add per turn);
//! - the WAL writer and the snapshot saver observe one histogram sample per group commit,
//!   fsync or save, on their own threads;
//! - the peer transport adds each batch's bytes to a counter, and the gRPC layer
//!   ([`grpc`]) bumps two counters per call: relaxed atomic adds.
//!
//! [`render`] writes the text exposition format, on the client port's `/metrics` and on
//! `--listen-metrics-urls`. The process metrics (`process_resident_memory_bytes`,
//! `process_open_fds`) are read from `/proc` when scraped.
//!
//! One registry per process: under the simulator, several members share it. Metrics never
//! reach the engine, so they cannot change a simulation.

#[cfg(not(madsim))]
pub mod grpc;
mod registry;

pub use registry::{metrics, render, Metrics, CONTENT_TYPE};

#[cfg(not(madsim))]
pub use grpc::counted;

/// The simulator's tonic has no tower layers: its services go uncounted.
#[cfg(madsim)]
pub fn counted<S>(service: S) -> S {
    service
}
