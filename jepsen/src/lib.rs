//! keel-jepsen: client histories of keel runs, and a checker that decides whether a history is
//! linearizable under etcd's KV model.
//!
//! - [`history`]: the JSON-lines history format (one invoke/complete event per line), its serde
//!   types and a builder for tests.
//! - [`model`]: etcd's KV semantics as a sequential state machine (puts, ranges, deletes, txns,
//!   compaction), shared by the checker and the history generator.
//! - [`check`]: the revision-guided linearizability checker and its explanations.
//! - [`gen`]: random histories from a correct sequential model, with optional injected faults.
//! - [`watch`]: the JSON-lines watch-log format and a checker of watch streams against a
//!   history (ordered, unique, atomic, reliable, progress, `prev_kv`, create flags, filters).
//! - [`harness`] (feature `harness`, on by default): `keel-jepsen test`, real clusters of keel
//!   or etcd in network namespaces under faults.
//!
//! A recorder writes [`history::Event`]s (`Event::invoke`, `Event::ok`, `Event::fail`,
//! `Event::info`) as JSON lines; a test then asks for a verdict and treats anything but
//! `Valid` as a failure:
//!
//! ```
//! use keel_jepsen::check::{check, CheckOptions, Verdict};
//! use keel_jepsen::history::{Event, Function, History, Request, Response};
//! let events = vec![
//!     Event::invoke(1, 10, Request::put("x", "1")),
//!     Event::ok(1, Function::Put, 20, Response::put(2)),
//! ];
//! let verdict = check(&History { events }, &CheckOptions::default());
//! assert_eq!(verdict, Verdict::Valid);
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod check;
pub mod gen;
#[cfg(all(feature = "harness", not(madsim)))]
pub mod harness;
pub mod history;
pub mod model;
pub mod watch;
