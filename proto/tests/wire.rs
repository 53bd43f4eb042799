//! Wire-format checks: each message is encoded and compared with bytes worked out by hand from
//! etcd's field numbers, so a wrong number in our `.proto` files fails here.
//!
//! A protobuf field starts with a varint key `(field_number << 3) | wire_type`, where wire type 0
//! is a varint and 2 is length-delimited. Proto3 omits fields holding their default value.

use bytes::Bytes;
use keel_proto::etcdserverpb::{
    compare, range_request, request_op, Compare, LeaseTimeToLiveResponse, PutRequest, RangeRequest,
    RequestOp, ResponseHeader, TxnRequest, WatchResponse,
};
use keel_proto::keelpb::{raft_request, RaftRequest};
use keel_proto::mvccpb::{event, Event, KeyValue};
use prost::Message;

fn encoded<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let decoded = M::decode(Bytes::from(message.encode_to_vec())).expect("decodes");
    assert_eq!(&decoded, message);
}

#[test]
fn put_request_all_fields() {
    let put = PutRequest {
        key: Bytes::from_static(b"foo"),
        value: Bytes::from_static(b"bar"),
        lease: 5,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 3, b'f', b'o', b'o', // 1 key: (1 << 3) | 2
        0x12, 3, b'b', b'a', b'r', // 2 value: (2 << 3) | 2
        0x18, 5,                   // 3 lease: (3 << 3) | 0
        0x20, 1,                   // 4 prev_kv
        0x28, 1,                   // 5 ignore_value
        0x30, 1,                   // 6 ignore_lease
    ];
    assert_eq!(encoded(&put), expected);
    round_trip(&put);
}

#[test]
fn range_request_all_fields() {
    let range = RangeRequest {
        key: Bytes::from_static(b"a"),
        range_end: Bytes::from_static(b"b"),
        limit: 10,
        revision: 7,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        max_create_revision: 4,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 1, b'a', // 1 key
        0x12, 1, b'b', // 2 range_end
        0x18, 10,      // 3 limit
        0x20, 7,       // 4 revision
        0x28, 2,       // 5 sort_order = DESCEND
        0x30, 3,       // 6 sort_target = MOD
        0x38, 1,       // 7 serializable
        0x40, 1,       // 8 keys_only
        0x48, 1,       // 9 count_only
        0x50, 1,       // 10 min_mod_revision
        0x58, 2,       // 11 max_mod_revision
        0x60, 3,       // 12 min_create_revision
        0x68, 4,       // 13 max_create_revision
    ];
    assert_eq!(encoded(&range), expected);
    round_trip(&range);
}

#[test]
fn sort_and_compare_enum_values() {
    assert_eq!(range_request::SortOrder::None as i32, 0);
    assert_eq!(range_request::SortOrder::Ascend as i32, 1);
    assert_eq!(range_request::SortTarget::Key as i32, 0);
    assert_eq!(range_request::SortTarget::Version as i32, 1);
    assert_eq!(range_request::SortTarget::Create as i32, 2);
    assert_eq!(range_request::SortTarget::Value as i32, 4);
    assert_eq!(compare::CompareResult::Equal as i32, 0);
    assert_eq!(compare::CompareResult::Greater as i32, 1);
    assert_eq!(compare::CompareResult::Less as i32, 2);
    assert_eq!(compare::CompareResult::NotEqual as i32, 3);
    assert_eq!(compare::CompareTarget::Version as i32, 0);
    assert_eq!(compare::CompareTarget::Create as i32, 1);
    assert_eq!(compare::CompareTarget::Mod as i32, 2);
    assert_eq!(compare::CompareTarget::Lease as i32, 4);
    assert_eq!(event::EventType::Put as i32, 0);
    assert_eq!(event::EventType::Delete as i32, 1);
}

#[test]
fn compare_value_with_range_end_64() {
    let cmp = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Value as i32,
        key: Bytes::from_static(b"k"),
        range_end: Bytes::from_static(b"z"),
        target_union: Some(compare::TargetUnion::Value(Bytes::from_static(b"v"))),
    };
    #[rustfmt::skip]
    let expected = [
        0x08, 3,             // 1 result = NOT_EQUAL
        0x10, 3,             // 2 target = VALUE
        0x1a, 1, b'k',       // 3 key
        0x3a, 1, b'v',       // 7 value (in target_union): (7 << 3) | 2 = 58
        0x82, 0x04, 1, b'z', // 64 range_end: (64 << 3) | 2 = 514 = varint [0x82, 0x04]
    ];
    assert_eq!(encoded(&cmp), expected);
    round_trip(&cmp);
}

#[test]
fn compare_target_union_numbers() {
    let with = |target_union| Compare {
        target_union: Some(target_union),
        ..Compare::default()
    };
    assert_eq!(encoded(&with(compare::TargetUnion::Version(9))), [0x20, 9]);
    assert_eq!(
        encoded(&with(compare::TargetUnion::CreateRevision(9))),
        [0x28, 9]
    );
    assert_eq!(
        encoded(&with(compare::TargetUnion::ModRevision(9))),
        [0x30, 9]
    );
    assert_eq!(encoded(&with(compare::TargetUnion::Lease(9))), [0x40, 9]);
    // A oneof member is sent even when it holds its default value.
    assert_eq!(encoded(&with(compare::TargetUnion::Version(0))), [0x20, 0]);
}

#[test]
fn response_header() {
    let header = ResponseHeader {
        cluster_id: 300,
        member_id: 2,
        revision: 3,
        raft_term: 4,
    };
    #[rustfmt::skip]
    let expected = [
        0x08, 0xac, 0x02, // 1 cluster_id = 300 = varint [0xac, 0x02]
        0x10, 2,          // 2 member_id
        0x18, 3,          // 3 revision
        0x20, 4,          // 4 raft_term
    ];
    assert_eq!(encoded(&header), expected);
    round_trip(&header);
}

#[test]
fn key_value() {
    let kv = KeyValue {
        key: Bytes::from_static(b"k"),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: Bytes::from_static(b"v"),
        lease: 6,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 1, b'k', // 1 key
        0x10, 2,       // 2 create_revision
        0x18, 3,       // 3 mod_revision
        0x20, 4,       // 4 version
        0x2a, 1, b'v', // 5 value
        0x30, 6,       // 6 lease
    ];
    assert_eq!(encoded(&kv), expected);
    round_trip(&kv);
}

#[test]
fn watch_response_events_are_field_11() {
    let response = WatchResponse {
        watch_id: 1,
        events: vec![Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(KeyValue {
                key: Bytes::from_static(b"k"),
                ..KeyValue::default()
            }),
            prev_kv: None,
        }],
        ..WatchResponse::default()
    };
    #[rustfmt::skip]
    let expected = [
        0x10, 1,                 // 2 watch_id
        0x5a, 7,                 // 11 events: (11 << 3) | 2 = 90
        0x08, 1,                 //   Event 1 type = DELETE
        0x12, 3, 0x0a, 1, b'k',  //   Event 2 kv { 1 key }
    ];
    assert_eq!(encoded(&response), expected);
    round_trip(&response);
}

#[test]
fn negative_ttl_is_a_ten_byte_varint() {
    let response = LeaseTimeToLiveResponse {
        ttl: -1,
        ..LeaseTimeToLiveResponse::default()
    };
    let mut expected = vec![0x18]; // 3 TTL
    expected.extend([0xff; 9]);
    expected.push(0x01);
    assert_eq!(encoded(&response), expected);
    round_trip(&response);
}

#[test]
fn txn_request_nests_request_ops() {
    let put = PutRequest {
        key: Bytes::from_static(b"a"),
        ..PutRequest::default()
    };
    let txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put)),
        }],
        failure: vec![RequestOp::default()],
    };
    #[rustfmt::skip]
    let expected = [
        0x12, 5,                   // 2 success
        0x12, 3, 0x0a, 1, b'a',    //   RequestOp 2 request_put { 1 key }
        0x1a, 0,                   // 3 failure: one empty RequestOp
    ];
    assert_eq!(encoded(&txn), expected);
    round_trip(&txn);
}

#[test]
fn raft_request_payload() {
    let request = RaftRequest {
        member_id: 1,
        id: 2,
        auth: None,
        request: Some(raft_request::Request::Put(PutRequest {
            key: Bytes::from_static(b"a"),
            ..PutRequest::default()
        })),
    };
    #[rustfmt::skip]
    let expected = [
        0x08, 1,                // 1 member_id
        0x10, 2,                // 2 id
        0x5a, 3, 0x0a, 1, b'a', // 11 put { 1 key }
    ];
    assert_eq!(encoded(&request), expected);
    round_trip(&request);
}

#[test]
fn decoding_keeps_bytes_zero_copy() {
    let kv = KeyValue {
        key: Bytes::from_static(b"key"),
        ..KeyValue::default()
    };
    let buf = Bytes::from(kv.encode_to_vec());
    let decoded = KeyValue::decode(buf.clone()).expect("decodes");
    // The decoded key points into the input buffer instead of a fresh allocation.
    let range = buf.as_ptr_range();
    assert!(range.contains(&decoded.key.as_ptr()));
}
