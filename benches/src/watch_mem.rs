//! Memory per watcher and per Watch stream, read from the server's resident set.
//!
//! Three readings of the server's `VmRSS`, each after `--settle-secs` of quiet: with only the
//! connections open (`r0`), after opening S streams with one watcher each (`r1`), and after
//! adding the other N − S watchers to those streams (`r2`). Then
//!
//! ```text
//! per watcher = (r2 − r1) / (N − S)
//! per stream  = (r1 − r0) / S − per watcher
//! ```
//!
//! Example: r0 = 50 MiB, 100 streams bring r1 to 52 MiB, 100 000 watchers bring r2 to 85 MiB:
//! 33 MiB / 99 900 ≈ 346 B per watcher and 2 MiB / 100 − 346 B ≈ 20.6 KB per stream.
//! RSS is what the operating system charges, garbage not yet collected included (etcd is a Go
//! program), so a reading is an upper bound on live memory; long settles make it tighter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_proto::etcdserverpb::WatchRequest;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::codec::Streaming;

use crate::load::connect;
use crate::procfs::{self, Pid};
use crate::watch_wire::{self, WatchBatch};
use crate::{Cli, WatchMemArgs};

/// How long creating every watcher may take before the run gives up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often progress is checked.
const POLL: Duration = Duration::from_millis(50);

/// The three readings and what follows from them.
pub struct MemReport {
    rss_conns: u64,
    rss_streams: u64,
    rss_watchers: u64,
    /// Time spent opening streams and creating watchers (the settles left out).
    create_secs: f64,
    client_rss: u64,
}

/// Reads responses on one stream, counting watcher confirmations; fails on a cancel.
async fn count_created(
    mut inbound: Streaming<WatchBatch>,
    created: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    loop {
        match inbound.message().await {
            Ok(Some(batch)) if batch.canceled => {
                bail!(
                    "server canceled watch {}: {}",
                    batch.watch_id,
                    batch.cancel_reason
                )
            }
            Ok(Some(batch)) if batch.created => {
                created.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the server closed a Watch stream"),
            Err(status) => bail!(
                "Watch stream failed: {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    }
}

/// Waits until `created` reaches `target`, failing if a stream task ends first.
async fn wait_created(
    readers: &mut JoinSet<anyhow::Result<()>>,
    created: &AtomicU64,
    target: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut reported = Instant::now();
    while created.load(Ordering::Relaxed) < target {
        if let Some(joined) = readers.try_join_next() {
            joined.context("reader task panicked")??;
            bail!("a Watch stream ended early");
        }
        if started.elapsed() > CREATE_TIMEOUT {
            bail!("watchers not created within {CREATE_TIMEOUT:?}");
        }
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {} of {target} watchers created",
                created.load(Ordering::Relaxed)
            );
            reported = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Sleeps `settle` and reads the server's resident set.
async fn settled_rss(pid: u32, settle: Duration) -> anyhow::Result<u64> {
    tokio::time::sleep(settle).await;
    procfs::rss_bytes(Pid::Other(pid))
}

/// Runs the memory measurement.
pub async fn run(cli: &Cli, args: &WatchMemArgs) -> anyhow::Result<MemReport> {
    if args.streams == 0 || args.watchers <= args.streams {
        bail!("--watchers must exceed --streams, and --streams be at least 1");
    }
    let settle = Duration::from_secs(args.settle_secs);
    let channels = connect(cli, cli.conns).await?;
    let rss_conns = settled_rss(args.pid, settle).await?;
    eprintln!(
        "server RSS with {} connections: {}",
        cli.conns,
        procfs::mib(rss_conns)
    );

    let create = watch_wire::create_prefix_watch(args.prefix.as_bytes());
    let created = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    let mut senders: Vec<mpsc::Sender<WatchRequest>> = Vec::new();
    let started = Instant::now();
    for stream in 0..args.streams {
        let channel = channels[stream as usize % channels.len()].clone();
        let (sender, inbound) = watch_wire::open_stream(channel, vec![create.clone()])
            .await
            .context("opening a Watch stream")?;
        senders.push(sender);
        readers.spawn(count_created(inbound, created.clone()));
    }
    wait_created(&mut readers, &created, args.streams).await?;
    let mut create_secs = started.elapsed().as_secs_f64();
    let rss_streams = settled_rss(args.pid, settle).await?;
    eprintln!(
        "server RSS with {} streams: {}",
        args.streams,
        procfs::mib(rss_streams)
    );

    let started = Instant::now();
    let rest = args.watchers - args.streams;
    for (stream, sender) in senders.iter().enumerate() {
        let count = rest / args.streams + u64::from((stream as u64) < rest % args.streams);
        let (sender, create) = (sender.clone(), create.clone());
        tokio::spawn(async move {
            for _ in 0..count {
                if sender.send(create.clone()).await.is_err() {
                    return;
                }
            }
        });
    }
    wait_created(&mut readers, &created, args.watchers).await?;
    create_secs += started.elapsed().as_secs_f64();
    eprintln!("{} watchers created in {create_secs:.1} s", args.watchers);
    let rss_watchers = settled_rss(args.pid, settle).await?;
    let client_rss = procfs::rss_bytes(Pid::Myself)?;
    drop(senders);
    Ok(MemReport {
        rss_conns,
        rss_streams,
        rss_watchers,
        create_secs,
        client_rss,
    })
}

impl MemReport {
    /// (bytes per watcher, bytes per stream); either may come out negative when the server
    /// gave memory back between readings.
    fn per_watcher_and_stream(&self, watchers: u64, streams: u64) -> (f64, f64) {
        let watcher =
            (self.rss_watchers as f64 - self.rss_streams as f64) / (watchers - streams) as f64;
        let stream = (self.rss_streams as f64 - self.rss_conns as f64) / streams as f64 - watcher;
        (watcher, stream)
    }

    /// The human-readable report followed by one `RESULT` line.
    pub fn render(&self, cli: &Cli, args: &WatchMemArgs) -> String {
        let (watcher, stream) = self.per_watcher_and_stream(args.watchers, args.streams);
        let mut out = format!(
            "\nWatch memory: {} watchers over {} streams on {} connections (settle {} s)\n",
            args.watchers, args.streams, cli.conns, args.settle_secs
        );
        out += &format!(
            "  server VmRSS: connections only {}, + streams {}, + watchers {}\n",
            procfs::mib(self.rss_conns),
            procfs::mib(self.rss_streams),
            procfs::mib(self.rss_watchers)
        );
        out += &format!("  bytes per watcher:\t{watcher:.0}\n  bytes per stream:\t{stream:.0}\n");
        out += &format!(
            "  watchers created in {:.1} s; load generator RSS {}\n",
            self.create_secs,
            procfs::mib(self.client_rss)
        );
        out += &format!(
            "RESULT op=watch-mem watchers={} streams={} conns={} rss_conns={} rss_streams={} \
             rss_watchers={} rss_watchers_mib={:.1} bytes_per_watcher={watcher:.0} \
             bytes_per_stream={stream:.0} create_s={:.1}\n",
            args.watchers,
            args.streams,
            cli.conns,
            self.rss_conns,
            self.rss_streams,
            self.rss_watchers,
            self.rss_watchers as f64 / (1024.0 * 1024.0),
            self.create_secs
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doc_example_adds_up() {
        const MIB: u64 = 1 << 20;
        let report = MemReport {
            rss_conns: 50 * MIB,
            rss_streams: 52 * MIB,
            rss_watchers: 85 * MIB,
            create_secs: 1.0,
            client_rss: 0,
        };
        let (watcher, stream) = report.per_watcher_and_stream(100_000, 100);
        assert_eq!(watcher.round(), 346.0);
        assert_eq!((stream / 100.0).round(), 206.0);
    }
}
