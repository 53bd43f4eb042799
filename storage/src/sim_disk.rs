//! [`SimDisk`]: an in-memory [`Disk`] with a power-loss model, for deterministic simulation.
//!
//! The harness owns a `SimDisk` and hands clones (cheap `Arc` handles) to the node it runs; when
//! the node is killed, the harness calls [`SimDisk::crash`] and restarts the node on the same
//! disk. `SimDisk` spawns no threads and reads no clock or OS randomness: every random choice
//! comes from the seed passed to [`SimDisk::crash`] or [`SimDisk::corrupt_sector`].
//!
//! # Model
//!
//! Files are inodes; directories map names to inodes. The disk keeps two name maps:
//! the *live* namespace (what the running node sees) and the *durable* namespace (what survives
//! a crash). Each inode holds its bytes and `synced_len`, the length of its durable prefix.
//!
//! * `open_append` of a missing file creates an empty inode and a live name; the name becomes
//!   durable only at `sync_dir(parent)`. `rename` and `remove` change live names only, likewise.
//! * `sync_dir(d)` makes the durable entries of `d` equal to its live entries (every create,
//!   rename and remove in `d` since the last `sync_dir(d)` becomes durable at once).
//! * `DiskFile::append` adds bytes to the inode (visible to `read` at once, not durable);
//!   `DiskFile::sync` sets `synced_len` to the inode's length.
//! * `truncate` sets the length and makes the whole inode durable (like `set_len` + `fsync`).
//! * `create_dir_all` is durable at once (a simplification: directories are created once, at
//!   setup, and real code syncs their parents).
//! * Reads see the live view: unsynced appends included, as in a page cache.
//!
//! [`SimDisk::crash`] is a power loss: the live namespace is replaced by the durable one, inodes
//! no durable name refers to are dropped, and each surviving inode keeps its durable prefix plus
//! a random prefix of its unsynced tail, cut at a 512-byte sector boundary (file offsets
//! `0, 512, 1024, ..`) or at the tail's end: whole sectors survive, then nothing. With
//! probability 1/4, when the cut dropped bytes, the file additionally keeps a run of zero bytes
//! from the cut up to the next sector boundary (or the old end, if nearer): the file size was
//! updated but that data sector was never written. File handles opened before the crash fail
//! with an error afterwards. Fault switches are cleared.
//!
//! Faults: [`SimDisk::fail_next_sync`] makes the next `DiskFile::sync` or `sync_dir` fail. A
//! failed file sync behaves like Linux after an fsync error: the error is reported once and the
//! unsynced bytes it covered are *lost* (they read back fine until the crash, but the durable
//! image holds zeros there, even if a later sync succeeds). [`SimDisk::fail_next_write`] makes
//! the next `append` write only the first half of its buffer and then fail (a short write).
//! [`SimDisk::power_cut_at_next_sync`] makes the next sync fail having made nothing durable and
//! switches the disk off (every call fails) until `crash`, which tears the unsynced tail;
//! [`SimDisk::power_cut_at_next_sync_under`] does so at the next sync under one directory.
//! [`SimDisk::corrupt_sector`] flips one bit in one durable sector.
//!
//! Example: `append(a); sync(); append(b); crash(seed)` leaves `a` followed by some whole
//! sectors of `b` (possibly none, possibly all). If the file was created and never `sync_dir`ed,
//! the crash removes it entirely.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_rng::SplitMix64;

use crate::disk::{Disk, DiskFile};

/// The size of a sector, the unit in which a crash tears unsynced data.
pub const SECTOR_BYTES: u64 = 512;

type InodeId = u64;

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced_len: u64,
    /// Byte ranges whose sync failed: they read back until a crash, then hold zeros.
    lost: Vec<Range<u64>>,
}

#[derive(Debug, Default)]
struct State {
    dirs: BTreeSet<PathBuf>,
    live: BTreeMap<PathBuf, InodeId>,
    durable: BTreeMap<PathBuf, InodeId>,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    /// Bumped by every crash; handles from an older generation are dead.
    generation: u64,
    fail_next_sync: bool,
    fail_next_write: bool,
    power_cut_at_next_sync: bool,
    /// With `power_cut_at_next_sync`: only a sync of a path under this one cuts the power.
    power_cut_under: Option<PathBuf>,
    /// Set by a power cut: every operation fails until [`SimDisk::crash`].
    powered_off: bool,
    /// The file or directory the last armed fault fired on (cleared when one is armed).
    fault_fired_on: Option<PathBuf>,
}

/// A simulated disk: a durable image plus pending writes, with crashes and faults on demand.
/// See the [module documentation](self) for the exact model.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found", path.display()),
    )
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl State {
    fn check_power(&self) -> io::Result<()> {
        if self.powered_off {
            Err(io::Error::other(
                "simulated power loss: the disk is off until crash()",
            ))
        } else {
            Ok(())
        }
    }

    /// Consumes a sync fault, if one is armed.
    fn sync_fault(&mut self, path: &Path) -> Option<io::Error> {
        let targeted = self
            .power_cut_under
            .as_ref()
            .is_none_or(|under| path.starts_with(under));
        if targeted && std::mem::take(&mut self.power_cut_at_next_sync) {
            self.power_cut_under = None;
            self.powered_off = true;
            self.fault_fired_on = Some(path.to_path_buf());
            return Some(io::Error::other("simulated power loss during sync"));
        }
        None
    }

    fn inode(&mut self, path: &Path) -> io::Result<(InodeId, &mut Inode)> {
        let id = *self.live.get(path).ok_or_else(|| not_found(path))?;
        let inode = self.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        Ok((id, inode))
    }

    fn require_parent(&self, path: &Path) -> io::Result<()> {
        let parent = parent_of(path);
        if self.dirs.contains(&parent) {
            Ok(())
        } else {
            Err(not_found(&parent))
        }
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent state (every method mutates after
        // its checks), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next `DiskFile::sync` or `Disk::sync_dir` fail (see the module docs).
    pub fn fail_next_sync(&self) {
        let mut st = self.lock();
        st.fail_next_sync = true;
        st.fault_fired_on = None;
    }

    /// The file or directory the last armed fault (failed sync, failed write, power cut)
    /// fired on; `None` if it has not fired yet.
    pub fn fault_fired_on(&self) -> Option<PathBuf> {
        self.lock().fault_fired_on.clone()
    }

    /// Cuts the power during the next `DiskFile::sync` or `Disk::sync_dir`: that call fails
    /// having made nothing durable, and every operation fails until [`SimDisk::crash`], which
    /// then tears the unsynced bytes as usual. This is how a simulation reaches a torn write
    /// even though the WAL writes and syncs in one call.
    pub fn power_cut_at_next_sync(&self) {
        let mut st = self.lock();
        st.power_cut_at_next_sync = true;
        st.power_cut_under = None;
        st.fault_fired_on = None;
    }

    /// Like [`SimDisk::power_cut_at_next_sync`], at the next sync of a file or directory
    /// under `dir` only (e.g. a snapshot's, while it is being saved).
    pub fn power_cut_at_next_sync_under(&self, dir: &Path) {
        let mut st = self.lock();
        st.power_cut_at_next_sync = true;
        st.power_cut_under = Some(dir.to_path_buf());
        st.fault_fired_on = None;
    }

    /// Makes the next `DiskFile::append` write half its buffer and fail.
    pub fn fail_next_write(&self) {
        let mut st = self.lock();
        st.fail_next_write = true;
        st.fault_fired_on = None;
    }

    /// Simulates a power loss; `seed` decides how much of each unsynced tail survives.
    pub fn crash(&self, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let mut st = self.lock();
        let st = &mut *st;
        let keep: BTreeSet<InodeId> = st.durable.values().copied().collect();
        st.inodes.retain(|id, _| keep.contains(id));
        for inode in st.inodes.values_mut() {
            crash_inode(inode, &mut rng);
        }
        st.live = st.durable.clone();
        st.generation += 1;
        st.fail_next_sync = false;
        st.fail_next_write = false;
        st.power_cut_at_next_sync = false;
        st.power_cut_under = None;
        st.powered_off = false;
    }

    /// Flips one bit in one durable sector of the file at `path`, chosen by `seed`.
    /// Returns the offset of the byte it changed.
    pub fn corrupt_sector(&self, path: &Path, seed: u64) -> io::Result<u64> {
        let mut rng = SplitMix64::new(seed);
        let mut st = self.lock();
        let (_, inode) = st.inode(path)?;
        if inode.synced_len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no durable bytes to corrupt", path.display()),
            ));
        }
        let sectors = inode.synced_len.div_ceil(SECTOR_BYTES);
        let start = rng.below_modulo(sectors) * SECTOR_BYTES;
        let end = (start + SECTOR_BYTES).min(inode.synced_len);
        let offset = start + rng.below_modulo(end - start);
        let bit = rng.below_modulo(8);
        inode.data[offset as usize] ^= 1 << bit;
        Ok(offset)
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` of the file at `path`.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        assert!(bit < 8, "flip_bit: bit {bit} out of range");
        let mut st = self.lock();
        let (_, inode) = st.inode(path)?;
        let byte = inode.data.get_mut(offset as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} past end"),
            )
        })?;
        *byte ^= 1 << bit;
        Ok(())
    }

    /// The durable length of the file at `path` (what a crash keeps for certain).
    pub fn synced_len(&self, path: &Path) -> io::Result<u64> {
        let mut st = self.lock();
        let (_, inode) = st.inode(path)?;
        Ok(inode.synced_len)
    }
}

/// Cuts an inode's unsynced tail at a random sector boundary, maybe zero-filling one sector.
fn crash_inode(inode: &mut Inode, rng: &mut SplitMix64) {
    let synced = inode.synced_len;
    let len = inode.data.len() as u64;
    debug_assert!(synced <= len, "synced_len past the end");
    let first_boundary = (synced / SECTOR_BYTES + 1) * SECTOR_BYTES;
    let boundaries = if first_boundary < len {
        (len - 1 - first_boundary) / SECTOR_BYTES + 1
    } else {
        0
    };
    // Candidates: `synced`, every sector boundary strictly inside the tail, and `len`.
    let cut = if synced == len {
        len
    } else {
        match rng.below_modulo(boundaries + 2) {
            0 => synced,
            k if k == boundaries + 1 => len,
            k => first_boundary + (k - 1) * SECTOR_BYTES,
        }
    };
    inode.data.truncate(cut as usize);
    if cut < len && rng.below_modulo(4) == 0 {
        let zero_end = ((cut / SECTOR_BYTES + 1) * SECTOR_BYTES).min(len);
        inode.data.resize(zero_end as usize, 0);
    }
    let kept = inode.data.len() as u64;
    for range in inode.lost.drain(..) {
        let end = range.end.min(kept);
        for i in range.start..end {
            inode.data[i as usize] = 0;
        }
    }
    inode.synced_len = kept;
}

struct SimFile {
    state: Arc<Mutex<State>>,
    inode: InodeId,
    generation: u64,
    /// The path it was opened by (named where a fault fires).
    path: PathBuf,
}

impl SimFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut State, InodeId) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.check_power()?;
        if st.generation != self.generation {
            return Err(io::Error::other(
                "file handle is stale: the disk crashed since open",
            ));
        }
        if !st.inodes.contains_key(&self.inode) {
            return Err(io::Error::other("file handle refers to a dropped inode"));
        }
        f(&mut st, self.inode)
    }
}

fn inode_mut(st: &mut State, id: InodeId) -> io::Result<&mut Inode> {
    st.inodes
        .get_mut(&id)
        .ok_or_else(|| io::Error::other("inode vanished"))
}

impl DiskFile for SimFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let path = &self.path;
        self.with_inode(|st, id| {
            let fail = std::mem::take(&mut st.fail_next_write);
            if fail {
                st.fault_fired_on = Some(path.clone());
            }
            let inode = inode_mut(st, id)?;
            if fail {
                inode.data.extend_from_slice(&buf[..buf.len() / 2]);
                return Err(io::Error::other("simulated write failure (short write)"));
            }
            inode.data.extend_from_slice(buf);
            Ok(())
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        let path = &self.path;
        self.with_inode(|st, id| {
            if let Some(e) = st.sync_fault(path) {
                return Err(e);
            }
            let fail = std::mem::take(&mut st.fail_next_sync);
            if fail {
                st.fault_fired_on = Some(path.clone());
            }
            let inode = inode_mut(st, id)?;
            let len = inode.data.len() as u64;
            if fail {
                if inode.synced_len < len {
                    inode.lost.push(inode.synced_len..len);
                }
                // The kernel marked the pages clean: a later sync will not write them again.
                inode.synced_len = len;
                return Err(io::Error::other("simulated fsync failure"));
            }
            inode.synced_len = len;
            Ok(())
        })
    }

    fn len(&self) -> u64 {
        self.with_inode(|st, id| Ok(inode_mut(st, id)?.data.len() as u64))
            .unwrap_or(0)
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.check_power()?;
        if st.live.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: is a file", path.display()),
            ));
        }
        for dir in path.ancestors() {
            st.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        st.check_power()?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = st.live.keys();
        let dirs = st.dirs.iter().filter(|d| d.as_path() != path);
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut st = self.lock();
        st.check_power()?;
        let (_, inode) = st.inode(path)?;
        Ok(inode.data.clone())
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let mut st = self.lock();
        st.check_power()?;
        let id = match st.live.get(path) {
            Some(id) => *id,
            None => {
                st.require_parent(path)?;
                if st.dirs.contains(path) {
                    return Err(io::Error::other(format!(
                        "{}: is a directory",
                        path.display()
                    )));
                }
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.live.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode: id,
            generation: st.generation,
            path: path.to_path_buf(),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        st.check_power()?;
        let (_, inode) = st.inode(path)?;
        inode.data.resize(len as usize, 0);
        inode.synced_len = len;
        inode.lost.retain(|r| r.start < len);
        for r in &mut inode.lost {
            r.end = r.end.min(len);
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.check_power()?;
        st.require_parent(to)?;
        let id = st.live.remove(from).ok_or_else(|| not_found(from))?;
        st.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.check_power()?;
        st.live
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.check_power()?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        if let Some(e) = st.sync_fault(path) {
            return Err(e);
        }
        if std::mem::take(&mut st.fail_next_sync) {
            st.fault_fired_on = Some(path.to_path_buf());
            return Err(io::Error::other("simulated directory fsync failure"));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        st.durable.retain(|p, _| !in_dir(p));
        let entries: Vec<(PathBuf, InodeId)> = st
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        st.durable.extend(entries);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(disk: &SimDisk, path: &Path, bytes: &[u8], sync: bool) -> Box<dyn DiskFile> {
        let mut f = disk.open_append(path).unwrap();
        f.append(bytes).unwrap();
        if sync {
            f.sync().unwrap();
        }
        f
    }

    #[test]
    fn unsynced_create_vanishes_synced_create_survives() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        write(&disk, &dir.join("a"), b"aaa", true);
        disk.sync_dir(dir).unwrap();
        write(&disk, &dir.join("b"), b"bbb", true);
        assert_eq!(disk.list_dir(dir).unwrap(), vec!["a", "b"]);
        disk.crash(1);
        assert_eq!(disk.list_dir(dir).unwrap(), vec!["a"]);
        assert_eq!(disk.read(&dir.join("a")).unwrap(), b"aaa");
    }

    #[test]
    fn remove_and_rename_are_durable_only_after_sync_dir() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        write(&disk, &dir.join("a"), b"1", true);
        write(&disk, &dir.join("b"), b"2", true);
        disk.sync_dir(dir).unwrap();
        disk.remove(&dir.join("a")).unwrap();
        disk.rename(&dir.join("b"), &dir.join("c")).unwrap();
        disk.crash(2);
        assert_eq!(disk.list_dir(dir).unwrap(), vec!["a", "b"]);
        disk.remove(&dir.join("a")).unwrap();
        disk.rename(&dir.join("b"), &dir.join("c")).unwrap();
        disk.sync_dir(dir).unwrap();
        disk.crash(3);
        assert_eq!(disk.list_dir(dir).unwrap(), vec!["c"]);
        assert_eq!(disk.read(&dir.join("c")).unwrap(), b"2");
    }

    #[test]
    fn crash_keeps_synced_prefix_and_sector_torn_tail() {
        let dir = Path::new("/d");
        let synced: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8 + 1).collect();
        let pending: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8 + 1).collect();
        let mut all = synced.clone();
        all.extend_from_slice(&pending);
        for seed in 0..200 {
            let disk = SimDisk::new();
            disk.create_dir_all(dir).unwrap();
            let mut f = write(&disk, &dir.join("f"), &synced, true);
            disk.sync_dir(dir).unwrap();
            f.append(&pending).unwrap();
            disk.crash(seed);
            let got = disk.read(&dir.join("f")).unwrap();
            let len = got.len();
            assert!(len >= synced.len() && len <= all.len());
            let nonzero = got.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
            assert_eq!(
                got[..nonzero],
                all[..nonzero],
                "seed {seed}: kept bytes are a prefix"
            );
            assert!(nonzero >= synced.len());
            assert!(
                nonzero == synced.len() || nonzero == all.len() || nonzero % 512 == 0,
                "seed {seed}: cut at {nonzero} is not a sector boundary"
            );
            assert!(f.append(b"x").is_err(), "stale handle must fail");
        }
    }

    #[test]
    fn failed_sync_loses_the_bytes_it_covered() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let mut f = write(&disk, &dir.join("f"), b"aaaa", true);
        disk.sync_dir(dir).unwrap();
        f.append(b"bbbb").unwrap();
        disk.fail_next_sync();
        assert!(f.sync().is_err());
        f.append(b"cccc").unwrap();
        f.sync().unwrap();
        assert_eq!(disk.read(&dir.join("f")).unwrap(), b"aaaabbbbcccc");
        disk.crash(0);
        assert_eq!(disk.read(&dir.join("f")).unwrap(), b"aaaa\0\0\0\0cccc");
    }

    #[test]
    fn a_fired_fault_names_its_path() {
        let disk = SimDisk::new();
        disk.create_dir_all(Path::new("/d")).expect("mkdir");
        let mut f = disk.open_append(Path::new("/d/a")).expect("open");
        disk.fail_next_sync();
        assert_eq!(disk.fault_fired_on(), None, "armed, not fired");
        f.append(b"x").expect("append");
        assert!(f.sync().is_err());
        assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d/a")));
        disk.fail_next_write();
        assert_eq!(disk.fault_fired_on(), None, "arming clears it");
        assert!(f.append(b"yy").is_err());
        assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d/a")));
        disk.power_cut_at_next_sync();
        assert!(disk.sync_dir(Path::new("/d")).is_err());
        assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d")));
        disk.crash(1);
        disk.create_dir_all(Path::new("/d/snap")).expect("mkdir");
        disk.power_cut_at_next_sync_under(Path::new("/d/snap"));
        disk.sync_dir(Path::new("/d"))
            .expect("not under /d/snap: no power cut");
        assert!(disk.sync_dir(Path::new("/d/snap")).is_err(), "power cut");
        assert_eq!(disk.fault_fired_on(), Some(PathBuf::from("/d/snap")));
        assert!(disk.sync_dir(Path::new("/d")).is_err(), "the disk is off");
    }

    #[test]
    fn power_cut_during_sync_leaves_bytes_pending() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let mut f = write(&disk, &dir.join("f"), b"aaaa", true);
        disk.sync_dir(dir).unwrap();
        f.append(&[b'b'; 2000]).unwrap();
        disk.power_cut_at_next_sync();
        assert!(f.sync().is_err());
        assert!(
            disk.read(&dir.join("f")).is_err(),
            "the disk is off until crash"
        );
        let mut lens = BTreeSet::new();
        for seed in 0..64 {
            let d = SimDisk::new();
            d.create_dir_all(dir).unwrap();
            let mut f = write(&d, &dir.join("f"), b"aaaa", true);
            d.sync_dir(dir).unwrap();
            f.append(&[b'b'; 2000]).unwrap();
            d.power_cut_at_next_sync();
            assert!(f.sync().is_err());
            d.crash(seed);
            let got = d.read(&dir.join("f")).unwrap();
            lens.insert(got.iter().filter(|b| **b == b'b').count() + 4);
        }
        assert!(
            lens.contains(&4) && lens.contains(&2004) && lens.contains(&512),
            "{lens:?}"
        );
    }

    #[test]
    fn failed_write_is_short() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let mut f = disk.open_append(&dir.join("f")).unwrap();
        disk.fail_next_write();
        assert!(f.append(b"abcd").is_err());
        assert_eq!(disk.read(&dir.join("f")).unwrap(), b"ab");
        f.append(b"ef").unwrap();
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn corrupt_sector_flips_one_durable_bit() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let bytes = vec![7u8; 2000];
        let mut f = write(&disk, &dir.join("f"), &bytes, true);
        f.append(&[9u8; 100]).unwrap();
        for seed in 0..50 {
            let before = disk.read(&dir.join("f")).unwrap();
            let offset = disk.corrupt_sector(&dir.join("f"), seed).unwrap();
            assert!(offset < 2000);
            let after = disk.read(&dir.join("f")).unwrap();
            let diffs: Vec<usize> = (0..after.len())
                .filter(|i| before[*i] != after[*i])
                .collect();
            assert_eq!(diffs, vec![offset as usize]);
            assert_eq!(
                (before[offset as usize] ^ after[offset as usize]).count_ones(),
                1
            );
        }
    }

    #[test]
    fn missing_parent_is_not_found() {
        let disk = SimDisk::new();
        let err = disk.open_append(Path::new("/nope/f")).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(disk.list_dir(Path::new("/nope")).is_err());
    }
}
