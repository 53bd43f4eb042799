//! Certificate rotation: a configuration rebuilt when its files change.
//!
//! A task stats the files every [`RELOAD_POLL`] (on the blocking pool) and, when any file's
//! modification time or size differs from what the current configuration was built from,
//! builds a new one and swaps it in. Handshakes only clone an `Arc` ([`Reloading::current`]):
//! they never read the disk. A rebuild that fails (a half-written file, a key that does not
//! match yet) keeps the old configuration and is retried when a file changes again, so a
//! rotation that replaces the certificate and key one after the other takes effect once both
//! are in.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use super::error::TlsError;
use super::files::TlsFiles;
use super::options::TlsOptions;

/// How often the certificate files are checked for change.
pub const RELOAD_POLL: Duration = Duration::from_millis(500);

/// What identifies a file's version: its modification time and size (None: unreadable).
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// A configuration built from files, rebuilt when they change.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
}

/// Builds a configuration from the files as they are now.
pub type Build<T> = fn(&TlsFiles, &TlsOptions) -> Result<T, TlsError>;

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the configuration now (its errors stop the start) and starts the task that
    /// rebuilds it on change; the task ends when the returned value is dropped.
    pub fn start(
        files: TlsFiles,
        options: TlsOptions,
        build: Build<T>,
    ) -> Result<Arc<Reloading<T>>, TlsError> {
        let watched = files.watched();
        let seen = stamp(&watched);
        let first = build(&files, &options)?;
        let this = Arc::new(Reloading {
            current: RwLock::new(Arc::new(first)),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(poll(weak, files, options, build, watched, seen));
        Ok(this)
    }

    /// The configuration the next handshake uses.
    pub fn current(&self) -> Arc<T> {
        // Only whole-Arc swaps happen under the lock; a panic elsewhere leaves it usable.
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard)
    }

    fn replace(&self, next: T) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(next);
    }
}

async fn poll<T: Send + Sync + 'static>(
    target: Weak<Reloading<T>>,
    files: TlsFiles,
    options: TlsOptions,
    build: Build<T>,
    watched: Vec<PathBuf>,
    mut seen: Stamp,
) {
    let files = Arc::new((files, options));
    loop {
        tokio::time::sleep(RELOAD_POLL).await;
        if target.strong_count() == 0 {
            return;
        }
        let (w, f, before) = (watched.clone(), Arc::clone(&files), seen.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let now = stamp(&w);
            (now != before).then(|| (build(&f.0, &f.1), now))
        })
        .await;
        let (outcome, now) = match checked {
            Ok(Some(changed)) => changed,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "checking certificate files");
                continue;
            }
        };
        let Some(target) = target.upgrade() else {
            return;
        };
        // Either way these versions of the files were tried: a set that cannot be used is
        // tried again when one of them changes (the rest of a rotation lands).
        seen = now;
        match outcome {
            Ok(next) => {
                target.replace(next);
                tracing::info!(cert = %files.0.cert.display(), "reloaded TLS certificate files");
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate files changed but cannot be used; keeping the previous ones");
            }
        }
    }
}

/// A listener's TLS: its reloading configuration, and whether verified client certificates
/// name their user (client `--client-cert-auth`).
pub struct ServerTls {
    /// The configuration the next handshake uses.
    pub config: Arc<Reloading<rustls::ServerConfig>>,
    /// Whether a verified certificate's CommonName acts as the caller's user name.
    pub common_name_login: bool,
}
