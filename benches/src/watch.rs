//! Watch fan-out: N watchers on one prefix, spread over S Watch streams on C connections; a
//! writer puts P stamped values into the prefix at a fixed rate; every delivery to every watcher
//! is timed from the put's send to the response's arrival, and checked for loss, duplication
//! and order.
//!
//! Example: 10 000 watchers over 100 streams, 100 puts at 20/s. Each put must reach every
//! watcher once, so 1 000 000 events are expected; a watcher that sees put 7 twice counts one
//! duplicate, one that never sees it counts one missed event.
//!
//! The client keeps its own cost low: [`watch_wire::WatchCodec`] decodes only the fields checked,
//! one clock read serves every event of a response, and a stream's bookkeeping is a bitset per
//! watcher plus a histogram, touched by that stream's task alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::PutRequest;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::histogram::Histogram;
use crate::load::connect;
use crate::procfs::{self, Pid};
use crate::watch_wire::{self, Stamp, WatchBatch, STAMP_BYTES};
use crate::{Cli, WatchArgs};

/// Upper bound on the client's delivery bookkeeping (one bit per watcher and put).
const SEEN_BYTES_MAX: u64 = 2 << 30;
/// Distinct keys the writer cycles through inside the prefix.
const WRITER_KEYS: u64 = 1024;
/// How long every watcher has to be created.
const CREATE_TIMEOUT: Duration = Duration::from_secs(900);
/// After the last expected event, keep reading this long to catch late duplicates.
const GRACE: Duration = Duration::from_millis(300);
/// How often the coordinator looks at the shared counters.
const POLL: Duration = Duration::from_millis(20);

/// Monotonic nanoseconds since the run's origin, shared by the writer's stamps and the
/// watchers' clocks (one process, one clock).
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ns(self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Counters every stream task bumps and the coordinator reads.
#[derive(Default)]
struct Progress {
    created: AtomicU64,
    /// Events delivered for the first time to their watcher.
    unique: AtomicU64,
}

/// What one stream's watchers saw.
struct StreamTally {
    watchers: u32,
    puts: u64,
    words_per_watcher: usize,
    /// Server-chosen watch id → index of the watcher on this stream.
    ids: HashMap<i64, u32>,
    /// Bit `seq` of watcher `w`'s words: put `seq` was delivered to `w`.
    seen: Vec<u64>,
    /// Highest `mod_revision` each watcher has seen.
    last_revision: Vec<i64>,
    latency: Histogram,
    /// Responses that carried events.
    responses: u64,
    events: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Events for unknown watch ids or without this run's stamp.
    foreign: u64,
    canceled: u64,
    cancel_reason: Option<String>,
    last_event_ns: u64,
}

impl StreamTally {
    fn new(watchers: u32, puts: u64) -> Self {
        let words_per_watcher = usize::try_from(puts.div_ceil(64)).expect("puts fit in memory");
        StreamTally {
            watchers,
            puts,
            words_per_watcher,
            ids: HashMap::with_capacity(watchers as usize),
            seen: vec![0; words_per_watcher * watchers as usize],
            last_revision: vec![0; watchers as usize],
            latency: Histogram::default(),
            responses: 0,
            events: 0,
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            canceled: 0,
            cancel_reason: None,
            last_event_ns: 0,
        }
    }

    /// Accounts for one response received at `now_ns`; returns (watchers created, events
    /// delivered for the first time).
    fn on_batch(&mut self, batch: WatchBatch, now_ns: u64) -> anyhow::Result<(u64, u64)> {
        let mut created = 0;
        if batch.created {
            let index = self.ids.len() as u32;
            if index >= self.watchers {
                bail!("server confirmed more watchers than this stream created");
            }
            if self.ids.insert(batch.watch_id, index).is_some() {
                bail!("server reused watch id {} on one stream", batch.watch_id);
            }
            created = 1;
        }
        if batch.canceled {
            self.canceled += 1;
            self.cancel_reason.get_or_insert(format!(
                "watch {} canceled: {:?} (compact_revision {})",
                batch.watch_id, batch.cancel_reason, batch.compact_revision
            ));
        }
        if batch.events.is_empty() {
            return Ok((created, 0));
        }
        let Some(&watcher) = self.ids.get(&batch.watch_id) else {
            self.foreign += batch.events.len() as u64;
            return Ok((created, 0));
        };
        let before = self.unique;
        self.responses += 1;
        for event in &batch.events {
            match event.stamp.filter(|s| s.seq < self.puts) {
                Some(stamp) => self.on_event(watcher, stamp, event.mod_revision, now_ns),
                None => self.foreign += 1,
            }
        }
        self.last_event_ns = now_ns;
        Ok((created, self.unique - before))
    }

    fn on_event(&mut self, watcher: u32, stamp: Stamp, revision: i64, now_ns: u64) {
        self.events += 1;
        self.latency
            .record(now_ns.saturating_sub(stamp.sent_ns) / 1_000);
        let word = watcher as usize * self.words_per_watcher + (stamp.seq / 64) as usize;
        let bit = 1u64 << (stamp.seq % 64);
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        let last = &mut self.last_revision[watcher as usize];
        if revision <= *last {
            self.out_of_order += 1;
        } else {
            *last = revision;
        }
    }

    fn merge(&mut self, other: StreamTally) {
        self.latency.merge(&other.latency);
        self.responses += other.responses;
        self.events += other.events;
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.foreign += other.foreign;
        self.canceled += other.canceled;
        if self.cancel_reason.is_none() {
            self.cancel_reason = other.cancel_reason;
        }
        self.last_event_ns = self.last_event_ns.max(other.last_event_ns);
    }
}

/// One Watch stream: creates its watchers, then tallies events until told to stop.
async fn run_stream(
    channel: Channel,
    watchers: u32,
    args: Arc<WatchArgs>,
    progress: Arc<Progress>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<StreamTally> {
    let create = watch_wire::create_prefix_watch(args.prefix.as_bytes());
    let (requests, mut inbound) = watch_wire::open_stream(channel, vec![create.clone()])
        .await
        .context("opening a Watch stream")?;
    // The rest of the creates go in from a task of their own: the responses must be read
    // meanwhile, or the server's send buffer and then ours fill up.
    let feeder = requests.clone();
    tokio::spawn(async move {
        for _ in 1..watchers {
            if feeder.send(create.clone()).await.is_err() {
                return;
            }
        }
    });
    let mut tally = StreamTally::new(watchers, args.puts);
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = stop.changed() => break,
        };
        let batch = match message {
            Ok(Some(batch)) => batch,
            Ok(None) => bail!("the server closed a Watch stream"),
            Err(status) => bail!(
                "Watch stream failed: {:?}: {}",
                status.code(),
                status.message()
            ),
        };
        let (created, unique) = tally.on_batch(batch, clock.now_ns())?;
        if created > 0 {
            progress.created.fetch_add(created, Ordering::Relaxed);
        }
        if unique > 0 {
            progress.unique.fetch_add(unique, Ordering::Relaxed);
        }
    }
    drop(requests);
    Ok(tally)
}

/// What the writer did.
struct WriterOutcome {
    latency: Histogram,
    errors: u64,
    first_error: Option<String>,
    first_sent_ns: u64,
}

/// Puts `args.puts` stamped values into the prefix, paced at `args.rate` per second (unpaced
/// when 0), with at most `args.writers` puts in flight.
async fn write_all(channel: Channel, args: &WatchArgs, clock: Clock) -> WriterOutcome {
    let client = KvClient::new(channel);
    let in_flight = Arc::new(Semaphore::new(args.writers as usize));
    let started = Instant::now();
    let period = if args.rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.rate)
    } else {
        Duration::ZERO
    };
    let mut puts = JoinSet::new();
    let mut outcome = WriterOutcome {
        latency: Histogram::default(),
        errors: 0,
        first_error: None,
        first_sent_ns: clock.now_ns(),
    };
    for seq in 0..args.puts {
        tokio::time::sleep_until((started + period * seq as u32).into()).await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let sent_ns = clock.now_ns();
        let key = format!("{}{:08}", args.prefix, seq % WRITER_KEYS);
        let request = PutRequest {
            key: key.into_bytes().into(),
            value: Stamp { seq, sent_ns }.encode(args.val_size).into(),
            ..PutRequest::default()
        };
        let mut client = client.clone();
        puts.spawn(async move {
            let sent = Instant::now();
            let result = client.put(request).await;
            drop(permit);
            (sent.elapsed(), result.map(drop))
        });
        while let Some(done) = puts.try_join_next() {
            outcome.account(done);
        }
    }
    while let Some(done) = puts.join_next().await {
        outcome.account(done);
    }
    outcome
}

type PutDone = Result<(Duration, Result<(), tonic::Status>), tokio::task::JoinError>;

impl WriterOutcome {
    fn account(&mut self, done: PutDone) {
        match done {
            Ok((latency, Ok(()))) => self.latency.record(latency.as_micros() as u64),
            Ok((_, Err(status))) => {
                self.errors += 1;
                self.first_error.get_or_insert(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                ));
            }
            Err(join) => {
                self.errors += 1;
                self.first_error.get_or_insert(format!("put task: {join}"));
            }
        }
    }
}

/// The whole run's figures.
pub struct WatchReport {
    tally: StreamTally,
    writer: WriterOutcome,
    expected: u64,
    create_secs: f64,
    delivery_secs: f64,
    client_cpu_secs: f64,
    server_cpu_secs: Option<f64>,
    server_rss: Option<u64>,
}

/// Checks the arguments and the memory the bookkeeping will take.
fn validate(args: &WatchArgs) -> anyhow::Result<()> {
    if args.watchers == 0 || args.streams == 0 || args.puts == 0 || args.writers == 0 {
        bail!("--watchers, --streams, --puts and --writers must be at least 1");
    }
    if args.streams > args.watchers {
        bail!("--streams must not exceed --watchers");
    }
    if args.val_size < STAMP_BYTES {
        bail!("--val-size must be at least {STAMP_BYTES} (the stamp)");
    }
    if args.puts > u64::from(u32::MAX) {
        bail!("--puts must fit in 32 bits");
    }
    let seen_bytes = args.watchers.saturating_mul(args.puts.div_ceil(64) * 8);
    if seen_bytes > SEEN_BYTES_MAX {
        bail!("{seen_bytes} bytes of delivery bitsets needed; lower --watchers or --puts");
    }
    Ok(())
}

/// Runs the fan-out benchmark.
pub async fn run(cli: &Cli, args: WatchArgs) -> anyhow::Result<WatchReport> {
    validate(&args)?;
    let args = Arc::new(args);
    let clock = Clock(Instant::now());
    let channels = connect(cli, cli.conns).await?;
    let writer_channel = connect(cli, 1).await?.remove(0);
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut streams = JoinSet::new();
    for stream in 0..args.streams {
        let extra = u64::from(stream < args.watchers % args.streams);
        let watchers = u32::try_from(args.watchers / args.streams + extra)?;
        streams.spawn(run_stream(
            channels[stream as usize % channels.len()].clone(),
            watchers,
            args.clone(),
            progress.clone(),
            clock,
            stop_rx.clone(),
        ));
    }
    let create_started = Instant::now();
    wait_for(
        &mut streams,
        CREATE_TIMEOUT,
        "watchers created",
        args.watchers,
        || progress.created.load(Ordering::Relaxed),
    )
    .await?;
    let create_secs = create_started.elapsed().as_secs_f64();
    eprintln!(
        "{} watchers created in {create_secs:.2} s; writing",
        args.watchers
    );

    let cpu_before = cpu_now(args.pid)?;
    let writer = write_all(writer_channel, &args, clock).await;
    let expected = args.watchers * args.puts;
    let drain = Duration::from_secs(args.drain_secs);
    let drained = wait_for(&mut streams, drain, "events delivered", expected, || {
        progress.unique.load(Ordering::Relaxed)
    })
    .await;
    if let Err(e) = drained {
        eprintln!("warning: {e:#}");
    }
    tokio::time::sleep(GRACE).await;
    let cpu_after = cpu_now(args.pid)?;
    let _ = stop_tx.send(true);
    let mut tally = StreamTally::new(0, args.puts);
    while let Some(joined) = streams.join_next().await {
        tally.merge(joined.context("stream task panicked")??);
    }
    let delivery_secs = tally.last_event_ns.saturating_sub(writer.first_sent_ns) as f64 / 1e9;
    Ok(WatchReport {
        tally,
        writer,
        expected,
        create_secs,
        delivery_secs,
        client_cpu_secs: cpu_after.0 - cpu_before.0,
        server_cpu_secs: cpu_after.1.zip(cpu_before.1).map(|(a, b)| a - b),
        server_rss: args
            .pid
            .map(|pid| procfs::rss_bytes(Pid::Other(pid)))
            .transpose()?,
    })
}

/// CPU seconds used so far by this process and, given a pid, by the server.
fn cpu_now(pid: Option<u32>) -> anyhow::Result<(f64, Option<f64>)> {
    let server = pid.map(|p| procfs::cpu_secs(Pid::Other(p))).transpose()?;
    Ok((procfs::cpu_secs(Pid::Myself)?, server))
}

/// Waits until `count()` reaches `target`. Fails when a stream task ends early (its error is
/// returned), or when `count()` has not moved for `stall`.
async fn wait_for(
    streams: &mut JoinSet<anyhow::Result<StreamTally>>,
    stall: Duration,
    what: &str,
    target: u64,
    count: impl Fn() -> u64,
) -> anyhow::Result<()> {
    let mut last = (count(), Instant::now());
    let mut reported = Instant::now();
    loop {
        let now = count();
        if now >= target {
            return Ok(());
        }
        if let Some(joined) = streams.try_join_next() {
            joined.context("stream task panicked")??;
            bail!("a Watch stream ended early ({now} of {target} {what})");
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > stall {
            bail!("stalled at {now} of {target} {what} for {stall:?}");
        }
        if reported.elapsed() > Duration::from_secs(5) {
            eprintln!("  {now} of {target} {what}");
            reported = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

impl WatchReport {
    fn missed(&self) -> u64 {
        self.expected.saturating_sub(self.tally.unique)
    }

    fn events_per_sec(&self) -> f64 {
        if self.delivery_secs <= 0.0 {
            return 0.0;
        }
        self.tally.events as f64 / self.delivery_secs
    }

    /// The human-readable report followed by one `RESULT` line.
    pub fn render(&self, cli: &Cli, args: &WatchArgs) -> String {
        let t = &self.tally;
        let ms = |us: u64| us as f64 / 1000.0;
        let lat = &t.latency;
        let mut out = format!(
            "\nWatch fan-out: {} watchers over {} streams on {} connections; {} puts at {}/s \
             ({} in flight at most), {}-byte values\n",
            args.watchers,
            args.streams,
            cli.conns,
            args.puts,
            args.rate,
            args.writers,
            args.val_size
        );
        out += &format!("  watchers created in:\t{:.2} s\n", self.create_secs);
        out += &format!(
            "  events delivered:\t{} of {} expected in {:.2} s: {:.0} events/s, in {} \
             responses ({:.2} events per response)\n",
            t.events,
            self.expected,
            self.delivery_secs,
            self.events_per_sec(),
            t.responses,
            t.events as f64 / t.responses.max(1) as f64
        );
        out += &format!(
            "  fan-out latency (put sent -> event received), ms:\n    p50 {:.3}  p90 {:.3}  \
             p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
            ms(lat.percentile_us(50.0)),
            ms(lat.percentile_us(90.0)),
            ms(lat.percentile_us(99.0)),
            ms(lat.percentile_us(99.9)),
            ms(lat.max_us()),
            lat.mean_us() / 1000.0
        );
        let put = &self.writer.latency;
        out += &format!(
            "  put latency, ms:\tp50 {:.3}  p99 {:.3}  max {:.3}  ({} errors{})\n",
            ms(put.percentile_us(50.0)),
            ms(put.percentile_us(99.0)),
            ms(put.max_us()),
            self.writer.errors,
            self.writer
                .first_error
                .as_ref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        );
        out += &format!(
            "  missed {}  duplicate {}  out-of-order {}  foreign {}  canceled {}\n",
            self.missed(),
            t.duplicates,
            t.out_of_order,
            t.foreign,
            t.canceled
        );
        if let Some(reason) = &t.cancel_reason {
            out += &format!("  first cancel: {reason}\n");
        }
        out += &self.render_cpu();
        if self.missed() + t.duplicates + t.out_of_order + t.canceled > 0 {
            out += "  WARNING: the server lost, repeated or reordered events\n";
        }
        out += &self.result_line(cli, args);
        out
    }

    /// One machine-readable line: `RESULT op=watch ... events_per_s=... missed=...`.
    fn result_line(&self, cli: &Cli, args: &WatchArgs) -> String {
        let t = &self.tally;
        let ms = |us: u64| us as f64 / 1000.0;
        let lat = &t.latency;
        format!(
            "RESULT op=watch watchers={} streams={} conns={} puts={} rate={} events={} \
             events_per_s={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} missed={} duplicate={} \
             out_of_order={} put_errors={} client_cpu_s={:.2} server_cpu_s={}\n",
            args.watchers,
            args.streams,
            cli.conns,
            args.puts,
            args.rate,
            t.events,
            self.events_per_sec(),
            ms(lat.percentile_us(50.0)),
            ms(lat.percentile_us(99.0)),
            ms(lat.max_us()),
            self.missed(),
            t.duplicates,
            t.out_of_order,
            self.writer.errors,
            self.client_cpu_secs,
            self.server_cpu_secs
                .map(|s| format!("{s:.2}"))
                .unwrap_or_else(|| "-".into())
        )
    }

    fn render_cpu(&self) -> String {
        let per_core = if self.client_cpu_secs > 0.0 {
            format!(
                " (~{:.0} events per client CPU-second)",
                self.tally.events as f64 / self.client_cpu_secs
            )
        } else {
            String::new()
        };
        let mut out = format!(
            "  client CPU while writing and draining:\t{:.2} s{per_core}\n",
            self.client_cpu_secs
        );
        if let (Some(cpu), Some(rss)) = (self.server_cpu_secs, self.server_rss) {
            out += &format!(
                "  server CPU in the same window:\t{cpu:.2} s; server RSS now {}\n",
                procfs::mib(rss)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch_wire::WatchedEvent;

    fn created(id: i64) -> WatchBatch {
        WatchBatch {
            watch_id: id,
            created: true,
            ..WatchBatch::default()
        }
    }

    fn events(id: i64, seqs: &[(u64, i64)]) -> WatchBatch {
        WatchBatch {
            watch_id: id,
            events: seqs
                .iter()
                .map(|&(seq, revision)| WatchedEvent {
                    kind: 0,
                    mod_revision: revision,
                    stamp: Some(Stamp { seq, sent_ns: 0 }),
                })
                .collect(),
            ..WatchBatch::default()
        }
    }

    #[test]
    fn tally_counts_unique_duplicate_and_reordered_events() {
        let mut tally = StreamTally::new(2, 100);
        assert_eq!(tally.on_batch(created(7), 0).expect("ok"), (1, 0));
        assert_eq!(tally.on_batch(created(9), 0).expect("ok"), (1, 0));
        assert_eq!(
            tally
                .on_batch(events(7, &[(0, 10), (1, 11)]), 2_000_000)
                .expect("ok"),
            (0, 2)
        );
        // Watcher 9 gets put 1 before put 0, and put 1 again.
        let batch = events(9, &[(1, 11), (0, 10), (1, 11)]);
        assert_eq!(tally.on_batch(batch, 3_000_000).expect("ok"), (0, 2));
        assert_eq!(
            (tally.unique, tally.duplicates, tally.out_of_order),
            (4, 1, 1)
        );
        // Two events took 2 ms, three 3 ms (within the histogram's 1/128 precision).
        let p40 = tally.latency.percentile_us(40.0);
        assert!((2_000..2_016).contains(&p40), "p40 {p40}");
        assert_eq!(tally.latency.max_us(), 3_000);
        // Unknown watch ids and unstamped or out-of-range values are foreign.
        tally.on_batch(events(8, &[(0, 10)]), 0).expect("ok");
        tally.on_batch(events(7, &[(100, 12)]), 0).expect("ok");
        assert_eq!(tally.foreign, 2);
    }

    #[test]
    fn tally_rejects_extra_or_reused_watchers() {
        let mut tally = StreamTally::new(1, 1);
        tally.on_batch(created(0), 0).expect("first watcher");
        assert!(tally.on_batch(created(1), 0).is_err());
        let mut tally = StreamTally::new(2, 1);
        tally.on_batch(created(0), 0).expect("first watcher");
        assert!(tally.on_batch(created(0), 0).is_err());
    }

    #[test]
    fn bookkeeping_is_bounded() {
        let mut args = WatchArgs::for_tests();
        assert!(validate(&args).is_ok());
        args.watchers = 1_000_000;
        args.puts = 100_000;
        assert!(validate(&args).is_err());
        args.puts = 10;
        args.val_size = 8;
        assert!(validate(&args).is_err());
    }
}
