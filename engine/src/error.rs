//! Errors with etcd's exact texts and gRPC status codes.
//!
//! The texts and codes are those of etcd 3.4's `etcdserver/api/v3rpc/rpctypes/error.go`; a
//! client that matches on the message (as clientv3 does) cannot tell keel from etcd:
//!
//! ```
//! use keel_engine::error::{Code, Error};
//! let err = Error::Compacted;
//! assert_eq!(err.to_string(), "etcdserver: mvcc: required revision has been compacted");
//! assert_eq!(err.code(), Code::OutOfRange);
//! assert_eq!(err.code() as i32, 11); // the gRPC wire number
//! ```

/// gRPC status codes (numbering as in `google.golang.org/grpc/codes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Code {
    /// Not an error.
    Ok = 0,
    /// The operation was cancelled.
    Cancelled = 1,
    /// Unknown error.
    Unknown = 2,
    /// The client gave an invalid argument.
    InvalidArgument = 3,
    /// The deadline expired before the operation completed.
    DeadlineExceeded = 4,
    /// Some requested entity was not found.
    NotFound = 5,
    /// The entity the client tried to create already exists.
    AlreadyExists = 6,
    /// The caller may not execute the operation.
    PermissionDenied = 7,
    /// Some resource (quota, space) is exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// The operation was aborted.
    Aborted = 10,
    /// The operation went past the valid range.
    OutOfRange = 11,
    /// The operation is not implemented.
    Unimplemented = 12,
    /// An internal invariant broke.
    Internal = 13,
    /// The service is currently unavailable; retrying may help.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The request lacks valid authentication credentials.
    Unauthenticated = 16,
}

/// Every error keel reports to clients, with etcd's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum Error {
    /// A request's key (or a compare's key) is empty.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist; also an empty txn op.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` set together with a non-empty value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` set together with a non-zero lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn has more compares, success ops or failure ops than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Within one txn branch, a put overlaps another put or a delete.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The revision asked for has been compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is after the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The backend quota is exhausted.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The lease does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with that ID already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// The lease TTL is larger than allowed.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// The request exceeds the maximum request size.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// Too many requests are pending.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// There is no raft leader.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// This member is not the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The leader changed while the request was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The cluster version does not support the request.
    #[error("etcdserver: not capable")]
    NotCapable,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The request was not committed and applied in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Timed out, probably because the previous leader failed.
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    /// Timed out, probably because the connection to peers was lost.
    #[error("etcdserver: request timed out, possibly due to connection lost")]
    TimeoutDueToConnectionLost,
    /// The cluster is unhealthy.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// Members disagree on their data.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A learner cannot serve this RPC.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// MoveLeader to a member that is not a voter of the cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MemberAdd with an id that is already a member.
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    /// A member already uses one of the peer URLs.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// The change would leave fewer started voters than a quorum (etcd's strict reconfig
    /// check; etcd 3.4 sends it with code Unknown).
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    /// The peer URLs do not parse.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// No member has that id (or it was removed).
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberPromote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner whose log lags the leader's.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a learner while the cluster has as many as it may.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// MoveLeader did not complete in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    /// AuthEnable without a `root` user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while the `root` user lacks the `root` role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of a name that exists.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// An empty user name, or a request without a user while auth is enabled.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// No user has that name.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of a name that exists.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// No role has that name.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// RoleAdd with an empty name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Authenticate with a wrong name or password (or a no-password user).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user's roles do not allow the request.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// The token is unknown, expired or was invalidated.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change etcd refuses while auth is enabled (deleting `root`, its role, ...).
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// Authenticate of a no-password user (etcd 3.4 sends its internal text, code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// The auth store changed since the request's token was checked.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}

impl Code {
    /// grpc-go's name of the code (`PermissionDenied`), as in its status texts.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }
}

impl Error {
    /// etcd's auth store text of an auth error, for the services that send it unconverted
    /// (etcd 3.4's Maintenance auth checks: gRPC code Unknown, `auth: permission denied`).
    pub fn auth_store_text(&self) -> Option<&'static str> {
        Some(match self {
            Error::PermissionDenied => "auth: permission denied",
            Error::UserEmpty => "auth: user name is empty",
            Error::UserNotFound => "auth: user not found",
            Error::InvalidAuthToken => "auth: invalid auth token",
            Error::AuthOldRevision => "auth: revision in header is old",
            _ => return None,
        })
    }

    /// The gRPC status code etcd sends with this error.
    pub fn code(&self) -> Code {
        match self {
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::RequestTooLarge => Code::InvalidArgument,
            Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::NoSpace | Error::TooManyRequests => Code::ResourceExhausted,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExist
            | Error::NotLeader
            | Error::BadLeaderTransferee
            | Error::MemberExist
            | Error::PeerUrlExist
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::TooManyLearners => Code::FailedPrecondition,
            Error::MemberBadUrls => Code::InvalidArgument,
            Error::MemberNotEnoughStarted => Code::Unknown,
            Error::NoLeader
            | Error::LeaderChanged
            | Error::NotCapable
            | Error::Stopped
            | Error::Timeout
            | Error::TimeoutDueToLeaderFail
            | Error::TimeoutDueToConnectionLost
            | Error::Unhealthy
            | Error::NotSupportedForLearner
            | Error::TimeoutLeaderTransfer => Code::Unavailable,
            Error::Corrupt => Code::DataLoss,
            Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::UserEmpty
            | Error::RoleEmpty
            | Error::AuthFailed
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision => Code::InvalidArgument,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::NoPasswordUser => Code::Unknown,
            Error::InvalidAuthToken => Code::Unauthenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_codes_match_etcd() {
        let cases = [
            (
                Error::EmptyKey,
                "etcdserver: key is not provided",
                Code::InvalidArgument,
            ),
            (
                Error::KeyNotFound,
                "etcdserver: key not found",
                Code::InvalidArgument,
            ),
            (
                Error::ValueProvided,
                "etcdserver: value is provided",
                Code::InvalidArgument,
            ),
            (
                Error::LeaseProvided,
                "etcdserver: lease is provided",
                Code::InvalidArgument,
            ),
            (
                Error::TooManyOps,
                "etcdserver: too many operations in txn request",
                Code::InvalidArgument,
            ),
            (
                Error::DuplicateKey,
                "etcdserver: duplicate key given in txn request",
                Code::InvalidArgument,
            ),
            (
                Error::Compacted,
                "etcdserver: mvcc: required revision has been compacted",
                Code::OutOfRange,
            ),
            (
                Error::FutureRev,
                "etcdserver: mvcc: required revision is a future revision",
                Code::OutOfRange,
            ),
            (
                Error::LeaseNotFound,
                "etcdserver: requested lease not found",
                Code::NotFound,
            ),
            (
                Error::RequestTooLarge,
                "etcdserver: request is too large",
                Code::InvalidArgument,
            ),
            (Error::NoLeader, "etcdserver: no leader", Code::Unavailable),
            (
                Error::BadLeaderTransferee,
                "etcdserver: bad leader transferee",
                Code::FailedPrecondition,
            ),
            (
                Error::TimeoutLeaderTransfer,
                "etcdserver: request timed out, leader transfer took too long",
                Code::Unavailable,
            ),
            (
                Error::Timeout,
                "etcdserver: request timed out",
                Code::Unavailable,
            ),
            (
                Error::Stopped,
                "etcdserver: server stopped",
                Code::Unavailable,
            ),
            (
                Error::NotCapable,
                "etcdserver: not capable",
                Code::Unavailable,
            ),
            (
                Error::NoSpace,
                "etcdserver: mvcc: database space exceeded",
                Code::ResourceExhausted,
            ),
            (
                Error::MemberNotFound,
                "etcdserver: member not found",
                Code::NotFound,
            ),
            (
                Error::PeerUrlExist,
                "etcdserver: Peer URLs already exists",
                Code::FailedPrecondition,
            ),
            (
                Error::TooManyLearners,
                "etcdserver: too many learner members in cluster",
                Code::FailedPrecondition,
            ),
            (
                Error::LearnerNotReady,
                "etcdserver: can only promote a learner member which is in sync with leader",
                Code::FailedPrecondition,
            ),
            (
                Error::MemberNotEnoughStarted,
                "etcdserver: re-configuration failed due to not enough started members",
                Code::Unknown,
            ),
            (
                Error::RootUserNotExist,
                "etcdserver: root user does not exist",
                Code::FailedPrecondition,
            ),
            (
                Error::UserEmpty,
                "etcdserver: user name is empty",
                Code::InvalidArgument,
            ),
            (
                Error::AuthFailed,
                "etcdserver: authentication failed, invalid user ID or password",
                Code::InvalidArgument,
            ),
            (
                Error::PermissionDenied,
                "etcdserver: permission denied",
                Code::PermissionDenied,
            ),
            (
                Error::InvalidAuthToken,
                "etcdserver: invalid auth token",
                Code::Unauthenticated,
            ),
            (
                Error::AuthOldRevision,
                "etcdserver: revision of auth store is old",
                Code::InvalidArgument,
            ),
        ];
        for (err, text, code) in cases {
            assert_eq!(err.to_string(), text);
            assert_eq!(err.code(), code, "{err}");
        }
    }
}
