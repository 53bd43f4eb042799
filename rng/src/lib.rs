//! keel's one source of random choices: SplitMix64, seeded, with no dependencies.
//!
//! The engine (election jitter, lease and member ids), the simulated disk (what a power cut
//! keeps, which bit a corruption flips), the simulator (fault mix, workload) and keel-jepsen's
//! history generator all draw from this generator, so one seed gives one run, bit for bit.
//! Nothing here reads OS randomness or a clock.
//!
//! Two ways to draw a number below a bound are kept, because existing seeds must replay
//! exactly: [`SplitMix64::below`] (multiply-shift, the engine's) and
//! [`SplitMix64::below_modulo`] (remainder, the disk's, the simulator's and keel-jepsen's).
//! They give different numbers from the same state; a caller must keep the one it has.
//!
//! ```
//! use keel_rng::SplitMix64;
//! let mut a = SplitMix64::new(7);
//! let mut b = SplitMix64::new(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! assert!(a.below(10) < 10);
//! assert!(b.below_modulo(10) < 10);
//! // An independent stream per purpose, derived from one seed:
//! let mut faults = SplitMix64::for_stream(7, 1);
//! let mut clients = SplitMix64::for_stream(7, 2);
//! assert_ne!(faults.next_u64(), clients.next_u64());
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

/// The golden-ratio increment of SplitMix64 (2^64 / φ, rounded to odd).
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by [`GOLDEN_GAMMA`] and
/// mixed by a finalizer. Tiny and fast; good enough for jitter and fault choices, not for
/// anything secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole future is decided by `seed`.
    #[inline]
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for stream `stream` of `seed`: independent streams for independent
    /// purposes (the simulator's nemesis, each client, ...). The seed is mixed with the stream
    /// and then passed through one draw, so that neighbouring seeds and streams do not give
    /// neighbouring states.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        let mut mix = SplitMix64::new(seed ^ stream.wrapping_mul(GOLDEN_GAMMA));
        SplitMix64::new(mix.next_u64())
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` by Lemire's multiply-shift (the high 64 bits of
    /// `next_u64() * bound`). The tiny bias is irrelevant for jitter.
    ///
    /// # Panics
    /// If `bound` is 0.
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SplitMix64::below needs a positive bound");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A number in `0..bound` as `next_u64() % bound`. The tiny bias is irrelevant for fault
    /// and workload choices.
    ///
    /// # Panics
    /// If `bound` is 0.
    #[inline]
    pub fn below_modulo(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SplitMix64::below_modulo needs a positive bound");
        self.next_u64() % bound
    }

    /// A child generator for an independent purpose (openraft-style seed tree): seeded with
    /// this generator's next draw.
    pub fn fork(&mut self) -> SplitMix64 {
        SplitMix64::new(self.next_u64())
    }
}

/// SplitMix64's first output from seed `x`: a cheap, well-mixed 64-bit hash of `x`
/// (keel-jepsen hashes sets of operation ids with it). `mix(x) == SplitMix64::new(x).next_u64()`.
#[inline]
pub fn mix(x: u64) -> u64 {
    SplitMix64::new(x).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(mut rng: SplitMix64, n: usize) -> Vec<u64> {
        (0..n).map(|_| rng.next_u64()).collect()
    }

    #[test]
    fn known_outputs() {
        // The reference C implementation (Vigna's splitmix64.c) from seed 0 and seed 1234567.
        assert_eq!(
            draws(SplitMix64::new(0), 3),
            [
                0xE220_A839_7B1D_CDAF,
                0x6E78_9E6A_A1B9_65F4,
                0x06C4_5D18_8009_454F
            ]
        );
        assert_eq!(
            draws(SplitMix64::new(1_234_567), 5),
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn mix_is_the_first_draw() {
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix(1_234_567), 6_457_827_717_110_365_317);
    }

    #[test]
    fn known_bounded_draws() {
        // 0xE220A8397B1DCDAF * 10 >> 64 = 8; 0xE220A8397B1DCDAF % 10 = 5.
        assert_eq!(SplitMix64::new(0).below(10), 8);
        assert_eq!(SplitMix64::new(0).below_modulo(10), 5);
        let mut rng = SplitMix64::new(42);
        let got: Vec<u64> = (0..6).map(|_| rng.below(1000)).collect();
        assert_eq!(got, [741, 159, 278, 344, 38, 868]);
        let mut rng = SplitMix64::new(42);
        let got: Vec<u64> = (0..6).map(|_| rng.below_modulo(1000)).collect();
        assert_eq!(got, [413, 291, 858, 764, 250, 62]);
    }

    #[test]
    fn streams_and_forks_are_seeded_draws() {
        let mut parent = SplitMix64::new(5);
        let child = parent.fork();
        assert_eq!(child, SplitMix64::new(SplitMix64::new(5).next_u64()));
        let stream = SplitMix64::for_stream(9, 3);
        let mixed = SplitMix64::new(9 ^ 3u64.wrapping_mul(GOLDEN_GAMMA)).next_u64();
        assert_eq!(stream, SplitMix64::new(mixed));
        assert_eq!(
            draws(SplitMix64::for_stream(1, 2), 2),
            [0xA6C7_188E_0551_111E, 0x6D50_1687_9973_635C]
        );
    }

    #[test]
    fn same_seed_same_sequence_and_bounded() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..1000 {
            let x = a.below(17);
            assert_eq!(x, b.below(17));
            assert!(x < 17, "below(17) gave {x}");
            let y = a.below_modulo(17);
            assert_eq!(y, b.below_modulo(17));
            assert!(y < 17, "below_modulo(17) gave {y}");
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }

    #[test]
    #[should_panic(expected = "positive bound")]
    fn below_zero_panics() {
        SplitMix64::new(1).below(0);
    }

    #[test]
    #[should_panic(expected = "positive bound")]
    fn below_modulo_zero_panics() {
        SplitMix64::new(1).below_modulo(0);
    }
}
