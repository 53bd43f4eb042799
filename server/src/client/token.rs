//! The auth token a client sends with its requests (the member's kind of token is
//! [`crate::tokens`]).

use tonic::Request as GrpcRequest;

/// The auth token a client sent: gRPC metadata `token` (etcd's clients), or
/// `authorization` (etcd's gateway). Without one, a connection whose verified client
/// certificate names a user (`--client-cert-auth`, [`crate::tls`]) acts as that user, as in
/// etcd; a token, when sent, wins.
pub(crate) fn auth_token<T>(request: &GrpcRequest<T>) -> Option<String> {
    let md = request.metadata();
    let Some(value) = md.get("token").or_else(|| md.get("authorization")) else {
        return common_name(request);
    };
    // A token that is not ASCII can name no one: it is passed on to be refused as invalid.
    Some(value.to_str().unwrap_or("\u{fffd}").to_string())
}

/// The caller named by the connection's verified client certificate, if any.
#[cfg(not(madsim))]
fn common_name<T>(request: &GrpcRequest<T>) -> Option<String> {
    let info = request.extensions().get::<crate::tls::stream::ConnInfo>()?;
    let name = info.common_name.as_deref()?;
    Some(keel_engine::auth::common_name_caller(name))
}

#[cfg(madsim)]
fn common_name<T>(_request: &GrpcRequest<T>) -> Option<String> {
    None
}
