//! etcd's errors as gRPC statuses, and listener failures as [`ServerError`]s.

use std::net::SocketAddr;

use keel_engine::error::Error;
use tonic::Status;

use crate::error::ServerError;

/// A listener failure on `addr`.
pub(crate) fn serve_error(addr: SocketAddr, e: impl std::fmt::Display) -> ServerError {
    ServerError::Serve {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// etcd's error → gRPC status, with etcd's code and text (`Code` carries gRPC's numbers).
pub fn to_status(e: Error) -> Status {
    Status::new(tonic::Code::from_i32(e.code() as i32), e.to_string())
}
