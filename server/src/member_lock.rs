//! The running member's lock on its data directory: an exclusive `flock(2)` on
//! `<data-dir>/member/lock`, held by the `keel` process for its life (the OS drops it when the
//! process ends, however it ends). Offline tools (`keelutl defrag`) take the same lock, so
//! they refuse a member that is running instead of rewriting its files under it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The lock file, under the data directory.
pub const LOCK_FILE: &str = "member/lock";

/// The lock, held until dropped.
#[derive(Debug)]
pub struct MemberLock {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (a running member) holds it.
    #[error("{} is locked: a keel member is running on this data directory", path.display())]
    Held {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file cannot be created or locked.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Takes the lock of the member in `data_dir` (creating `member/` if needed), without
/// waiting.
pub fn lock(data_dir: &Path) -> Result<MemberLock, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    try_flock(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => LockError::Held { path: path.clone() },
        _ => io(e),
    })?;
    Ok(MemberLock { _file: file })
}

#[cfg(unix)]
fn try_flock(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn try_flock(_file: &File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("keel-lock-test-{}", std::process::id()));
        let first = lock(&dir).expect("the first lock is taken");
        let second = lock(&dir).expect_err("the second is refused");
        assert!(matches!(second, LockError::Held { .. }), "{second}");
        drop(first);
        let third = lock(&dir).expect("taken again once released");
        drop(third);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
