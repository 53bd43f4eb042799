//! What goes into and comes out of a [`super::Node`]: its configuration, what the driver
//! recovered, the inputs and outputs, and the status it reports.

use raft::eraftpb::{Entry, HardState, Message, Snapshot};

use super::snapshots::SnapshotJob;
use crate::bugs::Bugs;
use crate::error::Error;
use crate::membership::Member;
use crate::request::Response;
use crate::watch::{
    WatchInput, WatchOutput, FRAGMENT_BYTES_DEFAULT, PROGRESS_NOTIFY_INTERVAL_MS, STREAM_WINDOW,
};

/// How a member starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's id (non-zero).
    pub member_id: u64,
    /// The cluster's id, reported in every response header.
    pub cluster_id: u64,
    /// The voting members at bootstrap (including this one).
    pub voters: Vec<u64>,
    /// Ticks without a leader before a follower campaigns (plus seeded jitter of up to as many).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// The length of one tick, in milliseconds: the node's clock (for lease expiry) advances by
    /// this much with every `Input::Tick`.
    pub tick_ms: u64,
    /// The seed every random choice of this member derives from.
    pub seed: u64,
    /// Distinguishes this run of the member from earlier ones, so proposal ids of an earlier run
    /// found in the log never match a live request.
    pub incarnation: u64,
    /// Applied entries between two state snapshots, at least (at least 1).
    pub snapshot_count: u64,
    /// A state snapshot also waits until the log applied since the last one reaches this
    /// percentage of that snapshot's size (0: `snapshot_count` alone decides), so the cost of
    /// snapshots, amortized over the writes, does not grow with the store.
    pub snapshot_log_percent: u64,
    /// The in-memory raft log's applied entries hold at most about this many bytes (an
    /// entry's struct and payload): past it the oldest are freed even before a snapshot
    /// covers them, and a follower that needs one gets a snapshot instead. `None`: no byte
    /// bound (entries a follower may need stay until a snapshot covers them); `Some(0)`:
    /// only the applied entry itself stays.
    pub raft_log_bytes_max: Option<u64>,
    /// The bootstrap members with their names and peer URLs, ids as in `voters`. Empty: the
    /// `voters`, nameless and without URLs.
    pub initial_members: Vec<Member>,
    /// This member's name and client URLs, which it publishes through the log once it knows
    /// a leader (etcd's "publish").
    pub name: String,
    /// See `name`.
    pub client_urls: Vec<String>,
    /// Started with `--initial-cluster-state existing`: this member is not among `voters` (the
    /// bootstrap configuration it replays the log from) and learns its place from the log.
    pub joining: bool,
    /// How this member serves watches.
    pub watch: WatchConfig,
    /// The quota, auto-compaction and corruption checks.
    pub maintenance: MaintenanceConfig,
    /// Deliberate bugs (simulation builds only; see [`crate::bugs`]).
    pub bugs: Bugs,
    /// How long a simple token lives after its last use (etcd's `--auth-token-ttl`).
    pub auth_token_ttl_ms: u64,
}

/// etcd's default `--auth-token-ttl`: 300 s.
pub const AUTH_TOKEN_TTL_MS_DEFAULT: u64 = 300_000;

/// How a member serves watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// A `fragment` watcher's responses are split above this size (etcd: the server's
    /// `--max-request-bytes`).
    pub fragment_bytes: usize,
    /// Responses a stream may have in flight, between 1 and [`STREAM_WINDOW`].
    pub stream_window: u32,
    /// The interval of progress notifications to watchers that asked for them.
    pub progress_interval_ms: u64,
}

impl Default for WatchConfig {
    /// etcd's defaults.
    fn default() -> Self {
        WatchConfig {
            fragment_bytes: FRAGMENT_BYTES_DEFAULT,
            stream_window: STREAM_WINDOW,
            progress_interval_ms: PROGRESS_NOTIFY_INTERVAL_MS,
        }
    }
}

/// etcd's default `--quota-backend-bytes` (2 GiB), which a flag of 0 also means.
pub const QUOTA_BYTES_DEFAULT: u64 = 2 << 30;
/// Above this quota (8 GiB) etcd warns that performance may degrade.
pub const QUOTA_BYTES_WARN: u64 = 8 << 30;

/// The storage upkeep a member does on its own: the space quota, auto-compaction and
/// corruption checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// Writes that would take the member's quota bytes ([`super::quota_used`]) to this or
    /// beyond are refused and raise the `NOSPACE` alarm (`None`: no quota, etcd's
    /// negative `--quota-backend-bytes`).
    pub quota_bytes: Option<u64>,
    /// Compactions the leader proposes on its own (`--auto-compaction-mode`, `-retention`).
    pub auto_compaction: Option<AutoCompaction>,
    /// Corruption checks between members (`--experimental-initial-corrupt-check`,
    /// `--experimental-corrupt-check-time`).
    pub corrupt_check: CorruptCheck,
}

impl Default for MaintenanceConfig {
    /// etcd's defaults: a 2 GiB quota, no auto-compaction, no corruption checks.
    fn default() -> Self {
        MaintenanceConfig {
            quota_bytes: Some(QUOTA_BYTES_DEFAULT),
            auto_compaction: None,
            corrupt_check: CorruptCheck::default(),
        }
    }
}

/// etcd 3.4's auto-compaction modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last `retention_ms` (`--auto-compaction-mode periodic`).
    Periodic {
        /// How much history to keep, in milliseconds of the node's clock.
        retention_ms: u64,
    },
    /// Keep the last `retention` revisions (`--auto-compaction-mode revision`).
    Revision {
        /// How many revisions to keep.
        retention: i64,
    },
}

/// When members compare their stores' hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CorruptCheck {
    /// Once, soon after the member starts (`--experimental-initial-corrupt-check`).
    pub initial: bool,
    /// Every this many milliseconds of the node's clock (`--experimental-corrupt-check-time`;
    /// `None`: never).
    pub interval_ms: Option<u64>,
}

/// What the driver read back from the snapshot directory and the WAL at start.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The newest valid snapshot, if any (data: the state snapshot, [`crate::state_snapshot`]).
    pub snapshot: Option<Snapshot>,
    /// The newest persisted hard state, if any.
    pub hard_state: Option<HardState>,
    /// The persisted log, contiguous; it starts at index 1, or at or before the entry after
    /// the snapshot (entries the snapshot covers are skipped).
    pub entries: Vec<Entry>,
}

/// An input to the node.
#[derive(Debug)]
pub enum Input {
    /// One raft tick of the driver's monotonic clock has elapsed.
    Tick,
    /// A client request; the reply comes back as [`Output::Reply`] with the same token.
    Request {
        /// The driver's handle for the reply.
        token: u64,
        /// The request.
        request: crate::request::Request,
    },
    /// A client request with its caller: `auth_token` is the gRPC `token` metadata, if the
    /// client sent one. The node resolves it to a user (or refuses it) and checks the request
    /// against that user's permissions when it arrives and again when it is applied or served.
    AuthRequest {
        /// The driver's handle for the reply.
        token: u64,
        /// The request.
        request: crate::request::Request,
        /// The client's auth token.
        auth_token: Option<crate::auth::Credential>,
    },
    /// A Watch create request with its client's auth token: the node checks the caller may
    /// read the range (etcd's `isWatchPermitted`), then creates the watch or refuses it.
    WatchCreate {
        /// The stream.
        stream: crate::watch::StreamId,
        /// The create request.
        request: keel_proto::etcdserverpb::WatchCreateRequest,
        /// The client's auth token.
        auth_token: Option<crate::auth::Credential>,
    },
    /// A raft message from a peer.
    Peer(Box<Message>),
    /// The MVCC store of a leader's snapshot, decoded off the driver loop
    /// ([`super::DecodedStore::decode`]), stepped just before that snapshot's `MsgSnapshot`:
    /// its install takes this store instead of decoding one (see `node/predecoded.rs`).
    StoreDecoded(Box<super::DecodedStore>),
    /// Every [`PersistBatch`] numbered up to `number` is durable.
    Persisted {
        /// The batch number.
        number: u64,
    },
    /// Something happened on a Watch stream (served from this member's applied state).
    Watch(WatchInput),
    /// The state snapshot of an [`Output::SaveSnapshot`] is durable; `snapshot` is the copy
    /// to serve to followers from now on (its data may be a mapping of the file).
    SnapshotSaved {
        /// The saved snapshot.
        snapshot: Snapshot,
    },
    /// The leader's snapshot a [`PersistBatch`] installed is durable and was read back from
    /// its file: the node holds (and serves followers) this copy, whose data is a mapping of
    /// the file, instead of the received one, which is freed. Ignored unless it is the
    /// snapshot held (same index, term and data length): a newer one may be held already.
    InstalledSnapshotSaved {
        /// The installed snapshot, its data read back from the file.
        snapshot: Snapshot,
    },
    /// Saving the state snapshot of an [`Output::SaveSnapshot`] failed (and the driver waited
    /// out its retry backoff): the node offers a fresh job when one is due, at once if it
    /// still is.
    SnapshotFailed,
    /// The snapshot sent to peer `to` was received and stepped (`ok`), or its send failed.
    SnapshotStatus {
        /// The peer.
        to: u64,
        /// Whether it arrived.
        ok: bool,
    },
    /// Peer `to` could not be reached; raft slows down its replication to it.
    Unreachable {
        /// The peer.
        to: u64,
    },
    /// The disk has no space for a persist batch (`full`; the batch waits, unwritten and
    /// unreported), or a write succeeded again (`!full`). While full the node refuses writes
    /// with [`Error::NoSpace`] and raises this member's `NOSPACE` alarm.
    DiskFull {
        /// Whether the disk is full now.
        full: bool,
    },
    /// `Maintenance.Defragment`: make a state snapshot as of the applied index as soon as no
    /// other is being saved, whatever `snapshot_count` says, so the driver can release the
    /// WAL and snapshot files older than the snapshots kept. [`Node::defragmented_to`] tells
    /// when it is saved.
    ///
    /// [`Node::defragmented_to`]: super::Node::defragmented_to
    Defragment,
}

/// Raft state the driver must make durable before it reports [`Input::Persisted`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PersistBatch {
    /// Reported back in [`Input::Persisted`].
    pub number: u64,
    /// A new hard state to write, if it changed.
    pub hard_state: Option<HardState>,
    /// Log entries to append; an entry at an index already written replaces it and all after.
    pub entries: Vec<Entry>,
    /// Messages to send only once this batch is durable.
    pub then_send: Vec<Message>,
    /// A snapshot from the leader that replaces the log: save it to the snapshot directory
    /// (durably) before the WAL records its mark, then the entries and hard state.
    pub snapshot: Option<Snapshot>,
}

impl PersistBatch {
    /// Whether the batch holds nothing to write or send.
    pub(super) fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.entries.is_empty()
            && self.then_send.is_empty()
            && self.snapshot.is_none()
    }

    /// The index of the snapshot this batch installs, if any.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.get_metadata().index)
    }
}

/// An output of the node.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Write this to the WAL, fsync, then send `then_send` and report `Input::Persisted`.
    Persist(PersistBatch),
    /// Messages that may be sent at once.
    Send(Vec<Message>),
    /// The answer to a request.
    Reply {
        /// The token the request came with.
        token: u64,
        /// The response, or etcd's error.
        result: Result<Response, Error>,
    },
    /// Watch responses to send (in order) and streams to end.
    Watch(Vec<WatchOutput>),
    /// Save this state snapshot durably, off the driver loop (streamed:
    /// [`SnapshotJob::write_data`]), then report [`Input::SnapshotSaved`], or
    /// [`Input::SnapshotFailed`] if it could not be saved (not fatal: the WAL still holds
    /// everything). WAL segments wholly before the previous snapshot may be released once it
    /// is durable, never before.
    SaveSnapshot(SnapshotJob),
    /// The member cannot go on (a snapshot from the leader does not decode): stop it.
    Fatal(String),
    /// The member table changed (an applied conf change, update or publish): the transport
    /// should reach exactly `members`.
    Members {
        /// The members, as of the applied index.
        members: Vec<Member>,
        /// This member has been removed from the cluster: it must stop.
        removed: bool,
    },
    /// Changes applied to the v2 store (in index order), for the server's waiting v2
    /// clients.
    V2Events(Vec<keel_proto::keelpb::V2Event>),
}

/// A member's raft and store status, for Maintenance.Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// The leader this member knows of (0 if none).
    pub leader: u64,
    /// Current raft term.
    pub raft_term: u64,
    /// Last index in the raft log.
    pub raft_index: u64,
    /// Last applied index.
    pub raft_applied_index: u64,
    /// Current store revision.
    pub revision: i64,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// The active alarms (Status lists them in `errors`, as etcd does).
    pub alarms: Vec<keel_proto::etcdserverpb::AlarmMember>,
    /// The bytes the member counts towards the quota ([`super::quota_used`]).
    pub quota_bytes_used: u64,
}

/// Counts the server exports as metrics ([`super::Node::gauges`]), each O(1) to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeGauges {
    /// This member's id.
    pub member_id: u64,
    /// The leader this member knows of (0 if none).
    pub leader: u64,
    /// The highest raft index known committed.
    pub committed_index: u64,
    /// The last applied index.
    pub applied_index: u64,
    /// Keys with any stored history (etcd's `keys_total`: deleted keys until compacted).
    pub keys: u64,
    /// Watchers across all streams.
    pub watchers: u64,
    /// Live leases.
    pub leases: u64,
    /// What the quota counts (Status's `dbSizeInUse`).
    pub quota_bytes_used: u64,
    /// Linearizable reads queued for a ReadIndex round since the node started.
    pub linearizable_reads: u64,
    /// ReadIndex rounds started since the node started (retries included).
    pub read_index_rounds: u64,
}

/// What the in-memory raft log holds ([`super::Node::raft_log_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftLogMemory {
    /// The index of its first entry.
    pub first_index: u64,
    /// The bytes of its applied entries (each entry's struct and payload), which
    /// `NodeConfig::raft_log_bytes_max` bounds.
    pub applied_bytes: u64,
}

/// The node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// raft-rs rejected the configuration or the recovered state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The configuration is unusable.
    #[error("invalid node configuration: {0}")]
    Config(String),
}
