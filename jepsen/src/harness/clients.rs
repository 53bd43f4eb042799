//! The workload's clients of one run, spawned for the fault phase, and the logs they keep
//! beside the history.
use std::time::Instant;

use tokio::task::JoinHandle;

use super::election::{self, ElectionLog};
use super::lease::{self, LeaseLog};
use super::lock::{self, LockLog};
use super::partition::CutOff;
use super::recorder::Recorder;
use super::register::{self, ClientSpec};
use super::watch::{self, WatchRecorder};
use super::{TestOptions, Workload};

/// The logs a workload keeps beside the history.
#[derive(Default)]
pub struct Logs {
    /// The watch workload's watch log.
    pub watches: Option<WatchRecorder>,
    /// The lease workload's grants, keepalives and revokes.
    pub leases: Option<LeaseLog>,
    /// The lock workload's acquires, writes and releases.
    pub locks: Option<LockLog>,
    /// The election workload's wins and observations.
    pub elections: Option<ElectionLog>,
}

/// Spawns the clients of `opts.workload`, which stop at `until`.
pub async fn spawn_clients(
    opts: &TestOptions,
    rec: &Recorder,
    until: Instant,
    cut_off: &CutOff,
) -> (Vec<JoinHandle<()>>, Logs) {
    let clients = (opts.nodes * opts.clients_per_member) as u64;
    let n = opts.nodes;
    let mut logs = Logs::default();
    let mut tasks = Vec::new();
    match opts.workload {
        Workload::Lease => {
            let log = LeaseLog::default();
            for id in 0..clients {
                let c = lease::client(rec.clone(), log.clone(), id, clients, n, opts.seed, until);
                tasks.push(tokio::spawn(c));
            }
            logs.leases = Some(log);
        }
        Workload::Lock => {
            lock::init(n).await;
            let log = LockLog::default();
            for id in 0..clients {
                let c = lock::client(rec.clone(), log.clone(), id, n, until);
                tasks.push(tokio::spawn(c));
            }
            logs.locks = Some(log);
        }
        Workload::Election => {
            let log = ElectionLog::default();
            for id in 0..clients {
                let c = election::client(rec.clone(), log.clone(), id, n, until);
                tasks.push(tokio::spawn(c));
            }
            logs.elections = Some(log);
        }
        Workload::Register | Workload::Txn | Workload::Watch => {
            let probe = opts.stale_probe.then(|| cut_off.clone());
            for id in 0..clients {
                let spec = ClientSpec {
                    id,
                    clients,
                    member: id as usize % n,
                    seed: opts.seed,
                    stale_probe: probe.clone(),
                    multi_key: opts.workload == Workload::Txn,
                };
                tasks.push(tokio::spawn(register::client(rec.clone(), spec, until)));
            }
        }
    }
    if opts.workload == Workload::Watch {
        let log = WatchRecorder::new(rec.clone());
        for id in 0..n {
            tasks.push(tokio::spawn(watch::watcher(log.clone(), id, n, until)));
        }
        logs.watches = Some(log);
    }
    (tasks, logs)
}
