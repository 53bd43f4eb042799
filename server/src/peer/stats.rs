//! etcd's raft traffic statistics, as `/v2/stats/self` and `/v2/stats/leader` show them
//! (etcd's `etcdserver/api/v2stats`): append requests sent and received with their recent
//! rates, the leader this member last heard from, and per follower the latency and outcome of
//! each append sent to it.
//!
//! The transport counts: every append it puts on a peer stream is a send, timed from the
//! moment the batch is handed to the stream until the stream took it (etcd times the write of
//! a `MsgApp` to its stream the same way); one that never reaches the stream is a failure.
//! The peer service counts every append it receives. Soft state of this member, never
//! replicated; times come from tokio's clock (madsim's virtual one in the simulator).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Recent requests kept for a rate (etcd's `queueCapacity`).
const RATE_SAMPLES_MAX: usize = 200;
/// A rate whose newest sample is older than this is zero (etcd's one second).
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Append requests one way: how many, and the recent ones (time, bytes) for the rates.
#[derive(Debug, Default)]
struct Traffic {
    count: u64,
    recent: VecDeque<(Instant, usize)>,
}

impl Traffic {
    fn record(&mut self, at: Instant, bytes: usize) {
        self.count += 1;
        if self.recent.len() == RATE_SAMPLES_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((at, bytes));
    }

    /// Requests and bytes per second over the recent samples (etcd's `statsQueue.Rate`);
    /// zero when the newest is over a second old.
    fn rate(&mut self, now: Instant) -> (f64, f64) {
        let (Some(&(first, _)), Some(&(last, _))) = (self.recent.front(), self.recent.back())
        else {
            return (0.0, 0.0);
        };
        if now.duration_since(last) > RATE_WINDOW {
            self.recent.clear();
            return (0.0, 0.0);
        }
        let span = last.duration_since(first).as_secs_f64();
        if span <= 0.0 {
            return (0.0, 0.0);
        }
        let bytes: usize = self.recent.iter().map(|(_, b)| b).sum();
        (self.recent.len() as f64 / span, bytes as f64 / span)
    }
}

/// One follower's append latency in milliseconds and its outcomes (etcd's `FollowerStats`).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerStats {
    /// The newest append's latency.
    pub current: f64,
    /// The mean.
    pub average: f64,
    /// The standard deviation.
    pub standard_deviation: f64,
    /// The smallest (2⁶³ before the first success, as etcd starts it).
    pub minimum: f64,
    /// The largest.
    pub maximum: f64,
    /// Appends that failed.
    pub fail: u64,
    /// Appends that succeeded.
    pub success: u64,
    average_square: f64,
}

impl Default for FollowerStats {
    fn default() -> Self {
        FollowerStats {
            current: 0.0,
            average: 0.0,
            standard_deviation: 0.0,
            minimum: (1u64 << 63) as f64,
            maximum: 0.0,
            fail: 0,
            success: 0,
            average_square: 0.0,
        }
    }
}

impl FollowerStats {
    /// An append that took `latency` (etcd's `Succ`).
    pub fn succeeded(&mut self, latency: Duration) {
        // etcd: float64(d) / float64(time.Millisecond).
        let ms = latency.as_nanos() as f64 / 1e6;
        self.success += 1;
        self.current = ms;
        self.maximum = self.maximum.max(ms);
        self.minimum = self.minimum.min(ms);
        let n = self.success as f64;
        self.average = (self.average * (n - 1.0) + ms) / n;
        self.average_square = (self.average_square * (n - 1.0) + ms * ms) / n;
        let variance = (self.average_square - self.average * self.average).max(0.0);
        self.standard_deviation = variance.sqrt();
    }

    /// An append that failed (etcd's `Fail`).
    pub fn failed(&mut self) {
        self.fail += 1;
    }
}

/// What `/v2/stats/self` shows of the traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelfTraffic {
    /// Appends received.
    pub recv_count: u64,
    /// Appends received per second, recently.
    pub recv_pkg_rate: f64,
    /// Bytes of appends received per second, recently.
    pub recv_bandwidth_rate: f64,
    /// Appends sent.
    pub send_count: u64,
    /// Appends sent per second, recently.
    pub send_pkg_rate: f64,
    /// Bytes of appends sent per second, recently.
    pub send_bandwidth_rate: f64,
}

#[derive(Debug, Default)]
struct Inner {
    sent: Traffic,
    received: Traffic,
    followers: BTreeMap<u64, FollowerStats>,
    /// The leader this member last took appends from (or itself), and since when (Unix ns).
    leader: Option<(u64, i64)>,
}

/// One member's raft traffic statistics, shared by its transport, peer service and v2 API.
#[derive(Debug, Default)]
pub struct PeerStats {
    inner: Mutex<Inner>,
}

impl PeerStats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Counters only: consistent after every statement.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a follower's stats (the transport's peers), if not yet there.
    pub fn add_follower(&self, id: u64) {
        self.lock().followers.entry(id).or_default();
    }

    /// An append of `bytes` from `from` (this member, leading) put on the stream to `to`
    /// after waiting `latency`; `now_ns` is the wall time (Unix ns).
    pub fn append_sent(&self, from: u64, to: u64, bytes: usize, latency: Duration, now_ns: i64) {
        let mut inner = self.lock();
        inner.sent.record(Instant::now(), bytes);
        if inner.leader.map(|(l, _)| l) != Some(from) {
            // It leads: etcd's `BecomeLeader` starts the leader's uptime.
            inner.leader = Some((from, now_ns));
        }
        inner.followers.entry(to).or_default().succeeded(latency);
    }

    /// An append to `to` that never reached its stream.
    pub fn append_failed(&self, to: u64) {
        self.lock().followers.entry(to).or_default().failed();
    }

    /// An append of `bytes` received from `leader`; `now_ns` is the wall time (Unix ns).
    pub fn append_received(&self, leader: u64, bytes: usize, now_ns: i64) {
        let mut inner = self.lock();
        inner.received.record(Instant::now(), bytes);
        if inner.leader.map(|(l, _)| l) != Some(leader) {
            inner.leader = Some((leader, now_ns));
        }
    }

    /// The leader as this member knows it now: since when it has led (Unix ns), first seen
    /// at `now_ns` if it is new (etcd's `LeaderInfo`, moved on by appends and by becoming
    /// leader).
    pub fn leader_since(&self, leader: u64, now_ns: i64) -> i64 {
        let mut inner = self.lock();
        match inner.leader {
            Some((l, since)) if l == leader => since,
            _ => {
                inner.leader = Some((leader, now_ns));
                now_ns
            }
        }
    }

    /// The traffic counts and rates now.
    pub fn traffic(&self) -> SelfTraffic {
        let now = Instant::now();
        let mut inner = self.lock();
        let (recv_pkg_rate, recv_bandwidth_rate) = inner.received.rate(now);
        let (send_pkg_rate, send_bandwidth_rate) = inner.sent.rate(now);
        SelfTraffic {
            recv_count: inner.received.count,
            recv_pkg_rate,
            recv_bandwidth_rate,
            send_count: inner.sent.count,
            send_pkg_rate,
            send_bandwidth_rate,
        }
    }

    /// Every follower's stats.
    pub fn followers(&self) -> BTreeMap<u64, FollowerStats> {
        self.lock().followers.clone()
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[test]
    fn latency_stats_follow_etcd() {
        let mut f = FollowerStats::default();
        assert_eq!(f.minimum, 9.223372036854776e18, "etcd's 1 << 63 start");
        f.failed();
        for ms in [2u64, 4, 6] {
            f.succeeded(Duration::from_millis(ms));
        }
        assert_eq!((f.success, f.fail), (3, 1));
        assert_eq!((f.current, f.minimum, f.maximum), (6.0, 2.0, 6.0));
        assert!((f.average - 4.0).abs() < 1e-9, "mean {}", f.average);
        let sd = (8.0f64 / 3.0).sqrt();
        assert!(
            (f.standard_deviation - sd).abs() < 1e-9,
            "sd {}",
            f.standard_deviation
        );
    }

    #[test]
    fn rates_cover_the_recent_second() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        assert_eq!(t.rate(t0), (0.0, 0.0), "nothing yet");
        for i in 0..5u64 {
            t.record(t0 + Duration::from_millis(100 * i), 100);
        }
        // 5 samples over 400 ms.
        let (pkg, bw) = t.rate(t0 + Duration::from_millis(500));
        assert!(
            (pkg - 12.5).abs() < 1e-9 && (bw - 1250.0).abs() < 1e-9,
            "{pkg} {bw}"
        );
        assert_eq!(
            t.rate(t0 + Duration::from_secs(3)),
            (0.0, 0.0),
            "stale rates are zero"
        );
        assert_eq!(t.count, 5, "the count stays");
    }

    #[test]
    fn the_leader_moves_on_with_appends() {
        let stats = PeerStats::default();
        stats.append_received(7, 10, 1_000);
        assert_eq!(stats.leader_since(7, 5_000), 1_000, "the same leader");
        assert_eq!(stats.leader_since(9, 6_000), 6_000, "a new leader");
        assert_eq!(stats.traffic().recv_count, 1);
    }
}
