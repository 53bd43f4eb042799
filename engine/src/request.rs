//! The client requests a node serves, their typed responses, and the one table that routes
//! them.
//!
//! # Adding a request kind
//! Add one line to the `requests!` table below: the variant, its request and response types,
//! and its route (a function from the request to a [`Route`]). That generates the
//! [`Request`] and [`Response`] variants, the [`Rpc`] impl the server calls it through
//! (`Handle::call(req) -> Result<Resp, Error>`), and its arm of [`Request::route`]. The
//! route's payload ([`Read`], a log entry body, or [`Admin`]) is then served where that kind is
//! served — the compiler points at the one match that must learn it.
//!
//! ```text
//! Request ──route()──▶ Route::Read { read, linearizable: false } → served at once
//!                      Route::Read { read, linearizable: true }  → after a ReadIndex round
//!                      Route::Write(body)                        → proposed as a log entry
//!                      Route::Admin(admin)                       → conf change / leader transfer
//! ```

use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::{
    request_op, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest,
    MoveLeaderResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    TxnRequest, TxnResponse,
};
use keel_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateResponse,
};
use keel_proto::keelpb::raft_request::Request as LogRequest;
use keel_proto::keelpb::{
    InternalAuthenticate, PasswordLookup, PasswordLookupResponse, V2Request, V2Response,
};

use crate::apply::txn_is_read_only;

/// An etcd request type with its typed response: what the server sends through the node.
pub trait Rpc: Sized {
    /// The response this request is answered with.
    type Response;
    /// The etcd method's name (for logs and errors).
    const NAME: &'static str;
    /// Wraps the request for the node.
    fn into_request(self) -> Request;
    /// Unwraps this request's response (`None` for any other kind).
    fn from_response(response: Response) -> Option<Self::Response>;
}

/// How the node serves a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// From the applied state: at once, or once a ReadIndex round confirms it is current.
    Read {
        /// What to read.
        read: Read,
        /// Whether a ReadIndex round must confirm the applied state first.
        linearizable: bool,
    },
    /// Through the raft log, as this entry body.
    Write(LogRequest),
    /// A membership change or leader transfer.
    Admin(Admin),
}

impl Route {
    fn read(read: Read, linearizable: bool) -> Route {
        Route::Read { read, linearizable }
    }
}

/// A request served from the applied state, without a log entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// KV.Range.
    Range(RangeRequest),
    /// A txn that writes nothing (nested txns included).
    Txn(TxnRequest),
    /// Maintenance.HashKV.
    HashKv(HashKvRequest),
    /// One keepalive (the leader only renews).
    LeaseKeepAlive(LeaseKeepAliveRequest),
    /// Lease.LeaseTimeToLive.
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    /// Lease.LeaseLeases.
    LeaseLeases(LeaseLeasesRequest),
    /// Cluster.MemberList.
    MemberList(MemberListRequest),
    /// Maintenance.Alarm GET (and any action other than ACTIVATE / DEACTIVATE).
    Alarm(AlarmRequest),
    /// Auth.AuthStatus.
    AuthStatus(AuthStatusRequest),
    /// Auth.UserGet.
    UserGet(AuthUserGetRequest),
    /// Auth.UserList.
    UserList(AuthUserListRequest),
    /// Auth.RoleGet.
    RoleGet(AuthRoleGetRequest),
    /// Auth.RoleList.
    RoleList(AuthRoleListRequest),
    /// A user's password hash, for the server to check a password against (Authenticate).
    PasswordLookup(PasswordLookup),
    /// A v2 keys API read: GET/HEAD (a wait when `wait`), EXPIRY, STATS.
    V2(V2Request),
}

/// A request that changes the cluster rather than the keyspace.
#[derive(Debug, Clone, PartialEq)]
pub enum Admin {
    /// Cluster.MemberAdd.
    MemberAdd(MemberAddRequest),
    /// Cluster.MemberRemove.
    MemberRemove(MemberRemoveRequest),
    /// Cluster.MemberPromote.
    MemberPromote(MemberPromoteRequest),
    /// Maintenance.MoveLeader (leader only): answered once the target leads.
    MoveLeader(MoveLeaderRequest),
}

macro_rules! requests {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident($req:ident) -> $resp:ident, $name:literal, $route:expr;
    )*) => {
        /// A client request, as the gRPC layer hands it over (already validated).
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $( $(#[doc = $doc])* $variant($req), )*
        }

        /// The answer to a [`Request`].
        #[derive(Debug, Clone, PartialEq)]
        pub enum Response {
            $( $(#[doc = $doc])* $variant($resp), )*
        }

        $(
            impl Rpc for $req {
                type Response = $resp;
                const NAME: &'static str = $name;
                fn into_request(self) -> Request {
                    Request::$variant(self)
                }
                fn from_response(response: Response) -> Option<$resp> {
                    match response {
                        Response::$variant(r) => Some(r),
                        _ => None,
                    }
                }
            }
        )*

        impl Request {
            /// How this request is served: the one routing table.
            pub fn route(self) -> Route {
                match self {
                    $( Request::$variant(r) => {
                        let route: fn($req) -> Route = $route;
                        route(r)
                    } )*
                }
            }

            /// The etcd method's name.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Request::$variant(_) => $name, )*
                }
            }
        }

        impl Response {
            /// The response header, created empty if the response has none yet.
            pub fn header_mut(&mut self) -> &mut ResponseHeader {
                let header = match self {
                    $( Response::$variant(r) => &mut r.header, )*
                };
                header.get_or_insert_with(ResponseHeader::default)
            }
        }
    };
}

requests! {
    /// KV.Range.
    Range(RangeRequest) -> RangeResponse, "Range", |r| {
        let linearizable = !r.serializable;
        Route::read(Read::Range(r), linearizable)
    };
    /// KV.Put.
    Put(PutRequest) -> PutResponse, "Put", |r| Route::Write(LogRequest::Put(r));
    /// KV.DeleteRange.
    DeleteRange(DeleteRangeRequest) -> DeleteRangeResponse, "DeleteRange",
        |r| Route::Write(LogRequest::DeleteRange(r));
    /// KV.Txn: a txn that writes nothing is served like a range.
    Txn(TxnRequest) -> TxnResponse, "Txn", |t| {
        if txn_is_read_only(&t) {
            let linearizable = !txn_is_serializable(&t);
            Route::read(Read::Txn(t), linearizable)
        } else {
            Route::Write(LogRequest::Txn(t))
        }
    };
    /// KV.Compact.
    Compaction(CompactionRequest) -> CompactionResponse, "Compact",
        |r| Route::Write(LogRequest::Compaction(r));
    /// Maintenance.HashKV (served locally, like etcd).
    HashKv(HashKvRequest) -> HashKvResponse, "HashKV", |r| Route::read(Read::HashKv(r), false);
    /// Lease.LeaseGrant.
    LeaseGrant(LeaseGrantRequest) -> LeaseGrantResponse, "LeaseGrant",
        |r| Route::Write(LogRequest::LeaseGrant(r));
    /// Lease.LeaseRevoke.
    LeaseRevoke(LeaseRevokeRequest) -> LeaseRevokeResponse, "LeaseRevoke",
        |r| Route::Write(LogRequest::LeaseRevoke(r));
    /// One keepalive of Lease.LeaseKeepAlive: lease state as of a confirmed read index, on
    /// the leader.
    LeaseKeepAlive(LeaseKeepAliveRequest) -> LeaseKeepAliveResponse, "LeaseKeepAlive",
        |r| Route::read(Read::LeaseKeepAlive(r), true);
    /// Lease.LeaseTimeToLive.
    LeaseTimeToLive(LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse, "LeaseTimeToLive",
        |r| Route::read(Read::LeaseTimeToLive(r), true);
    /// Lease.LeaseLeases.
    LeaseLeases(LeaseLeasesRequest) -> LeaseLeasesResponse, "LeaseLeases",
        |r| Route::read(Read::LeaseLeases(r), true);
    /// Maintenance.MoveLeader (leader only): answered once the target leads.
    MoveLeader(MoveLeaderRequest) -> MoveLeaderResponse, "MoveLeader",
        |r| Route::Admin(Admin::MoveLeader(r));
    /// Cluster.MemberAdd.
    MemberAdd(MemberAddRequest) -> MemberAddResponse, "MemberAdd",
        |r| Route::Admin(Admin::MemberAdd(r));
    /// Cluster.MemberRemove.
    MemberRemove(MemberRemoveRequest) -> MemberRemoveResponse, "MemberRemove",
        |r| Route::Admin(Admin::MemberRemove(r));
    /// Cluster.MemberUpdate (a normal log entry: no raft configuration change).
    MemberUpdate(MemberUpdateRequest) -> MemberUpdateResponse, "MemberUpdate",
        |r| Route::Write(LogRequest::MemberUpdate(r));
    /// Cluster.MemberPromote.
    MemberPromote(MemberPromoteRequest) -> MemberPromoteResponse, "MemberPromote",
        |r| Route::Admin(Admin::MemberPromote(r));
    /// Cluster.MemberList (served locally, like etcd 3.4).
    MemberList(MemberListRequest) -> MemberListResponse, "MemberList",
        |r| Route::read(Read::MemberList(r), false);
    /// Maintenance.Alarm: ACTIVATE and DEACTIVATE change the replicated alarm table through
    /// the log; GET is a linearizable read of it (etcd 3.4 puts GET through the log too, for
    /// the same answer, but a read also works on a member whose disk is full).
    Alarm(AlarmRequest) -> AlarmResponse, "Alarm", |r| {
        match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                Route::Write(LogRequest::Alarm(r))
            }
            _ => Route::read(Read::Alarm(r), true),
        }
    };
    /// Auth.AuthEnable.
    AuthEnable(AuthEnableRequest) -> AuthEnableResponse, "AuthEnable",
        |r| Route::Write(LogRequest::AuthEnable(r));
    /// Auth.AuthDisable.
    AuthDisable(AuthDisableRequest) -> AuthDisableResponse, "AuthDisable",
        |r| Route::Write(LogRequest::AuthDisable(r));
    /// Auth.AuthStatus.
    AuthStatus(AuthStatusRequest) -> AuthStatusResponse, "AuthStatus",
        |r| Route::read(Read::AuthStatus(r), true);
    /// Auth.Authenticate, once the server checked the password: assigns the token.
    Authenticate(InternalAuthenticate) -> AuthenticateResponse, "Authenticate",
        |r| Route::Write(LogRequest::Authenticate(r));
    /// What Authenticate checks a password against (linearizable, as etcd's check is).
    PasswordLookup(PasswordLookup) -> PasswordLookupResponse, "Authenticate",
        |r| Route::read(Read::PasswordLookup(r), true);
    /// Auth.UserAdd (the password already hashed).
    UserAdd(AuthUserAddRequest) -> AuthUserAddResponse, "UserAdd",
        |r| Route::Write(LogRequest::UserAdd(r));
    /// Auth.UserGet (etcd 3.4 puts it through the log; a linearizable read answers the same).
    UserGet(AuthUserGetRequest) -> AuthUserGetResponse, "UserGet",
        |r| Route::read(Read::UserGet(r), true);
    /// Auth.UserList.
    UserList(AuthUserListRequest) -> AuthUserListResponse, "UserList",
        |r| Route::read(Read::UserList(r), true);
    /// Auth.UserDelete.
    UserDelete(AuthUserDeleteRequest) -> AuthUserDeleteResponse, "UserDelete",
        |r| Route::Write(LogRequest::UserDelete(r));
    /// Auth.UserChangePassword (the password already hashed).
    UserChangePassword(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse,
        "UserChangePassword", |r| Route::Write(LogRequest::UserChangePassword(r));
    /// Auth.UserGrantRole.
    UserGrantRole(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse, "UserGrantRole",
        |r| Route::Write(LogRequest::UserGrantRole(r));
    /// Auth.UserRevokeRole.
    UserRevokeRole(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse, "UserRevokeRole",
        |r| Route::Write(LogRequest::UserRevokeRole(r));
    /// Auth.RoleAdd.
    RoleAdd(AuthRoleAddRequest) -> AuthRoleAddResponse, "RoleAdd",
        |r| Route::Write(LogRequest::RoleAdd(r));
    /// Auth.RoleGet.
    RoleGet(AuthRoleGetRequest) -> AuthRoleGetResponse, "RoleGet",
        |r| Route::read(Read::RoleGet(r), true);
    /// Auth.RoleList.
    RoleList(AuthRoleListRequest) -> AuthRoleListResponse, "RoleList",
        |r| Route::read(Read::RoleList(r), true);
    /// Auth.RoleDelete.
    RoleDelete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse, "RoleDelete",
        |r| Route::Write(LogRequest::RoleDelete(r));
    /// Auth.RoleGrantPermission.
    RoleGrantPermission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse,
        "RoleGrantPermission", |r| Route::Write(LogRequest::RoleGrantPermission(r));
    /// Auth.RoleRevokePermission.
    RoleRevokePermission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse,
        "RoleRevokePermission", |r| Route::Write(LogRequest::RoleRevokePermission(r));
    /// The v2 keys API (engine/src/v2): writes and SYNC through the log; reads local, or
    /// after a ReadIndex round with `quorum=true`.
    V2(V2Request) -> V2Response, "V2", route_v2;
}

/// etcd's v2 routing: PUT, POST, DELETE and SYNC are log entries; a GET with `quorum` (and
/// no wait) is a linearizable read; other reads are served locally.
fn route_v2(r: V2Request) -> Route {
    match r.method.as_str() {
        "PUT" | "POST" | "DELETE" | "SYNC" => Route::Write(LogRequest::V2(r)),
        _ => {
            let linearizable = r.quorum && !r.wait && r.method == "GET";
            Route::read(Read::V2(r), linearizable)
        }
    }
}

impl Response {
    /// etcd 3.4 answers Maintenance.Alarm with no header at all.
    pub fn has_header(&self) -> bool {
        !matches!(self, Response::Alarm(_))
    }

    /// etcd's Cluster service fills no revision into its headers.
    pub fn has_revision(&self) -> bool {
        !matches!(
            self,
            Response::MemberAdd(_)
                | Response::MemberRemove(_)
                | Response::MemberUpdate(_)
                | Response::MemberPromote(_)
                | Response::MemberList(_)
        )
    }
}

impl Read {
    /// What a learner serves (etcd 3.4's `isRPCSupportedForLearner`): serializable ranges
    /// only (Maintenance.Status does not come through the node).
    pub fn serves_on_learner(&self, linearizable: bool) -> bool {
        matches!(self, Read::Range(_)) && !linearizable
    }
}

/// True when every range in a read-only txn asks for a serializable read (etcd's rule).
fn txn_is_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .filter_map(|op| op.request.as_ref())
        .all(|op| match op {
            request_op::Request::RequestRange(r) => r.serializable,
            request_op::Request::RequestTxn(inner) => txn_is_serializable(inner),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::RequestOp;

    fn range_op(serializable: bool) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: bytes::Bytes::from_static(b"k"),
                serializable,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn ranges_route_by_serializable() {
        let lin = Request::Range(RangeRequest::default()).route();
        assert!(matches!(
            lin,
            Route::Read {
                read: Read::Range(_),
                linearizable: true
            }
        ));
        let ser = RangeRequest {
            serializable: true,
            ..Default::default()
        };
        let ser = Request::Range(ser).route();
        assert!(matches!(
            ser,
            Route::Read {
                read: Read::Range(_),
                linearizable: false
            }
        ));
    }

    #[test]
    fn txns_route_by_what_they_do() {
        let serializable_reads = TxnRequest {
            success: vec![range_op(true)],
            failure: vec![range_op(true)],
            ..Default::default()
        };
        let mixed_reads = TxnRequest {
            success: vec![range_op(true)],
            failure: vec![range_op(false)],
            ..Default::default()
        };
        let write = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest::default())),
            }],
            ..Default::default()
        };
        let nested_write = TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(write.clone())),
            }],
            ..Default::default()
        };
        assert!(matches!(
            Request::Txn(serializable_reads).route(),
            Route::Read {
                read: Read::Txn(_),
                linearizable: false
            }
        ));
        assert!(matches!(
            Request::Txn(mixed_reads).route(),
            Route::Read {
                read: Read::Txn(_),
                linearizable: true
            }
        ));
        assert!(matches!(
            Request::Txn(write).route(),
            Route::Write(LogRequest::Txn(_))
        ));
        assert!(matches!(
            Request::Txn(nested_write).route(),
            Route::Write(LogRequest::Txn(_))
        ));
    }

    #[test]
    fn typed_responses_round_trip_and_refuse_other_kinds() {
        let put = Response::Put(PutResponse::default());
        assert_eq!(
            <PutRequest as Rpc>::from_response(put.clone()),
            Some(PutResponse::default())
        );
        assert_eq!(<RangeRequest as Rpc>::from_response(put), None);
        assert_eq!(PutRequest::default().into_request().name(), "Put");
    }

    #[test]
    fn learners_serve_serializable_ranges_only() {
        assert!(Read::Range(RangeRequest::default()).serves_on_learner(false));
        assert!(!Read::Range(RangeRequest::default()).serves_on_learner(true));
        assert!(!Read::MemberList(MemberListRequest::default()).serves_on_learner(false));
    }
}
