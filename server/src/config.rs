//! Server configuration: etcd's flag names and defaults, each also settable from `KEEL_*`,
//! etcd's `ETCD_*` or etcd's YAML file ([`sources`]).

pub mod etcd_flags;
pub mod sources;
mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The default per-request size limit, as etcd's `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES_DEFAULT: u32 = 1536 * 1024;
/// gRPC framing allowance on top of the request limit, as etcd's `grpcOverheadBytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// keel: an etcd v3–compatible, strongly consistent key-value store.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "keel",
    version,
    about,
    args_override_self = true,
    after_help = "Every flag is also read from an environment variable: KEEL_ and the flag's name \
                  in capitals with - as _ (--data-dir: KEEL_DATA_DIR), or etcd's ETCD_ name \
                  (ETCD_DATA_DIR). A flag on the command line wins over KEEL_, which wins over \
                  ETCD_. --config-file reads etcd's YAML file instead of flags and variables."
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "KEEL_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory.
    #[arg(
        long = "data-dir",
        env = "KEEL_DATA_DIR",
        default_value = "default.keel"
    )]
    pub data_dir: PathBuf,
    /// List of URLs to listen on for client traffic.
    #[arg(
        long = "listen-client-urls",
        env = "KEEL_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(
        long = "advertise-client-urls",
        env = "KEEL_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,
    /// List of URLs to serve /metrics and /health on, besides the client port (HTTP/1.1).
    #[arg(
        long = "listen-metrics-urls",
        env = "KEEL_LISTEN_METRICS_URLS",
        default_value = ""
    )]
    pub listen_metrics_urls: String,
    /// List of URLs to listen on for peer traffic.
    #[arg(
        long = "listen-peer-urls",
        env = "KEEL_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long = "initial-advertise-peer-urls",
        env = "KEEL_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (name=peer-url,...).
    #[arg(
        long = "initial-cluster",
        env = "KEEL_INITIAL_CLUSTER",
        default_value = "default=http://127.0.0.1:2380"
    )]
    pub initial_cluster: String,
    /// Initial cluster state ('new' or 'existing').
    #[arg(
        long = "initial-cluster-state",
        env = "KEEL_INITIAL_CLUSTER_STATE",
        default_value = "new",
        value_parser = ["new", "existing"]
    )]
    pub initial_cluster_state: String,
    /// Initial cluster token, mixed into the cluster id.
    #[arg(
        long = "initial-cluster-token",
        env = "KEEL_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long = "max-request-bytes", env = "KEEL_MAX_REQUEST_BYTES", default_value_t = MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: u32,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long = "max-txn-ops", env = "KEEL_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(
        long = "heartbeat-interval",
        env = "KEEL_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval_ms: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(
        long = "election-timeout",
        env = "KEEL_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout_ms: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(
        long = "snapshot-count",
        env = "KEEL_SNAPSHOT_COUNT",
        default_value_t = keel_engine::node::SNAPSHOT_COUNT_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub snapshot_count: u64,
    /// A snapshot also waits until the log written since the last one reaches this percentage
    /// of that snapshot's size, so snapshots of a big store stay rare (0: only
    /// --snapshot-count decides, as in etcd).
    #[arg(
        long = "snapshot-log-percent",
        env = "KEEL_SNAPSHOT_LOG_PERCENT",
        default_value_t = keel_engine::node::SNAPSHOT_LOG_PERCENT_DEFAULT
    )]
    pub snapshot_log_percent: u64,
    /// Maximum bytes of applied raft log entries kept in memory for followers behind (0: no
    /// bound); past it the oldest are freed before a snapshot covers them, and a follower that
    /// needs one is sent a new snapshot. The WAL keeps them until a snapshot does.
    #[arg(
        long = "max-raft-log-bytes",
        env = "KEEL_MAX_RAFT_LOG_BYTES",
        default_value_t = keel_engine::node::RAFT_LOG_BYTES_MAX_DEFAULT
    )]
    pub max_raft_log_bytes: u64,
    /// Maximum number of snapshot files to retain (etcd's default is 5; keel keeps the newest
    /// and the one a damaged newest falls back to, and at least one).
    #[arg(
        long = "max-snapshots",
        env = "KEEL_MAX_SNAPSHOTS",
        default_value_t = keel_storage::snap::SNAPSHOTS_KEPT_DEFAULT
    )]
    pub max_snapshots: usize,
    /// WAL segment size in bytes (for tests that want many segments).
    #[arg(long = "wal-segment-bytes", env = "KEEL_WAL_SEGMENT_BYTES", hide = true,
          default_value_t = keel_storage::WalOptions::default().segment_bytes_max,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub wal_segment_bytes: u64,
    /// Auth token type: `simple` (etcd's default; other types are not supported).
    #[arg(long = "auth-token", env = "KEEL_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple auth token lives after its last use.
    #[arg(
        long = "auth-token-ttl",
        env = "KEEL_AUTH_TOKEN_TTL",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub auth_token_ttl: u64,
    /// bcrypt cost for hashing passwords (etcd 3.5's flag; 4 to 31).
    #[arg(
        long = "bcrypt-cost",
        env = "KEEL_BCRYPT_COST",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(4..=31)
    )]
    pub bcrypt_cost: u32,
    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long = "log-level", env = "KEEL_LOG_LEVEL", default_value = "info",
          value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// Log format: 'zap' for etcd 3.4's JSON lines (level, ts, caller, msg, fields), or
    /// 'capnslog' for human-readable lines.
    #[arg(long = "logger", env = "KEEL_LOGGER", default_value = "capnslog",
          value_parser = ["capnslog", "zap"])]
    pub logger: String,
    /// Where logs go: 'default' or 'stderr', 'stdout', or file paths (appended), comma-separated.
    #[arg(
        long = "log-outputs",
        env = "KEEL_LOG_OUTPUTS",
        default_value = "default"
    )]
    pub log_outputs: String,
    /// Path to etcd's YAML configuration file; when given, flags and variables are ignored.
    #[arg(long = "config-file", env = "KEEL_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Deliberate bugs for the simulator to catch (not a flag: keel-sim sets them, and only
    /// simulation builds can; see `keel_engine::bugs`).
    #[arg(skip)]
    pub bugs: keel_engine::bugs::Bugs,
}

/// A configuration that names something impossible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A URL we cannot listen on or parse.
    #[error("invalid URL {url:?} in {flag}: {reason}")]
    Url {
        /// The flag it came from.
        flag: &'static str,
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--initial-cluster` is malformed or does not name this member.
    #[error("--initial-cluster {0}")]
    InitialCluster(String),
    /// Timing flags that cannot work.
    #[error("{0}")]
    Timing(String),
    /// An etcd flag keel does not implement, set to something other than etcd's default.
    #[error(
        "keel does not support etcd's --{flag} ({origin} sets it to {value:?}); it accepts \
         only etcd's default {default:?}"
    )]
    Unsupported {
        /// The flag.
        flag: String,
        /// The value asked for.
        value: String,
        /// Where it was set: the command line, a variable, a config file.
        origin: String,
        /// etcd's default.
        default: String,
    },
    /// etcd's refusal of an `ETCD_*` variable that a command-line flag shadows.
    #[error(
        "conflicting environment variable {0:?} is shadowed by corresponding command-line flag \
         (either unset environment variable or disable flag)"
    )]
    EnvConflict(String),
    /// A value that does not parse (etcd's wording).
    #[error("invalid value {value:?} for {name}: parse error")]
    BadValue {
        /// The variable or flag.
        name: String,
        /// Its value.
        value: String,
    },
    /// The YAML configuration file cannot be used.
    #[error("config file {path}: {reason}")]
    File {
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An argument or variable that is not UTF-8.
    #[error("not valid UTF-8: {0}")]
    NotUnicode(String),
    /// A log output that cannot be opened or is not supported.
    #[error("--log-outputs {output:?}: {reason}")]
    LogOutput {
        /// The output.
        output: String,
        /// What is wrong.
        reason: String,
    },
    /// An `--auth-token` type keel does not have.
    #[error("--auth-token {0:?}: only \"simple\" is supported")]
    AuthToken(String),
}

/// One member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// The member's name.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
}

impl Config {
    /// The socket addresses of `--listen-client-urls`.
    pub fn client_listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        parse_urls("--listen-client-urls", &self.listen_client_urls)
    }

    /// The socket addresses of `--listen-metrics-urls` (none by default).
    pub fn metrics_listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        if split_list(&self.listen_metrics_urls).is_empty() {
            return Ok(Vec::new());
        }
        parse_urls("--listen-metrics-urls", &self.listen_metrics_urls)
    }

    /// The socket addresses of `--listen-peer-urls`.
    pub fn peer_listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        parse_urls("--listen-peer-urls", &self.listen_peer_urls)
    }

    /// The advertised client URLs.
    pub fn advertise_client_url_list(&self) -> Vec<String> {
        split_list(&self.advertise_client_urls)
    }

    /// `--initial-cluster`, grouped by member name in order of first appearance.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let mut members: Vec<InitialMember> = Vec::new();
        for item in split_list(&self.initial_cluster) {
            let Some((name, url)) = item.split_once('=') else {
                return Err(ConfigError::InitialCluster(format!(
                    "entry {item:?} is not name=url"
                )));
            };
            parse_urls("--initial-cluster", url)?;
            match members.iter_mut().find(|m| m.name == name) {
                Some(m) => m.peer_urls.push(url.to_string()),
                None => members.push(InitialMember {
                    name: name.to_string(),
                    peer_urls: vec![url.to_string()],
                }),
            }
        }
        if !members.iter().any(|m| m.name == self.name) {
            return Err(ConfigError::InitialCluster(format!(
                "has no member named {:?} (--name)",
                self.name
            )));
        }
        Ok(members)
    }

    /// `--auth-token`: `simple` (etcd's default); keel has no JWT tokens.
    pub fn check_auth_token(&self) -> Result<(), ConfigError> {
        match self.auth_token.split(',').next() {
            Some("simple") => Ok(()),
            _ => Err(ConfigError::AuthToken(self.auth_token.clone())),
        }
    }

    /// The raft tick length and election timeout in ticks.
    pub fn ticks(&self) -> Result<(u64, usize), ConfigError> {
        let hb = self.heartbeat_interval_ms;
        let el = self.election_timeout_ms;
        if hb == 0 || el < 5 * hb {
            return Err(ConfigError::Timing(format!(
                "--election-timeout[{el}ms] should be at least as 5 times as \
                 --heartbeat-interval[{hb}ms]"
            )));
        }
        Ok((hb, (el / hb) as usize))
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

fn parse_urls(flag: &'static str, list: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for url in split_list(list) {
        let err = |reason: &str| ConfigError::Url {
            flag,
            url: url.clone(),
            reason: reason.into(),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("unix://"))
            .ok_or_else(|| err("only http:// URLs are supported"))?;
        let hostport = rest.trim_end_matches('/');
        let hostport = match hostport.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => hostport.to_string(),
        };
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| err("expected http://IP:PORT"))?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err(ConfigError::Url {
            flag,
            url: list.into(),
            reason: "no URL given".into(),
        });
    }
    Ok(out)
}

/// etcd-style ids: a 64-bit FNV-1a hash of the given parts (deterministic, no randomness).
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut all = vec!["keel"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parses")
    }

    #[test]
    fn defaults_match_etcd() {
        let c = cfg(&[]);
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.keel"));
        assert_eq!(
            c.client_listen_addrs().expect("ok"),
            vec!["127.0.0.1:2379".parse().expect("addr")]
        );
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.ticks().expect("ok"), (100, 10));
        assert_eq!(c.initial_members().expect("ok").len(), 1);
    }

    #[test]
    fn initial_cluster_must_name_this_member() {
        let c = cfg(&[
            "--name",
            "n2",
            "--initial-cluster",
            "n1=http://127.0.0.1:2380",
        ]);
        assert!(c.initial_members().is_err());
        let c = cfg(&["--listen-client-urls", "https://1.2.3.4:1"]);
        assert!(c.client_listen_addrs().is_err());
        let c = cfg(&[
            "--initial-cluster",
            "a=http://127.0.0.1:1,default=http://127.0.0.1:2",
        ]);
        assert_eq!(c.initial_members().expect("ok")[1].name, "default");
    }

    #[test]
    fn stable_ids_differ_by_part() {
        assert_ne!(stable_id(&["a", "b"]), stable_id(&["ab"]));
        assert_eq!(stable_id(&["x"]), stable_id(&["x"]));
    }
}
