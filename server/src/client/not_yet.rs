//! etcd services keel does not implement yet.

use keel_proto::etcdserverpb::auth_server::Auth;

/// Services whose etcd methods keel does not implement yet: every method answers gRPC
/// `Unimplemented` through the generated defaults.
#[derive(Debug, Clone, Copy)]
pub struct NotYet;

#[tonic::async_trait]
impl Auth for NotYet {}
