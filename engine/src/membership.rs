//! The replicated member table (etcd's `membership.RaftCluster`): who is in the cluster, their
//! names, peer and client URLs, and which of them are learners.
//!
//! The table starts from the bootstrap members (`--initial-cluster`) and changes only when a
//! raft entry is applied, so every member holds the same table at the same applied index:
//!
//! ```
//! use keel_engine::membership::{Member, Membership};
//! let n1 = Member { id: 1, name: "n1".into(), peer_urls: vec!["http://a:2380".into()],
//!                   ..Member::default() };
//! let mut table = Membership::bootstrap(vec![n1]);
//! let n2 = Member { id: 2, peer_urls: vec!["http://b:2380".into()], is_learner: true,
//!                   ..Member::default() };
//! table.check_add(&n2).unwrap();            // etcd's checks, before proposing and at apply
//! table.add(n2);                            // an applied ConfChangeV2 (AddLearnerNode)
//! table.check_promote(2).unwrap();
//! table.promote(2);                         // an applied ConfChangeV2 (AddNode)
//! table.publish(2, "n2", vec!["http://b:2379".into()]); // n2 started and published
//! assert_eq!(table.get(2).unwrap().name, "n2");
//! table.remove(1);
//! assert!(table.check_add(&Member { id: 1, ..Member::default() }).is_err()); // never again
//! let decoded = Membership::decode(&table.encode()).unwrap();
//! assert_eq!(decoded, table);
//! ```
//!
//! Encoding (for the state-machine snapshot): `"KEELMEMB"`, a format `u32` = 1, the protobuf
//! `keelpb.MemberTable`, then the crc32 (IEEE) of everything before it (big-endian `u32`).

use std::collections::{BTreeMap, BTreeSet};

use keel_proto::etcdserverpb;
use keel_proto::keelpb::MemberTable;
use prost::Message as _;

use crate::error::Error;

/// Learners a cluster may hold at once (etcd 3.4's `maxLearners`).
pub const LEARNERS_MAX: usize = 1;
/// Members a cluster may hold at once.
pub const MEMBERS_MAX: usize = 64;
/// A learner may be promoted once its log matches at least this share (in percent) of the
/// leader's (etcd's `readyPercent`, 0.9).
pub const PROMOTE_READY_PERCENT: u64 = 90;

const MAGIC: &[u8; 8] = b"KEELMEMB";
const FORMAT: u32 = 1;

/// One member, as etcd's `Member` message describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// The member's id (non-zero).
    pub id: u64,
    /// Empty until the member has started and published it.
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it; empty until it has started and published them.
    pub client_urls: Vec<String>,
    /// A learner receives the log but does not vote.
    pub is_learner: bool,
}

impl Member {
    /// etcd's "started": the member has published its name.
    pub fn is_started(&self) -> bool {
        !self.name.is_empty()
    }

    /// As etcd's wire type.
    pub fn to_proto(&self) -> etcdserverpb::Member {
        etcdserverpb::Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }

    /// From etcd's wire type.
    pub fn from_proto(m: &etcdserverpb::Member) -> Member {
        Member {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_ur_ls.clone(),
            client_urls: m.client_ur_ls.clone(),
            is_learner: m.is_learner,
        }
    }
}

/// Why a member table could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipDecodeError {
    /// The bytes end before the table does.
    #[error("member table: truncated")]
    Truncated,
    /// Not a keel member table, or a format this build does not know.
    #[error("member table: unknown magic or format")]
    UnknownFormat,
    /// The checksum does not match.
    #[error("member table: checksum mismatch")]
    Checksum,
    /// The body is not a `keelpb.MemberTable`, or breaks the table's rules.
    #[error("member table: {0}")]
    Body(String),
}

/// The member table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<u64, Member>,
    /// Removed ids never come back (etcd's `removed` bucket).
    removed: BTreeSet<u64>,
    /// The bootstrap members, for a joining member's log replay.
    initial: Vec<Member>,
}

impl Membership {
    /// The table at bootstrap.
    pub fn bootstrap(initial: Vec<Member>) -> Membership {
        let members = initial.iter().map(|m| (m.id, m.clone())).collect();
        Membership {
            members,
            removed: BTreeSet::new(),
            initial,
        }
    }

    /// Every member, ordered by id.
    pub fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// Every member in etcd's wire type, ordered by id.
    pub fn to_proto(&self) -> Vec<etcdserverpb::Member> {
        self.members.values().map(Member::to_proto).collect()
    }

    /// The bootstrap members.
    pub fn initial(&self) -> &[Member] {
        &self.initial
    }

    /// One member.
    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Whether `id` was a member and has been removed.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the table is empty (never, for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn voters(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.is_learner)
    }

    fn peer_url_taken(&self, urls: &[String], except: u64) -> bool {
        self.members
            .values()
            .filter(|m| m.id != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// etcd's checks for MemberAdd (`ValidateConfigurationChange`).
    pub fn check_add(&self, m: &Member) -> Result<(), Error> {
        if self.removed.contains(&m.id) {
            return Err(Error::MemberNotFound); // etcd: ErrIDRemoved, sent as "not found"
        }
        if self.members.contains_key(&m.id) {
            return Err(Error::MemberExist);
        }
        if self.peer_url_taken(&m.peer_urls, 0) {
            return Err(Error::PeerUrlExist);
        }
        let learners = self.members.values().filter(|m| m.is_learner).count();
        if m.is_learner && learners >= LEARNERS_MAX {
            return Err(Error::TooManyLearners);
        }
        if self.members.len() >= MEMBERS_MAX {
            return Err(Error::TooManyRequests);
        }
        Ok(())
    }

    /// etcd's checks for MemberRemove.
    pub fn check_remove(&self, id: u64) -> Result<(), Error> {
        self.get_or_not_found(id).map(|_| ())
    }

    /// etcd's checks for MemberUpdate.
    pub fn check_update(&self, id: u64, peer_urls: &[String]) -> Result<(), Error> {
        self.get_or_not_found(id)?;
        if self.peer_url_taken(peer_urls, id) {
            return Err(Error::PeerUrlExist);
        }
        Ok(())
    }

    /// etcd's checks for MemberPromote.
    pub fn check_promote(&self, id: u64) -> Result<(), Error> {
        if !self.get_or_not_found(id)?.is_learner {
            return Err(Error::MemberNotLearner);
        }
        Ok(())
    }

    fn get_or_not_found(&self, id: u64) -> Result<&Member, Error> {
        self.members.get(&id).ok_or(Error::MemberNotFound)
    }

    /// etcd's strict reconfiguration check for adding a voter
    /// (`IsReadyToAddVotingMember`): after the add, a quorum of voters must have started.
    pub fn ready_to_add_voter(&self) -> bool {
        let voters = self.voters().count() + 1;
        let started = self.voters().filter(|m| m.is_started()).count();
        if started == 1 && voters == 2 {
            return true; // growing a one-member cluster
        }
        started > voters / 2
    }

    /// etcd's strict reconfiguration check for removing a voter
    /// (`IsReadyToRemoveVotingMember`): the voters left must hold a started quorum.
    pub fn ready_to_remove_voter(&self, id: u64) -> bool {
        let left: Vec<&Member> = self.voters().filter(|m| m.id != id).collect();
        let started = left.iter().filter(|m| m.is_started()).count();
        started > left.len() / 2
    }

    /// Applied MemberAdd (checked with [`Membership::check_add`]).
    pub fn add(&mut self, m: Member) {
        assert!(m.id != 0, "member id 0");
        let previous = self.members.insert(m.id, m);
        assert!(previous.is_none(), "member added twice");
    }

    /// Applied MemberRemove.
    pub fn remove(&mut self, id: u64) {
        let removed = self.members.remove(&id);
        assert!(removed.is_some(), "removed member {id:x} was not a member");
        self.removed.insert(id);
    }

    /// Applied MemberUpdate.
    pub fn update_peer_urls(&mut self, id: u64, peer_urls: Vec<String>) {
        if let Some(m) = self.members.get_mut(&id) {
            m.peer_urls = peer_urls;
        }
    }

    /// Applied MemberPromote.
    pub fn promote(&mut self, id: u64) {
        let m = self.members.get_mut(&id);
        let Some(m) = m else {
            panic!("promoted member {id:x} is not a member");
        };
        assert!(m.is_learner, "promoted member {id:x} is no learner");
        m.is_learner = false;
    }

    /// Applied publish: a started member's name and client URLs. Ignored for a member that is
    /// gone (it may have been removed after it proposed).
    pub fn publish(&mut self, id: u64, name: &str, client_urls: Vec<String>) {
        if let Some(m) = self.members.get_mut(&id) {
            m.name = name.to_string();
            m.client_urls = client_urls;
        }
    }

    /// The table as bytes (see the module docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let table = self.to_table();
        let mut out = Vec::with_capacity(16 + table.encoded_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_be_bytes());
        out.extend_from_slice(&table.encode_to_vec());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// The table back from [`Membership::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Membership, MembershipDecodeError> {
        if bytes.len() < MAGIC.len() + 4 + 4 {
            return Err(MembershipDecodeError::Truncated);
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(crc_bytes);
        if crc32fast::hash(body) != u32::from_be_bytes(crc) {
            return Err(MembershipDecodeError::Checksum);
        }
        let (magic, rest) = body.split_at(MAGIC.len());
        let (format, proto) = rest.split_at(4);
        if magic != MAGIC || format != FORMAT.to_be_bytes() {
            return Err(MembershipDecodeError::UnknownFormat);
        }
        let table =
            MemberTable::decode(proto).map_err(|e| MembershipDecodeError::Body(e.to_string()))?;
        Membership::from_table(&table)
    }

    /// The table from its protobuf form (also what a peer sends a joining member).
    pub fn from_table(table: &MemberTable) -> Result<Membership, MembershipDecodeError> {
        let mut members = BTreeMap::new();
        for m in &table.members {
            if m.id == 0 || members.insert(m.id, Member::from_proto(m)).is_some() {
                return Err(MembershipDecodeError::Body(format!(
                    "member id {:x} is zero or repeated",
                    m.id
                )));
            }
        }
        Ok(Membership {
            members,
            removed: table.removed.iter().copied().collect(),
            initial: table.initial.iter().map(Member::from_proto).collect(),
        })
    }

    /// The table in its protobuf form.
    pub fn to_table(&self) -> MemberTable {
        MemberTable {
            members: self.to_proto(),
            removed: self.removed.iter().copied().collect(),
            initial: self.initial.iter().map(Member::to_proto).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str, is_learner: bool) -> Member {
        Member {
            id,
            peer_urls: vec![url.to_string()],
            is_learner,
            ..Member::default()
        }
    }

    fn three() -> Membership {
        let mut ms = vec![
            member(1, "http://a", false),
            member(2, "http://b", false),
            member(3, "http://c", false),
        ];
        for m in &mut ms {
            m.name = format!("n{}", m.id);
        }
        Membership::bootstrap(ms)
    }

    #[test]
    fn checks_give_etcds_errors() {
        let mut t = three();
        assert_eq!(
            t.check_add(&member(1, "http://x", false)),
            Err(Error::MemberExist)
        );
        assert_eq!(
            t.check_add(&member(9, "http://a", false)),
            Err(Error::PeerUrlExist)
        );
        t.add(member(4, "http://d", true));
        assert_eq!(
            t.check_add(&member(5, "http://e", true)),
            Err(Error::TooManyLearners)
        );
        assert_eq!(t.check_promote(1), Err(Error::MemberNotLearner));
        assert_eq!(t.check_promote(9), Err(Error::MemberNotFound));
        assert_eq!(t.check_remove(9), Err(Error::MemberNotFound));
        assert_eq!(
            t.check_update(1, &["http://b".into()]),
            Err(Error::PeerUrlExist)
        );
        assert_eq!(t.check_update(1, &["http://a".into()]), Ok(()));
        t.remove(3);
        assert_eq!(
            t.check_add(&member(3, "http://c", false)),
            Err(Error::MemberNotFound)
        );
    }

    #[test]
    fn strict_reconfiguration_counts_started_voters() {
        let mut t = three();
        assert!(t.ready_to_add_voter()); // 3 of 4 started
        t.add(member(4, "http://d", false));
        assert!(t.ready_to_add_voter()); // 3 of 5 started: quorum 3
        t.add(member(5, "http://e", false));
        assert!(!t.ready_to_add_voter()); // 3 of 6 started: quorum 4
        assert!(t.ready_to_remove_voter(4)); // 3 of 4 left started
        assert!(!t.ready_to_remove_voter(1)); // 2 of 4 left started
    }

    #[test]
    fn encoding_round_trips_and_catches_damage() {
        let mut t = three();
        t.add(member(4, "http://d", true));
        t.publish(4, "n4", vec!["http://d:2379".into()]);
        t.remove(2);
        let bytes = t.encode();
        assert_eq!(Membership::decode(&bytes), Ok(t));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Membership::decode(&bad).is_err(), "flip at {i} not caught");
        }
        assert_eq!(
            Membership::decode(&bytes[..5]),
            Err(MembershipDecodeError::Truncated)
        );
    }
}
