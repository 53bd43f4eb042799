//! The member's identity, kept in its data dir (`member/identity`), as etcd keeps its member
//! and cluster ids in the WAL's metadata: once a member has started, a restart on the same
//! data is that member again, whatever `--initial-cluster` and `--initial-cluster-state` say.
//!
//! Without it, a member that was removed, wiped and added back (a new id, given by
//! MemberAdd) and then restarted with its original flags took the id the flags derive — the
//! removed one — and stopped at once as "permanently removed".
//!
//! Layout: `keel-identity 1\n`, member id and cluster id (u64, little-endian), the joining
//! flag (one byte), the bootstrap members and the members known at the first start (each a
//! u32 length and a [`Membership::encode`] of them as a bootstrap table), then a crc32 of
//! everything before it. Written once, at the first start, to a temporary file that is
//! synced and renamed into place, so a power cut leaves the file whole or absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_engine::membership::{Member, Membership};
use keel_storage::disk::Disk;

use crate::bootstrap::Bootstrap;
use crate::config::Config;
use crate::error::ServerError;

const MAGIC: &[u8] = b"keel-identity 1\n";

/// The identity file of `config`'s data dir.
fn path(config: &Config) -> PathBuf {
    config.data_dir.join("member").join("identity")
}

fn corrupt(path: &Path, reason: &str) -> ServerError {
    ServerError::Recovery {
        path: path.display().to_string(),
        reason: format!("the member identity file is corrupt: {reason}"),
    }
}

/// `boot` as the data dir remembers it, when it does: its stored ids, bootstrap members and
/// peers replace what the flags (or a join) gave. `Ok(None)` when the file does not exist.
pub(crate) fn load(disk: &Arc<dyn Disk>, config: &Config) -> Result<Option<Stored>, ServerError> {
    let path = path(config);
    let bytes = match disk.read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ServerError::DataDir {
                path: path.display().to_string(),
                source,
            })
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| corrupt(&path, reason))
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) member_id: u64,
    pub(crate) cluster_id: u64,
    pub(crate) joining: bool,
    pub(crate) initial: Vec<Member>,
    pub(crate) peers: Vec<Member>,
}

impl Stored {
    /// `boot` with the stored identity.
    pub(crate) fn apply(self, mut boot: Bootstrap) -> Bootstrap {
        if boot.identity.member_id != self.member_id {
            tracing::info!(
                member = format_args!("{:x}", self.member_id),
                flags = format_args!("{:x}", boot.identity.member_id),
                "restarting as the member this data dir belongs to, not the one the flags name"
            );
        }
        boot.identity.member_id = self.member_id;
        boot.identity.cluster_id = self.cluster_id;
        boot.joining = self.joining;
        boot.initial = self.initial;
        boot.peers = self.peers;
        boot
    }
}

fn encode(boot: &Bootstrap) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&boot.identity.member_id.to_le_bytes());
    out.extend_from_slice(&boot.identity.cluster_id.to_le_bytes());
    out.push(u8::from(boot.joining));
    for list in [&boot.initial, &boot.peers] {
        let table = Membership::bootstrap(list.clone()).encode();
        out.extend_from_slice(&(table.len() as u32).to_le_bytes());
        out.extend_from_slice(&table);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if rest.len() < n {
        return Err("truncated");
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn u64_le(rest: &mut &[u8]) -> Result<u64, &'static str> {
    let mut b = [0u8; 8];
    b.copy_from_slice(take(rest, 8)?);
    Ok(u64::from_le_bytes(b))
}

fn members(rest: &mut &[u8]) -> Result<Vec<Member>, &'static str> {
    let mut len = [0u8; 4];
    len.copy_from_slice(take(rest, 4)?);
    let table = take(rest, u32::from_le_bytes(len) as usize)?;
    let table = Membership::decode(table).map_err(|_| "a member list does not decode")?;
    Ok(table.initial().to_vec())
}

fn decode(bytes: &[u8]) -> Result<Stored, &'static str> {
    if bytes.len() < MAGIC.len() + 4 || !bytes.starts_with(MAGIC) {
        return Err("not a keel identity file");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut want = [0u8; 4];
    want.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_le_bytes(want) {
        return Err("crc32 mismatch");
    }
    let mut rest = &body[MAGIC.len()..];
    let member_id = u64_le(&mut rest)?;
    let cluster_id = u64_le(&mut rest)?;
    let joining = match take(&mut rest, 1)? {
        [0] => false,
        [1] => true,
        _ => return Err("bad joining flag"),
    };
    let initial = members(&mut rest)?;
    let peers = members(&mut rest)?;
    if !rest.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Stored {
        member_id,
        cluster_id,
        joining,
        initial,
        peers,
    })
}

/// Writes `boot`'s identity at the member's first start. A failure is logged, not fatal: the
/// member then starts as before, from its flags, and tries again at its next start.
pub(crate) fn save(disk: &Arc<dyn Disk>, config: &Config, boot: &Bootstrap) {
    let path = path(config);
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            disk.create_dir_all(dir)?;
        }
        let _ = disk.remove(&tmp);
        let mut file = disk.open_append(&tmp)?;
        file.append(&encode(boot))?;
        file.sync()?;
        drop(file);
        disk.rename(&tmp, &path)?;
        match path.parent() {
            Some(dir) => disk.sync_dir(dir),
            None => Ok(()),
        }
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "could not save the member identity");
        let _ = disk.remove(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::Identity;

    fn member(id: u64, name: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://{name}:2380")],
            ..Member::default()
        }
    }

    #[test]
    fn an_identity_round_trips_and_damage_is_detected() {
        let boot = Bootstrap {
            identity: Identity {
                member_id: 0xabc,
                cluster_id: 0xdef,
                name: "n4".into(),
                peer_urls: vec!["http://n4:2380".into()],
                client_urls: vec![],
            },
            initial: vec![member(1, "n1"), member(2, "n2")],
            peers: vec![member(1, "n1"), member(2, "n2"), member(0xabc, "n4")],
            joining: true,
        };
        let bytes = encode(&boot);
        let stored = decode(&bytes).expect("decodes");
        assert_eq!(
            (stored.member_id, stored.cluster_id, stored.joining),
            (0xabc, 0xdef, true),
            "ids and flag"
        );
        assert_eq!(stored.initial, boot.initial, "bootstrap members");
        assert_eq!(stored.peers, boot.peers, "peers");
        for cut in [0, 10, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 3] ^= 1;
        assert_eq!(decode(&flipped), Err("crc32 mismatch"), "a flipped bit");
    }
}
