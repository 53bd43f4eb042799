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
//! a crash). Each inode holds its live bytes, its durable image (what a crash keeps for
//! certain) and the *dirty* range: the bytes written since its last sync.
//!
//! * `open_append` of a missing file creates an empty inode and a live name; the name becomes
//!   durable only at `sync_dir(parent)`. `rename` and `remove` change live names only, likewise.
//! * `sync_dir(d)` makes the durable entries of `d` equal to its live entries (every create,
//!   rename and remove in `d` since the last `sync_dir(d)` becomes durable at once).
//! * `DiskFile::append` writes bytes at the handle's position (visible to `read` at once, not
//!   durable) and widens the dirty range; `DiskFile::allocate` extends the file with zeros;
//!   `DiskFile::sync` copies the dirty range and the length into the durable image.
//! * `truncate` sets the length and makes the whole inode durable (like `set_len` + `fsync`).
//! * `create_dir_all` is durable at once (a simplification: directories are created once, at
//!   setup, and real code syncs their parents).
//! * Reads see the live view: unsynced appends included, as in a page cache.
//!
//! [`SimDisk::crash`] is a power loss: the live namespace is replaced by the durable one, inodes
//! no durable name refers to are dropped, and each surviving inode keeps its durable image with
//! a random prefix of its dirty range written over it, cut at a 512-byte sector boundary (file
//! offsets `0, 512, 1024, ..`) or at the range's end: whole sectors survive, then nothing (an
//! unsynced allocation is lost). With probability 1/4, when the cut dropped bytes, the file
//! additionally grows with zero bytes from the cut up to the next sector boundary (or the range's
//! end, if nearer): the file size was updated but that data sector was never written. File
//! handles opened before the crash fail with an error afterwards. Fault switches are cleared;
//! the capacity is not (it is the disk's size).
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
//! Disk full: [`SimDisk::set_capacity`] bounds the bytes all files together may hold (the live
//! and durable images of every file with a live or a durable name, the larger of the two; a
//! removed file frees its space once the removal is durable). Creating a file on a full disk, an `allocate` or an `append` that would grow
//! the files past the capacity fail with [`io::ErrorKind::StorageFull`]; an append writes what
//! fits first (a short write), `allocate` reserves nothing. Writing over bytes a file already
//! has (allocated ones included) needs no space. [`SimDisk::fill`] sets the capacity to what is
//! used now; `set_capacity(None)` frees the disk. Syncs, renames and removals never need space.
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

#[cfg(test)]
mod tests;

/// The size of a sector, the unit in which a crash tears unsynced data.
pub const SECTOR_BYTES: u64 = 512;

type InodeId = u64;

#[derive(Debug, Default)]
struct Inode {
    /// The live bytes (what reads see); the file's length is `data.len()`.
    data: Vec<u8>,
    /// What a crash keeps for certain.
    durable: Vec<u8>,
    /// The bytes written since the last sync (a crash keeps a prefix of them).
    dirty: Option<Range<u64>>,
}

impl Inode {
    /// Bytes this inode takes on the disk.
    fn footprint(&self) -> u64 {
        self.data.len().max(self.durable.len()) as u64
    }

    /// The length of the prefix of the live bytes that is durable.
    fn synced_len(&self) -> u64 {
        let clean = self
            .dirty
            .as_ref()
            .map_or(self.data.len() as u64, |r| r.start);
        clean.min(self.durable.len() as u64)
    }

    /// Writes `buf` at `pos` (zero-filling any gap) and widens the dirty range.
    fn write_at(&mut self, pos: u64, buf: &[u8]) {
        let end = pos + buf.len() as u64;
        if (self.data.len() as u64) < end {
            self.data.resize(end as usize, 0);
        }
        self.data[pos as usize..end as usize].copy_from_slice(buf);
        if !buf.is_empty() {
            self.dirty = Some(match self.dirty.take() {
                Some(r) => r.start.min(pos)..r.end.max(end),
                None => pos..end,
            });
        }
    }

    /// Makes the length and the dirty bytes durable (`lose`: the kernel dropped them instead:
    /// they read back until a crash, then hold zeros).
    fn sync(&mut self, lose: bool) {
        self.durable.resize(self.data.len(), 0);
        if let Some(r) = self.dirty.take() {
            let end = (r.end as usize).min(self.data.len());
            let start = (r.start as usize).min(end);
            if lose {
                self.durable[start..end].fill(0);
            } else {
                self.durable[start..end].copy_from_slice(&self.data[start..end]);
            }
        }
    }
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
    /// The file or directory the last armed fault fired on (cleared when one is armed).
    fault_fired_on: Option<PathBuf>,
    /// Set by a power cut: every operation fails until [`SimDisk::crash`].
    powered_off: bool,
    /// The most bytes the files may hold (`None`: unbounded).
    capacity: Option<u64>,
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

fn no_space(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!("simulated full disk: no space to {what}"),
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

    /// Bytes held by the files that have a live or a durable name.
    fn used_bytes(&self) -> u64 {
        let named: BTreeSet<InodeId> = self
            .live
            .values()
            .chain(self.durable.values())
            .copied()
            .collect();
        named
            .iter()
            .filter_map(|id| self.inodes.get(id))
            .map(Inode::footprint)
            .sum()
    }

    /// Bytes that may still be added (`u64::MAX` without a capacity).
    fn free_bytes(&self) -> u64 {
        self.capacity
            .map_or(u64::MAX, |c| c.saturating_sub(self.used_bytes()))
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

    /// Bounds the bytes the files may hold (`None`: unbounded, the default). A capacity below
    /// what is used already leaves the disk full until files shrink or go.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Fills the disk: the capacity becomes the bytes used now, so the next operation that
    /// needs space fails. Returns that capacity. Undo with `set_capacity(None)`.
    pub fn fill(&self) -> u64 {
        let mut st = self.lock();
        let used = st.used_bytes();
        st.capacity = Some(used);
        used
    }

    /// The capacity set by [`SimDisk::set_capacity`] or [`SimDisk::fill`].
    pub fn capacity(&self) -> Option<u64> {
        self.lock().capacity
    }

    /// The bytes the files hold (see the module docs for what counts).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
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
        let synced = inode.synced_len();
        if synced == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no durable bytes to corrupt", path.display()),
            ));
        }
        let sectors = synced.div_ceil(SECTOR_BYTES);
        let start = rng.below_modulo(sectors) * SECTOR_BYTES;
        let end = (start + SECTOR_BYTES).min(synced);
        let offset = start + rng.below_modulo(end - start);
        let bit = rng.below_modulo(8);
        inode.data[offset as usize] ^= 1 << bit;
        inode.durable[offset as usize] ^= 1 << bit;
        Ok(offset)
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` of the file at `path` (in its durable
    /// image too, where it has one).
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
        if let Some(byte) = inode.durable.get_mut(offset as usize) {
            *byte ^= 1 << bit;
        }
        Ok(())
    }

    /// The length of the durable prefix of the file at `path` (what a crash keeps for certain).
    pub fn synced_len(&self, path: &Path) -> io::Result<u64> {
        let mut st = self.lock();
        let (_, inode) = st.inode(path)?;
        Ok(inode.synced_len())
    }
}

/// Writes a random prefix of the dirty range over the durable image, cut at a sector boundary,
/// maybe growing the file by a zero-filled sector; the result is the inode's new content.
fn crash_inode(inode: &mut Inode, rng: &mut SplitMix64) {
    let mut kept = std::mem::take(&mut inode.durable);
    if let Some(r) = inode.dirty.take() {
        let (start, end) = (r.start, r.end.min(inode.data.len() as u64));
        let first_boundary = (start / SECTOR_BYTES + 1) * SECTOR_BYTES;
        let boundaries = if first_boundary < end {
            (end - 1 - first_boundary) / SECTOR_BYTES + 1
        } else {
            0
        };
        // Candidates: `start`, every sector boundary strictly inside the range, and `end`.
        let cut = if start >= end {
            end
        } else {
            match rng.below_modulo(boundaries + 2) {
                0 => start,
                k if k == boundaries + 1 => end,
                k => first_boundary + (k - 1) * SECTOR_BYTES,
            }
        };
        if (kept.len() as u64) < cut {
            kept.resize(cut as usize, 0);
        }
        kept[start as usize..cut as usize]
            .copy_from_slice(&inode.data[start as usize..cut as usize]);
        if cut < end && rng.below_modulo(4) == 0 {
            let zero_end = ((cut / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
            if (kept.len() as u64) < zero_end {
                kept.resize(zero_end as usize, 0);
            }
        }
    }
    inode.data = kept.clone();
    inode.durable = kept;
}

struct SimFile {
    state: Arc<Mutex<State>>,
    inode: InodeId,
    generation: u64,
    /// The path it was opened by (named where a fault fires).
    path: PathBuf,
    /// Where the next append lands.
    pos: u64,
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
        let pos = self.pos;
        let path = &self.path;
        let written = self.with_inode(|st, id| {
            let fail = std::mem::take(&mut st.fail_next_write);
            if fail {
                st.fault_fired_on = Some(path.clone());
            }
            let free = st.free_bytes();
            let inode = inode_mut(st, id)?;
            let room = (inode.footprint().saturating_sub(pos)).saturating_add(free);
            if fail {
                let half = &buf[..(buf.len() / 2).min(room as usize)];
                inode.write_at(pos, half);
                return Ok((
                    half.len(),
                    Some(io::Error::other("simulated write failure (short write)")),
                ));
            }
            if (buf.len() as u64) > room {
                inode.write_at(pos, &buf[..room as usize]);
                return Ok((room as usize, Some(no_space("write"))));
            }
            inode.write_at(pos, buf);
            Ok((buf.len(), None))
        })?;
        self.pos += written.0 as u64;
        written.1.map_or(Ok(()), Err)
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
            // The kernel marks failed pages clean: a later sync will not write them again.
            inode_mut(st, id)?.sync(fail);
            if fail {
                return Err(io::Error::other("simulated fsync failure"));
            }
            Ok(())
        })
    }

    fn len(&self) -> u64 {
        self.pos
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.with_inode(|st, id| {
            let free = st.free_bytes();
            let inode = inode_mut(st, id)?;
            let grow = len.saturating_sub(inode.footprint());
            if grow > free {
                return Err(no_space("allocate"));
            }
            if (inode.data.len() as u64) < len {
                inode.data.resize(len as usize, 0);
            }
            Ok(())
        })
    }
}

impl SimDisk {
    fn open(&self, path: &Path, offset: Option<u64>) -> io::Result<Box<dyn DiskFile>> {
        let mut st = self.lock();
        st.check_power()?;
        let id = match (st.live.get(path), offset) {
            (Some(id), _) => *id,
            (None, Some(_)) => return Err(not_found(path)),
            (None, None) => {
                st.require_parent(path)?;
                if st.dirs.contains(path) {
                    return Err(io::Error::other(format!(
                        "{}: is a directory",
                        path.display()
                    )));
                }
                if st.free_bytes() == 0 {
                    return Err(no_space("create a file"));
                }
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.live.insert(path.to_path_buf(), id);
                id
            }
        };
        let len = inode_mut(&mut st, id)?.data.len() as u64;
        let pos = offset.unwrap_or(len);
        if pos > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: offset {pos} past the end ({len})", path.display()),
            ));
        }
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode: id,
            generation: st.generation,
            pos,
            path: path.to_path_buf(),
        }))
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

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let mut st = self.lock();
        st.check_power()?;
        let (_, inode) = st.inode(path)?;
        Ok(inode.data.len() as u64)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.open(path, None)
    }

    fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn DiskFile>> {
        self.open(path, Some(offset))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        st.check_power()?;
        let free = st.free_bytes();
        let (_, inode) = st.inode(path)?;
        if len.saturating_sub(inode.footprint()) > free {
            return Err(no_space("extend a file"));
        }
        inode.sync(false);
        inode.data.resize(len as usize, 0);
        inode.durable.resize(len as usize, 0);
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
