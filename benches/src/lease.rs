//! Lease keepalive throughput: grant L leases, then renew them over K LeaseKeepAlive streams as
//! fast as the answers come back.
//!
//! Each lease has at most one keepalive in flight: a stream sends one request for each of its
//! leases, and each answer sends that lease's next keepalive, until `--total` keepalives have
//! been sent across all streams. Example: L = 1000, K = 10 keeps 100 requests in flight on each
//! stream; the latency of a keepalive runs from its send to the answer for its lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::load::{connect, Errors, Run};
use crate::{request_timeout, Cli, LeaseArgs};

/// Hands out request numbers until `total` are spent.
struct Budget {
    next: AtomicU64,
    total: u64,
}

impl Budget {
    fn take(&self) -> bool {
        self.next.fetch_add(1, Ordering::Relaxed) < self.total
    }
}

/// Grants `count` leases with `concurrency` requests in flight; returns their ids.
async fn grant_all(
    channels: &[Channel],
    count: u64,
    ttl_secs: i64,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<i64>> {
    let budget = Arc::new(Budget {
        next: AtomicU64::new(0),
        total: count,
    });
    let mut granters = JoinSet::new();
    for granter in 0..concurrency {
        let mut client = LeaseClient::new(channels[granter % channels.len()].clone());
        let budget = budget.clone();
        granters.spawn(async move {
            let mut ids = Vec::new();
            while budget.take() {
                let request = LeaseGrantRequest {
                    ttl: ttl_secs,
                    id: 0,
                };
                let response = tokio::time::timeout(timeout, client.lease_grant(request))
                    .await
                    .context("LeaseGrant timed out")?
                    .context("LeaseGrant failed")?
                    .into_inner();
                if !response.error.is_empty() || response.id == 0 {
                    bail!("LeaseGrant refused: {:?}", response.error);
                }
                ids.push(response.id);
            }
            Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(usize::try_from(count)?);
    while let Some(joined) = granters.join_next().await {
        ids.extend(joined.context("grant task panicked")??);
    }
    assert_eq!(ids.len() as u64, count, "every lease granted once");
    Ok(ids)
}

/// What one keepalive stream measured.
struct StreamOutcome {
    latencies: Vec<Duration>,
    errors: Errors,
}

/// Keeps `leases` alive on one stream until the budget is spent and every answer is in.
async fn keep_alive(
    channel: Channel,
    leases: Vec<i64>,
    budget: Arc<Budget>,
    timeout: Duration,
) -> anyhow::Result<StreamOutcome> {
    let (requests, queue) = mpsc::channel(leases.len().max(1));
    let mut sent_at: HashMap<i64, Instant> = HashMap::with_capacity(leases.len());
    // Queue the first round before the call: etcd sends response headers with its first answer.
    for &id in &leases {
        if !budget.take() {
            break;
        }
        sent_at.insert(id, Instant::now());
        requests
            .try_send(LeaseKeepAliveRequest { id })
            .expect("queue holds one request per lease");
    }
    let mut outcome = StreamOutcome {
        latencies: Vec::new(),
        errors: Errors::default(),
    };
    if sent_at.is_empty() {
        return Ok(outcome);
    }
    let mut client = LeaseClient::new(channel);
    let mut inbound = client
        .lease_keep_alive(ReceiverStream::new(queue))
        .await
        .context("opening a LeaseKeepAlive stream")?
        .into_inner();
    while !sent_at.is_empty() {
        let response = match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => bail!("no keepalive answer within {timeout:?}"),
            Ok(Err(status)) => bail!(
                "LeaseKeepAlive failed: {:?}: {}",
                status.code(),
                status.message()
            ),
            Ok(Ok(None)) => bail!("the server closed a LeaseKeepAlive stream"),
            Ok(Ok(Some(response))) => response,
        };
        let Some(sent) = sent_at.remove(&response.id) else {
            bail!(
                "answer for lease {:x} that has no keepalive in flight",
                response.id
            );
        };
        if response.ttl <= 0 {
            outcome
                .errors
                .record(format!("lease {:x} not found", response.id));
            continue;
        }
        outcome.latencies.push(sent.elapsed());
        if budget.take() {
            sent_at.insert(response.id, Instant::now());
            requests
                .send(LeaseKeepAliveRequest { id: response.id })
                .await
                .context("keepalive stream closed")?;
        }
    }
    Ok(outcome)
}

/// Grants the leases, then runs the keepalive streams; the run's clock covers the keepalives
/// only.
pub async fn run(cli: &Cli, args: &LeaseArgs) -> anyhow::Result<Run> {
    if args.leases == 0 || args.streams == 0 || args.streams > args.leases {
        bail!("--leases and --streams must be at least 1, and --streams at most --leases");
    }
    let channels = connect(cli, cli.conns).await?;
    let timeout = request_timeout(cli);
    let grant_started = Instant::now();
    let ids = grant_all(&channels, args.leases, args.ttl_secs, cli.clients, timeout).await?;
    eprintln!(
        "{} leases granted in {:.2} s",
        ids.len(),
        grant_started.elapsed().as_secs_f64()
    );
    let budget = Arc::new(Budget {
        next: AtomicU64::new(0),
        total: cli.total,
    });
    let started = Instant::now();
    let mut streams = JoinSet::new();
    for stream in 0..args.streams as usize {
        let leases: Vec<i64> = ids
            .iter()
            .skip(stream)
            .step_by(args.streams as usize)
            .copied()
            .collect();
        let channel = channels[stream % channels.len()].clone();
        streams.spawn(keep_alive(channel, leases, budget.clone(), timeout));
    }
    let mut run = Run {
        latencies: Vec::with_capacity(usize::try_from(cli.total).unwrap_or(0)),
        sent: Vec::new(), // (no timeline for keepalives)
        started_at: std::time::SystemTime::now(),
        elapsed: Duration::ZERO,
        errors: Errors::default(),
        range_kvs: 0,
    };
    while let Some(joined) = streams.join_next().await {
        let outcome = joined.context("keepalive task panicked")??;
        run.latencies.extend(outcome.latencies);
        run.errors.merge(outcome.errors);
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_hands_out_exactly_total() {
        let budget = Budget {
            next: AtomicU64::new(0),
            total: 3,
        };
        let taken = (0..10).filter(|_| budget.take()).count();
        assert_eq!(taken, 3);
    }
}
