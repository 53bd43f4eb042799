//! Seeded randomness for the engine: SplitMix64, the only source of random choices.
//!
//! The engine never reads OS randomness. Every random decision (election timeout jitter,
//! lease and member ids) is drawn from a `SplitMix64` seeded from `NodeConfig::seed`, so one
//! seed gives one behaviour, byte for byte. The generator is keel's one SplitMix64
//! ([`keel_rng`]), shared with the simulated disk, the simulator and keel-jepsen; the engine
//! draws bounded numbers with [`SplitMix64::below`] (multiply-shift).
//!
//! ```
//! use keel_engine::rng::SplitMix64;
//! let mut a = SplitMix64::new(7);
//! let mut b = SplitMix64::new(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! assert!(a.below(10) < 10);
//! ```

pub use keel_rng::SplitMix64;
