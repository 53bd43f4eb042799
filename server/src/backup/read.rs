//! Reading a backup back: every check a damaged, truncated or foreign file can fail, each
//! with an error naming the file and what is wrong (what `keelutl` prints).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use keel_engine::alarm::Alarms;
use keel_engine::lease::Leases;
use keel_engine::membership::Membership;
use keel_engine::mvcc::Store;
use keel_engine::state_snapshot::{
    self, StateSnapshotError, SECTION_ALARMS, SECTION_LEASES, SECTION_MEMBERS, SECTION_MVCC,
};
use sha2::{Digest, Sha256};

use super::{BackupHeader, ALIGN, FORMAT, MAGIC, SHA_BYTES};

/// Bytes read from the file at a time (and between two progress reports).
const READ_CHUNK_BYTES: usize = 1 << 20;

/// A backup that could not be read, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {fault}", path.display())]
pub struct BackupError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub fault: Fault,
}

/// What is wrong with a backup file.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The file cannot be read.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// The file has no bytes.
    #[error("the file is empty, not a keel backup")]
    Empty,
    /// The file is an etcd snapshot (a bbolt database).
    #[error(
        "not a keel backup: this is an etcd (bbolt) snapshot; keel restores only backups \
         saved from keel"
    )]
    EtcdSnapshot,
    /// The file does not start with a backup's magic.
    #[error("not a keel backup (bad magic)")]
    BadMagic,
    /// The file's length cannot be a whole backup's.
    #[error(
        "truncated: {len} bytes is not a whole backup (a multiple of {ALIGN} bytes plus the \
         {SHA_BYTES}-byte sha256 trailer)"
    )]
    Truncated {
        /// The file's length.
        len: u64,
    },
    /// The sha256 trailer does not match the bytes.
    #[error("sha256 mismatch: the trailer says {stored}, the bytes hash to {computed} (damaged or truncated)")]
    Sha {
        /// The trailer, hex.
        stored: String,
        /// The hash of the bytes before it, hex.
        computed: String,
    },
    /// A format version this build does not read.
    #[error("unknown backup format {0} (this build reads format {FORMAT})")]
    UnknownFormat(u32),
    /// The header or the framing around the data is malformed.
    #[error("malformed backup: {0}")]
    Malformed(&'static str),
    /// The state inside does not decode (a crc32 inside failed, a section is missing...).
    #[error("the state inside is damaged: {0}")]
    State(#[from] StateSnapshotError),
}

/// A backup read whole and its sha256 checked.
#[derive(Debug)]
pub struct Opened {
    /// The file.
    pub path: PathBuf,
    /// Where the backup comes from.
    pub header: BackupHeader,
    /// The file's bytes.
    bytes: Vec<u8>,
    /// Where the state snapshot lies in `bytes`.
    data: std::ops::Range<usize>,
}

/// The state inside a backup, decoded (every crc32 inside checked).
#[derive(Debug)]
pub struct State {
    /// The MVCC store.
    pub store: Store,
    /// The lease section's bytes (checked to decode).
    pub leases: Vec<u8>,
    /// The member table of the cluster it was taken from.
    pub members: Membership,
    /// The alarm table.
    pub alarms: Alarms,
}

impl Opened {
    /// The state snapshot's bytes (the engine's encoding, as a member's snapshot file holds).
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.data.clone()]
    }

    /// The bytes before the sha256 trailer (etcd's "total size" of a snapshot).
    pub fn body_len(&self) -> u64 {
        (self.bytes.len() - SHA_BYTES) as u64
    }

    /// The crc32 the state snapshot ends with: a hash of the whole state (what `snapshot
    /// status` prints as the hash).
    pub fn state_crc(&self) -> u32 {
        let data = self.data();
        let tail: [u8; 4] = data[data.len().saturating_sub(4)..]
            .try_into()
            .unwrap_or_default();
        u32::from_be_bytes(tail)
    }

    /// Decodes the state, checking every section.
    pub fn decode(&self) -> Result<State, BackupError> {
        self.decode_state().map_err(|fault| BackupError {
            path: self.path.clone(),
            fault: Fault::State(fault),
        })
    }

    fn decode_state(&self) -> Result<State, StateSnapshotError> {
        let sections = state_snapshot::decode_known(self.data())?;
        let store = Store::decode_section(sections[&SECTION_MVCC])?;
        let leases = sections[&SECTION_LEASES].to_vec();
        Leases::new(1, 0).restore_section(&leases)?;
        let members = Membership::decode(sections[&SECTION_MEMBERS])?;
        let alarms = match sections.get(&SECTION_ALARMS) {
            Some(bytes) => Alarms::decode_section(bytes)?,
            None => Alarms::default(),
        };
        Ok(State {
            store,
            leases,
            members,
            alarms,
        })
    }
}

/// Reads the backup at `path`, checks its length, magic, sha256 and framing; `progress` hears
/// the bytes read so far as they come.
pub fn open(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<Opened, BackupError> {
    let err = |fault: Fault| BackupError {
        path: path.to_path_buf(),
        fault,
    };
    let bytes = read_all(path, progress).map_err(|e| err(Fault::Io(e)))?;
    let (header, data) = check(&bytes).map_err(err)?;
    Ok(Opened {
        path: path.to_path_buf(),
        header,
        bytes,
        data,
    })
}

fn read_all(path: &Path, progress: &mut dyn FnMut(u64)) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk[..n]);
        progress(bytes.len() as u64);
    }
}

/// bbolt's meta-page magic, after a 16-byte page header, little-endian.
const BBOLT_MAGIC: [u8; 4] = 0xED0C_DAEDu32.to_le_bytes();

/// The checks on the file's bytes; the header and where the data lies.
fn check(bytes: &[u8]) -> Result<(BackupHeader, std::ops::Range<usize>), Fault> {
    if bytes.is_empty() {
        return Err(Fault::Empty);
    }
    let len = bytes.len() as u64;
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
        return Err(Fault::Truncated { len });
    }
    if !bytes.starts_with(MAGIC) {
        if bytes.get(16..20) == Some(&BBOLT_MAGIC[..]) {
            return Err(Fault::EtcdSnapshot);
        }
        return Err(Fault::BadMagic);
    }
    if len < ALIGN + SHA_BYTES as u64 || len % ALIGN != SHA_BYTES as u64 {
        return Err(Fault::Truncated { len });
    }
    let (body, stored) = bytes.split_at(bytes.len() - SHA_BYTES);
    let computed: [u8; SHA_BYTES] = Sha256::digest(body).into();
    if computed[..] != stored[..] {
        return Err(Fault::Sha {
            stored: hex(stored),
            computed: hex(&computed),
        });
    }
    frame(body)
}

/// The framing inside a body whose sha256 checked out.
fn frame(body: &[u8]) -> Result<(BackupHeader, std::ops::Range<usize>), Fault> {
    let u32_at = |at: usize| {
        body.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or(Fault::Malformed("header runs past the end"))
    };
    let format = u32_at(MAGIC.len())?;
    if format != FORMAT {
        return Err(Fault::UnknownFormat(format));
    }
    let header_start = MAGIC.len() + 8;
    let header_end = header_start
        .checked_add(u32_at(MAGIC.len() + 4)? as usize)
        .ok_or(Fault::Malformed("header length overflows"))?;
    let header = body
        .get(header_start..header_end)
        .and_then(BackupHeader::decode)
        .ok_or(Fault::Malformed("header runs past the end or is too short"))?;
    let data_len = body
        .get(header_end..header_end + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(Fault::Malformed("data length runs past the end"))?;
    let data_start = header_end + 8;
    let data_end = usize::try_from(data_len)
        .ok()
        .and_then(|l| data_start.checked_add(l))
        .filter(|&end| end <= body.len())
        .ok_or(Fault::Malformed("data runs past the end"))?;
    let padding = &body[data_end..];
    if padding.len() as u64 >= ALIGN || padding.iter().any(|&b| b != 0) {
        return Err(Fault::Malformed("the padding after the data is not zeros"));
    }
    Ok((header, data_start..data_end))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
