//! Exact-output tests: one input in, the *whole* output vector compared, the way openraft's
//! engine tests compare `vec![Command::..]`. A change in what the node emits, or in which
//! order, fails here first.
//!
//! The node is a one-member cluster (member 0x11, incarnation 1), so raft commits as soon as
//! the leader's own log is durable and answers a ReadIndex at once. Proposal ids are
//! `incarnation << 40` plus a sequence number.

mod common;

use keel_engine::membership::Member;
use keel_engine::node::{
    Input, Node, NodeConfig, Output, PersistBatch, Recovered, Request, Response,
};
use keel_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader,
};
use keel_proto::keelpb::{raft_request, MemberChange, RaftRequest};
use keel_proto::mvccpb::KeyValue;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, HardState, Message,
    MessageType,
};

const MEMBER: u64 = 0x11;
const CLUSTER: u64 = 0xc1;
const TERM: u64 = 1;

/// The harness's test member (cluster 0xc1, 10 election ticks, 1 heartbeat tick, 100 ms
/// ticks, incarnation 1), with the server's default snapshot sizing.
fn config() -> NodeConfig {
    let cfg = common::TestConfig::new(MEMBER, &[MEMBER])
        .seed(7)
        .snapshot_log_percent(keel_engine::node::SNAPSHOT_LOG_PERCENT_DEFAULT)
        .node_config();
    assert_eq!(cfg.cluster_id, CLUSTER, "the harness's cluster id");
    cfg
}

/// The id of this run's `seq`-th proposal.
fn proposal_id(seq: u64) -> u64 {
    (1 << 40) + seq
}

fn entry(index: u64, data: Vec<u8>) -> Entry {
    Entry {
        term: TERM,
        index,
        data: data.into(),
        ..Default::default()
    }
}

fn hard_state(commit: u64) -> Option<HardState> {
    Some(HardState {
        term: TERM,
        vote: MEMBER,
        commit,
        ..Default::default()
    })
}

fn batch(number: u64, hard_state: Option<HardState>, entries: Vec<Entry>) -> Output {
    Output::Persist(PersistBatch {
        number,
        hard_state,
        entries,
        then_send: Vec::new(),
        snapshot: None,
    })
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: CLUSTER,
        member_id: MEMBER,
        revision,
        raft_term: TERM,
    })
}

fn put_request() -> PutRequest {
    PutRequest {
        key: b"k".to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    }
}

/// A one-member node that has elected itself and made its first entry durable; checks the
/// outputs of that start on the way.
fn started() -> Node {
    let mut node = Node::new(config(), Recovered::default()).expect("node starts");
    // The campaign: term 1, the vote for itself and the leader's empty entry, in one batch.
    assert_eq!(
        node.take_outputs(),
        vec![batch(1, hard_state(0), vec![entry(1, Vec::new())])]
    );
    // Durable on the only member: committed (nothing to answer), the commit index to persist.
    node.step(Input::Persisted { number: 1 });
    assert_eq!(
        node.take_outputs(),
        vec![batch(2, hard_state(1), Vec::new())]
    );
    node.step(Input::Persisted { number: 2 });
    assert_eq!(node.take_outputs(), Vec::new());
    node
}

/// A put leaves as one persist batch holding its entry, and nothing else: no reply before
/// the entry is durable.
#[test]
fn a_put_is_one_persist_batch_of_its_entry() {
    let mut node = started();
    node.step(Input::Request {
        token: 1,
        request: Request::Put(put_request()),
    });
    let data = RaftRequest {
        member_id: MEMBER,
        id: proposal_id(1),
        auth: None,
        request: Some(raft_request::Request::Put(put_request())),
    }
    .encode_to_vec();
    assert_eq!(
        node.take_outputs(),
        vec![batch(3, None, vec![entry(2, data)])]
    );
}

/// Once the batch is durable the entry commits and applies: the reply comes first (revision
/// 2), then the batch recording the new commit index.
#[test]
fn a_persisted_batch_commits_applies_and_replies() {
    let mut node = started();
    node.step(Input::Request {
        token: 1,
        request: Request::Put(put_request()),
    });
    node.take_outputs();
    node.step(Input::Persisted { number: 3 });
    let reply = Output::Reply {
        token: 1,
        result: Ok(Response::Put(PutResponse {
            header: header(2),
            prev_kv: None,
        })),
    };
    assert_eq!(
        node.take_outputs(),
        vec![reply, batch(4, hard_state(2), Vec::new())]
    );
    node.step(Input::Persisted { number: 4 });
    assert_eq!(node.take_outputs(), Vec::new());
    node.check_invariants();
}

/// A linearizable range goes through a ReadIndex round; alone in the cluster, the leader
/// confirms it at once, and the read is the only output (its empty Ready is acknowledged
/// without a batch).
#[test]
fn a_read_index_round_answers_a_linearizable_range() {
    let mut node = started();
    node.step(Input::Request {
        token: 1,
        request: Request::Put(put_request()),
    });
    node.step(Input::Persisted { number: 3 });
    node.step(Input::Persisted { number: 4 });
    node.take_outputs();
    node.step(Input::Request {
        token: 2,
        request: Request::Range(RangeRequest {
            key: b"k".to_vec().into(),
            ..Default::default()
        }),
    });
    let kv = KeyValue {
        key: b"k".to_vec().into(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
        value: b"v".to_vec().into(),
        lease: 0,
    };
    let reply = Output::Reply {
        token: 2,
        result: Ok(Response::Range(RangeResponse {
            header: header(2),
            kvs: vec![kv],
            more: false,
            count: 1,
        })),
    };
    assert_eq!(node.take_outputs(), vec![reply]);
    node.check_invariants();
}

/// The ConfChangeV2 entry of a MemberAdd of a learner with `id`.
fn add_learner_entry(index: u64, id: u64, peer_url: &str) -> Entry {
    let member = Member {
        id,
        peer_urls: vec![peer_url.to_string()],
        is_learner: true,
        ..Member::default()
    };
    let context = MemberChange {
        proposer: MEMBER,
        id: proposal_id(1),
        member: Some(member.to_proto()),
    };
    let mut single = ConfChangeSingle {
        node_id: id,
        ..Default::default()
    };
    single.set_change_type(ConfChangeType::AddLearnerNode);
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    cc.context = context.encode_to_vec().into();
    let data = cc.write_to_bytes().expect("a conf change encodes");
    Entry {
        entry_type: EntryType::EntryConfChangeV2,
        ..entry(index, data)
    }
}

/// A MemberAdd of a learner: one batch with the conf change entry; once durable, the reply,
/// the new member table for the transport, the commit index, and raft's first append to
/// the learner.
#[test]
fn a_conf_change_adds_a_learner() {
    let mut node = started();
    let url = "http://10.0.0.2:2380";
    node.step(Input::Request {
        token: 1,
        request: Request::MemberAdd(MemberAddRequest {
            peer_ur_ls: vec![url.to_string()],
            is_learner: true,
        }),
    });
    let proposed = node.take_outputs();
    // The new member's id is drawn from the seed; read it from the proposal.
    let Some(Output::Persist(PersistBatch { entries, .. })) = proposed.first() else {
        panic!("the proposal must be persisted first: {proposed:?}");
    };
    let cc = ConfChangeV2::parse_from_bytes(&entries[0].data).expect("a conf change");
    let id = cc.get_changes()[0].node_id;
    let conf_entry = add_learner_entry(2, id, url);
    assert_eq!(proposed, vec![batch(3, None, vec![conf_entry.clone()])]);

    node.step(Input::Persisted { number: 3 });
    let me = Member {
        id: MEMBER,
        ..Member::default()
    };
    let learner = Member {
        id,
        peer_urls: vec![url.to_string()],
        is_learner: true,
        ..Member::default()
    };
    let reply = Output::Reply {
        token: 1,
        result: Ok(Response::MemberAdd(MemberAddResponse {
            header: header(0),
            member: Some(learner.to_proto()),
            members: vec![me.to_proto(), learner.to_proto()],
        })),
    };
    let members = Output::Members {
        members: vec![me, learner],
        removed: false,
    };
    let append = Message {
        msg_type: MessageType::MsgAppend,
        to: id,
        from: MEMBER,
        term: TERM,
        log_term: TERM,
        index: 1,
        entries: vec![conf_entry].into(),
        commit: 2,
        ..Default::default()
    };
    assert_eq!(
        node.take_outputs(),
        vec![
            reply,
            members,
            batch(4, hard_state(2), Vec::new()),
            Output::Send(vec![append]),
        ]
    );
    node.check_invariants();
}
