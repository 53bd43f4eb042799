//! The peer transport on real loopback sockets: batches arrive in order, a dead peer never
//! holds up a live one, and a sender reconnects once its peer comes back.
// Real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::raftpb::{Message, MessageType};
use keel_proto::keelpb::peer_server::PeerServer;
use keel_server::transport::{LocalIdentity, PeerService, Transport, PEER_QUEUE_MAX};
use keel_server::SystemClock;
use tokio::sync::{mpsc, oneshot};

const CLUSTER: u64 = 0xc1;
const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;

fn heartbeat(to: u64, term: u64) -> Message {
    Message {
        msg_type: MessageType::MsgHeartbeat,
        from: A,
        to,
        term,
        ..Default::default()
    }
}

/// Serves member `me`'s peer service on `addr` until the returned sender is dropped or fired.
async fn serve(me: u64, addr: SocketAddr) -> (mpsc::Receiver<Message>, oneshot::Sender<()>) {
    let (inbound, rx) = mpsc::channel(100_000);
    let (stop, stopped) = oneshot::channel::<()>();
    let service = PeerService::new(
        LocalIdentity {
            member_id: me,
            cluster_id: CLUSTER,
        },
        inbound,
        None,
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(service))
            .serve_with_shutdown(addr, async {
                let _ = stopped.await;
            }),
    );
    // Give the listener a moment to bind.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (rx, stop)
}

async fn receive(rx: &mut mpsc::Receiver<Message>, n: usize) -> Vec<u64> {
    let mut terms = Vec::new();
    while terms.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(m)) => terms.push(m.term),
            Ok(None) => panic!("inbound closed after {} messages", terms.len()),
            Err(_) => panic!("only {} of {n} messages arrived", terms.len()),
        }
    }
    terms
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn transport(peers: &[(u64, u16)]) -> Transport {
    let peers: BTreeMap<u64, String> = peers
        .iter()
        .map(|(id, port)| (*id, format!("http://127.0.0.1:{port}")))
        .collect();
    Transport::start(
        LocalIdentity {
            member_id: A,
            cluster_id: CLUSTER,
        },
        peers,
        Arc::new(SystemClock::new()),
    )
}

#[tokio::test]
async fn messages_arrive_in_order_and_a_dead_peer_does_not_block_a_live_one() {
    let (b_port, c_port) = (common::free_port(), common::free_port());
    let (mut b_rx, _b_stop) = serve(B, addr(b_port)).await;
    // Nobody listens on c_port.
    let t = transport(&[(B, b_port), (C, c_port)]);

    let n = 3 * PEER_QUEUE_MAX as u64;
    for term in 1..=n {
        t.send(vec![heartbeat(C, term), heartbeat(B, term)]);
        if term % 500 == 0 {
            // Let B's sender drain; C's queue fills and overflows meanwhile.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let terms = receive(&mut b_rx, n as usize).await;
    assert_eq!(
        terms,
        (1..=n).collect::<Vec<_>>(),
        "B gets every message, in order"
    );
    assert!(
        t.dropped() > 0,
        "C's full queue drops messages instead of blocking"
    );
    t.send(vec![heartbeat(7, 1)]);
    assert!(t.dropped() > 0);
}

#[tokio::test]
async fn a_sender_reconnects_when_its_peer_comes_back() {
    let b_port = common::free_port();
    let (mut b_rx, stop) = serve(B, addr(b_port)).await;
    let t = transport(&[(B, b_port)]);
    t.send(vec![heartbeat(B, 1)]);
    assert_eq!(receive(&mut b_rx, 1).await, vec![1]);

    // B goes away (its raft is gone: the old stream is refused); what is sent meanwhile may be
    // lost.
    drop(b_rx);
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    for term in 2..=5 {
        t.send(vec![heartbeat(B, term)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B is back on the same address: raft keeps sending, and messages flow again.
    let (mut b_rx, _stop) = serve(B, addr(b_port)).await;
    let mut seen = Vec::new();
    for term in 100..200 {
        t.send(vec![heartbeat(B, term)]);
        tokio::time::sleep(Duration::from_millis(30)).await;
        while let Ok(m) = b_rx.try_recv() {
            seen.push(m.term);
        }
        if seen.len() >= 5 {
            break;
        }
    }
    assert!(
        seen.len() >= 5,
        "after B returned, messages flow again: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
}

#[tokio::test]
async fn a_batch_from_another_cluster_is_refused() {
    let b_port = common::free_port();
    let (mut b_rx, _stop) = serve(B, addr(b_port)).await;
    let stranger = Transport::start(
        LocalIdentity {
            member_id: A,
            cluster_id: CLUSTER + 1,
        },
        [(B, format!("http://127.0.0.1:{b_port}"))]
            .into_iter()
            .collect(),
        Arc::new(SystemClock::new()),
    );
    stranger.send(vec![heartbeat(B, 1)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b_rx.try_recv().is_err(),
        "a message from another cluster must not reach raft"
    );
}
