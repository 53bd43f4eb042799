//! etcd's Lock service under contention, through the Rust `etcd-client` crate's `LockClient`,
//! on etcd 3.4.23 and on keel: 8 clients take one lock 10 times each and increment a counter
//! under it. The holders' revision intervals must not overlap, each must read the count of the
//! holders before it, and the counter must end at 80 (`the_exclusion_check_catches_an_overlap`
//! shows the check is not vacuous).
// These tests run real processes (etcd, keel) on real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::path::Path;

use anyhow::{ensure, Context, Result};
use common::etcd::serving_client;
use common::{keel_bin, require_on_path, Server, TempDir};
use etcd_client::LockOptions;

fn lease_opt(lease: i64) -> LockOptions {
    LockOptions::new().with_lease(lease)
}

/// One holding of the contended lock, in revisions.
#[derive(Debug, Clone, Copy)]
struct Holding {
    /// The lock key's create revision (the fencing token).
    token: i64,
    /// The Lock answer's header revision.
    acquired: i64,
    /// The counter as read under the lock.
    read: i64,
    /// The revision of the counter's write.
    wrote: i64,
    /// The Unlock answer's header revision.
    released: i64,
}

const CLIENTS: usize = 8;
const ROUNDS: usize = 10;

async fn contend(server: &Server, worker: usize) -> Result<Vec<Holding>> {
    let mut client = serving_client(server).await?;
    let lease = client.lease_grant(60, None).await?.id();
    let mut held = Vec::new();
    for round in 0..ROUNDS {
        let locked = client.lock("mutex", Some(lease_opt(lease))).await?;
        let key = locked.key().to_vec();
        let acquired = locked.header().map_or(0, |h| h.revision());
        let mine = client.get(key.clone(), None).await?;
        let token = mine.kvs().first().map_or(0, |kv| kv.create_revision());
        let counter = client.get("counter", None).await?;
        let read = match counter.kvs().first() {
            Some(kv) => kv.value_str()?.parse::<i64>()?,
            None => 0,
        };
        let put = client.put("counter", (read + 1).to_string(), None).await?;
        let wrote = put.header().map_or(0, |h| h.revision());
        let released = client
            .unlock(key)
            .await?
            .header()
            .map_or(0, |h| h.revision());
        ensure!(
            token > 0,
            "worker {worker} round {round}: lock key gone while held"
        );
        held.push(Holding {
            token,
            acquired,
            read,
            wrote,
            released,
        });
    }
    client.lease_revoke(lease).await?;
    Ok(held)
}

/// Holdings in fencing-token order must follow one another in revision order.
fn check_exclusion(label: &str, mut held: Vec<Holding>) -> Result<()> {
    held.sort_by_key(|h| h.token);
    ensure!(
        held.len() == CLIENTS * ROUNDS,
        "{label}: {} holdings",
        held.len()
    );
    for (i, h) in held.iter().enumerate() {
        ensure!(
            h.token <= h.acquired && h.acquired < h.wrote && h.wrote < h.released,
            "{label}: holding out of order: {h:?}"
        );
        ensure!(
            h.read == i as i64,
            "{label}: holder {i} read {}: {h:?}",
            h.read
        );
        if let Some(next) = held.get(i + 1) {
            ensure!(
                h.released <= next.acquired,
                "{label}: holdings overlap: {h:?} and {next:?}"
            );
        }
    }
    Ok(())
}

async fn contention(label: &str, program: &Path) -> Result<()> {
    let dir = TempDir::new("lock-contention")?;
    let server = Server::start_default(label, program, dir.path(), &[])?;
    let server = &server;
    let workers: Vec<_> = (0..CLIENTS).map(|w| contend(server, w)).collect();
    let mut held = Vec::new();
    for result in futures::future::join_all(workers).await {
        held.extend(result.with_context(|| label.to_string())?);
    }
    check_exclusion(label, held)?;
    let mut client = serving_client(server).await?;
    let counter = client.get("counter", None).await?;
    let last = counter.kvs().first().map(|kv| kv.value().to_vec());
    let expected = (CLIENTS * ROUNDS).to_string().into_bytes();
    ensure!(last == Some(expected), "{label}: counter ended at {last:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_under_contention() -> Result<()> {
    contention("etcd", &require_on_path("etcd")?).await?;
    contention("keel", &keel_bin()).await
}

#[test]
fn the_exclusion_check_catches_an_overlap() {
    let holding = |token, read, released| Holding {
        token,
        acquired: token,
        read,
        wrote: token + 1,
        released,
    };
    let mut held: Vec<Holding> = (0..(CLIENTS * ROUNDS) as i64)
        .map(|i| holding(10 * i + 2, i, 10 * i + 4))
        .collect();
    assert!(
        check_exclusion("sane", held.clone()).is_ok(),
        "a sane run passes"
    );
    // The first holder releases after the second acquired.
    held[0].released = held[1].acquired + 1;
    let caught = check_exclusion("overlap", held.clone());
    assert!(caught.is_err(), "an overlap is caught");
    held[0].released = 4;
    held[1].read = 0;
    assert!(
        check_exclusion("lost", held).is_err(),
        "a lost update is caught"
    );
}
