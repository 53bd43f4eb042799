//! etcd 3.4.23's server flags and their defaults (as `etcd --help` lists them), plus the few
//! etcd 3.5 added that keel's issues name. [`super::sources`] uses the table to accept an etcd
//! flag keel lacks only where it asks for etcd's default, and to refuse it, by name, otherwise.

/// `(flag, etcd's default)`. A default of `true` or `false` marks a Go boolean flag, which
/// takes no separate value on the command line.
pub const ETCD_FLAGS: &[(&str, &str)] = &[
    ("name", "default"),
    ("data-dir", "${name}.etcd"),
    ("wal-dir", ""),
    ("snapshot-count", "100000"),
    ("heartbeat-interval", "100"),
    ("election-timeout", "1000"),
    ("initial-election-tick-advance", "true"),
    ("listen-peer-urls", "http://localhost:2380"),
    ("listen-client-urls", "http://localhost:2379"),
    ("max-snapshots", "5"),
    ("max-wals", "5"),
    ("quota-backend-bytes", "0"),
    ("backend-batch-interval", ""),
    ("backend-batch-limit", "0"),
    ("max-txn-ops", "128"),
    ("max-request-bytes", "1572864"),
    ("max-concurrent-streams", "4294967295"),
    ("grpc-keepalive-min-time", "5s"),
    ("grpc-keepalive-interval", "2h"),
    ("grpc-keepalive-timeout", "20s"),
    ("initial-advertise-peer-urls", "http://localhost:2380"),
    ("initial-cluster", "default=http://localhost:2380"),
    ("initial-cluster-state", "new"),
    ("initial-cluster-token", "etcd-cluster"),
    ("advertise-client-urls", "http://localhost:2379"),
    ("discovery", ""),
    ("discovery-fallback", "proxy"),
    ("discovery-proxy", ""),
    ("discovery-srv", ""),
    ("discovery-srv-name", ""),
    ("strict-reconfig-check", "true"),
    ("pre-vote", "false"),
    ("auto-compaction-retention", "0"),
    ("auto-compaction-mode", "periodic"),
    ("enable-v2", "false"),
    ("cert-file", ""),
    ("key-file", ""),
    ("client-cert-auth", "false"),
    ("client-crl-file", ""),
    ("client-cert-allowed-hostname", ""),
    ("trusted-ca-file", ""),
    ("auto-tls", "false"),
    ("peer-cert-file", ""),
    ("peer-key-file", ""),
    ("peer-client-cert-auth", "false"),
    ("peer-trusted-ca-file", ""),
    ("peer-cert-allowed-cn", ""),
    ("peer-cert-allowed-hostname", ""),
    ("peer-auto-tls", "false"),
    ("peer-crl-file", ""),
    ("cipher-suites", ""),
    ("cors", "*"),
    ("host-whitelist", "*"),
    ("auth-token", "simple"),
    ("bcrypt-cost", "10"),
    ("auth-token-ttl", "300"),
    ("enable-pprof", "false"),
    ("metrics", "basic"),
    ("listen-metrics-urls", ""),
    ("logger", "capnslog"),
    ("log-outputs", "default"),
    ("log-level", "info"),
    ("proxy", "off"),
    ("proxy-failure-wait", "5000"),
    ("proxy-refresh-interval", "30000"),
    ("proxy-dial-timeout", "1000"),
    ("proxy-write-timeout", "5000"),
    ("proxy-read-timeout", "0"),
    ("experimental-initial-corrupt-check", "false"),
    ("experimental-corrupt-check-time", "0s"),
    ("experimental-enable-v2v3", ""),
    ("experimental-backend-bbolt-freelist-type", "array"),
    ("experimental-enable-lease-checkpoint", "false"),
    ("experimental-compaction-batch-limit", "1000"),
    ("experimental-peer-skip-client-san-verification", "false"),
    ("experimental-watch-progress-notify-interval", "10m"),
    ("experimental-warning-apply-duration", "100ms"),
    ("force-new-cluster", "false"),
    ("debug", "false"),
    ("log-package-levels", ""),
    // etcd 3.5
    ("config-file", ""),
    ("tls-min-version", ""),
    ("tls-max-version", ""),
    ("listen-client-http-urls", ""),
];

/// etcd's default for `flag`, if etcd has that flag.
pub fn etcd_default(flag: &str) -> Option<&'static str> {
    ETCD_FLAGS
        .iter()
        .find(|(name, _)| *name == flag)
        .map(|(_, default)| *default)
}

/// Whether etcd's `flag` is a Go boolean flag.
pub fn is_bool(flag: &str) -> bool {
    matches!(etcd_default(flag), Some("true" | "false"))
}

/// Go's `strconv.ParseBool`, which etcd's boolean flags and variables use.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether `value` asks for etcd's default of `flag`: the same text, or for a boolean the
/// same truth value.
pub fn is_etcd_default(flag: &str, value: &str) -> bool {
    match etcd_default(flag) {
        None => false,
        Some(default) if is_bool(flag) => parse_go_bool(value) == parse_go_bool(default),
        Some(default) => value == default,
    }
}
