//! A follower receiving the leader's snapshot (`keelpb.Peer/SendSnapshot`) straight into a file
//! of its snapshot directory, on real loopback sockets and a real disk: a whole transfer
//! reaches the node with its data mapped from that file, which the WAL writer's install then
//! puts in place without writing it again; a damaged, short or long transfer is refused,
//! reaches no node and leaves no file behind.
// Real sockets: tokio build only.
#![cfg(not(madsim))]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_engine::raft_log::{encode_conf_state, encode_message};
use keel_engine::raftpb::{Message, MessageType};
use keel_proto::keelpb::peer_client::PeerClient;
use keel_proto::keelpb::SnapshotChunk;
use keel_server::peer::{LocalIdentity, PeerService};
use keel_storage::snap::SnapDir;
use keel_storage::{Disk, OsDisk};
use tokio::sync::{mpsc, oneshot};

const CLUSTER: u64 = 0xc1;
const LEADER: u64 = 1;
const FOLLOWER: u64 = 2;
const CHUNK: usize = 256 * 1024;

struct Follower {
    inbound: mpsc::Receiver<Message>,
    snaps: SnapDir,
    dir: common::TempDir,
    url: String,
    _stop: oneshot::Sender<()>,
}

/// Serves a follower's peer service that writes received snapshots into a snapshot directory.
async fn follower() -> Follower {
    follower_served(false).await
}

/// [`follower`], served as a member does, or with one lane (an older member: no snapshot
/// lane, HTTP/2 from the first byte).
async fn follower_served(one_lane: bool) -> Follower {
    let dir = common::TempDir::new("snaprecv").expect("temp dir");
    let disk: Arc<dyn Disk> = Arc::new(OsDisk);
    let snaps = SnapDir::open(disk, &dir.path().join("snap"), 2).expect("snap dir");
    let (tx, inbound) = mpsc::channel(16);
    let local = LocalIdentity {
        member_id: FOLLOWER,
        cluster_id: CLUSTER,
    };
    let service = PeerService::new(local, tx, None).with_snapshots(snaps.clone());
    let port = common::free_port();
    let stop = if one_lane {
        common::peer::serve_peer_one_lane(service, port).await
    } else {
        common::peer::serve_peer(service, port).await
    };
    Follower {
        inbound,
        snaps,
        dir,
        url: format!("http://127.0.0.1:{port}"),
        _stop: stop,
    }
}

fn snapshot_message() -> Message {
    let mut m = Message {
        msg_type: MessageType::MsgSnapshot,
        from: LEADER,
        to: FOLLOWER,
        term: 4,
        ..Default::default()
    };
    let meta = m.mut_snapshot().mut_metadata();
    meta.index = 1234;
    meta.term = 3;
    meta.mut_conf_state().voters = vec![LEADER, FOLLOWER];
    m
}

fn data(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Sends `chunks` after a first chunk announcing `len` bytes with crc `crc`.
async fn send(url: &str, len: u64, crc: u32, chunks: Vec<Bytes>) -> Result<(), tonic::Status> {
    let mut client = PeerClient::connect(url.to_string()).await.expect("connect");
    let first = SnapshotChunk {
        from: LEADER,
        cluster_id: CLUSTER,
        message: encode_message(&snapshot_message()).into(),
        data_len: len,
        data_crc: crc,
        data: Bytes::new(),
    };
    let rest = chunks.into_iter().map(|data| SnapshotChunk {
        data,
        ..Default::default()
    });
    let all: Vec<SnapshotChunk> = std::iter::once(first).chain(rest).collect();
    client
        .send_snapshot(tokio_stream::iter(all))
        .await
        .map(|_| ())
}

fn split(data: &Bytes) -> Vec<Bytes> {
    (0..data.len())
        .step_by(CHUNK)
        .map(|at| data.slice(at..(at + CHUNK).min(data.len())))
        .collect()
}

/// The names in the snapshot directory (waiting up to 5 s for the writer to remove what it
/// must, as it does on its own thread after a refusal).
async fn files_settled(dir: &Path, expect_none_tmp: bool) -> Vec<String> {
    for _ in 0..100 {
        let names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        if !expect_none_tmp || !names.iter().any(|n| n.ends_with(".tmp")) {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "a received snapshot's temp file was never removed from {}",
        dir.display()
    );
}

#[tokio::test]
async fn a_whole_transfer_is_written_to_a_file_and_installed_from_it() {
    let mut f = follower().await;
    let data = data(5 * CHUNK + 1000);
    let crc = crc32fast::hash(&data);
    send(&f.url, data.len() as u64, crc, split(&data))
        .await
        .expect("the transfer is taken");
    let m = tokio::time::timeout(Duration::from_secs(10), f.inbound.recv())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(m.get_msg_type(), MessageType::MsgSnapshot);
    assert_eq!(m.get_snapshot().get_metadata().index, 1234);
    assert!(m.get_snapshot().data == data, "the data arrives whole");
    let snap_dir = f.dir.path().join("snap");
    let names = files_settled(&snap_dir, false).await;
    assert!(
        names.len() == 1 && names[0].starts_with("recv") && names[0].ends_with(".snap.tmp"),
        "the data sits in one received temp file, not yet in place: {names:?}"
    );
    // What the WAL writer does when the node installs it: the received file is put in place.
    let meta = m.get_snapshot().get_metadata();
    let conf = encode_conf_state(meta.get_conf_state());
    let (path, written) = f
        .snaps
        .save_installed(meta.index, meta.term, &conf, &m.get_snapshot().data)
        .expect("installed");
    assert!(
        !written,
        "the received file is published, not written again"
    );
    assert_eq!(f.snaps.list().expect("list"), vec![(3, 1234)]);
    let loaded = f.snaps.load_newest().expect("load").snapshot.expect("one");
    assert_eq!((loaded.index, loaded.term), (1234, 3));
    assert!(loaded.data == data, "the file holds the data, crc checked");
    assert_eq!(loaded.meta, conf, "and the configuration");
    assert!(path.ends_with("0000000000000003-00000000000004d2.snap"));
    assert!(f.inbound.try_recv().is_err(), "one message");
}

#[tokio::test]
async fn a_damaged_short_or_long_transfer_is_refused_and_leaves_no_file() {
    let mut f = follower_served(true).await;
    let data = data(3 * CHUNK + 17);
    let crc = crc32fast::hash(&data);
    let snap_dir = f.dir.path().join("snap");

    let mut damaged = data.to_vec();
    damaged[CHUNK + 5] ^= 0x40;
    let damaged = Bytes::from(damaged);
    let refused = send(&f.url, data.len() as u64, crc, split(&damaged))
        .await
        .expect_err("a damaged transfer is refused");
    assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused}");

    let mut short = split(&data);
    short.pop();
    let refused = send(&f.url, data.len() as u64, crc, short)
        .await
        .expect_err("a short transfer is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");

    let mut long = split(&data);
    long.push(Bytes::from_static(b"more"));
    let refused = send(&f.url, data.len() as u64, crc, long)
        .await
        .expect_err("a long transfer is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");

    let names = files_settled(&snap_dir, true).await;
    assert!(names.is_empty(), "nothing left behind: {names:?}");
    assert!(
        f.inbound.try_recv().is_err(),
        "no refused transfer reaches the node"
    );
    assert_eq!(
        f.snaps.list().expect("list"),
        vec![],
        "no snapshot in place"
    );

    // The leader tries again: a whole transfer is taken.
    send(&f.url, data.len() as u64, crc, split(&data))
        .await
        .expect("the retry is taken");
    let m = f.inbound.recv().await.expect("a message");
    assert!(
        m.get_snapshot().data == data,
        "the retry's data arrives whole"
    );
}

/// A receiver with one lane (an older member: its peer port takes only HTTP/2) refuses the
/// snapshot lane's preface; the sender then tries it without, and the transfer lands.
#[tokio::test]
async fn a_receiver_without_a_snapshot_lane_gets_the_next_attempt_without_the_preface() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use keel_engine::node::Input;
    use keel_server::peer::link::Dialer;
    use keel_server::peer::snapshot::send_snapshot;

    let mut f = follower_served(true).await;
    let data = data(3 * CHUNK + 17);
    let mut message = snapshot_message();
    message.mut_snapshot().data = data.clone();
    let leader = LocalIdentity {
        member_id: LEADER,
        cluster_id: CLUSTER,
    };
    let lane = Arc::new(AtomicBool::new(true));
    let (reports, mut outcomes) = mpsc::unbounded_channel();
    let attempt = |lane: &Arc<AtomicBool>| {
        send_snapshot(
            leader,
            Dialer::default(),
            f.url.clone(),
            message.clone(),
            reports.clone(),
            Arc::clone(lane),
        )
    };

    attempt(&lane).await;
    match outcomes.try_recv() {
        Ok(Input::SnapshotStatus { to, ok }) => {
            assert_eq!(to, FOLLOWER);
            assert!(!ok, "a one-lane receiver cannot read the preface");
        }
        _ => panic!("one outcome reported"),
    }
    assert!(
        !lane.load(Ordering::Relaxed),
        "the next attempt goes without it"
    );
    assert!(f.inbound.try_recv().is_err(), "nothing reached the node");

    attempt(&lane).await;
    match outcomes.try_recv() {
        Ok(Input::SnapshotStatus { ok, .. }) => assert!(ok, "the plain attempt lands"),
        _ => panic!("one outcome reported"),
    }
    assert!(
        !lane.load(Ordering::Relaxed),
        "a success keeps the way that worked"
    );
    let m = tokio::time::timeout(Duration::from_secs(10), f.inbound.recv())
        .await
        .expect("in time")
        .expect("a message");
    assert!(m.get_snapshot().data == data, "the data arrives whole");
}
