//! A test member's configuration: [`TestConfig`] builds the [`NodeConfig`] (watch settings and
//! the simulator's bugs included), and [`TestConfig::start`] is the one place that starts a
//! [`Node`] with it.

use keel_engine::bugs::Bugs;
use keel_engine::membership::Member;
use keel_engine::node::{
    MaintenanceConfig, Node, NodeConfig, Recovered, StartError, WatchConfig,
    RAFT_LOG_BYTES_MAX_DEFAULT, SNAPSHOT_COUNT_DEFAULT,
};

/// The cluster id every test member reports.
pub const CLUSTER_ID: u64 = 0xc1;

/// The peer URL of member `id` in tests (`http://n<id>:2380`).
pub fn peer_url(id: u64) -> String {
    format!("http://n{id}:2380")
}

/// The client URL of member `id` in tests (`http://n<id>:2379`).
pub fn client_url(id: u64) -> String {
    format!("http://n{id}:2379")
}

/// A test member's configuration: etcd-like timing (10 election ticks, 1 heartbeat tick, ticks
/// of 100 ms), cluster [`CLUSTER_ID`], incarnation 1, nameless, plus the watch settings a test
/// asks for. Settings are chained: `TestConfig::new(1, &[1, 2, 3]).seed(5).snapshot_count(30)`.
#[derive(Debug, Clone)]
pub struct TestConfig {
    cfg: NodeConfig,
}

impl TestConfig {
    /// Member `member_id` of a cluster bootstrapped with `voters`; seed 0, etcd's default
    /// snapshot count.
    pub fn new(member_id: u64, voters: &[u64]) -> TestConfig {
        TestConfig {
            cfg: NodeConfig {
                member_id,
                cluster_id: CLUSTER_ID,
                voters: voters.to_vec(),
                election_ticks: 10,
                heartbeat_ticks: 1,
                tick_ms: 100,
                seed: 0,
                incarnation: 1,
                snapshot_count: SNAPSHOT_COUNT_DEFAULT,
                snapshot_log_percent: 0,
                raft_log_bytes_max: Some(RAFT_LOG_BYTES_MAX_DEFAULT),
                initial_members: Vec::new(),
                name: String::new(),
                client_urls: Vec::new(),
                joining: false,
                watch: WatchConfig::default(),
                maintenance: MaintenanceConfig::default(),
                bugs: Bugs::none(),
                auth_token_ttl_ms: keel_engine::node::AUTH_TOKEN_TTL_MS_DEFAULT,
            },
        }
    }

    /// The seed every random choice of the member derives from.
    pub fn seed(mut self, seed: u64) -> TestConfig {
        self.cfg.seed = seed;
        self
    }

    /// Applied entries between two snapshots.
    pub fn snapshot_count(mut self, entries: u64) -> TestConfig {
        self.cfg.snapshot_count = entries;
        self
    }

    /// The log applied since a snapshot must reach this percentage of its size before the
    /// next (0, the tests' default: the entry count alone decides).
    pub fn snapshot_log_percent(mut self, percent: u64) -> TestConfig {
        self.cfg.snapshot_log_percent = percent;
        self
    }

    /// The applied entries of the in-memory raft log hold at most this many bytes (`None`: no
    /// byte bound; the default is the server's).
    pub fn raft_log_bytes_max(mut self, bytes: Option<u64>) -> TestConfig {
        self.cfg.raft_log_bytes_max = bytes;
        self
    }

    /// Bootstrap members named `n<id>` with [`peer_url`]s; this member publishes its name and
    /// [`client_url`] once it knows a leader.
    pub fn named(mut self) -> TestConfig {
        self.cfg.initial_members = self
            .cfg
            .voters
            .iter()
            .map(|&id| Member {
                id,
                name: format!("n{id}"),
                peer_urls: vec![peer_url(id)],
                ..Member::default()
            })
            .collect();
        self.cfg.name = format!("n{}", self.cfg.member_id);
        self.cfg.client_urls = vec![client_url(self.cfg.member_id)];
        self
    }

    /// Started with `--initial-cluster-state existing` (a member added with MemberAdd).
    pub fn joining(mut self, joining: bool) -> TestConfig {
        self.cfg.joining = joining;
        self
    }

    /// The quota, auto-compaction and corruption checks.
    pub fn maintenance(mut self, maintenance: MaintenanceConfig) -> TestConfig {
        self.cfg.maintenance = maintenance;
        self
    }

    /// Progress notifications to idle watchers every `ms`.
    pub fn progress_interval_ms(mut self, ms: u64) -> TestConfig {
        self.cfg.watch.progress_interval_ms = ms;
        self
    }

    /// Watch responses asked to fragment are cut at `bytes`.
    pub fn fragment_bytes(mut self, bytes: usize) -> TestConfig {
        self.cfg.watch.fragment_bytes = bytes;
        self
    }

    /// Watch responses a stream may have unread before its watchers fall behind.
    pub fn stream_window(mut self, responses: u32) -> TestConfig {
        self.cfg.watch.stream_window = responses;
        self
    }

    /// The simulator's watch bug: a catch-up starting at the compaction revision misses the
    /// events there (etcd #19179). Bugs exist only in simulation builds (`--cfg madsim`).
    #[cfg(madsim)]
    pub fn bug_skip_compaction_boundary(mut self) -> TestConfig {
        use keel_engine::bugs::Bug;
        self.cfg.bugs = Bugs::of(&[Bug::WatchSkipCompactionBoundary]);
        self
    }

    /// The member's id.
    pub fn member_id(&self) -> u64 {
        self.cfg.member_id
    }

    /// The engine configuration.
    pub fn node_config(&self) -> NodeConfig {
        self.cfg.clone()
    }

    /// Starts the member from `recovered`.
    pub fn start(&self, recovered: Recovered) -> Result<Node, StartError> {
        Node::new(self.node_config(), recovered)
    }
}
