//! The JSON side of the gateway: request bodies in, messages and errors out, shaped as etcd
//! 3.4.23's grpc-gateway (v1.9.5, marshaler `JSONPb{OrigName: true}`) shapes them.
//!
//! Messages go through the serde impls keel-proto generates with the `json` feature (pbjson):
//! original proto field names, 64-bit integers as strings, bytes as base64, enums by name,
//! fields at their default left out. Errors are written here, field by field, because their
//! order is grpc-gateway's (`error`, `message`, `code`), not a map's.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

/// The body of every gateway answer: whole or streamed.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;
/// A gateway answer.
pub type Reply = Response<Body>;

/// Why a request body was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the gateway accepts.
    #[error("request body larger than max ({max} bytes)")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The connection failed while the body was read.
    #[error("reading the request body: {0}")]
    Read(String),
    /// Not JSON, or JSON that is not the request message (unknown field, wrong type).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl BodyError {
    /// The answer: 413 for a body too large, 400 otherwise, both with gRPC's
    /// InvalidArgument-style JSON error.
    pub fn reply(&self) -> Reply {
        match self {
            BodyError::TooLarge { .. } => error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
                &self.to_string(),
            ),
            _ => error_reply(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                &self.to_string(),
            ),
        }
    }
}

/// Reads a whole request body of at most `max` bytes.
pub async fn read_body(body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    // A declared length above the limit is refused before a byte of the body is read.
    if usize::try_from(hyper::body::Body::size_hint(&body).lower()).unwrap_or(usize::MAX) > max {
        return Err(BodyError::TooLarge { max });
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { max }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// One request message. An empty body is the empty message, as grpc-gateway takes it.
pub fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(serde_json::from_slice(body)?)
}

/// A sequence of request messages, one JSON object after another (a bidirectional stream's
/// requests, as grpc-gateway reads them from one body).
pub fn parse_all<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, BodyError> {
    let mut out = Vec::new();
    for message in serde_json::Deserializer::from_slice(body).into_iter::<T>() {
        out.push(message?);
    }
    Ok(out)
}

/// A message as JSON.
pub fn to_json<T: Serialize>(message: &T) -> Bytes {
    // The generated impls serialize into any serializer without failing; a failure would be
    // a bug in them, answered as an empty object rather than a panic.
    serde_json::to_vec(message)
        .map(Bytes::from)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "serializing a response");
            Bytes::from_static(b"{}")
        })
}

/// A 200 answer carrying `message`.
pub fn ok<T: Serialize>(message: &T) -> Reply {
    json_reply(StatusCode::OK, to_json(message))
}

/// A JSON answer.
pub fn json_reply(status: StatusCode, body: Bytes) -> Reply {
    let mut reply = Response::new(full(body));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

/// A plain-text answer, as Go's `http.Error` writes one (the text and a newline).
pub fn text_reply(status: StatusCode, text: &str) -> Reply {
    let mut reply = Response::new(full(Bytes::from(format!("{text}\n"))));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    reply
}

/// An answer without a body.
pub fn empty_reply(status: StatusCode) -> Reply {
    let mut reply = Response::new(full(Bytes::new()));
    *reply.status_mut() = status;
    reply
}

/// A whole body.
pub fn full(body: Bytes) -> Body {
    Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A failed call, as grpc-gateway answers it: the HTTP status for its code and
/// `{"error":MSG,"message":MSG,"code":N}`.
pub fn status_reply(status: &Status) -> Reply {
    error_reply(http_status(status.code()), status.code(), status.message())
}

/// `{"error":MSG,"message":MSG,"code":N}` with `http`.
pub fn error_reply(http: StatusCode, code: Code, message: &str) -> Reply {
    let text = go_string(message);
    let body = format!(
        "{{\"error\":{text},\"message\":{text},\"code\":{}}}",
        code as i32
    );
    json_reply(http, Bytes::from(body))
}

/// A stream's failure, as grpc-gateway 1.9 writes it into a streamed answer:
/// `{"error":{"grpc_code":N,"http_code":H,"message":MSG,"http_status":TEXT}}`.
pub fn stream_error(status: &Status) -> Bytes {
    let http = http_status(status.code());
    Bytes::from(format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{},\"http_status\":{}}}}}",
        status.code() as i32,
        http.as_u16(),
        go_string(status.message()),
        go_string(http.canonical_reason().unwrap_or("")),
    ))
}

/// grpc-gateway's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON string as Go's `encoding/json` writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped.
pub fn go_string(s: &str) -> String {
    let quoted = serde_json::Value::String(s.to_string()).to_string();
    let mut out = String::with_capacity(quoted.len());
    for c in quoted.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::{PutRequest, RangeResponse, ResponseHeader};
    use keel_proto::mvccpb::KeyValue;

    #[test]
    fn messages_read_as_grpc_gateway_writes_them() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            kvs: vec![KeyValue {
                key: Bytes::from_static(b"foo"),
                create_revision: 3,
                mod_revision: 3,
                version: 1,
                value: Bytes::from_static(b"bar"),
                lease: 0,
            }],
            count: 1,
            more: false,
        };
        assert_eq!(
            String::from_utf8_lossy(&to_json(&resp)),
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"4"},"kvs":[{"key":"Zm9v","create_revision":"3","mod_revision":"3","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn requests_take_both_names_and_refuse_unknown_fields() {
        let put: PutRequest =
            parse(br#"{"key":"Zm9v","prevKv":true,"lease":"7"}"#).expect("a put request parses");
        assert_eq!(&put.key[..], b"foo", "key decoded from base64");
        assert!(put.prev_kv, "camelCase name accepted");
        assert_eq!(put.lease, 7, "int64 from a string");
        let empty: PutRequest = parse(b"  ").expect("an empty body is the empty message");
        assert_eq!(empty, PutRequest::default(), "empty body");
        assert!(
            parse::<PutRequest>(br#"{"key":"Zm9v","bogus":1}"#).is_err(),
            "unknown field refused"
        );
        assert!(
            parse::<PutRequest>(br#"{"key":5}"#).is_err(),
            "wrong type refused"
        );
        assert!(
            parse::<PutRequest>(br#"{"key":"#).is_err(),
            "truncated JSON"
        );
    }

    #[test]
    fn errors_are_shaped_as_grpc_gateway_shapes_them() {
        let reply = status_reply(&Status::invalid_argument("etcdserver: key is not provided"));
        assert_eq!(
            reply.status(),
            StatusCode::BAD_REQUEST,
            "InvalidArgument is 400"
        );
        assert_eq!(
            go_string("a<b>&c"),
            r#""a\u003cb\u003e\u0026c""#,
            "HTML-safe as Go writes it"
        );
        assert_eq!(
            String::from_utf8_lossy(&stream_error(&Status::unimplemented("x"))),
            r#"{"error":{"grpc_code":12,"http_code":501,"message":"x","http_status":"Not Implemented"}}"#
        );
    }
}
