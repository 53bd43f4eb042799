//! The [`Disk`] trait: the only way keel touches files.
//!
//! Two implementations exist: [`OsDisk`] (std::fs, used in production) and
//! [`crate::SimDisk`] (an in-memory disk with a crash model, owned by the simulation harness so
//! that it outlives a node's crash).
//!
//! Durability contract, which both implementations honour and which the WAL relies on:
//!
//! | operation                     | durable when                                              |
//! |-------------------------------|-----------------------------------------------------------|
//! | [`DiskFile::append`]          | after [`DiskFile::sync`] on that file returns `Ok`        |
//! | [`DiskFile::allocate`]        | after [`DiskFile::sync`] on that file returns `Ok`        |
//! | creating a file (open_append) | after [`Disk::sync_dir`] of its parent directory          |
//! | [`Disk::rename`]              | after [`Disk::sync_dir`] of both parent directories       |
//! | [`Disk::remove`]              | after [`Disk::sync_dir`] of its parent directory          |
//! | [`Disk::truncate`]            | when it returns `Ok` (the implementation syncs the file)  |
//! | [`Disk::create_dir_all`]      | when it returns `Ok` (see the per-implementation notes)   |
//!
//! A failed `sync` or `sync_dir` leaves the durability of everything it covered unknown; callers
//! must treat it as fatal (see [`crate::wal`]).
//!
//! A full disk is not a failed sync: an operation that needs space it cannot get fails with
//! [`io::ErrorKind::StorageFull`] (or [`io::ErrorKind::QuotaExceeded`]), see [`is_no_space`].
//! [`DiskFile::allocate`] reserves blocks ahead of need, so that the writes into them cannot run
//! out of space later.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

/// The [`Disk`] or [`DiskFile`] operation an I/O error came from (named in the WAL's and the
/// snapshot directory's errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// [`Disk::create_dir_all`].
    CreateDir,
    /// [`Disk::list_dir`].
    ListDir,
    /// [`Disk::read`] or [`Disk::read_shared`].
    Read,
    /// [`Disk::open_append`], or finding a file that should be new not empty.
    Open,
    /// [`DiskFile::append`].
    Append,
    /// [`DiskFile::sync`].
    Sync,
    /// [`Disk::truncate`].
    Truncate,
    /// [`Disk::rename`].
    Rename,
    /// [`Disk::remove`].
    Remove,
    /// [`Disk::sync_dir`].
    SyncDir,
    /// [`DiskFile::allocate`].
    Allocate,
}

/// Whether `e` says the disk (or the user's quota) is full: `ENOSPC` or `EDQUOT`, which the
/// standard library maps to [`io::ErrorKind::StorageFull`] and [`io::ErrorKind::QuotaExceeded`].
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::CreateDir => "create directory",
            IoOp::ListDir => "list directory",
            IoOp::Read => "read",
            IoOp::Open => "open",
            IoOp::Append => "append",
            IoOp::Sync => "sync",
            IoOp::Truncate => "truncate",
            IoOp::Rename => "rename",
            IoOp::Remove => "remove",
            IoOp::SyncDir => "sync directory",
            IoOp::Allocate => "allocate",
        })
    }
}

/// A file opened for writing at a position, obtained from [`Disk::open_append`] (the position
/// is the file's end) or [`Disk::open_at`].
///
/// Example: `open_append(p)` on a new file, `allocate(4096)` (the file is 4096 zero bytes, its
/// blocks reserved), `append(b"abc")` (the file is `abc` and 4093 zeros, `len()` is 3),
/// `sync()` (all of it durable).
pub trait DiskFile: Send {
    /// Writes all of `buf` at the handle's position, overwriting what is there and extending
    /// the file if needed, and advances the position (not durable until [`DiskFile::sync`]).
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every byte written and allocated so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// The handle's position: the file's length (or the offset) it was opened at plus the bytes
    /// appended through it since.
    fn len(&self) -> u64;
    /// Whether [`DiskFile::len`] is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes the file at least `len` bytes long, the new bytes reading as zeros, with real
    /// blocks reserved for them (`posix_fallocate`), so that writing them later cannot fail for
    /// lack of space. Does not move the position. Fails with [`io::ErrorKind::StorageFull`]
    /// when the disk cannot hold them. The new length is durable after [`DiskFile::sync`].
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// Starts writing the bytes appended so far to the disk, without waiting for them, and
    /// waits for those the previous call started (Linux: `sync_file_range`). Not a durability
    /// point: only [`DiskFile::sync`] is. A big file written in one go then reaches the disk in
    /// steps, as it is written, instead of in one flush at its `sync` that the other files'
    /// syncs (the WAL's) queue behind. By default nothing.
    fn write_back(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The storage keel writes to: a file system with explicit durability points.
///
/// Paths are passed as given; implementations do not canonicalize them, so callers should build
/// every path the same way (e.g. `dir.join(name)`).
pub trait Disk: Send + Sync + 'static {
    /// Creates `path` and any missing parent directories.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries of directory `path`, sorted bytewise.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The whole content of the file at `path`, as shared bytes that may live outside the heap
    /// ([`OsDisk`] maps the file read-only). The file must not change while the bytes live:
    /// keel maps snapshot files, which are written once under a temporary name and never
    /// modified after their rename, and, during recovery only, WAL segments and the WAL's
    /// reserve, before anything writes them (each mapping is dropped before its file is
    /// repaired or opened for writing).
    fn read_shared(&self, path: &Path) -> io::Result<bytes::Bytes> {
        self.read(path).map(bytes::Bytes::from)
    }
    /// The length of the file at `path`, in bytes (by default read whole to learn it).
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.read(path).map(|data| data.len() as u64)
    }
    /// Tells the system that the pages behind `bytes`, if they are a mapping made by
    /// [`Disk::read_shared`], need not stay in this process's memory: they leave its resident
    /// set (staying in the page cache) and fault back in when read. Anything else is left
    /// alone. Used after a snapshot file's crc check or decode touched every page of it.
    fn evict(&self, bytes: &[u8]) {
        let _ = bytes;
    }
    /// Opens `path` for appending, creating it (empty) if it does not exist. The handle's
    /// position is the file's length.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Opens the existing file at `path` for writing at `offset` (at most its length): appends
    /// overwrite the bytes from `offset` on. The file keeps its length.
    fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn DiskFile>>;
    /// Sets the length of the file at `path` to `len` and makes the file durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file at `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals of entries in directory `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// [`Disk`] on the operating system's file system (std::fs).
///
/// `sync` is `fdatasync` (`File::sync_data`); `sync_dir` opens the directory and calls
/// `sync_all` on it. `allocate` is `posix_fallocate` on Linux; elsewhere it only sets the
/// length (a sparse file: no space is reserved). `create_dir_all` also syncs the parent of each directory it creates, so a
/// new data directory survives a power loss.
///
/// `remove` unlinks the file, then, if that was its last name and nothing maps it, frees its
/// blocks [`REMOVE_STEP`] bytes at a time through a handle opened before the unlink (the
/// inode lives until the handle closes, and a crash leaves it to the file system's orphan
/// clean-up, as a plain unlink would). Freeing a few hundred MB at once puts all of it in
/// one journal commit, and on a file system mounted with `discard` that commit trims every
/// freed block while every other `fdatasync` on the file system waits for it: measured on
/// ext4 here, removing two 300 MB files stalled a concurrent 4 KiB write + `fdatasync` loop
/// for 20-37 ms; freed 8 MiB at a time, for at most 2-4 ms (`benches/README.md`, "Removing
/// big files"). The members' WAL fsyncs are that loop: released WAL segments and replaced
/// snapshots are removed while puts wait on them.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

/// How many bytes of a removed file [`OsDisk::remove`] frees at a time.
pub const REMOVE_STEP: u64 = 8 << 20;

impl OsDisk {
    /// A handle on the OS file system.
    pub fn new() -> Self {
        OsDisk
    }
}

struct OsFile {
    /// Opened without `O_APPEND`; its cursor is at `pos`.
    file: File,
    pos: u64,
    /// The range the last [`DiskFile::write_back`] started writing: (offset, length).
    writing: (u64, u64),
}

impl OsFile {
    fn open(path: &Path, offset: Option<u64>, create: bool) -> io::Result<OsFile> {
        let mut file = OpenOptions::new().create(create).write(true).open(path)?;
        let len = file.metadata()?.len();
        let pos = offset.unwrap_or(len);
        if pos > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: offset {pos} past the end ({len})", path.display()),
            ));
        }
        file.seek(SeekFrom::Start(pos))?;
        Ok(OsFile {
            file,
            pos,
            writing: (pos, 0),
        })
    }
}

impl DiskFile for OsFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.file.write_all(buf);
        // A short write moved the cursor: follow it, so the position stays the truth.
        self.pos = self.file.stream_position()?;
        result
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.pos
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        allocate(&self.file, len)
    }

    fn write_back(&mut self) -> io::Result<()> {
        let (start, len) = self.writing;
        let next = start + len;
        if self.pos <= next {
            return Ok(());
        }
        write_back(&self.file, self.writing, (next, self.pos - next))?;
        self.writing = (next, self.pos - next);
        Ok(())
    }
}

/// Waits until the range `started` (offset, length) is written out, and starts writing
/// `start` (Linux: `sync_file_range`; elsewhere nothing, the final sync writes it all).
#[cfg(target_os = "linux")]
fn write_back(file: &File, started: (u64, u64), start: (u64, u64)) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let range = |(at, len): (u64, u64)| {
        let at = libc::off64_t::try_from(at);
        let len = libc::off64_t::try_from(len);
        match (at, len) {
            (Ok(at), Ok(len)) => Ok((at, len)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            )),
        }
    };
    let calls = [
        (
            started,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        ),
        (start, libc::SYNC_FILE_RANGE_WRITE),
    ];
    for (r, flags) in calls {
        let (at, len) = range(r)?;
        if len == 0 {
            continue;
        }
        // SAFETY: the descriptor is open for the duration of the call; sync_file_range reads
        // no memory of ours.
        if unsafe { libc::sync_file_range(file.as_raw_fd(), at, len, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn write_back(_file: &File, _started: (u64, u64), _start: (u64, u64)) -> io::Result<()> {
    Ok(())
}

/// Reserves blocks for the first `len` bytes of `file`, extending it (Linux: `posix_fallocate`).
#[cfg(target_os = "linux")]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(()); // posix_fallocate refuses an empty range
    }
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "allocation too large"))?;
    // SAFETY: the descriptor is open for the duration of the call; posix_fallocate reads no
    // memory of ours.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        // A file system that cannot reserve (e.g. some network ones): fall back to a length.
        libc::EOPNOTSUPP if file.metadata()?.len() < len as u64 => file.set_len(len as u64),
        libc::EOPNOTSUPP => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Elsewhere: only extends the length (a sparse file; no space is reserved).
#[cfg(not(target_os = "linux"))]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

impl Disk for OsDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.create_dir_all(parent)?;
        }
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
            Err(e) => return Err(e),
        }
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => self.sync_dir(parent),
            None => self.sync_dir(Path::new(".")),
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let name = entry?.file_name().into_string().map_err(|name| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("non-UTF-8 file name {name:?} in {}", path.display()),
                )
            })?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        std::fs::metadata(path).map(|m| m.len())
    }

    fn read_shared(&self, path: &Path) -> io::Result<bytes::Bytes> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.len() == 0 {
            return Ok(bytes::Bytes::new()); // an empty file cannot be mapped
        }
        mapped::map(&file, mapped::FileId::of(&meta)).map(bytes::Bytes::from_owner)
    }

    fn evict(&self, bytes: &[u8]) {
        mapped::evict(bytes);
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(OsFile::open(path, None, true)?))
    }

    fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(OsFile::open(path, Some(offset), false)?))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        // A file that cannot be opened for writing is removed whole.
        let handle = OpenOptions::new().write(true).open(path).ok();
        std::fs::remove_file(path)?;
        if let Some(file) = handle {
            mapped::free_in_steps(&file);
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// The read-only mappings [`OsDisk::read_shared`] made and that are still alive, so that
/// [`Disk::evict`] advises only pages of a file mapping (on a private or anonymous page,
/// `MADV_DONTNEED` would discard data), and so that [`OsDisk::remove`] never shrinks a file
/// that is mapped (a read past a mapped file's end is a `SIGBUS`).
mod mapped {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    /// A file, whatever its names: (device, inode).
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub(super) struct FileId(u64, u64);

    impl FileId {
        pub(super) fn of(meta: &std::fs::Metadata) -> FileId {
            FileId(meta.dev(), meta.ino())
        }
    }

    struct Live {
        /// Start address → (length, file) of every live mapping.
        by_addr: BTreeMap<usize, (usize, FileId)>,
        /// The files being shrunk after their removal: no mapping of them may start.
        shrinking: BTreeSet<FileId>,
    }

    static LIVE: Mutex<Live> = Mutex::new(Live {
        by_addr: BTreeMap::new(),
        shrinking: BTreeSet::new(),
    });

    fn live() -> std::sync::MutexGuard<'static, Live> {
        LIVE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A mapping registered while it lives.
    pub(super) struct Mapping(memmap2::Mmap);

    /// `file` (the file `id`) mapped read-only and registered; refused (not found) while the
    /// file is being shrunk, which happens only after its last name is gone.
    pub(super) fn map(file: &File, id: FileId) -> io::Result<Mapping> {
        let mut live = live();
        if live.shrinking.contains(&id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the file was removed while it was being opened",
            ));
        }
        // SAFETY: the map is read-only and keel never writes, truncates or replaces a file
        // while it is mapped (snapshot files are immutable after their rename; WAL files are
        // mapped only during recovery and unmapped before they are written; `remove` shrinks
        // a file only if no mapping of it is registered, and none can start meanwhile, under
        // this lock; removing a file leaves the mapping valid on Unix). Another process
        // modifying the file would be outside keel's contract, as with any data directory.
        let map = unsafe { memmap2::Mmap::map(file)? };
        live.by_addr.insert(map.as_ptr() as usize, (map.len(), id));
        Ok(Mapping(map))
    }

    /// Frees the blocks of `file`, already unlinked, [`super::REMOVE_STEP`] bytes at a time,
    /// unless it still has a name (another hard link) or a live mapping, or is small. Errors
    /// are ignored: the blocks left are freed when the handle closes.
    pub(super) fn free_in_steps(file: &File) {
        let Ok(meta) = file.metadata() else { return };
        if meta.nlink() > 0 || meta.len() <= super::REMOVE_STEP {
            return;
        }
        let id = FileId::of(&meta);
        {
            let mut live = live();
            if live.by_addr.values().any(|&(_, mapped)| mapped == id) {
                return;
            }
            live.shrinking.insert(id);
        }
        let mut len = meta.len();
        while len > super::REMOVE_STEP {
            len -= super::REMOVE_STEP;
            if file.set_len(len).is_err() {
                break;
            }
        }
        live().shrinking.remove(&id);
    }

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // Unregistered before the unmap (the field drops after this returns).
            live().by_addr.remove(&(self.0.as_ptr() as usize));
        }
    }

    /// `MADV_DONTNEED` on the whole pages of `bytes`, if they lie inside a live mapping.
    pub(super) fn evict(bytes: &[u8]) {
        let (start, len) = (bytes.as_ptr() as usize, bytes.len());
        let live = live();
        let Some((&map_start, &(map_len, _))) = live.by_addr.range(..=start).next_back() else {
            return;
        };
        if start.saturating_add(len) > map_start.saturating_add(map_len) {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let first = start.div_ceil(page) * page;
        let end = (start + len) / page * page;
        if end <= first {
            return;
        }
        // SAFETY: [first, end) lies inside a live, read-only, shared file mapping (checked
        // above, under the lock that its unmapping takes first); dropping such pages loses
        // nothing, since they are read back from the file on the next access.
        let rc =
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "madvise failed");
        }
    }
}
