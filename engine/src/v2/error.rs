//! etcd's v2 errors: codes, messages and HTTP statuses (etcd's `v2error` package).

use keel_proto::keelpb::V2Error;

/// Key not found.
pub const KEY_NOT_FOUND: u32 = 100;
/// Compare failed.
pub const TEST_FAILED: u32 = 101;
/// Not a file.
pub const NOT_FILE: u32 = 102;
/// Not a directory.
pub const NOT_DIR: u32 = 104;
/// Key already exists.
pub const NODE_EXIST: u32 = 105;
/// Root is read only.
pub const ROOT_READ_ONLY: u32 = 107;
/// Directory not empty.
pub const DIR_NOT_EMPTY: u32 = 108;
/// The request requires user authentication.
pub const UNAUTHORIZED: u32 = 110;
/// PrevValue is Required in POST form.
pub const PREV_VALUE_REQUIRED: u32 = 201;
/// The given TTL in POST form is not a number.
pub const TTL_NAN: u32 = 202;
/// The given index in POST form is not a number.
pub const INDEX_NAN: u32 = 203;
/// Invalid field.
pub const INVALID_FIELD: u32 = 209;
/// Invalid POST form.
pub const INVALID_FORM: u32 = 210;
/// Value provided on refresh.
pub const REFRESH_VALUE: u32 = 211;
/// A TTL must be provided on refresh.
pub const REFRESH_TTL_REQUIRED: u32 = 212;
/// Raft Internal Error.
pub const RAFT_INTERNAL: u32 = 300;
/// During Leader Election.
pub const LEADER_ELECT: u32 = 301;
/// The event in requested index is outdated and cleared.
pub const EVENT_INDEX_CLEARED: u32 = 401;

/// etcd's message for a v2 error code.
pub fn message(code: u32) -> &'static str {
    match code {
        KEY_NOT_FOUND => "Key not found",
        TEST_FAILED => "Compare failed",
        NOT_FILE => "Not a file",
        103 => "Reached the max number of peers in the cluster",
        NOT_DIR => "Not a directory",
        NODE_EXIST => "Key already exists",
        106 => "The prefix of given key is a keyword in etcd",
        ROOT_READ_ONLY => "Root is read only",
        DIR_NOT_EMPTY => "Directory not empty",
        109 => "Peer address has existed",
        UNAUTHORIZED => "The request requires user authentication",
        200 => "Value is Required in POST form",
        PREV_VALUE_REQUIRED => "PrevValue is Required in POST form",
        TTL_NAN => "The given TTL in POST form is not a number",
        INDEX_NAN => "The given index in POST form is not a number",
        204 => "Value or TTL is required in POST form",
        205 => "The given timeout in POST form is not a number",
        206 => "Name is required in POST form",
        207 => "Index or value is required",
        208 => "Index and value cannot both be specified",
        INVALID_FIELD => "Invalid field",
        INVALID_FORM => "Invalid POST form",
        REFRESH_VALUE => "Value provided on refresh",
        REFRESH_TTL_REQUIRED => "A TTL must be provided on refresh",
        RAFT_INTERNAL => "Raft Internal Error",
        LEADER_ELECT => "During Leader Election",
        400 => "watcher is cleared due to etcd recovery",
        EVENT_INDEX_CLEARED => "The event in requested index is outdated and cleared",
        _ => "",
    }
}

/// The HTTP status etcd answers a v2 error code with (400 unless listed).
pub fn http_status(code: u32) -> u16 {
    match code {
        KEY_NOT_FOUND => 404,
        NOT_FILE | DIR_NOT_EMPTY => 403,
        UNAUTHORIZED => 401,
        TEST_FAILED | NODE_EXIST => 412,
        RAFT_INTERNAL | LEADER_ELECT => 500,
        _ => 400,
    }
}

/// A v2 error with its cause and the store index it was made at.
pub fn error(code: u32, cause: impl Into<String>, index: u64) -> V2Error {
    V2Error {
        code,
        cause: cause.into(),
        index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_etcds() {
        assert_eq!(http_status(KEY_NOT_FOUND), 404, "key not found");
        assert_eq!(http_status(NODE_EXIST), 412, "exists");
        assert_eq!(
            http_status(NOT_DIR),
            400,
            "not a dir is unlisted in etcd: 400"
        );
        assert_eq!(
            http_status(ROOT_READ_ONLY),
            400,
            "root read only is unlisted too"
        );
        assert_eq!(http_status(EVENT_INDEX_CLEARED), 400, "cleared");
        assert_eq!(
            message(EVENT_INDEX_CLEARED),
            "The event in requested index is outdated and cleared",
            "401's text"
        );
    }
}
