//! The registry and every metric family in it (see the parent module's docs).

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use keel_engine::node::NodeGauges;
use prometheus::{
    exponential_buckets, Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::version::ETCD_VERSION;

/// Every metric the server records.
pub struct Metrics {
    registry: Registry,
    /// `etcd_server_has_leader`: 1 while this member knows a leader.
    pub has_leader: IntGauge,
    /// `etcd_server_is_leader`: 1 while this member is the leader.
    pub is_leader: IntGauge,
    /// `etcd_server_leader_changes_seen_total`.
    pub leader_changes: IntCounter,
    /// `etcd_server_proposals_committed_total`: the committed index (a gauge, as etcd's).
    pub proposals_committed: IntGauge,
    /// `etcd_server_proposals_applied_total`: the applied index (a gauge, as etcd's).
    pub proposals_applied: IntGauge,
    /// `etcd_server_proposals_pending`: requests waiting for the log.
    pub proposals_pending: IntGauge,
    /// `etcd_server_proposals_failed_total`: requests that did not make it into the log.
    pub proposals_failed: IntCounter,
    /// `etcd_disk_wal_fsync_duration_seconds`.
    pub wal_fsync: Histogram,
    /// `etcd_disk_backend_commit_duration_seconds`: a WAL group commit, write and fsync (the
    /// WAL is keel's backend).
    pub backend_commit: Histogram,
    /// `etcd_debugging_snap_save_total_duration_seconds`: a state snapshot saved to disk.
    pub snapshot_save: Histogram,
    /// `etcd_mvcc_db_total_size_in_bytes`: Status's `dbSize`.
    pub db_total_size: IntGauge,
    /// `etcd_mvcc_db_total_size_in_use_in_bytes`: Status's `dbSizeInUse`.
    pub db_in_use: IntGauge,
    /// `etcd_debugging_mvcc_keys_total`.
    pub keys: IntGauge,
    /// `etcd_debugging_mvcc_watch_stream_total`.
    pub watch_streams: IntGauge,
    /// `etcd_debugging_mvcc_watcher_total`.
    pub watchers: IntGauge,
    /// `keel_lease_active`: live leases (etcd has no gauge of them).
    pub leases: IntGauge,
    /// `keel_server_linearizable_reads_total`: linearizable reads queued for a ReadIndex round
    /// (a gauge set from the node's count, as `proposals_committed`).
    pub linearizable_reads: IntGauge,
    /// `keel_server_read_index_rounds_total`: ReadIndex rounds started; reads over rounds is
    /// how many reads share one round (a gauge set from the node's count).
    pub read_index_rounds: IntGauge,
    /// `keel_driver_turns_total`: turns of the driver loop (one wake-up, the inputs it took, the
    /// outputs handed out); requests over turns is how many one turn serves.
    pub driver_turns: IntCounter,
    /// `etcd_network_peer_sent_bytes_total{To}`.
    pub peer_sent: IntCounterVec,
    /// `etcd_network_peer_received_bytes_total{From}`.
    pub peer_received: IntCounterVec,
    /// `etcd_network_peer_round_trip_time_seconds{To}`.
    pub peer_rtt: HistogramVec,
    /// `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`.
    pub grpc_started: IntCounterVec,
    /// `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`.
    pub grpc_handled: IntCounterVec,
    process_rss: IntGauge,
    process_fds: IntGauge,
    /// Heartbeats in flight, `(from, to)` → when sent, for `peer_rtt`.
    heartbeats: Mutex<BTreeMap<(u64, u64), Instant>>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let fsync_buckets = buckets(0.001, 14);
        let m = Metrics {
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                &r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            wal_fsync: histogram(
                &r,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                fsync_buckets.clone(),
            ),
            backend_commit: histogram(
                &r,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend (keel: a WAL group commit).",
                fsync_buckets.clone(),
            ),
            snapshot_save: histogram(
                &r,
                "etcd_debugging_snap_save_total_duration_seconds",
                "The total latency distributions of save called by snapshot.",
                fsync_buckets,
            ),
            db_total_size: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            keys: gauge(
                &r,
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
            ),
            watch_streams: gauge(
                &r,
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            ),
            watchers: gauge(
                &r,
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            leases: gauge(&r, "keel_lease_active", "Number of live leases."),
            linearizable_reads: gauge(
                &r,
                "keel_server_linearizable_reads_total",
                "Linearizable reads queued for a ReadIndex round.",
            ),
            read_index_rounds: gauge(
                &r,
                "keel_server_read_index_rounds_total",
                "ReadIndex rounds started (retries included).",
            ),
            driver_turns: counter(
                &r,
                "keel_driver_turns_total",
                "Turns of the driver loop (wake-ups that took inputs and handed out outputs).",
            ),
            peer_sent: counter_vec(
                &r,
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            peer_received: counter_vec(
                &r,
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            peer_rtt: histogram_vec(
                &r,
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                &["To"],
                buckets(0.0001, 16),
            ),
            grpc_started: counter_vec(
                &r,
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &["grpc_type", "grpc_service", "grpc_method"],
            ),
            grpc_handled: counter_vec(
                &r,
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            process_rss: gauge(
                &r,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            process_fds: gauge(&r, "process_open_fds", "Number of open file descriptors."),
            heartbeats: Mutex::new(BTreeMap::new()),
            registry: r,
        };
        let version = gauge_vec(
            &m.registry,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &["server_version"],
        );
        version.with_label_values(&[ETCD_VERSION]).set(1);
        m
    }

    /// Sets the driver loop's gauges from the node's counts (once per tick), and counts a
    /// leader change when the leader differs from `last_leader`, which it then updates.
    pub fn observe_node(
        &self,
        g: &NodeGauges,
        pending: usize,
        streams: usize,
        last_leader: &mut u64,
    ) {
        self.has_leader.set(i64::from(g.leader != 0));
        self.is_leader
            .set(i64::from(g.leader != 0 && g.leader == g.member_id));
        if g.leader != 0 && g.leader != *last_leader {
            self.leader_changes.inc();
            *last_leader = g.leader;
        }
        self.proposals_committed.set(g.committed_index as i64);
        self.proposals_applied.set(g.applied_index as i64);
        self.proposals_pending.set(pending as i64);
        self.keys.set(g.keys as i64);
        self.watchers.set(g.watchers as i64);
        self.watch_streams.set(streams as i64);
        self.leases.set(g.leases as i64);
        self.db_in_use.set(g.quota_bytes_used as i64);
        self.linearizable_reads.set(g.linearizable_reads as i64);
        self.read_index_rounds.set(g.read_index_rounds as i64);
    }
}

impl Metrics {
    /// A raft heartbeat leaves `from` for `to`: the round trip starts, unless one is in flight.
    pub fn heartbeat_sent(&self, from: u64, to: u64) {
        if let Ok(mut inflight) = self.heartbeats.lock() {
            inflight.entry((from, to)).or_insert_with(Instant::now);
        }
    }

    /// `to`'s answer to `from`'s heartbeat arrived: one round trip for
    /// `etcd_network_peer_round_trip_time_seconds{To}`.
    pub fn heartbeat_answered(&self, from: u64, to: u64) {
        let sent = match self.heartbeats.lock() {
            Ok(mut inflight) => inflight.remove(&(from, to)),
            Err(_) => None,
        };
        if let Some(sent) = sent {
            self.peer_rtt
                .with_label_values(&[format!("{to:x}").as_str()])
                .observe(sent.elapsed().as_secs_f64());
        }
    }
}

/// Every metric in Prometheus's text exposition format (content type
/// [`CONTENT_TYPE`]).
pub fn render() -> String {
    let m = metrics();
    if let Some((rss, fds)) = process_stats() {
        m.process_rss.set(rss);
        m.process_fds.set(fds);
    }
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a metric family that cannot be written, which the
    // fixed families above never are.
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Resident memory in bytes and open descriptors, from `/proc/self` (Linux).
fn process_stats() -> Option<(i64, i64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    Some((pages * PAGE_BYTES, fds))
}

/// The page size `/proc/self/statm` counts in (4 KiB on the platforms keel runs on).
const PAGE_BYTES: i64 = 4096;

fn buckets(start: f64, count: usize) -> Vec<f64> {
    // Valid for any positive start and count, which the callers pass.
    exponential_buckets(start, 2.0, count).unwrap_or_default()
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are fixed and unique");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("a valid metric name"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name"),
    )
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("a valid metric name"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(r, Histogram::with_opts(opts).expect("a valid metric name"))
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(
        r,
        HistogramVec::new(opts, labels).expect("a valid metric name"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_etcds_names() {
        let m = metrics();
        let mut last = 0;
        let g = NodeGauges {
            member_id: 7,
            leader: 7,
            committed_index: 12,
            applied_index: 11,
            keys: 3,
            watchers: 2,
            leases: 1,
            quota_bytes_used: 4096,
            linearizable_reads: 30,
            read_index_rounds: 5,
        };
        m.observe_node(&g, 4, 1, &mut last);
        m.observe_node(&g, 4, 1, &mut last);
        assert_eq!(last, 7, "the leader is remembered");
        m.wal_fsync.observe(0.002);
        m.peer_sent.with_label_values(&["2"]).inc_by(10);
        let text = render();
        for line in [
            "etcd_server_has_leader 1",
            "etcd_server_is_leader 1",
            "etcd_server_leader_changes_seen_total 1",
            "etcd_server_proposals_committed_total 12",
            "etcd_server_proposals_applied_total 11",
            "etcd_server_proposals_pending 4",
            "etcd_debugging_mvcc_keys_total 3",
            "etcd_debugging_mvcc_watcher_total 2",
            "keel_server_linearizable_reads_total 30",
            "keel_server_read_index_rounds_total 5",
            "etcd_network_peer_sent_bytes_total{To=\"2\"} 10",
            "etcd_server_version{server_version=\"3.4.23\"} 1",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        // The registry is the process's: other tests of this binary may have fsynced too.
        let fsyncs = text
            .lines()
            .find_map(|l| l.strip_prefix("etcd_disk_wal_fsync_duration_seconds_count "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(fsyncs >= 1, "the fsync is counted: {fsyncs} in:\n{text}");
        assert!(
            text.contains("process_resident_memory_bytes "),
            "process metrics"
        );
        assert!(text.contains("process_open_fds "), "process metrics");
    }
}
