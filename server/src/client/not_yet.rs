//! etcd services keel does not implement yet.

use keel_proto::v3electionpb::election_server::Election;
use keel_proto::v3lockpb::lock_server::Lock;

/// Services whose etcd methods keel does not implement yet: every method answers gRPC
/// `Unimplemented` through the generated defaults.
#[derive(Debug, Clone, Copy)]
pub struct NotYet;

#[tonic::async_trait]
impl Lock for NotYet {}
#[tonic::async_trait]
impl Election for NotYet {}
