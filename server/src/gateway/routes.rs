//! The gateway's route table: etcd 3.4.23's grpc-gateway paths (its `.proto` files'
//! `google.api.http` rules), each on the service method it calls, and etcd's `/version` and
//! `/health` and `/metrics`. Adding a route is one line: `(GET, "/path", handler as Handler)`
//! with `fn handler(Gateway, HttpRequest) -> BoxFuture<'static, Reply>`.

use keel_proto::etcdserverpb::auth_server::Auth;
use keel_proto::etcdserverpb::cluster_server::Cluster;
use keel_proto::etcdserverpb::kv_server::Kv;
use keel_proto::etcdserverpb::lease_server::Lease;
use keel_proto::etcdserverpb::maintenance_server::Maintenance;
use keel_proto::v3electionpb::election_server::Election;
use keel_proto::v3lockpb::lock_server::Lock;

use hyper::Method;

use super::{stream, Gateway, Handler, HttpRequest};

const GET: Method = Method::GET;
const POST: Method = Method::POST;

/// A unary route: the body parsed as the method's request, the answer its response.
macro_rules! unary {
    ($api:ident, $method:path) => {{
        fn handle(
            gateway: Gateway,
            request: HttpRequest,
        ) -> super::BoxFuture<'static, super::Reply> {
            Box::pin(gateway.unary(request, |apis, grpc| async move {
                $method(&*apis.$api, grpc).await
            }))
        }
        handle as Handler
    }};
}

/// A server-streaming route: one request, answers streamed one JSON object a line.
macro_rules! server_stream {
    ($api:ident, $method:path) => {{
        fn handle(
            gateway: Gateway,
            request: HttpRequest,
        ) -> super::BoxFuture<'static, super::Reply> {
            Box::pin(gateway.server_stream(request, |apis, grpc| async move {
                $method(&*apis.$api, grpc).await
            }))
        }
        handle as Handler
    }};
}

/// Every route: etcd's `/version` and `/health`, and the gateway's `/v3/` routes (`/v3beta/`
/// and `/v3alpha/` are mapped onto these before lookup). A request with another method than
/// its route's gets 405.
pub fn table() -> Vec<(Method, &'static str, Handler)> {
    vec![
        (GET, "/version", Gateway::version as Handler),
        (GET, "/health", Gateway::health_route as Handler),
        (GET, "/metrics", Gateway::metrics as Handler),
        (POST, "/v3/kv/range", unary!(kv, Kv::range)),
        (POST, "/v3/kv/put", unary!(kv, Kv::put)),
        (POST, "/v3/kv/deleterange", unary!(kv, Kv::delete_range)),
        (POST, "/v3/kv/txn", unary!(kv, Kv::txn)),
        (POST, "/v3/kv/compaction", unary!(kv, Kv::compact)),
        (POST, "/v3/watch", stream::watch as Handler),
        (POST, "/v3/lease/grant", unary!(lease, Lease::lease_grant)),
        (POST, "/v3/lease/revoke", unary!(lease, Lease::lease_revoke)),
        (
            POST,
            "/v3/kv/lease/revoke",
            unary!(lease, Lease::lease_revoke),
        ),
        (POST, "/v3/lease/keepalive", stream::keep_alive as Handler),
        (
            POST,
            "/v3/lease/timetolive",
            unary!(lease, Lease::lease_time_to_live),
        ),
        (
            POST,
            "/v3/kv/lease/timetolive",
            unary!(lease, Lease::lease_time_to_live),
        ),
        (POST, "/v3/lease/leases", unary!(lease, Lease::lease_leases)),
        (
            POST,
            "/v3/kv/lease/leases",
            unary!(lease, Lease::lease_leases),
        ),
        (
            POST,
            "/v3/cluster/member/add",
            unary!(cluster, Cluster::member_add),
        ),
        (
            POST,
            "/v3/cluster/member/remove",
            unary!(cluster, Cluster::member_remove),
        ),
        (
            POST,
            "/v3/cluster/member/update",
            unary!(cluster, Cluster::member_update),
        ),
        (
            POST,
            "/v3/cluster/member/list",
            unary!(cluster, Cluster::member_list),
        ),
        (
            POST,
            "/v3/cluster/member/promote",
            unary!(cluster, Cluster::member_promote),
        ),
        (
            POST,
            "/v3/maintenance/alarm",
            unary!(maintenance, Maintenance::alarm),
        ),
        (
            POST,
            "/v3/maintenance/status",
            unary!(maintenance, Maintenance::status),
        ),
        (
            POST,
            "/v3/maintenance/defragment",
            unary!(maintenance, Maintenance::defragment),
        ),
        // etcd 3.4 gives Hash and HashKV the same path; Hash answers it.
        (
            POST,
            "/v3/maintenance/hash",
            unary!(maintenance, Maintenance::hash),
        ),
        (
            POST,
            "/v3/maintenance/snapshot",
            server_stream!(maintenance, Maintenance::snapshot),
        ),
        (
            POST,
            "/v3/maintenance/transfer-leadership",
            unary!(maintenance, Maintenance::move_leader),
        ),
        (POST, "/v3/auth/enable", unary!(auth, Auth::auth_enable)),
        (POST, "/v3/auth/disable", unary!(auth, Auth::auth_disable)),
        (
            POST,
            "/v3/auth/authenticate",
            unary!(auth, Auth::authenticate),
        ),
        (POST, "/v3/auth/user/add", unary!(auth, Auth::user_add)),
        (POST, "/v3/auth/user/get", unary!(auth, Auth::user_get)),
        (POST, "/v3/auth/user/list", unary!(auth, Auth::user_list)),
        (
            POST,
            "/v3/auth/user/delete",
            unary!(auth, Auth::user_delete),
        ),
        (
            POST,
            "/v3/auth/user/changepw",
            unary!(auth, Auth::user_change_password),
        ),
        (
            POST,
            "/v3/auth/user/grant",
            unary!(auth, Auth::user_grant_role),
        ),
        (
            POST,
            "/v3/auth/user/revoke",
            unary!(auth, Auth::user_revoke_role),
        ),
        (POST, "/v3/auth/role/add", unary!(auth, Auth::role_add)),
        (POST, "/v3/auth/role/get", unary!(auth, Auth::role_get)),
        (POST, "/v3/auth/role/list", unary!(auth, Auth::role_list)),
        (
            POST,
            "/v3/auth/role/delete",
            unary!(auth, Auth::role_delete),
        ),
        (
            POST,
            "/v3/auth/role/grant",
            unary!(auth, Auth::role_grant_permission),
        ),
        (
            POST,
            "/v3/auth/role/revoke",
            unary!(auth, Auth::role_revoke_permission),
        ),
        (POST, "/v3/lock/lock", unary!(lock, Lock::lock)),
        (POST, "/v3/lock/unlock", unary!(lock, Lock::unlock)),
        (
            POST,
            "/v3/election/campaign",
            unary!(election, Election::campaign),
        ),
        (
            POST,
            "/v3/election/proclaim",
            unary!(election, Election::proclaim),
        ),
        (
            POST,
            "/v3/election/leader",
            unary!(election, Election::leader),
        ),
        (
            POST,
            "/v3/election/observe",
            server_stream!(election, Election::observe),
        ),
        (
            POST,
            "/v3/election/resign",
            unary!(election, Election::resign),
        ),
    ]
}
