//! A fixed-size, log-linear latency histogram (HdrHistogram's layout, two significant digits).
//!
//! The watch benchmark records one latency per delivered event, tens of millions per run, so it
//! cannot keep them all the way `report::Summary` does. Values are microseconds. Below
//! `2 * SUB_BUCKETS` every value has its own bucket; above, each power of two is cut into
//! `SUB_BUCKETS` equal buckets, so a reported percentile is at most 1/128 (0.8 %) above the
//! true one. Worked example: 300 µs falls in the octave [256, 512), whose buckets are 2 µs
//! wide, so it lands in [300, 301] and p100 of `{300}` reads 301; the exact maximum is kept
//! apart and reads 300.

/// Sub-buckets per power of two, as a shift.
const SUB_BUCKET_BITS: u32 = 7;
/// Sub-buckets per power of two.
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Largest value recorded as itself (about 19 hours); larger ones are clamped to it.
const VALUE_MAX_US: u64 = (1 << 36) - 1;
/// Number of buckets needed to reach `VALUE_MAX_US`.
const BUCKETS: usize = bucket_index(VALUE_MAX_US) + 1;

/// Latency counts in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
    sum_us: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
            sum_us: 0,
        }
    }
}

/// The bucket holding `value_us` (which must be at most `VALUE_MAX_US`).
const fn bucket_index(value_us: u64) -> usize {
    if value_us < 2 * SUB_BUCKETS {
        return value_us as usize;
    }
    let msb = 63 - value_us.leading_zeros();
    let shift = msb - SUB_BUCKET_BITS;
    let sub = (value_us >> shift) - SUB_BUCKETS;
    (2 * SUB_BUCKETS + (shift as u64 - 1) * SUB_BUCKETS + sub) as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_high_us(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB_BUCKETS {
        return index;
    }
    let above = index - 2 * SUB_BUCKETS;
    let shift = above / SUB_BUCKETS + 1;
    let low = (above % SUB_BUCKETS + SUB_BUCKETS) << shift;
    low + (1 << shift) - 1
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, value_us: u64) {
        let value_us = value_us.min(VALUE_MAX_US);
        self.counts[bucket_index(value_us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(value_us);
        self.sum_us += u128::from(value_us);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        assert_eq!(
            self.counts.len(),
            other.counts.len(),
            "histogram layouts differ"
        );
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us += other.sum_us;
    }

    /// The exact largest recorded value.
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The mean of the recorded values (0 when empty).
    pub fn mean_us(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.sum_us as f64 / self.total as f64
    }

    /// The value below which `p` percent of the recorded values fall (nearest rank, reported
    /// as the top of its bucket but never above the exact maximum); 0 when empty.
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_high_us(index).min(self.max_us);
            }
        }
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut previous_high = None;
        for index in 0..BUCKETS {
            let high = bucket_high_us(index);
            if let Some(previous) = previous_high {
                assert!(high > previous, "bucket {index} does not grow");
            }
            assert_eq!(bucket_index(high), index);
            previous_high = Some(high);
        }
        assert_eq!(bucket_high_us(BUCKETS - 1), VALUE_MAX_US);
    }

    #[test]
    fn small_values_are_exact_and_large_ones_within_one_percent() {
        for value in [
            0,
            1,
            17,
            255,
            256,
            300,
            511,
            512,
            9_999,
            1_234_567,
            VALUE_MAX_US,
        ] {
            let high = bucket_high_us(bucket_index(value));
            assert!(high >= value);
            assert!(
                (high - value) as f64 <= value as f64 / 128.0,
                "{value} -> {high}"
            );
        }
        assert_eq!(bucket_high_us(bucket_index(300)), 301);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut h = Histogram::default();
        for value in [4, 1, 3, 2] {
            h.record(value);
        }
        assert_eq!(h.percentile_us(50.0), 2);
        assert_eq!(h.percentile_us(99.0), 4);
        assert_eq!(h.percentile_us(10.0), 1);
        assert_eq!(h.mean_us(), 2.5);
    }

    #[test]
    fn percentile_never_exceeds_the_exact_maximum() {
        let mut h = Histogram::default();
        h.record(300);
        assert_eq!(h.percentile_us(100.0), 300);
        assert_eq!(h.max_us(), 300);
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(10);
        b.record(20);
        b.record(u64::MAX);
        a.merge(&b);
        assert_eq!(a.total, 3);
        assert_eq!(a.max_us(), VALUE_MAX_US);
        assert_eq!(a.percentile_us(50.0), 20);
        assert_eq!(Histogram::default().percentile_us(99.0), 0);
    }
}
