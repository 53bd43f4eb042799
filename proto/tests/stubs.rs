//! With the `grpc` feature every server trait method defaults to `Unimplemented`, in both the
//! tokio and the madsim build, so a service can implement only what it supports.

#![cfg(feature = "grpc")]

use keel_proto::etcdserverpb::kv_server::Kv;
use keel_proto::etcdserverpb::maintenance_server::Maintenance;
use keel_proto::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, ResponseHeader, SnapshotRequest,
};

struct OnlyPut;

#[tonic::async_trait]
impl Kv for OnlyPut {
    async fn put(
        &self,
        _request: tonic::Request<PutRequest>,
    ) -> Result<tonic::Response<PutResponse>, tonic::Status> {
        let header = ResponseHeader {
            revision: 1,
            ..ResponseHeader::default()
        };
        Ok(tonic::Response::new(PutResponse {
            header: Some(header),
            prev_kv: None,
        }))
    }
}

struct NoMaintenance;

impl Maintenance for NoMaintenance {}

#[test]
fn unary_default_is_unimplemented() {
    let range =
        futures::executor::block_on(OnlyPut.range(tonic::Request::new(RangeRequest::default())));
    let status = range.expect_err("range is not implemented");
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    let put = futures::executor::block_on(OnlyPut.put(tonic::Request::new(PutRequest::default())));
    let header = put
        .expect("put is implemented")
        .into_inner()
        .header
        .expect("header");
    assert_eq!(header.revision, 1);
}

#[test]
fn server_streaming_default_is_unimplemented() {
    let snapshot = futures::executor::block_on(
        NoMaintenance.snapshot(tonic::Request::new(SnapshotRequest {})),
    );
    let status = snapshot.err().expect("snapshot is not implemented");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}
