//! keel-server: the runtime driver around the pure engine, the etcd v3 gRPC services, and the
//! glue to durable storage.
//!
//! Written once for two runtimes: with `--cfg madsim` its `tokio`/`tonic` resolve to madsim's
//! simulated crates, so the simulator runs this very code. Only `main` builds a runtime;
//! everything else is reached through [`run`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
#[cfg(not(madsim))]
pub mod authority;
pub mod clock;
pub mod config;
pub mod driver;
pub mod forward;
pub mod snapshot_send;
pub mod transport;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::membership::{Member, Membership};
use keel_engine::node::{Node, NodeConfig, Recovered, WatchConfig};
use keel_engine::raft_log::{decode_conf_state, decode_entry, decode_hard_state, CodecError};
use keel_engine::raftpb::Snapshot;
use keel_storage::disk::Disk;
use keel_storage::snap::{SnapDir, SnapError};
use keel_storage::wal::{Wal, WalError, WalOptions};

pub use crate::clock::{Clock, SystemClock};
pub use crate::config::Config;

/// What the server runs on: its disk, its clock and its seed. Production passes the OS disk,
/// the system clock and a fresh random seed; the simulator passes its own.
#[derive(Clone)]
pub struct Env {
    /// All file I/O goes through this.
    pub disk: Arc<dyn Disk>,
    /// All time is read through this.
    pub clock: Arc<dyn Clock>,
    /// Seeds the engine's random choices; should differ between runs of a member.
    pub seed: u64,
}

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory could not be prepared.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The WAL could not be opened (corruption, I/O error).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A WAL record passed its crc but does not decode.
    #[error("WAL record does not decode: {0}")]
    Codec(#[from] CodecError),
    /// The snapshot directory could not be read.
    #[error(transparent)]
    Snap(#[from] SnapError),
    /// The snapshots and the WAL do not fit together.
    #[error("data dir {path}: {reason}")]
    Recovery {
        /// The data directory.
        path: String,
        /// What does not fit.
        reason: String,
    },
    /// The engine refused to start.
    #[error(transparent)]
    Start(#[from] keel_engine::node::StartError),
    /// The driver stopped (e.g. a failed fsync).
    #[error(transparent)]
    Driver(#[from] driver::DriverError),
    /// `--initial-cluster-state existing`, and no listed peer told us about the cluster.
    #[error("joining an existing cluster: {0}")]
    Join(String),
    /// A gRPC listener failed.
    #[error("serving {addr}: {reason}")]
    Serve {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// Identity of this member and its cluster, derived from the bootstrap flags like etcd does.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// This member's name.
    pub name: String,
    /// Peer URLs advertised.
    pub peer_urls: Vec<String>,
    /// Client URLs advertised.
    pub client_urls: Vec<String>,
}

/// How this member starts: who it is, and the member table its log replay starts from.
struct Bootstrap {
    identity: Identity,
    /// The bootstrap members (for a joining member: the cluster's, as a peer reported them).
    initial: Vec<Member>,
    /// The members the transport reaches at first.
    peers: Vec<Member>,
    /// `--initial-cluster-state existing`.
    joining: bool,
}

fn identity(config: &Config) -> Result<Bootstrap, ServerError> {
    let members = config.initial_members()?;
    let token = config.initial_cluster_token.as_str();
    let member_id_of = |urls: &[String]| {
        let mut parts: Vec<&str> = urls.iter().map(String::as_str).collect();
        parts.sort_unstable();
        parts.push(token);
        config::stable_id(&parts)
    };
    let voters: Vec<u64> = members.iter().map(|m| member_id_of(&m.peer_urls)).collect();
    let me = members
        .iter()
        .find(|m| m.name == config.name)
        .ok_or_else(|| config::ConfigError::InitialCluster("does not name --name".into()))?;
    let member_id = member_id_of(&me.peer_urls);
    let mut sorted = voters.clone();
    sorted.sort_unstable();
    let id_texts: Vec<String> = sorted.iter().map(|id| format!("{id:x}")).collect();
    let mut parts: Vec<&str> = id_texts.iter().map(String::as_str).collect();
    parts.push(token);
    let cluster_id = config::stable_id(&parts);
    let identity = Identity {
        member_id,
        cluster_id,
        name: config.name.clone(),
        peer_urls: me.peer_urls.clone(),
        client_urls: config.advertise_client_url_list(),
    };
    let initial: Vec<Member> = members
        .iter()
        .zip(&voters)
        .map(|(m, id)| Member {
            id: *id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            ..Member::default()
        })
        .collect();
    Ok(Bootstrap {
        identity,
        peers: initial.clone(),
        initial,
        joining: false,
    })
}

/// How long a joining member waits for one peer's answer.
const JOIN_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds over the listed peers before a joining member gives up, and the pause between.
const JOIN_ROUNDS_MAX: usize = 10;
const JOIN_ROUND_PAUSE: Duration = Duration::from_secs(1);

/// `--initial-cluster-state existing` (etcd's `GetClusterFromRemotePeers`): asks the members
/// listed in `--initial-cluster` for the cluster's id and member table, and finds this member
/// in it by its peer URLs (it must have been added with MemberAdd first). A peer that has not
/// applied the MemberAdd yet, or does not answer, is skipped; after a round without an
/// answer that lists this member, the next round starts a second later.
async fn join(
    config: &Config,
    clock: &Arc<dyn Clock>,
    boot: Bootstrap,
) -> Result<Bootstrap, ServerError> {
    let mut reasons = Vec::new();
    for _ in 0..JOIN_ROUNDS_MAX {
        reasons.clear();
        for m in config.initial_members()? {
            if m.name == config.name {
                continue;
            }
            for url in &m.peer_urls {
                match ask_members(url).await {
                    Ok((cluster_id, table)) => match find_me(&boot, &table) {
                        Some(me) => return Ok(joined(boot, cluster_id, me, &table)),
                        None => reasons.push(format!("{url}: this member is not in its table")),
                    },
                    Err(reason) => reasons.push(format!("{url}: {reason}")),
                }
            }
        }
        clock.sleep(JOIN_ROUND_PAUSE).await;
    }
    Err(ServerError::Join(format!(
        "no peer listed this member (add it first): {}",
        reasons.join("; ")
    )))
}

async fn ask_members(url: &str) -> Result<(u64, Membership), String> {
    use keel_proto::keelpb::{peer_client::PeerClient, MembersRequest};
    let ask = async {
        let endpoint =
            tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let reply = PeerClient::new(channel)
            .members(MembersRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let table =
            Membership::from_table(&reply.table.unwrap_or_default()).map_err(|e| e.to_string())?;
        Ok((reply.cluster_id, table))
    };
    match tokio::time::timeout(JOIN_ASK_TIMEOUT, ask).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

fn find_me(boot: &Bootstrap, table: &Membership) -> Option<Member> {
    let urls = &boot.identity.peer_urls;
    table
        .members()
        .into_iter()
        .find(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
}

fn joined(mut boot: Bootstrap, cluster_id: u64, me: Member, table: &Membership) -> Bootstrap {
    tracing::info!(
        member = format_args!("{:x}", me.id),
        cluster = format_args!("{cluster_id:x}"),
        "joining an existing cluster"
    );
    boot.identity.member_id = me.id;
    boot.identity.cluster_id = cluster_id;
    // A bootstrap member restarted with `existing` (etcd ignores the flag once it has data)
    // is one of the bootstrap voters, not a joiner.
    boot.joining = !table.initial().iter().any(|m| m.id == me.id);
    boot.initial = table.initial().to_vec();
    boot.peers = table.members();
    boot
}

/// Opens the snapshot directory and the WAL under `data_dir` and reads back what they hold:
/// the newest valid snapshot and the log after it.
fn open_storage(
    disk: &Arc<dyn Disk>,
    config: &Config,
) -> Result<(driver::Storage, Recovered), ServerError> {
    let member_dir = config.data_dir.join("member");
    let wal_dir = member_dir.join("wal");
    disk.create_dir_all(&wal_dir)
        .map_err(|source| ServerError::DataDir {
            path: wal_dir.display().to_string(),
            source,
        })?;
    let snaps = SnapDir::open(
        Arc::clone(disk),
        &member_dir.join("snap"),
        config.max_snapshots.max(1),
    )?;
    let loaded = snaps.load_newest()?.snapshot;
    let opts = WalOptions {
        segment_bytes_max: config.wal_segment_bytes,
        #[cfg(madsim)]
        skip_crc_bug: config.bugs.has(keel_engine::bugs::Bug::SkipCrc),
    };
    let (wal, from_disk) = Wal::open(Arc::clone(disk), &wal_dir, opts)?;
    let snapshot = match loaded {
        Some(l) => {
            let mut snapshot = Snapshot {
                data: l.data,
                ..Default::default()
            };
            let meta = snapshot.mut_metadata();
            meta.index = l.index;
            meta.term = l.term;
            meta.set_conf_state(decode_conf_state(&l.meta)?);
            Some(snapshot)
        }
        None => None,
    };
    let snap_index = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
    if let Some(mark) = from_disk.snapshot.filter(|m| m.index > snap_index) {
        return Err(ServerError::Recovery {
            path: config.data_dir.display().to_string(),
            reason: format!(
                "the WAL was replaced by a snapshot at index {} but the newest valid snapshot \
                 file ends at index {snap_index}; the state in between is lost",
                mark.index
            ),
        });
    }
    let hard_state = from_disk
        .hard_state
        .as_deref()
        .map(decode_hard_state)
        .transpose()?;
    let mut entries = Vec::with_capacity(from_disk.entries.len());
    for e in from_disk.entries.iter().filter(|e| e.index > snap_index) {
        entries.push(decode_entry(&e.data)?);
    }
    tracing::info!(
        snapshot = snap_index,
        entries = entries.len(),
        dir = %member_dir.display(),
        "recovered snapshot and WAL"
    );
    let recovered = Recovered {
        snapshot,
        hard_state,
        entries,
    };
    Ok((driver::Storage { wal, snaps }, recovered))
}

/// Raft messages received from peers and not yet taken by the driver, at most.
pub const PEER_INBOUND_MAX: usize = 16 * 1024;

/// Serves the peer service on `addr` until the listener fails.
async fn serve_peers(service: transport::PeerService, addr: SocketAddr) -> Result<(), ServerError> {
    tonic::transport::Server::builder()
        .add_service(keel_proto::keelpb::peer_server::PeerServer::new(service))
        .serve(addr)
        .await
        .map_err(|e| ServerError::Serve {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

/// Runs a keel member until it fails. Never returns `Ok` on its own: the caller stops it by
/// dropping the future (or the runtime).
pub async fn run(config: Config, env: Env) -> Result<(), ServerError> {
    let mut boot = identity(&config)?;
    if config.initial_cluster_state == "existing" {
        boot = join(&config, &env.clock, boot).await?;
    }
    let identity = boot.identity.clone();
    let peers = driver::peer_urls(&boot.peers);
    let voters: Vec<u64> = boot.initial.iter().map(|m| m.id).collect();
    let peer_addrs = config.peer_listen_addrs()?;
    let (tick_ms, election_ticks) = config.ticks()?;
    let client_addrs = config.client_listen_addrs()?;
    let (storage, recovered) = open_storage(&env.disk, &config)?;
    let node = Node::new(
        NodeConfig {
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            voters,
            election_ticks,
            heartbeat_ticks: 1,
            tick_ms,
            seed: env.seed,
            incarnation: env.seed & 0xff_ffff,
            snapshot_count: config.snapshot_count,
            initial_members: boot.initial,
            name: identity.name.clone(),
            client_urls: identity.client_urls.clone(),
            joining: boot.joining,
            watch: WatchConfig {
                // etcd splits a `fragment` watcher's responses above --max-request-bytes.
                fragment_bytes: config.max_request_bytes as usize,
                ..WatchConfig::default()
            },
            bugs: config.bugs,
        },
        recovered,
    )?;
    // etcd's request timeout: 5 s plus twice the election timeout.
    let request_timeout = Duration::from_millis(5000 + 2 * config.election_timeout_ms);
    let local = transport::LocalIdentity {
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
    };
    let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let transport = Arc::new(transport::Transport::start(
        local,
        peers,
        env.clock.clone(),
        reports_tx,
    ));
    // A forwarded lease request waits for the leader at most one election timeout.
    let forwarder = forward::Forwarder::new(
        identity.cluster_id,
        Arc::clone(&transport),
        Duration::from_millis(config.election_timeout_ms),
    );
    let (inbound_tx, inbound) = tokio::sync::mpsc::channel(PEER_INBOUND_MAX);
    let (handle, fatal) = driver::start(
        node,
        storage,
        env.clock.clone(),
        driver::DriverConfig {
            tick: Duration::from_millis(tick_ms),
            request_timeout,
            bugs: config.bugs,
        },
        transport,
        driver::Inbound {
            messages: inbound,
            reports,
        },
    );
    let peer_service = transport::PeerService::new(local, inbound_tx, Some(handle.clone()));
    let services = api::Services::new(handle, identity, &config, forwarder);
    let mut servers = Vec::new();
    for addr in peer_addrs {
        tracing::info!(%addr, "serving peer traffic");
        servers.push(tokio::spawn(serve_peers(peer_service.clone(), addr)));
    }
    for addr in client_addrs {
        tracing::info!(%addr, "serving client requests");
        servers.push(tokio::spawn(services.clone().serve(addr)));
    }
    tokio::select! {
        err = fatal => match err {
            Ok(e) => Err(e.into()),
            Err(_) => Err(driver::DriverError::Task("driver vanished".into()).into()),
        },
        result = futures::future::select_all(servers) => {
            let (joined, _, _) = result;
            match joined {
                Ok(Ok(())) => Err(ServerError::Serve { addr: "client".into(), reason: "listener stopped".into() }),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(ServerError::Serve { addr: "client".into(), reason: e.to_string() }),
            }
        }
    }
}
