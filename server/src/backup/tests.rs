use keel_engine::alarm::Alarms;
use keel_engine::lease::Leases;
use keel_engine::membership::{Member, Membership};
use keel_engine::mvcc::Store;
use keel_engine::state_snapshot::{
    encode_sections, SECTION_ALARMS, SECTION_LEASES, SECTION_MEMBERS, SECTION_MVCC,
};

use super::read::{self, Fault};
use super::*;

fn header() -> BackupHeader {
    BackupHeader {
        raft_index: 42,
        raft_term: 3,
        revision: 7,
        compact_revision: -1,
        key_count: 2,
        revision_count: 6,
        cluster_id: 0xc1,
        member_id: 0x1d,
        conf_state: vec![8, 1],
    }
}

/// A backup's bytes as `Backup::write_all` lays them out, from a small real state.
fn backup_bytes() -> Vec<u8> {
    let mut store = Store::default();
    for i in 0..6u8 {
        let key = [b'k', i % 2];
        store.write().put(&key, bytes::Bytes::from(vec![i; 100]), 0);
    }
    let members = Membership::bootstrap(vec![Member {
        id: 0x1d,
        name: "m".into(),
        peer_urls: vec!["http://127.0.0.1:2380".into()],
        ..Member::default()
    }]);
    let data = encode_sections(&[
        (SECTION_MVCC, &store.encode_section()),
        (SECTION_LEASES, &Leases::new(1, 0).encode_section()),
        (SECTION_MEMBERS, &members.encode()),
        (SECTION_ALARMS, &Alarms::default().encode_section()),
    ]);
    let header = header().encode();
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(&data);
    out.resize(body_len(header.len(), data.len() as u64) as usize, 0);
    let sha: [u8; SHA_BYTES] = Sha256::digest(&out).into();
    out.extend_from_slice(&sha);
    out
}

fn open_bytes(bytes: &[u8]) -> Result<read::Opened, read::BackupError> {
    let dir = std::env::temp_dir().join(format!("keel-backup-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{n}.db"));
    std::fs::write(&path, bytes).expect("write temp file");
    let opened = read::open(&path, &mut |_| {});
    let _ = std::fs::remove_file(&path);
    opened
}

#[test]
fn a_backup_reads_back_with_its_header_and_state() {
    let bytes = backup_bytes();
    assert_eq!(
        bytes.len() as u64 % ALIGN,
        SHA_BYTES as u64,
        "etcdctl's length rule"
    );
    let opened = open_bytes(&bytes).expect("a good backup opens");
    assert_eq!(opened.header, header());
    let state = opened.decode().expect("its state decodes");
    assert_eq!(state.store.current_revision(), 7);
    assert_eq!(state.members.len(), 1);
    assert_eq!(opened.body_len(), bytes.len() as u64 - SHA_BYTES as u64);
}

#[test]
fn truncated_flipped_empty_and_foreign_files_are_refused() {
    let bytes = backup_bytes();
    for cut in [0, 1, 8, 100, 512, bytes.len() - 32, bytes.len() - 1] {
        let err = open_bytes(&bytes[..cut]).expect_err("a cut file is refused");
        assert!(
            matches!(err.fault, Fault::Empty | Fault::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains(".db: "), "names the file: {err}");
    }
    for at in [
        0,
        9,
        20,
        100,
        bytes.len() / 2,
        bytes.len() - 40,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let err = open_bytes(&bad).expect_err("a flipped bit is refused");
        assert!(
            matches!(err.fault, Fault::Sha { .. } | Fault::BadMagic),
            "flip at {at}: {err}"
        );
    }
    let mut bolt = vec![0u8; 4096];
    bolt[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
    let err = open_bytes(&bolt).expect_err("an etcd snapshot is refused");
    assert!(matches!(err.fault, Fault::EtcdSnapshot), "{err}");
    assert!(err.to_string().contains("etcd (bbolt) snapshot"), "{err}");
}

#[test]
fn damage_inside_under_a_matching_sha_is_caught_by_the_crcs() {
    // A file whose sha256 was recomputed after damage (a tool rewrote it): the state
    // snapshot's own crc32s still refuse it.
    let mut bytes = backup_bytes();
    let body = bytes.len() - SHA_BYTES;
    let header_len = header().encode().len();
    let data_at = MAGIC.len() + 8 + header_len + 8;
    bytes[data_at + 40] ^= 1;
    let sha: [u8; SHA_BYTES] = Sha256::digest(&bytes[..body]).into();
    bytes[body..].copy_from_slice(&sha);
    let opened = open_bytes(&bytes).expect("the framing is intact");
    let err = opened.decode().expect_err("the crc32 inside fails");
    assert!(err.to_string().contains("crc32 mismatch"), "{err}");
}
