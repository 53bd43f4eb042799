//! `keel`: run a keel member with etcd's flags.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use keel_server::{Config, Env, SystemClock};
use keel_storage::disk::OsDisk;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(&config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        let env = Env {
            disk: Arc::new(OsDisk),
            clock: Arc::new(SystemClock::new()),
            seed: rand::random(),
        };
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping");
                Ok(())
            }
            result = keel_server::run(config, env) => result.context("keel stopped"),
        }
    })
}

fn init_logging(level: &str) {
    // etcd's levels: debug, info, warn, error, panic, fatal.
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},raft=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
