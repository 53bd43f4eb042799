//! One gRPC connection's streams are polled on the connection's own task
//! (`server/src/client/h2conn.rs`): on one HTTP/2 connection to the real binary, a Watch
//! stream that waits for events holds up neither unary puts nor reads, and still gets its
//! event; a LeaseKeepAlive stream left open does not either; a Lock call that waits does not,
//! and ends at its deadline; and after a connection closes the member serves a new one.
#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{keel_bin, Ports, Server, TempDir};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use keel_proto::v3lockpb::lock_client::LockClient;
use keel_proto::v3lockpb::LockRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Every single call's bound: far above what one takes on a loaded machine, far below "hung".
const CALL: Duration = Duration::from_secs(10);

fn start(dir: &TempDir) -> Result<Server> {
    let ports = Ports::pick();
    Server::start_etcd_style(
        "keel",
        &keel_bin(),
        "m1",
        &dir.path().join("m1.data"),
        ports,
        &[],
    )
}

/// One HTTP/2 connection (tonic's Channel keeps one per endpoint); every client below shares it.
async fn connect(server: &Server) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{}", server.endpoint()))?;
    Ok(endpoint.connect().await?)
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_pending_watch_and_keepalive_do_not_hold_up_unary_calls_on_their_connection() -> Result<()>
{
    let dir = TempDir::new("grpc-conn-watch")?;
    let server = start(&dir)?;
    let channel = connect(&server).await?;
    let mut kv = KvClient::new(channel.clone());
    tokio::time::timeout(CALL, kv.put(put("warm", "up")))
        .await
        .context("first put")??;

    // A watch on a key nobody writes yet: its stream stays pending.
    let (watch_tx, watch_rx) = mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"watched".to_vec().into(),
            ..Default::default()
        })),
    };
    watch_tx.send(create).await?;
    let mut events = WatchClient::new(channel.clone())
        .watch(ReceiverStream::new(watch_rx))
        .await?
        .into_inner();
    let created = tokio::time::timeout(CALL, events.message())
        .await
        .context("watch created")??
        .context("watch stream ended")?;
    ensure!(created.created, "first watch response: {created:?}");

    // A LeaseKeepAlive stream left open after one keepalive.
    let mut lease = LeaseClient::new(channel.clone());
    let granted = tokio::time::timeout(
        CALL,
        lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }),
    )
    .await
    .context("lease grant")??
    .into_inner();
    let (ka_tx, ka_rx) = mpsc::channel(4);
    ka_tx.send(LeaseKeepAliveRequest { id: granted.id }).await?;
    let mut kept = lease
        .lease_keep_alive(ReceiverStream::new(ka_rx))
        .await?
        .into_inner();
    tokio::time::timeout(CALL, kept.message())
        .await
        .context("keepalive answered")??
        .context("keepalive stream ended")?;

    // With both streams open and waiting, unary calls on the same connection go through,
    // many at once.
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut kv = KvClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            kv.put(put(&format!("k{i}"), "v")).await?;
            let got = kv
                .range(RangeRequest {
                    key: format!("k{i}").into_bytes().into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok::<_, tonic::Status>(got.kvs.len())
        }));
    }
    for call in calls {
        let found = tokio::time::timeout(CALL, call)
            .await
            .context("a put and a range behind a pending watch")???;
        ensure!(found == 1, "a range after its put found {found} keys");
    }

    // The watch was alive all along: its event arrives.
    tokio::time::timeout(CALL, kv.put(put("watched", "now")))
        .await
        .context("put on the watched key")??;
    let event = tokio::time::timeout(CALL, events.message())
        .await
        .context("watch event")??
        .context("watch stream ended")?;
    ensure!(
        event.events.len() == 1
            && event.events[0].kv.as_ref().map(|k| &k.value[..]) == Some(b"now"),
        "the watch's event: {event:?}"
    );
    // And the keepalive stream still answers.
    ka_tx.send(LeaseKeepAliveRequest { id: granted.id }).await?;
    let again = tokio::time::timeout(CALL, kept.message())
        .await
        .context("second keepalive")??
        .context("keepalive stream ended")?;
    ensure!(again.ttl > 0, "keepalive of a live lease: {again:?}");
    drop(watch_tx);
    Ok(())
}

#[tokio::test]
async fn a_blocked_call_ends_at_its_grpc_timeout_and_a_closed_connection_frees_its_streams(
) -> Result<()> {
    let dir = TempDir::new("grpc-conn-timeout")?;
    let server = start(&dir)?;
    let channel = connect(&server).await?;
    let mut lock = LockClient::new(channel.clone());
    let held = tokio::time::timeout(
        CALL,
        lock.lock(LockRequest {
            name: b"l".to_vec().into(),
            lease: 0,
        }),
    )
    .await
    .context("first lock")??;
    ensure!(!held.into_inner().key.is_empty(), "the first lock is held");

    // A second Lock on the held name waits until its deadline (`grpc-timeout`); meanwhile
    // the connection serves puts.
    let mut waiting = tonic::Request::new(LockRequest {
        name: b"l".to_vec().into(),
        lease: 0,
    });
    waiting.set_timeout(Duration::from_millis(500));
    let mut second = LockClient::new(channel.clone());
    let blocked = tokio::spawn(async move { second.lock(waiting).await });
    let mut kv = KvClient::new(channel.clone());
    for i in 0..10 {
        tokio::time::timeout(CALL, kv.put(put(&format!("p{i}"), "v")))
            .await
            .context("put beside a waiting lock")??;
    }
    let status = tokio::time::timeout(CALL, blocked)
        .await
        .context("the waiting lock was never answered")??
        .expect_err("the lock is held by the first caller");
    ensure!(
        matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "a lock past its deadline: {status:?}"
    );

    // Closing the connection drops its streams; a new connection is served as before.
    drop((lock, kv, channel));
    let channel = connect(&server).await?;
    let mut kv = KvClient::new(channel);
    tokio::time::timeout(CALL, kv.put(put("after", "close")))
        .await
        .context("put on a new connection")??;
    Ok(())
}
