//! The peer transport on real loopback sockets: batches arrive in order, a dead peer never
//! holds up a live one, and a sender reconnects once its peer comes back.
// Real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::raftpb::{Message, MessageType};
use keel_server::peer::transport::PEER_QUEUE_MAX;
use keel_server::peer::{LocalIdentity, PeerService, Transport};
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

/// Serves member `me`'s peer service on `port` until the returned sender is dropped or fired.
async fn serve(me: u64, port: u16) -> (mpsc::Receiver<Message>, oneshot::Sender<()>) {
    let (inbound, rx) = mpsc::channel(100_000);
    let service = PeerService::new(
        LocalIdentity {
            member_id: me,
            cluster_id: CLUSTER,
        },
        inbound,
        None,
    );
    (rx, common::peer::serve_peer(service, port).await)
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
        tokio::sync::mpsc::unbounded_channel().0,
    )
}

#[tokio::test]
async fn messages_arrive_in_order_and_a_dead_peer_does_not_block_a_live_one() {
    let (b_port, c_port) = (common::free_port(), common::free_port());
    let (mut b_rx, _b_stop) = serve(B, b_port).await;
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
    let (mut b_rx, stop) = serve(B, b_port).await;
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
    let (mut b_rx, _stop) = serve(B, b_port).await;
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
    let (mut b_rx, _stop) = serve(B, b_port).await;
    let stranger = Transport::start(
        LocalIdentity {
            member_id: A,
            cluster_id: CLUSTER + 1,
        },
        [(B, format!("http://127.0.0.1:{b_port}"))]
            .into_iter()
            .collect(),
        Arc::new(SystemClock::new()),
        tokio::sync::mpsc::unbounded_channel().0,
    );
    stranger.send(vec![heartbeat(B, 1)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b_rx.try_recv().is_err(),
        "a message from another cluster must not reach raft"
    );
}

fn snapshot_message(to: u64, data: bytes::Bytes) -> Message {
    let mut m = Message {
        msg_type: MessageType::MsgSnapshot,
        from: A,
        to,
        term: 4,
        ..Default::default()
    };
    let snap = m.mut_snapshot();
    snap.mut_metadata().index = 1234;
    snap.mut_metadata().term = 3;
    snap.data = data;
    m
}

#[tokio::test]
async fn a_snapshot_streams_in_chunks_beside_heartbeats_and_reports_its_outcome() {
    let (b_port, c_port) = (common::free_port(), common::free_port());
    let (mut b_rx, _stop) = serve(B, b_port).await;
    let peers: BTreeMap<u64, String> = [(B, b_port), (C, c_port)]
        .iter()
        .map(|(id, port)| (*id, format!("http://127.0.0.1:{port}")))
        .collect();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let t = Transport::start(
        LocalIdentity {
            member_id: A,
            cluster_id: CLUSTER,
        },
        peers,
        Arc::new(SystemClock::new()),
        reports_tx,
    );
    // 5.5 chunks of data, every byte different from its neighbours.
    let len = 5 * keel_server::peer::snapshot::CHUNK_BYTES + 512 * 1024;
    let data: bytes::Bytes = (0..len)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    t.send(vec![snapshot_message(B, data.clone()), heartbeat(B, 9)]);
    t.send(vec![snapshot_message(C, data.clone())]); // nobody listens on C
    let mut got_snapshot = None;
    let mut got_heartbeat = false;
    while got_snapshot.is_none() || !got_heartbeat {
        let m = tokio::time::timeout(Duration::from_secs(20), b_rx.recv())
            .await
            .expect("B hears from A")
            .expect("inbound open");
        match m.get_msg_type() {
            MessageType::MsgSnapshot => got_snapshot = Some(m),
            MessageType::MsgHeartbeat => got_heartbeat = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    let m = got_snapshot.expect("snapshot");
    assert_eq!(m.get_snapshot().get_metadata().index, 1234);
    assert_eq!(m.term, 4);
    assert!(m.get_snapshot().data == data, "the data arrives whole");
    let mut outcomes = BTreeMap::new();
    while outcomes.len() < 2 {
        let report = tokio::time::timeout(Duration::from_secs(20), reports.recv())
            .await
            .expect("a report")
            .expect("reports open");
        if let keel_engine::node::Input::SnapshotStatus { to, ok } = report {
            outcomes.insert(to, ok);
        }
    }
    assert_eq!(outcomes, BTreeMap::from([(B, true), (C, false)]));
}
