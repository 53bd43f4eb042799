//! etcd's corruption checks (`--experimental-initial-corrupt-check`,
//! `--experimental-corrupt-check-time`): members compare their stores' HashKV at a common
//! revision, and a member whose hash differs gets the `CORRUPT` alarm.
//!
//! A pass, run by the member itself: it takes its own HashKV at its current revision, asks
//! every other member that published client URLs for HashKV at that revision (over the
//! client port, as `etcdctl endpoint hashkv` does), and compares the hashes of the members
//! whose compaction revision equals its own (a member behind, or compacted differently,
//! cannot be compared and is skipped). The hash most members share is taken as right (a tie
//! goes to this member's own); every member with another hash is named in an error log with
//! the revision and all the hashes, and its `CORRUPT` alarm is raised through the log
//! (`Maintenance.Alarm` ACTIVATE). The alarm then refuses every write on every member (etcd
//! 3.4's corrupt applier, `keel_engine::alarm::refuses_when_corrupt`), so corruption is never
//! built on or replicated further; reads go on so an operator can look.
//!
//! The initial check is one pass by every member soon after it starts (once it knows a
//! leader); etcd 3.4 instead refuses to start. The periodic check is a pass by the leader
//! every `--experimental-corrupt-check-time`, as in etcd. Time comes from the server's
//! [`Clock`], so under the simulator the checks run on its clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::node::CorruptCheck;
use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{AlarmRequest, AlarmType, HashKvRequest};

use crate::clock::Clock;
use crate::driver::Handle;

/// How long a pass waits for one peer's HashKV.
pub const PEER_HASH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the initial check looks again for a leader before its pass.
const INITIAL_POLL: Duration = Duration::from_millis(500);

/// One member's hash at the pass's revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHash {
    /// The member.
    pub member_id: u64,
    /// Its HashKV.
    pub hash: u32,
}

/// The members whose hash differs from the one most members share (ties go to `own`'s).
pub fn dissenters(own: MemberHash, peers: &[MemberHash]) -> Vec<u64> {
    let mut by_hash: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for m in std::iter::once(&own).chain(peers) {
        by_hash.entry(m.hash).or_default().push(m.member_id);
    }
    let own_count = by_hash.get(&own.hash).map_or(0, Vec::len);
    let right = by_hash
        .iter()
        .filter(|(_, members)| members.len() > own_count)
        .max_by_key(|(_, members)| members.len())
        .map_or(own.hash, |(&hash, _)| hash);
    let mut wrong: Vec<u64> = by_hash
        .into_iter()
        .filter(|&(hash, _)| hash != right)
        .flat_map(|(_, members)| members)
        .collect();
    wrong.sort_unstable();
    wrong
}

/// Runs the configured checks for member `member_id` until the member stops.
pub async fn checker(handle: Handle, clock: Arc<dyn Clock>, member_id: u64, cfg: CorruptCheck) {
    if cfg.initial {
        loop {
            clock.sleep(INITIAL_POLL).await;
            match handle.status().await {
                Ok(s) if s.leader != 0 => break,
                Ok(_) => continue,
                Err(_) => return,
            }
        }
        tracing::info!("starting initial corruption check");
        pass(&handle, member_id).await;
    }
    let Some(interval_ms) = cfg.interval_ms else {
        return;
    };
    loop {
        clock.sleep(Duration::from_millis(interval_ms)).await;
        match handle.status().await {
            Ok(s) if s.leader == member_id => pass(&handle, member_id).await,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// One pass: compare, log, raise the alarms of the members whose hash differs.
async fn pass(handle: &Handle, member_id: u64) {
    let own = match handle.call(HashKvRequest { revision: 0 }).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "corruption check: own HashKV failed");
            return;
        }
    };
    let revision = own.header.as_ref().map_or(0, |h| h.revision);
    let members = match handle.members().await {
        Ok(m) => m.members(),
        Err(_) => return,
    };
    let mut peers = Vec::new();
    for m in members.iter().filter(|m| m.id != member_id) {
        let Some(url) = m.client_urls.first() else {
            continue;
        };
        match peer_hash(url, revision).await {
            Ok((hash, compacted)) if compacted == own.compact_revision => peers.push(MemberHash {
                member_id: m.id,
                hash,
            }),
            Ok(_) => {} // compacted elsewhere: not comparable
            Err(e) => tracing::debug!(peer = format!("{:x}", m.id), error = %e, "no hash"),
        }
    }
    let mine = MemberHash {
        member_id,
        hash: own.hash,
    };
    let wrong = dissenters(mine, &peers);
    if wrong.is_empty() {
        tracing::debug!(revision, compared = peers.len(), "corruption check passed");
        return;
    }
    let hashes: Vec<String> = std::iter::once(&mine)
        .chain(&peers)
        .map(|m| format!("{:x}={}", m.member_id, m.hash))
        .collect();
    for id in wrong {
        tracing::error!(
            revision,
            compact_revision = own.compact_revision,
            member = format!("{id:x}"),
            hashes = hashes.join(","),
            "found data inconsistency with peers: raising CORRUPT"
        );
        let raise = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Corrupt as i32,
        };
        if let Err(e) = handle.call(raise).await {
            tracing::warn!(error = %e, "corruption check: raising CORRUPT failed");
        }
    }
}

/// A peer's (hash, compaction revision) at `revision`, over its client URL.
async fn peer_hash(url: &str, revision: i64) -> Result<(u32, i64), String> {
    let call = async {
        let mut client = MaintenanceClient::connect(url.to_string())
            .await
            .map_err(|e| e.to_string())?;
        let response = client
            .hash_kv(HashKvRequest { revision })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        Ok((response.hash, response.compact_revision))
    };
    match tokio::time::timeout(PEER_HASH_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(member_id: u64, hash: u32) -> MemberHash {
        MemberHash { member_id, hash }
    }

    #[test]
    fn the_hash_most_members_share_is_right() {
        assert!(dissenters(h(1, 7), &[h(2, 7), h(3, 7)]).is_empty());
        assert_eq!(dissenters(h(1, 7), &[h(2, 7), h(3, 9)]), [3]);
        assert_eq!(
            dissenters(h(1, 9), &[h(2, 7), h(3, 7)]),
            [1],
            "this member itself"
        );
        assert_eq!(
            dissenters(h(1, 7), &[h(2, 9)]),
            [2],
            "a tie: this member's own"
        );
        assert!(dissenters(h(1, 7), &[]).is_empty(), "nothing to compare");
    }
}
