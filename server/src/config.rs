//! Server configuration: etcd's flag names and defaults, each also settable from `KEEL_*`,
//! etcd's `ETCD_*` or etcd's YAML file ([`sources`]).

pub mod etcd_flags;
pub mod sources;
mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use keel_engine::node::{
    AutoCompaction, CorruptCheck, MaintenanceConfig, QUOTA_BYTES_DEFAULT, QUOTA_BYTES_WARN,
};

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
    /// Auth token type: `simple` (etcd's default) or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256|…,ttl=5m` (etcd's syntax).
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
    /// Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).
    #[arg(
        long = "quota-backend-bytes",
        env = "KEEL_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for
    /// duration based retention, defaulting to hours if no time unit is provided (e.g. '5m').
    /// 'revision' for revision number based retention.
    #[arg(
        long = "auto-compaction-mode",
        env = "KEEL_AUTO_COMPACTION_MODE",
        default_value = "periodic",
        value_parser = ["periodic", "revision"]
    )]
    pub auto_compaction_mode: String,
    /// Auto compaction retention for mvcc key value store. 0 means disable auto compaction.
    #[arg(
        long = "auto-compaction-retention",
        env = "KEEL_AUTO_COMPACTION_RETENTION",
        default_value = "0"
    )]
    pub auto_compaction_retention: String,
    /// Enable to check data corruption before serving any client/peer traffic.
    #[arg(
        long = "experimental-initial-corrupt-check",
        env = "KEEL_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub experimental_initial_corrupt_check: bool,
    /// Duration of time between cluster corruption check passes (0s: none).
    #[arg(
        long = "experimental-corrupt-check-time",
        env = "KEEL_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s"
    )]
    pub experimental_corrupt_check_time: String,
    /// Accept etcd V2 client requests (the v2 keys API, members and stats under /v2/).
    #[arg(
        long = "enable-v2",
        env = "KEEL_ENABLE_V2",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub enable_v2: bool,
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
    /// Path to the client server TLS cert file.
    #[arg(long = "cert-file", env = "KEEL_CERT_FILE", default_value = "")]
    pub cert_file: String,
    /// Path to the client server TLS key file.
    #[arg(long = "key-file", env = "KEEL_KEY_FILE", default_value = "")]
    pub key_file: String,
    /// Path to the client server TLS trusted CA cert file (clients must present a
    /// certificate it signed).
    #[arg(
        long = "trusted-ca-file",
        env = "KEEL_TRUSTED_CA_FILE",
        default_value = ""
    )]
    pub trusted_ca_file: String,
    /// Enable client cert authentication (and login as the certificate's CommonName).
    #[arg(long = "client-cert-auth", env = "KEEL_CLIENT_CERT_AUTH", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Client TLS using generated certificates.
    #[arg(long = "auto-tls", env = "KEEL_AUTO_TLS", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Path to the client certificate revocation list file (DER or PEM).
    #[arg(
        long = "client-crl-file",
        env = "KEEL_CLIENT_CRL_FILE",
        default_value = ""
    )]
    pub client_crl_file: String,
    /// Allowed TLS hostname for client cert authentication.
    #[arg(
        long = "client-cert-allowed-hostname",
        env = "KEEL_CLIENT_CERT_ALLOWED_HOSTNAME",
        default_value = ""
    )]
    pub client_cert_allowed_hostname: String,
    /// The validity period of the client and peer certificates that are automatically
    /// generated by keel when --auto-tls or --peer-auto-tls is set, in years.
    #[arg(
        long = "self-signed-cert-validity",
        env = "KEEL_SELF_SIGNED_CERT_VALIDITY",
        default_value_t = 1
    )]
    pub self_signed_cert_validity: u32,
    /// Path to the peer server TLS cert file.
    #[arg(
        long = "peer-cert-file",
        env = "KEEL_PEER_CERT_FILE",
        default_value = ""
    )]
    pub peer_cert_file: String,
    /// Path to the peer server TLS key file.
    #[arg(long = "peer-key-file", env = "KEEL_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,
    /// Path to the peer server TLS trusted CA file.
    #[arg(
        long = "peer-trusted-ca-file",
        env = "KEEL_PEER_TRUSTED_CA_FILE",
        default_value = ""
    )]
    pub peer_trusted_ca_file: String,
    /// Enable peer client cert authentication.
    #[arg(long = "peer-client-cert-auth", env = "KEEL_PEER_CLIENT_CERT_AUTH",
          default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Required CN for client certs connecting to the peer endpoint.
    #[arg(
        long = "peer-cert-allowed-cn",
        env = "KEEL_PEER_CERT_ALLOWED_CN",
        default_value = ""
    )]
    pub peer_cert_allowed_cn: String,
    /// Allowed TLS hostname for inter peer authentication.
    #[arg(
        long = "peer-cert-allowed-hostname",
        env = "KEEL_PEER_CERT_ALLOWED_HOSTNAME",
        default_value = ""
    )]
    pub peer_cert_allowed_hostname: String,
    /// Path to the peer certificate revocation list file (DER or PEM).
    #[arg(long = "peer-crl-file", env = "KEEL_PEER_CRL_FILE", default_value = "")]
    pub peer_crl_file: String,
    /// Peer TLS using self-generated certificates.
    #[arg(long = "peer-auto-tls", env = "KEEL_PEER_AUTO_TLS", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// Comma-separated list of supported TLS cipher suites between client/server and peers
    /// (empty will be auto-populated by rustls).
    #[arg(long = "cipher-suites", env = "KEEL_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// Minimum TLS version supported: TLS1.2 or TLS1.3 (default TLS1.2).
    #[arg(
        long = "tls-min-version",
        env = "KEEL_TLS_MIN_VERSION",
        default_value = ""
    )]
    pub tls_min_version: String,
    /// Maximum TLS version supported: TLS1.2 or TLS1.3 (default: the highest).
    #[arg(
        long = "tls-max-version",
        env = "KEEL_TLS_MAX_VERSION",
        default_value = ""
    )]
    pub tls_max_version: String,
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
    /// An `--auth-token` that does not parse, or whose keys do not load.
    #[error("--auth-token: {0}")]
    AuthToken(crate::tokens::TokenError),
    /// A maintenance flag (quota, auto-compaction, corruption checks) that does not parse.
    #[error("{0}")]
    Maintenance(String),
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
        let urls = split_list(&self.listen_metrics_urls);
        if urls.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(url) = urls.iter().find(|u| u.starts_with("https://")) {
            return Err(ConfigError::Url {
                flag: "--listen-metrics-urls",
                url: url.clone(),
                reason: "keel serves /metrics and /health over https only on the client port; \
                         use http:// here"
                    .into(),
            });
        }
        parse_urls("--listen-metrics-urls", &self.listen_metrics_urls)
    }

    /// The socket addresses of `--listen-peer-urls`.
    pub fn peer_listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        parse_urls("--listen-peer-urls", &self.listen_peer_urls)
    }

    /// The socket addresses of `--listen-client-urls`, each with whether it is `https://`.
    pub fn client_listeners(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        with_tls("--listen-client-urls", &self.listen_client_urls)
    }

    /// The socket addresses of `--listen-peer-urls`, each with whether it is `https://`.
    pub fn peer_listeners(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        with_tls("--listen-peer-urls", &self.listen_peer_urls)
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

    /// `--auth-token` (etcd's syntax): `simple`, or `jwt,pub-key=…,priv-key=…,sign-method=…,
    /// ttl=…`; keys are read now, and a bad flag stops the start with etcd's error text.
    pub fn auth_tokens(&self) -> Result<crate::tokens::Tokens, ConfigError> {
        crate::tokens::Tokens::parse(&self.auth_token).map_err(ConfigError::AuthToken)
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

impl Config {
    /// The quota, auto-compaction and corruption checks, as etcd 3.4 reads its flags:
    /// `--quota-backend-bytes` 0 is the 2 GiB default, negative disables the quota, above
    /// 8 GiB is allowed with etcd's warning; `--auto-compaction-retention` 0 disables
    /// auto-compaction, and in periodic mode a plain number counts hours.
    pub fn maintenance(&self) -> Result<MaintenanceConfig, ConfigError> {
        let quota_bytes = match self.quota_backend_bytes {
            q if q < 0 => {
                tracing::info!(quota_size_bytes = q, "disabled backend quota");
                None
            }
            0 => Some(QUOTA_BYTES_DEFAULT),
            q => {
                let q = q as u64;
                if q > QUOTA_BYTES_WARN {
                    tracing::warn!(
                        quota_size_bytes = q,
                        quota_maximum_size_bytes = QUOTA_BYTES_WARN,
                        "quota exceeds the maximum value"
                    );
                }
                Some(q)
            }
        };
        let interval_ms =
            parse_duration_ms(&self.experimental_corrupt_check_time).map_err(|e| {
                ConfigError::Maintenance(format!("--experimental-corrupt-check-time {e}"))
            })?;
        Ok(MaintenanceConfig {
            quota_bytes,
            auto_compaction: self.auto_compaction()?,
            corrupt_check: CorruptCheck {
                initial: self.experimental_initial_corrupt_check,
                interval_ms: (interval_ms > 0).then_some(interval_ms),
            },
        })
    }

    fn auto_compaction(&self) -> Result<Option<AutoCompaction>, ConfigError> {
        let retention = self.auto_compaction_retention.trim();
        let bad = |why: &str| {
            ConfigError::Maintenance(format!("--auto-compaction-retention {retention:?}: {why}"))
        };
        if self.auto_compaction_mode == "revision" {
            let revisions: i64 = retention.parse().map_err(|_| bad("not a revision count"))?;
            if revisions < 0 {
                return Err(bad("negative"));
            }
            return Ok((revisions > 0).then_some(AutoCompaction::Revision {
                retention: revisions,
            }));
        }
        // Periodic: a plain number counts hours, as in etcd.
        let retention_ms = match retention.parse::<u64>() {
            Ok(hours) => hours.saturating_mul(3_600_000),
            Err(_) => parse_duration_ms(retention).map_err(|e| bad(&e))?,
        };
        Ok((retention_ms > 0).then_some(AutoCompaction::Periodic { retention_ms }))
    }
}

/// Milliseconds in a Go-style duration (`1h30m`, `30m`, `10s`, `500ms`, `0`).
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{text:?}: missing unit in duration"))?;
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: invalid duration"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            other => return Err(format!("{text:?}: unknown unit {other:?} in duration")),
        };
        total = total.saturating_add(number.saturating_mul(unit_ms));
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

fn with_tls(flag: &'static str, list: &str) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
    let addrs = parse_urls(flag, list)?;
    let tls = split_list(list)
        .into_iter()
        .map(|u| u.starts_with("https://"));
    Ok(addrs.into_iter().zip(tls).collect())
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
            .or_else(|| url.strip_prefix("https://"))
            .or_else(|| url.strip_prefix("unix://"))
            .ok_or_else(|| err("only http:// and https:// URLs are supported"))?;
        let hostport = rest.trim_end_matches('/');
        let hostport = match hostport.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => hostport.to_string(),
        };
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| err("expected http(s)://IP:PORT"))?;
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
        let c = cfg(&["--listen-client-urls", "ftp://1.2.3.4:1"]);
        assert!(
            c.client_listen_addrs().is_err(),
            "only http, https and unix URLs"
        );
        let c = cfg(&["--listen-client-urls", "https://1.2.3.4:1"]);
        assert!(
            c.client_listen_addrs().is_ok(),
            "https URLs are served with TLS"
        );
        let c = cfg(&[
            "--initial-cluster",
            "a=http://127.0.0.1:1,default=http://127.0.0.1:2",
        ]);
        assert_eq!(c.initial_members().expect("ok")[1].name, "default");
    }

    #[test]
    fn maintenance_flags_read_as_etcd_reads_them() {
        let m = cfg(&[]).maintenance().expect("defaults");
        assert_eq!(m, MaintenanceConfig::default());
        let m = cfg(&["--quota-backend-bytes", "-1"])
            .maintenance()
            .expect("ok");
        assert_eq!(m.quota_bytes, None, "negative disables the quota");
        let big = cfg(&["--quota-backend-bytes", "10737418240"]);
        assert_eq!(big.maintenance().expect("ok").quota_bytes, Some(10 << 30));
        let periodic = |r: &str| {
            cfg(&["--auto-compaction-retention", r])
                .maintenance()
                .map(|m| m.auto_compaction)
        };
        let hours = |h: u64| {
            Some(AutoCompaction::Periodic {
                retention_ms: h * 3_600_000,
            })
        };
        assert_eq!(periodic("1").expect("ok"), hours(1), "plain number: hours");
        assert_eq!(periodic("1h").expect("ok"), hours(1));
        assert_eq!(
            periodic("30m").expect("ok"),
            Some(AutoCompaction::Periodic {
                retention_ms: 1_800_000
            })
        );
        assert_eq!(periodic("0").expect("ok"), None);
        assert!(periodic("1x").is_err());
        let revision = cfg(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1000",
        ]);
        assert_eq!(
            revision.maintenance().expect("ok").auto_compaction,
            Some(AutoCompaction::Revision { retention: 1000 })
        );
        let checks = cfg(&[
            "--experimental-initial-corrupt-check",
            "--experimental-corrupt-check-time",
            "1m30s",
        ]);
        let c = checks.maintenance().expect("ok").corrupt_check;
        assert_eq!((c.initial, c.interval_ms), (true, Some(90_000)));
        let off = cfg(&["--experimental-initial-corrupt-check=false"]);
        assert!(!off.maintenance().expect("ok").corrupt_check.initial);
    }

    #[test]
    fn stable_ids_differ_by_part() {
        assert_ne!(stable_id(&["a", "b"]), stable_id(&["ab"]));
        assert_eq!(stable_id(&["x"]), stable_id(&["x"]));
    }
}
