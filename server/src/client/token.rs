//! The auth token a client sends with its requests.

use tonic::Request as GrpcRequest;

/// The auth token a client sent: gRPC metadata `token` (etcd's clients), or
/// `authorization` (etcd's gateway).
pub(crate) fn auth_token<T>(request: &GrpcRequest<T>) -> Option<String> {
    let md = request.metadata();
    let value = md.get("token").or_else(|| md.get("authorization"))?;
    // A token that is not ASCII can name no one: it is passed on to be refused as invalid.
    Some(value.to_str().unwrap_or("\u{fffd}").to_string())
}
