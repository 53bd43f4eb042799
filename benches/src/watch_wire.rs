//! The Watch stream on the wire: a lean decoder for `WatchResponse` and the stamped values the
//! watch benchmark writes.
//!
//! With 100k watchers every put comes back as 100k `WatchResponse`s, so the load generator's
//! decode cost decides whether it, rather than the server, is the bottleneck. The generated
//! prost type allocates the header, every key and value and every event; [`WatchCodec`] instead
//! walks the protobuf bytes once and keeps only what the benchmark checks: the watch id, the
//! create/cancel flags, and per event its type, `mod_revision` and the stamp in its value.
//!
//! A stamped value is `b"kbw1"`, the sequence number of the put (u64 big-endian), the send time
//! in nanoseconds since the run's origin (u64 big-endian), then padding:
//!
//! ```text
//! 6b 62 77 31 | 00 00 00 00 00 00 00 07 | 00 00 00 00 3b 9a ca 00 | 00 00 ...
//!  "kbw1"        seq 7                     sent 1 s after the origin   padding
//! ```

use bytes::Buf;
use keel_proto::etcdserverpb::watch_request::RequestUnion;
use keel_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

/// The Watch service's one method.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";
/// Requests queued on one stream before the sender waits for HTTP/2 to take them.
pub const REQUEST_QUEUE_MAX: usize = 1024;
/// Marks a value written by the watch benchmark.
const STAMP_MAGIC: &[u8; 4] = b"kbw1";
/// Bytes of a stamp; values are at least this long.
pub const STAMP_BYTES: usize = 20;
/// Protobuf wire types.
const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// What the benchmark put into a value: which put, and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub sent_ns: u64,
}

impl Stamp {
    /// The value carrying this stamp, padded with zeros to `value_bytes` (at least
    /// `STAMP_BYTES`).
    pub fn encode(self, value_bytes: usize) -> Vec<u8> {
        assert!(value_bytes >= STAMP_BYTES, "value too small for a stamp");
        let mut value = Vec::with_capacity(value_bytes);
        value.extend_from_slice(STAMP_MAGIC);
        value.extend_from_slice(&self.seq.to_be_bytes());
        value.extend_from_slice(&self.sent_ns.to_be_bytes());
        value.resize(value_bytes, 0);
        value
    }

    /// The stamp at the start of `value`, if it carries one.
    pub fn decode(value: &[u8]) -> Option<Stamp> {
        if value.len() < STAMP_BYTES || &value[..4] != STAMP_MAGIC {
            return None;
        }
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&value[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        Some(Stamp {
            seq: word(4),
            sent_ns: word(12),
        })
    }
}

/// One event as the benchmark sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WatchedEvent {
    /// `mvccpb.Event.EventType`: 0 PUT, 1 DELETE.
    pub kind: i32,
    pub mod_revision: i64,
    /// `None` when the value was not written by this benchmark.
    pub stamp: Option<Stamp>,
}

/// The fields of one `WatchResponse` the benchmark uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchBatch {
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub events: Vec<WatchedEvent>,
}

/// Why a response could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedResponse(&'static str);

type Parsed<T> = Result<T, MalformedResponse>;

fn varint(buf: &mut &[u8]) -> Parsed<u64> {
    prost::encoding::decode_varint(buf).map_err(|_| MalformedResponse("bad varint"))
}

/// Takes one length-delimited field's bytes off the front of `buf`.
fn len_delimited<'a>(buf: &mut &'a [u8]) -> Parsed<&'a [u8]> {
    let len = usize::try_from(varint(buf)?).map_err(|_| MalformedResponse("huge length"))?;
    if len > buf.len() {
        return Err(MalformedResponse("length past the end"));
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

/// Skips one field of wire type `wire` (groups are not used by etcd's protocol).
fn skip(wire: u64, buf: &mut &[u8]) -> Parsed<()> {
    let fixed = |buf: &mut &[u8], n: usize| {
        if buf.len() < n {
            return Err(MalformedResponse("fixed field past the end"));
        }
        buf.advance(n);
        Ok(())
    };
    match wire {
        WIRE_VARINT => varint(buf).map(drop),
        WIRE_FIXED64 => fixed(buf, 8),
        WIRE_LEN => len_delimited(buf).map(drop),
        WIRE_FIXED32 => fixed(buf, 4),
        _ => Err(MalformedResponse("unsupported wire type")),
    }
}

/// Splits a field key into (field number, wire type).
fn key(buf: &mut &[u8]) -> Parsed<(u64, u64)> {
    let key = varint(buf)?;
    Ok((key >> 3, key & 7))
}

/// Decodes a `WatchResponse` (etcd's field numbers: watch_id 2, created 3, canceled 4,
/// compact_revision 5, cancel_reason 6, events 11), skipping everything else.
pub fn decode_batch(mut buf: &[u8]) -> Parsed<WatchBatch> {
    let mut batch = WatchBatch::default();
    while !buf.is_empty() {
        match key(&mut buf)? {
            (2, WIRE_VARINT) => batch.watch_id = varint(&mut buf)? as i64,
            (3, WIRE_VARINT) => batch.created = varint(&mut buf)? != 0,
            (4, WIRE_VARINT) => batch.canceled = varint(&mut buf)? != 0,
            (5, WIRE_VARINT) => batch.compact_revision = varint(&mut buf)? as i64,
            (6, WIRE_LEN) => {
                batch.cancel_reason = String::from_utf8_lossy(len_delimited(&mut buf)?).into()
            }
            (11, WIRE_LEN) => batch.events.push(decode_event(len_delimited(&mut buf)?)?),
            (_, wire) => skip(wire, &mut buf)?,
        }
    }
    Ok(batch)
}

/// Decodes an `mvccpb.Event` (type 1, kv 2; prev_kv 3 is skipped).
fn decode_event(mut buf: &[u8]) -> Parsed<WatchedEvent> {
    let mut event = WatchedEvent::default();
    while !buf.is_empty() {
        match key(&mut buf)? {
            (1, WIRE_VARINT) => event.kind = varint(&mut buf)? as i32,
            (2, WIRE_LEN) => decode_kv(len_delimited(&mut buf)?, &mut event)?,
            (_, wire) => skip(wire, &mut buf)?,
        }
    }
    Ok(event)
}

/// Reads `mod_revision` (3) and the stamp in `value` (5) of an `mvccpb.KeyValue`.
fn decode_kv(mut buf: &[u8], event: &mut WatchedEvent) -> Parsed<()> {
    while !buf.is_empty() {
        match key(&mut buf)? {
            (3, WIRE_VARINT) => event.mod_revision = varint(&mut buf)? as i64,
            (5, WIRE_LEN) => event.stamp = Stamp::decode(len_delimited(&mut buf)?),
            (_, wire) => skip(wire, &mut buf)?,
        }
    }
    Ok(())
}

/// gRPC codec for the Watch stream: prost-encoded `WatchRequest`s out, [`WatchBatch`]es in.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

/// Encoder half of [`WatchCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestEncoder;

/// Decoder half of [`WatchCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchDecoder;

impl Codec for WatchCodec {
    type Encode = WatchRequest;
    type Decode = WatchBatch;
    type Encoder = RequestEncoder;
    type Decoder = BatchDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> BatchDecoder {
        BatchDecoder
    }
}

impl Encoder for RequestEncoder {
    type Item = WatchRequest;
    type Error = Status;

    fn encode(&mut self, item: WatchRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding WatchRequest: {e}")))
    }
}

impl Decoder for BatchDecoder {
    type Item = WatchBatch;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<WatchBatch>, Status> {
        let len = src.remaining();
        // tonic hands over one whole message in a contiguous buffer; copy only if it did not.
        let batch = if src.chunk().len() >= len {
            let batch = decode_batch(&src.chunk()[..len]);
            src.advance(len);
            batch
        } else {
            decode_batch(&src.copy_to_bytes(len))
        };
        batch
            .map(Some)
            .map_err(|MalformedResponse(why)| Status::internal(format!("WatchResponse: {why}")))
    }
}

/// A request creating a watcher on every key starting with `prefix`, from the current revision.
pub fn create_prefix_watch(prefix: &[u8]) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.to_vec().into(),
            range_end: prefix_end(prefix).into(),
            ..WatchCreateRequest::default()
        })),
    }
}

/// The end of the range holding every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented and the rest dropped; `[0]` (every key)
/// when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Opens one Watch stream on `channel` and sends `first` on it. The call resolves only once the
/// server sends response headers, which etcd does with its first response, so the first requests
/// must be queued before waiting. Later requests go through the returned sender; dropping it
/// half-closes the stream.
pub async fn open_stream(
    channel: Channel,
    first: Vec<WatchRequest>,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchBatch>), Status> {
    assert!(first.len() <= REQUEST_QUEUE_MAX, "too many first requests");
    let (requests, queue) = mpsc::channel(REQUEST_QUEUE_MAX);
    for request in first {
        requests
            .try_send(request)
            .map_err(|_| Status::internal("request queue full"))?;
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(queue)),
            PathAndQuery::from_static(WATCH_PATH),
            WatchCodec,
        )
        .await?;
    Ok((requests, response.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcdserverpb::{ResponseHeader, WatchResponse};
    use keel_proto::mvccpb::{Event, KeyValue};

    fn kv(revision: i64, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: b"keel-bench/watch/00000001".to_vec().into(),
            create_revision: 2,
            mod_revision: revision,
            version: 3,
            value: value.into(),
            lease: 9,
        }
    }

    #[test]
    fn prefix_ends_like_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            seq: 7,
            sent_ns: 1_000_000_000,
        };
        let value = stamp.encode(32);
        assert_eq!(value.len(), 32);
        assert_eq!(&value[..4], b"kbw1");
        assert_eq!(Stamp::decode(&value), Some(stamp));
        assert_eq!(Stamp::decode(&value[..19]), None);
        assert_eq!(Stamp::decode(b"some other value, long enough"), None);
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let stamp = Stamp {
            seq: 3,
            sent_ns: 42,
        };
        let response = WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 11,
                raft_term: 4,
            }),
            watch_id: 5,
            created: false,
            canceled: true,
            compact_revision: 6,
            cancel_reason: "why".into(),
            fragment: true,
            events: vec![
                Event {
                    r#type: 0,
                    kv: Some(kv(10, stamp.encode(40))),
                    prev_kv: Some(kv(9, b"old".to_vec())),
                },
                Event {
                    r#type: 1,
                    kv: Some(kv(11, Vec::new())),
                    prev_kv: None,
                },
            ],
        };
        let batch = decode_batch(&response.encode_to_vec()).expect("decodes");
        let expected = WatchBatch {
            watch_id: 5,
            created: false,
            canceled: true,
            compact_revision: 6,
            cancel_reason: "why".into(),
            events: vec![
                WatchedEvent {
                    kind: 0,
                    mod_revision: 10,
                    stamp: Some(stamp),
                },
                WatchedEvent {
                    kind: 1,
                    mod_revision: 11,
                    stamp: None,
                },
            ],
        };
        assert_eq!(batch, expected);
    }

    #[test]
    fn created_response_and_empty_message() {
        let response = WatchResponse {
            watch_id: 0,
            created: true,
            ..WatchResponse::default()
        };
        let batch = decode_batch(&response.encode_to_vec()).expect("decodes");
        assert!(batch.created && batch.events.is_empty());
        assert_eq!(decode_batch(&[]), Ok(WatchBatch::default()));
    }

    #[test]
    fn rejects_truncated_input() {
        let response = WatchResponse {
            watch_id: 1,
            events: vec![Event {
                r#type: 0,
                kv: Some(kv(10, vec![1; 30])),
                prev_kv: None,
            }],
            ..WatchResponse::default()
        };
        let bytes = response.encode_to_vec();
        assert!(decode_batch(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_batch(&[0x0b]).is_err(), "groups are unsupported");
    }
}
