//! Latency statistics and the printed report (etcd benchmark's layout).

use std::fmt::Write;
use std::time::Duration;

/// Percentiles reported, as etcd's benchmark does.
const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
/// Number of histogram buckets.
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest histogram bar.
const HISTOGRAM_BAR_MAX: usize = 40;

/// Statistics over the successful requests of one run.
pub struct Summary {
    /// Successful latencies in seconds, sorted ascending.
    sorted_secs: Vec<f64>,
    total_secs: f64,
    errors: u64,
}

impl Summary {
    pub fn new(latencies: &[Duration], elapsed: Duration, errors: u64) -> Self {
        let mut sorted_secs: Vec<f64> = latencies.iter().map(Duration::as_secs_f64).collect();
        sorted_secs.sort_by(f64::total_cmp);
        Summary {
            sorted_secs,
            total_secs: elapsed.as_secs_f64(),
            errors,
        }
    }

    fn average(&self) -> f64 {
        if self.sorted_secs.is_empty() {
            return 0.0;
        }
        self.sorted_secs.iter().sum::<f64>() / self.sorted_secs.len() as f64
    }

    fn stddev(&self) -> f64 {
        if self.sorted_secs.is_empty() {
            return 0.0;
        }
        let mean = self.average();
        let variance = self
            .sorted_secs
            .iter()
            .map(|s| (s - mean) * (s - mean))
            .sum::<f64>()
            / self.sorted_secs.len() as f64;
        variance.sqrt()
    }

    fn requests_per_sec(&self) -> f64 {
        if self.total_secs <= 0.0 {
            return 0.0;
        }
        self.sorted_secs.len() as f64 / self.total_secs
    }

    /// The latency (seconds) below which `p` percent of successful requests fall
    /// (nearest rank). Example: over [1, 2, 3, 4], p50 is 2 and p99 is 4.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.sorted_secs.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted_secs[rank.clamp(1, n) - 1]
    }

    fn fastest(&self) -> f64 {
        self.sorted_secs.first().copied().unwrap_or(0.0)
    }

    fn slowest(&self) -> f64 {
        self.sorted_secs.last().copied().unwrap_or(0.0)
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nSummary:");
        let _ = writeln!(out, "  Total:\t{:.4} secs.", self.total_secs);
        let _ = writeln!(out, "  Slowest:\t{:.4} secs.", self.slowest());
        let _ = writeln!(out, "  Fastest:\t{:.4} secs.", self.fastest());
        let _ = writeln!(out, "  Average:\t{:.4} secs.", self.average());
        let _ = writeln!(out, "  Stddev:\t{:.4} secs.", self.stddev());
        let _ = writeln!(out, "  Requests/sec:\t{:.4}", self.requests_per_sec());
        out.push_str(&self.histogram());
        let _ = writeln!(out, "\nLatency distribution:");
        for p in PERCENTILES {
            let _ = writeln!(out, "  {p}% in {:.4} secs.", self.percentile(p));
        }
        let _ = writeln!(out, "\nErrors: {}", self.errors);
        out
    }

    fn histogram(&self) -> String {
        let mut out = String::from("\nResponse time histogram:\n");
        if self.sorted_secs.is_empty() {
            return out;
        }
        let (fastest, slowest) = (self.fastest(), self.slowest());
        let width = (slowest - fastest) / HISTOGRAM_BUCKETS as f64;
        let mut counts = [0usize; HISTOGRAM_BUCKETS];
        for s in &self.sorted_secs {
            let bucket = if width > 0.0 {
                ((s - fastest) / width) as usize
            } else {
                0
            };
            counts[bucket.min(HISTOGRAM_BUCKETS - 1)] += 1;
        }
        let most = counts.iter().copied().max().unwrap_or(1).max(1);
        for (i, count) in counts.iter().enumerate() {
            let mark = fastest + width * (i + 1) as f64;
            let bar = "∎".repeat(count * HISTOGRAM_BAR_MAX / most);
            let _ = writeln!(out, "  {mark:.4} [{count}]\t|{bar}");
        }
        out
    }

    /// One machine-readable line: `RESULT op=put clients=100 total=... rps=... p50_ms=...`.
    pub fn result_line(&self, op: &str, clients: usize, total: u64) -> String {
        let ms = |p: f64| self.percentile(p) * 1000.0;
        format!(
            "RESULT op={op} clients={clients} total={total} rps={:.1} p50_ms={:.3} p90_ms={:.3} \
             p99_ms={:.3} p999_ms={:.3} errors={}",
            self.requests_per_sec(),
            ms(50.0),
            ms(90.0),
            ms(99.0),
            ms(99.9),
            self.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(millis: &[u64]) -> Summary {
        let latencies: Vec<Duration> = millis.iter().map(|m| Duration::from_millis(*m)).collect();
        Summary::new(&latencies, Duration::from_secs(2), 0)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = summary(&[4, 1, 3, 2]);
        assert_eq!(s.percentile(50.0), 0.002);
        assert_eq!(s.percentile(99.0), 0.004);
        assert_eq!(s.percentile(10.0), 0.001);
    }

    #[test]
    fn result_line_has_every_field() {
        let line = summary(&[1, 2, 3, 4]).result_line("put", 100, 4);
        assert_eq!(
            line,
            "RESULT op=put clients=100 total=4 rps=2.0 p50_ms=2.000 p90_ms=4.000 p99_ms=4.000 \
             p999_ms=4.000 errors=0"
        );
    }

    #[test]
    fn empty_run_reports_zeros() {
        let s = summary(&[]);
        assert_eq!(s.percentile(50.0), 0.0);
        assert!(s.render().contains("Requests/sec:\t0.0000"));
    }
}
