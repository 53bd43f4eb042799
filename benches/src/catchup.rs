//! `catch-up`: how long a rejoined member takes to reach the others' revision, polled over one
//! long-lived gRPC connection per member.
//!
//! The rejoin benchmark (`benches/scale-rejoin.sh`) used to start three `etcdctl endpoint
//! status` processes per poll, five polls a second: each a Go process start of ~13 ms of CPU,
//! about a fifth of a core on the machine whose latency the benchmark measures. This poller
//! asks the same question (Maintenance.Status, whose header carries the member's revision) of
//! the same members at the same interval, for a few microseconds of CPU a poll.
//!
//! The rule is the script's: the rejoined member has caught up once its revision reaches the
//! highest revision the others reported one poll earlier. A member that does not answer (the
//! rejoined one is still starting) counts as not caught up.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::StatusRequest;
use tonic::transport::{Channel, Endpoint};

use crate::{CatchUpArgs, Cli};

/// Polls until the member at `args.rejoined` reaches the revision `--endpoints` had one poll
/// earlier; returns the time that took.
pub async fn run(cli: &Cli, args: &CatchUpArgs) -> anyhow::Result<Duration> {
    let others = cli
        .endpoints
        .iter()
        .map(|ep| lazy_channel(ep))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rejoined = lazy_channel(&args.rejoined)?;
    let poll = Duration::from_millis(args.poll_ms);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.give_up_secs);
    let mut before: Option<i64> = None;
    while Instant::now() < deadline {
        let mut now = None;
        for channel in &others {
            if let Some(revision) = revision(channel, poll).await {
                now = Some(now.map_or(revision, |n: i64| n.max(revision)));
            }
        }
        if let (Some(target), Some(mine)) = (before, revision(&rejoined, poll).await) {
            if mine >= target {
                return Ok(started.elapsed());
            }
        }
        before = now.or(before);
        tokio::time::sleep(poll).await;
    }
    bail!(
        "{} did not catch up within {} s",
        args.rejoined,
        args.give_up_secs
    )
}

/// A channel to `endpoint` that connects on first use and again after a failure.
fn lazy_channel(endpoint: &str) -> anyhow::Result<Channel> {
    let uri = crate::load::endpoint_uri(endpoint);
    if uri.starts_with("https://") {
        bail!("catch-up polls plain http endpoints only: {endpoint}");
    }
    Ok(Endpoint::from_shared(uri)
        .with_context(|| format!("bad endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The member's revision (Status's header), or `None` if it did not answer within `wait`.
async fn revision(channel: &Channel, wait: Duration) -> Option<i64> {
    let mut client = MaintenanceClient::new(channel.clone());
    let answer = tokio::time::timeout(
        wait.max(Duration::from_secs(1)),
        client.status(StatusRequest {}),
    );
    match answer.await {
        Ok(Ok(status)) => status.into_inner().header.map(|h| h.revision),
        _ => None,
    }
}
