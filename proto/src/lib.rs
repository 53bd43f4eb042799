#![allow(missing_docs)]
//! placeholder until the crate lands
