//! Background work that must not compete with the write path for the CPU: saving the member's
//! own snapshots and streaming a snapshot to a follower.
//!
//! Both are proportional to the store (hundreds of MB at 1M keys) and take whole seconds of
//! CPU, while a put needs the driver loop, the WAL writer and the gRPC workers for a few tens of
//! microseconds each. On a loaded machine the scheduler shares the cores evenly between runnable
//! threads, so a snapshot encoding at full speed takes a core's share from the loop and the
//! WAL writer, and the writes' tail latency grows for as long as it runs. So that work runs on
//! threads of its own at a lower scheduling priority ([`NICE`]; Linux keeps a nice value per
//! thread): the loop, the WAL writer and the client workers get the CPU first, and the
//! snapshot takes what is left (on an idle machine, all of it; under load, about a tenth of
//! a contended core).
//!
//! Under madsim the same work runs as simulated tasks, as before (no OS threads, no priority).

use std::future::Future;

/// The nice value of background threads: weight 110 against the 1024 of a normal thread
/// (Linux's CFS), i.e. about a tenth of a core that both want.
#[cfg_attr(madsim, allow(dead_code))]
pub const NICE: i32 = 10;

/// Runs `work` on a thread of its own at priority [`NICE`] and waits for it without blocking
/// the async workers (on the blocking pool, at normal priority, if no thread can be started).
/// `None` if it panicked.
pub async fn run<T, W>(name: &'static str, work: W) -> Option<T>
where
    T: Send + 'static,
    W: FnOnce() -> T + Send + 'static,
{
    #[cfg(not(madsim))]
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let body = move |work: W| {
            let _ = tx.send(work());
        };
        if let Err(work) = spawn_niced(name, "using the pool", work, body) {
            return pooled(name, work).await;
        }
        // A panic drops the sender: `rx` then fails.
        match rx.await {
            Ok(done) => Some(done),
            Err(_) => {
                tracing::error!(thread = name, "background work panicked");
                None
            }
        }
    }
    #[cfg(madsim)]
    {
        pooled(name, work).await
    }
}

/// Runs `work` on the runtime's blocking pool (under madsim: as a simulated task). `None` if
/// it panicked.
async fn pooled<T, W>(name: &'static str, work: W) -> Option<T>
where
    T: Send + 'static,
    W: FnOnce() -> T + Send + 'static,
{
    // madsim marks spawn_blocking deprecated to say that it runs the closure as a task.
    #[allow(deprecated)]
    let joined = tokio::task::spawn_blocking(work).await;
    match joined {
        Ok(done) => Some(done),
        Err(e) => {
            tracing::error!(thread = name, error = %e, "background work panicked");
            None
        }
    }
}

/// Runs `task` to its end on a thread of its own at priority [`NICE`], with a single-threaded
/// runtime of its own: the connections it opens are driven on that thread too, so the bytes
/// it sends cost the member's async workers nothing. Falls back to the current runtime if the
/// thread or its runtime cannot be made.
pub fn spawn<F>(name: &'static str, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    #[cfg(not(madsim))]
    {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::warn!(thread = name, error = %e, "no background runtime; running inline");
                tokio::spawn(task);
                return;
            }
        };
        let body = move |task: F| runtime.block_on(task);
        if let Err(task) = spawn_niced(name, "running inline", task, body) {
            tokio::spawn(task);
        }
    }
    #[cfg(madsim)]
    {
        let _ = name;
        tokio::spawn(task);
    }
}

/// Starts a thread named `name` at priority [`NICE`] that runs `body(payload)`. The payload
/// goes over only once the thread runs, so a failed start hands it back (logged as a warning
/// with `fallback`, what the caller does with it instead).
#[cfg(not(madsim))]
fn spawn_niced<P, B>(name: &'static str, fallback: &str, payload: P, body: B) -> Result<(), P>
where
    P: Send + 'static,
    B: FnOnce(P) + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<P>(1);
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            if let Ok(payload) = rx.recv() {
                body(payload);
            }
        });
    match spawned {
        Ok(_) => tx
            .send(payload)
            .map_err(|std::sync::mpsc::SendError(payload)| payload),
        Err(e) => {
            tracing::warn!(thread = name, error = %e, "no background thread; {fallback}");
            Err(payload)
        }
    }
}

/// Lowers the calling thread's scheduling priority to [`NICE`] (Linux: per thread; elsewhere
/// nothing). A failure is logged and the work runs at normal priority.
#[cfg(not(madsim))]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority have no memory preconditions; `who` is this thread.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "setpriority failed");
        }
    }
}
