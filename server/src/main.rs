//! `keel`: run a keel member with etcd's flags.

use std::sync::Arc;

use anyhow::Context as _;
use keel_server::config::sources::{self, LoadError, Note};
use keel_server::{Env, SystemClock};
use keel_storage::disk::OsDisk;

fn main() -> anyhow::Result<()> {
    let loaded = match sources::load(std::env::args_os(), std::env::vars_os()) {
        Ok(loaded) => loaded,
        Err(LoadError::Usage(e)) => e.exit(),
        Err(LoadError::Config(e)) => {
            eprintln!("keel: {e}");
            std::process::exit(1);
        }
    };
    let config = loaded.config;
    keel_server::logging::init(&config).context("starting the log")?;
    for note in loaded.notes {
        match note {
            Note::Warn(text) => tracing::warn!("{text}"),
            Note::Info(text) => tracing::info!("{text}"),
        }
    }
    // Held for the process's life: offline tools (keelutl defrag) refuse a running member.
    let _lock = keel_server::member_lock::lock(&config.data_dir).context("locking the data dir")?;
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

/// keel's allocator: mimalloc, whose heaps are per thread, so the tokio workers never wait for
/// each other to allocate or free.
///
/// The binary used to cap glibc malloc at one arena (`mallopt(M_ARENA_MAX, 1)`) to keep the
/// resident set small, and one arena is one lock for every thread. With both workers serving
/// requests at once that lock was contended in spells that came and went between loads (after
/// an idle period, after logins): a linearizable range then cost the server 20-27 µs of CPU
/// instead of 16-18, with up to 0.64 futex waits and 1.4 futex wakes per range from the lock
/// alone, and the range rate dropped by a third (benches/README.md, "Why keel's range rate was
/// bimodal"). With mimalloc no spell in any run, 15-17 µs per range. Its transparent huge pages
/// are off (Cargo feature `no_thp`): with them the resident set after loading 200 000 keys was
/// 137 MiB, without them 121 MiB, as with glibc's one arena.
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
