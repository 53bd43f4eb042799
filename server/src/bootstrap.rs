//! Who this member is: its identity from the bootstrap flags, or, joining an existing
//! cluster, from the member table a peer reports.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::membership::{Member, Membership};

use crate::clock::Clock;
use crate::config::{self, Config};
use crate::error::ServerError;

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
pub(crate) struct Bootstrap {
    pub(crate) identity: Identity,
    /// The bootstrap members (for a joining member: the cluster's, as a peer reported them).
    pub(crate) initial: Vec<Member>,
    /// The members the transport reaches at first.
    pub(crate) peers: Vec<Member>,
    /// `--initial-cluster-state existing`.
    pub(crate) joining: bool,
}

/// Who this member is, from the bootstrap flags.
pub(crate) fn identity(config: &Config) -> Result<Bootstrap, ServerError> {
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

/// The ids and member table of a new cluster, as the bootstrap flags of `config` define them
/// (`--name`, `--initial-cluster`, `--initial-cluster-token`): what a member started with
/// those flags takes itself to be, and what `keelutl snapshot restore` writes.
pub fn new_cluster(config: &Config) -> Result<(Identity, Vec<Member>), ServerError> {
    let boot = identity(config)?;
    Ok((boot.identity, boot.initial))
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
pub(crate) async fn join(
    config: &Config,
    clock: &Arc<dyn Clock>,
    boot: Bootstrap,
    dialer: &crate::peer::link::Dialer,
) -> Result<Bootstrap, ServerError> {
    let mut reasons = Vec::new();
    for _ in 0..JOIN_ROUNDS_MAX {
        reasons.clear();
        for m in config.initial_members()? {
            if m.name == config.name {
                continue;
            }
            for url in &m.peer_urls {
                match ask_members(dialer, url).await {
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

async fn ask_members(
    dialer: &crate::peer::link::Dialer,
    url: &str,
) -> Result<(u64, Membership), String> {
    use keel_proto::keelpb::{peer_client::PeerClient, MembersRequest};
    let ask = async {
        let channel = dialer.connect(url, None).await?;
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
