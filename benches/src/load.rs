//! Drives the requests: connections, clients, and the shared request budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_proto::etcdserverpb::auth_client::AuthClient;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tonic::transport::{Channel, Endpoint};

use crate::{request_timeout, Cli, Command, Consistency};

/// At most this many distinct error messages are kept (the rest are counted as "other").
const ERROR_KINDS_MAX: usize = 16;

/// What one benchmark run measured.
pub struct Run {
    /// Latency of every successful request.
    pub latencies: Vec<Duration>,
    /// When each of them was sent, after `started_at` (same order as `latencies`).
    pub sent: Vec<Duration>,
    /// The wall clock when the run started.
    pub started_at: std::time::SystemTime,
    /// Wall time from the first request to the last response.
    pub elapsed: Duration,
    pub errors: Errors,
    /// Key-value pairs returned by all Range responses together (a sanity check that reads
    /// really read something).
    pub range_kvs: u64,
}

/// Failed requests, grouped by message.
#[derive(Default)]
pub struct Errors {
    by_message: BTreeMap<String, u64>,
}

impl Errors {
    pub fn record(&mut self, message: String) {
        let kinds = self.by_message.len();
        let key = if kinds < ERROR_KINDS_MAX || self.by_message.contains_key(&message) {
            message
        } else {
            "(other errors)".to_string()
        };
        *self.by_message.entry(key).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: Errors) {
        for (message, count) in other.by_message {
            *self.by_message.entry(message).or_insert(0) += count;
        }
    }

    /// Number of failed requests.
    pub fn total(&self) -> u64 {
        self.by_message.values().sum()
    }

    /// Lists the errors the way etcd's benchmark does, or nothing when there were none.
    pub fn render(&self) -> String {
        if self.by_message.is_empty() {
            return String::new();
        }
        let mut out = String::from("\nError distribution:\n");
        for (message, count) in &self.by_message {
            out.push_str(&format!("  [{count}]\t{message}\n"));
        }
        out
    }
}

/// One client's share of the work, built once per client.
#[derive(Clone)]
enum Workload {
    Put {
        key_size: usize,
        key_space_size: u64,
        sequential: bool,
        value: bytes::Bytes,
    },
    Range {
        request: RangeRequest,
        /// `(key_space_size, key_size)`: read one random encoded key per request.
        random: Option<(u64, usize)>,
    },
    /// Log in, again and again.
    Authenticate(AuthenticateRequest),
}

/// Runs the benchmark described by `cli` to completion.
pub async fn run(cli: &Cli) -> anyhow::Result<Run> {
    let channels = connect(cli, cli.conns).await?;
    let workload = workload(&cli.command, cli.user.as_deref())?;
    let token = match workload {
        // Each request is a login; none carries a token.
        Workload::Authenticate(_) => None,
        _ => login(cli, &channels[0]).await?,
    };
    let next = Arc::new(AtomicU64::new(0));
    let started_at = std::time::SystemTime::now();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cli.clients);
    for client_index in 0..cli.clients {
        let channel = channels[client_index % channels.len()].clone();
        let job = Job {
            client: KvClient::new(channel.clone()),
            auth: AuthClient::new(channel),
            workload: workload.clone(),
            next: next.clone(),
            total: cli.total,
            timeout: request_timeout(cli),
            rng: StdRng::seed_from_u64(0x6b65_656c ^ client_index as u64),
            token: token.clone(),
            origin: started,
        };
        tasks.push(tokio::spawn(job.run()));
    }
    let mut latencies = Vec::with_capacity(usize::try_from(cli.total).unwrap_or(0));
    let mut sent = Vec::with_capacity(latencies.capacity());
    let mut errors = Errors::default();
    let mut range_kvs = 0;
    for task in tasks {
        let outcome = task.await.context("client task panicked")?;
        latencies.extend(outcome.latencies);
        sent.extend(outcome.sent);
        errors.merge(outcome.errors);
        range_kvs += outcome.range_kvs;
    }
    Ok(Run {
        latencies,
        sent,
        started_at,
        elapsed: started.elapsed(),
        errors,
        range_kvs,
    })
}

/// Writes `run`'s requests to `path` (`--timeline`): one line each, its start in Unix seconds
/// and its latency in ms, in start order.
pub fn write_timeline(run: &Run, path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let origin = run
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut rows: Vec<(Duration, Duration)> = run
        .sent
        .iter()
        .zip(&run.latencies)
        .map(|(sent, latency)| (origin + *sent, *latency))
        .collect();
    rows.sort();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (at, latency) in rows {
        writeln!(
            out,
            "{:.6} {:.3}",
            at.as_secs_f64(),
            latency.as_secs_f64() * 1e3
        )?;
    }
    out.flush()
}

/// With `--user name:password`, one login (etcd's benchmark logs in the same way): the
/// token every request then carries.
async fn login(
    cli: &Cli,
    channel: &Channel,
) -> anyhow::Result<Option<tonic::metadata::AsciiMetadataValue>> {
    let Some(user) = &cli.user else {
        return Ok(None);
    };
    let request = authenticate_request(user)?;
    let mut auth = keel_proto::etcdserverpb::auth_client::AuthClient::new(channel.clone());
    let token = auth.authenticate(request).await?.into_inner().token;
    Ok(Some(token.parse().context("a token is ASCII")?))
}

/// `endpoint` as a URI: `host:port` means `http://host:port`.
pub fn endpoint_uri(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Opens `count` channels, spreading them over the endpoints round-robin.
pub async fn connect(cli: &Cli, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for conn_index in 0..count {
        let endpoint = &cli.endpoints[conn_index % cli.endpoints.len()];
        let uri = endpoint_uri(endpoint);
        let tls = uri
            .strip_prefix("https://")
            .map(|rest| format!("http://{rest}"));
        let plain = tls.clone().unwrap_or_else(|| uri.clone());
        let endpoint = Endpoint::from_shared(plain)
            .with_context(|| format!("bad endpoint {endpoint:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = match tls {
            #[cfg(not(madsim))]
            Some(_) => {
                let connector = crate::tls::Connector::new(cli, endpoint.uri())?;
                endpoint.connect_with_connector(connector).await
            }
            #[cfg(not(madsim))]
            _ => {
                let connector = crate::coalesce::PlainConnector {
                    coalesce: !cli.no_coalesce,
                };
                endpoint.connect_with_connector(connector).await
            }
            #[cfg(madsim)]
            _ => endpoint.connect().await,
        }
        .with_context(|| format!("connecting to {uri}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// An Authenticate request for `name:password`.
fn authenticate_request(user: &str) -> anyhow::Result<AuthenticateRequest> {
    let (name, password) = user.split_once(':').context("--user is name:password")?;
    Ok(AuthenticateRequest {
        name: name.to_string(),
        password: password.to_string(),
    })
}

/// The work `command` describes (`user`: `--user`, which Authenticate needs).
fn workload(command: &Command, user: Option<&str>) -> anyhow::Result<Workload> {
    Ok(match command {
        Command::Put {
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
        } => {
            let mut value = vec![0u8; *val_size];
            StdRng::seed_from_u64(7).fill_bytes(&mut value);
            Workload::Put {
                key_size: *key_size,
                key_space_size: *key_space_size,
                sequential: *sequential_keys,
                value: value.into(),
            }
        }
        Command::Range {
            key,
            end,
            consistency,
            key_space_size,
            key_size,
        } => Workload::Range {
            request: RangeRequest {
                key: key.clone().into_bytes().into(),
                range_end: end
                    .clone()
                    .map(String::into_bytes)
                    .unwrap_or_default()
                    .into(),
                serializable: *consistency == Consistency::S,
                ..RangeRequest::default()
            },
            random: key_space_size.map(|space| (space, *key_size)),
        },
        Command::Authenticate => {
            let user = user.context("authenticate needs --user")?;
            Workload::Authenticate(authenticate_request(user)?)
        }
        other => anyhow::bail!("not a KV load: {other:?}"),
    })
}

/// Encodes key number `n` big-endian into exactly `key_size` bytes (keeping the low bytes when
/// `key_size < 8`), so keys sort numerically.
fn encode_key(n: u64, key_size: usize) -> bytes::Bytes {
    let mut key = vec![0u8; key_size];
    let be = n.to_be_bytes();
    let take = key_size.min(be.len());
    key[key_size - take..].copy_from_slice(&be[be.len() - take..]);
    key.into()
}

/// What one client measured.
struct Outcome {
    latencies: Vec<Duration>,
    sent: Vec<Duration>,
    errors: Errors,
    range_kvs: u64,
}

/// One concurrent client: takes request numbers from the shared counter until the budget is
/// spent.
struct Job {
    client: KvClient<Channel>,
    auth: AuthClient<Channel>,
    workload: Workload,
    next: Arc<AtomicU64>,
    total: u64,
    timeout: Duration,
    rng: StdRng,
    /// The auth token each request carries (`--user`).
    token: Option<tonic::metadata::AsciiMetadataValue>,
    /// The run's start, which `Outcome::sent` counts from.
    origin: Instant,
}

impl Job {
    async fn run(mut self) -> Outcome {
        let mut outcome = Outcome {
            latencies: Vec::new(),
            sent: Vec::new(),
            errors: Errors::default(),
            range_kvs: 0,
        };
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= self.total {
                break;
            }
            let started = Instant::now();
            match tokio::time::timeout(self.timeout, self.request(n)).await {
                Ok(Ok(kvs)) => {
                    outcome.latencies.push(started.elapsed());
                    outcome.sent.push(started.duration_since(self.origin));
                    outcome.range_kvs += kvs;
                }
                Ok(Err(status)) => {
                    outcome
                        .errors
                        .record(format!("{:?}: {}", status.code(), status.message()))
                }
                Err(_) => outcome
                    .errors
                    .record("request deadline exceeded (client side)".to_string()),
            }
        }
        outcome
    }

    /// `message` with the auth token, if any.
    fn with_token<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    /// Sends request number `n`; returns how many key-value pairs a Range brought back.
    async fn request(&mut self, n: u64) -> Result<u64, tonic::Status> {
        match &self.workload {
            Workload::Put {
                key_size,
                key_space_size,
                sequential,
                value,
            } => {
                let number = if *sequential {
                    n % key_space_size
                } else {
                    self.rng.random_range(0..*key_space_size)
                };
                let request = PutRequest {
                    key: encode_key(number, *key_size),
                    value: value.clone(),
                    ..PutRequest::default()
                };
                let request = self.with_token(request);
                self.client.put(request).await?;
                Ok(0)
            }
            Workload::Range { request, random } => {
                let mut request = request.clone();
                if let Some((key_space_size, key_size)) = *random {
                    request.key = encode_key(self.rng.random_range(0..key_space_size), key_size);
                    request.range_end = Default::default();
                }
                let request = self.with_token(request);
                let response = self.client.range(request).await?.into_inner();
                Ok(response.kvs.len() as u64)
            }
            Workload::Authenticate(request) => {
                let request = tonic::Request::new(request.clone());
                self.auth.authenticate(request).await?;
                Ok(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_size_big_endian() {
        assert_eq!(&encode_key(0x0102, 4)[..], [0, 0, 1, 2]);
        assert_eq!(&encode_key(0x0102, 1)[..], [2]);
        assert_eq!(&encode_key(1, 10)[..], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn random_ranges_carry_their_key_space() {
        let command = |key_space_size| Command::Range {
            key: "foo".into(),
            end: None,
            consistency: Consistency::L,
            key_space_size,
            key_size: 8,
        };
        let Workload::Range { request, random } =
            workload(&command(Some(1000)), None).expect("a KV load")
        else {
            panic!("a range command must build a range workload");
        };
        assert_eq!(
            random,
            Some((1000, 8)),
            "random keys come from the key space"
        );
        assert!(!request.serializable, "consistency l is linearizable");
        let Workload::Range { request, random } =
            workload(&command(None), None).expect("a KV load")
        else {
            panic!("a range command must build a range workload");
        };
        assert_eq!(random, None, "without a key space the fixed key is read");
        assert_eq!(&request.key[..], b"foo", "the fixed key is the one given");
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut errors = Errors::default();
        for i in 0..100 {
            errors.record(format!("error {i}"));
        }
        assert_eq!(errors.total(), 100);
        assert_eq!(errors.by_message.len(), ERROR_KINDS_MAX + 1);
    }
}
