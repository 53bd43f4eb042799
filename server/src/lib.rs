//! keel-server: the runtime driver around the pure engine, the etcd v3 gRPC services, and the
//! glue to durable storage.
//!
//! Written once for two runtimes: with `--cfg madsim` its `tokio`/`tonic` resolve to madsim's
//! simulated crates, so the simulator runs this very code. Only `main` builds a runtime;
//! everything else is reached through [`run`].
//!
//! Layers, each depending only on those below it (`tests/layers.rs` checks that no module
//! cycle creeps in):
//! - [`client`]: the etcd services clients call, one file per service, and the `:authority`
//!   shim; [`peer`]: the peer port (raft transport, snapshot streaming, forwarding to the
//!   leader). Both reach the node only through a [`driver::Handle`];
//! - [`driver`]: the loop that owns the engine's `Node`, the WAL writer, the ticker;
//! - the engine (`keel-engine`) and storage (`keel-storage`) crates.
//!
//! The tokio build adds `gateway`, etcd's HTTP/1.1 JSON surface on the client port, which
//! calls the [`client`] services' objects in-process.
//!
//! Beside them: [`status`] (etcd errors as gRPC statuses), [`error`], [`config`], [`logging`], [`metrics`], [`version`],
//! [`bootstrap`] (who this member is) and [`clock`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod background;
pub mod backup;
pub mod bootstrap;
pub mod client;
pub mod clock;
pub mod config;
pub mod corrupt;
pub mod driver;
pub mod error;
#[cfg(not(madsim))]
pub mod gateway;
/// The simulation build's HTTP surface: the v2 API alone (see `gateway/sim.rs`).
#[cfg(madsim)]
#[path = "gateway/sim.rs"]
pub mod gateway;
mod identity_file;
pub mod logging;
pub mod member_lock;
pub mod metrics;
pub mod peer;
pub mod status;
#[cfg(not(madsim))]
pub mod tls;
pub mod tokens;
pub mod version;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::node::{Node, NodeConfig, Recovered, WatchConfig};
use keel_engine::raft_log::{decode_conf_state, decode_entry, decode_hard_state};
use keel_engine::raftpb::Snapshot;
use keel_storage::disk::Disk;
use keel_storage::snap::SnapDir;
use keel_storage::wal::{Wal, WalOptions};

pub use crate::bootstrap::Identity;
use crate::bootstrap::{identity, join};
pub use crate::clock::{Clock, SystemClock};
pub use crate::config::Config;
pub use crate::error::ServerError;

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

/// Serves the peer service on `addr` until the listener fails, over TLS when `tls` is given
/// (an `https://` peer URL): a peer whose certificate the peer CA did not sign is refused at
/// the handshake, before any raft message is read.
async fn serve_peers(
    service: peer::PeerService,
    addr: SocketAddr,
    #[cfg(not(madsim))] tls: Option<Arc<tls::ServerTls>>,
) -> Result<(), ServerError> {
    let serve_error = |e: &dyn std::fmt::Display| ServerError::Serve {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    #[cfg(not(madsim))]
    {
        // Two lanes (`peer::lanes`): snapshot transfers are served on a background thread.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| serve_error(&e))?;
        peer::lanes::serve(service, listener, tls)
            .await
            .map_err(|e| serve_error(&e))
    }
    #[cfg(madsim)]
    {
        let router = tonic::transport::Server::builder()
            .add_service(keel_proto::keelpb::peer_server::PeerServer::new(service));
        router.serve(addr).await.map_err(|e| serve_error(&e))
    }
}

/// Runs a keel member until it fails. Never returns `Ok` on its own: the caller stops it by
/// dropping the future (or the runtime).
pub async fn run(config: Config, env: Env) -> Result<(), ServerError> {
    // Keys are read before anything touches the data dir.
    let tokens = config.auth_tokens()?;
    #[cfg(not(madsim))]
    let member_tls = tls::MemberTls::load(&config)?;
    let dialer = peer::link::Dialer {
        #[cfg(not(madsim))]
        tls: member_tls.peer_client.clone(),
    };
    let mut boot = identity(&config)?;
    match identity_file::load(&env.disk, &config)? {
        // Started before: that member again, whatever the bootstrap flags say (etcd reads
        // its ids from the WAL and ignores them too).
        Some(stored) => boot = stored.apply(boot),
        None => {
            if config.initial_cluster_state == "existing" {
                boot = join(&config, &env.clock, boot, &dialer).await?;
            }
            identity_file::save(&env.disk, &config, &boot);
        }
    }
    let identity = boot.identity.clone();
    let peers = driver::peer_urls(&boot.peers);
    let voters: Vec<u64> = boot.initial.iter().map(|m| m.id).collect();
    let peer_addrs = config.peer_listeners()?;
    let (tick_ms, election_ticks) = config.ticks()?;
    let client_addrs = config.client_listeners()?;
    let maintenance = config.maintenance()?;
    let (storage, recovered) = open_storage(&env.disk, &config)?;
    let held = recovered.snapshot.as_ref().map(|s| s.data.clone());
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
            snapshot_log_percent: config.snapshot_log_percent,
            // 0: no byte bound.
            raft_log_bytes_max: (config.max_raft_log_bytes > 0)
                .then_some(config.max_raft_log_bytes),
            initial_members: boot.initial,
            name: identity.name.clone(),
            client_urls: identity.client_urls.clone(),
            joining: boot.joining,
            watch: WatchConfig {
                // etcd splits a `fragment` watcher's responses above --max-request-bytes.
                fragment_bytes: config.max_request_bytes as usize,
                ..WatchConfig::default()
            },
            maintenance,
            bugs: config.bugs,
            auth_token_ttl_ms: config.auth_token_ttl.saturating_mul(1000),
        },
        recovered,
    )?;
    if let Some(data) = held {
        // Restoring the store read every page of the snapshot; raft keeps the mapping only to
        // send it to a follower.
        env.disk.evict(&data);
    }
    // etcd's request timeout: 5 s plus twice the election timeout.
    let request_timeout = Duration::from_millis(5000 + 2 * config.election_timeout_ms);
    let local = peer::LocalIdentity {
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
    };
    // Unbounded, because the transport also reports from inside the driver loop (a snapshot
    // to an unknown peer fails at once), and the loop cannot wait for its own queue. Bounded
    // in practice per peer: one snapshot outcome per transfer, and raft sends a follower no
    // other snapshot until the outcome is in; one unreachable report per failed connection or
    // stream, each followed by a reconnect backoff of at least `peer::transport::BACKOFF_MIN`.
    let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let transport = Arc::new(peer::Transport::start_with(
        local,
        peers,
        env.clock.clone(),
        reports_tx,
        dialer,
    ));
    // etcd's v2 raft stats: the transport counts appends out, the peer service appends in.
    let peer_stats = transport.stats();
    // A forwarded lease request waits for the leader at most one election timeout.
    let forwarder = peer::forward::Forwarder::new(
        identity.cluster_id,
        Arc::clone(&transport),
        Duration::from_millis(config.election_timeout_ms),
    );
    let (inbound_tx, inbound) = tokio::sync::mpsc::channel(PEER_INBOUND_MAX);
    let received_snaps = storage.snaps.clone();
    let decoded = driver::DecodedSlot::default();
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
            decoded: decoded.clone(),
        },
    );
    let handle = handle.with_tokens(tokens);
    let peer_service = peer::PeerService::new(local, inbound_tx, Some(handle.clone()))
        .with_stats(Arc::clone(&peer_stats), env.clock.clone())
        .with_snapshots(received_snaps)
        .with_decoded(decoded);
    let check = maintenance.corrupt_check;
    if check.initial || check.interval_ms.is_some() {
        let checker =
            corrupt::checker(handle.clone(), env.clock.clone(), identity.member_id, check);
        tokio::spawn(checker);
    }
    let v2 = config.enable_v2.then(|| {
        let v2 = gateway::v2::V2Http::new(
            handle.clone(),
            identity.clone(),
            env.clock.clone(),
            config.max_request_bytes as usize,
        )
        .with_peer_stats(Arc::clone(&peer_stats));
        let expiry =
            gateway::v2::expire_ttls(handle.clone(), env.clock.clone(), identity.member_id);
        tokio::spawn(expiry);
        Arc::new(v2)
    });
    let services = client::Services::new(handle, identity, &config, forwarder);
    #[cfg(not(madsim))]
    let services = match v2 {
        Some(v2) => services.with_v2(v2),
        None => services,
    };
    let mut servers = Vec::new();
    for (addr, https) in peer_addrs {
        tracing::info!(%addr, https, "serving peer traffic");
        #[cfg(not(madsim))]
        let served = serve_peers(
            peer_service.clone(),
            addr,
            https.then(|| member_tls.peer_server.clone()).flatten(),
        );
        #[cfg(madsim)]
        let served = {
            let _ = https;
            serve_peers(peer_service.clone(), addr)
        };
        servers.push(tokio::spawn(served));
    }
    for (addr, https) in client_addrs {
        tracing::info!(%addr, https, "serving client requests");
        #[cfg(not(madsim))]
        let served = services
            .clone()
            .serve_tls(addr, https.then(|| member_tls.client.clone()).flatten());
        #[cfg(madsim)]
        let served = {
            let _ = https;
            services.clone().serve(addr)
        };
        servers.push(tokio::spawn(served));
        // The v2 API on madsim's TCP beside the simulated gRPC endpoint (gateway/sim.rs).
        #[cfg(madsim)]
        if let Some(v2) = &v2 {
            servers.push(tokio::spawn(gateway::serve_v2(Arc::clone(v2), addr)));
        }
    }
    #[cfg(not(madsim))]
    for addr in config.metrics_listen_addrs()? {
        tracing::info!(%addr, "serving /metrics and /health");
        servers.push(tokio::spawn(services.clone().serve_metrics(addr)));
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
