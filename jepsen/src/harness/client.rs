//! The KV client: a history [`Request`] sent over gRPC (keel-proto's tonic stubs) and the
//! answer turned into a history [`Response`], so that what the harness records is exactly
//! what the checker reads.
use keel_proto::etcdserverpb as pb;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::mvccpb;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::history::{
    Compare, CompareResult, CompareTarget, KeyValue, Operand, RangeRequest, Request, RequestOp,
    Response, ResponseOp,
};

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kv(k: &mvccpb::KeyValue) -> KeyValue {
    KeyValue::new(
        &text(&k.key),
        &text(&k.value),
        k.create_revision,
        k.mod_revision,
        k.version,
    )
}

fn range_req(r: &RangeRequest) -> pb::RangeRequest {
    pb::RangeRequest {
        key: bytes(&r.key).into(),
        range_end: r.range_end.as_deref().map(bytes).unwrap_or_default().into(),
        serializable: r.serializable,
        revision: r.revision.unwrap_or(0),
        limit: r.limit.unwrap_or(0),
        ..Default::default()
    }
}

fn compare(c: &Compare) -> pb::Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let int = match c.operand {
        Operand::Int(i) => i,
        Operand::Str(_) => 0,
    };
    let (target, union) = match c.target {
        CompareTarget::Value => {
            let v = match &c.operand {
                Operand::Str(s) => bytes(s),
                Operand::Int(i) => bytes(&i.to_string()),
            };
            (T::Value, U::Value(v.into()))
        }
        CompareTarget::Version => (T::Version, U::Version(int)),
        CompareTarget::Create => (T::Create, U::CreateRevision(int)),
        CompareTarget::Mod => (T::Mod, U::ModRevision(int)),
    };
    let result = match c.result {
        CompareResult::Equal => R::Equal,
        CompareResult::NotEqual => R::NotEqual,
        CompareResult::Greater => R::Greater,
        CompareResult::Less => R::Less,
    };
    pb::Compare {
        key: bytes(&c.key).into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(union),
        ..Default::default()
    }
}

fn request_op(op: &RequestOp) -> pb::RequestOp {
    use pb::request_op::Request as R;
    let request = match op {
        RequestOp::Put(p) => R::RequestPut(pb::PutRequest {
            key: bytes(&p.key).into(),
            value: bytes(&p.value).into(),
            prev_kv: p.prev_kv,
            ..Default::default()
        }),
        RequestOp::Range(r) => R::RequestRange(range_req(r)),
        RequestOp::Delete(d) => R::RequestDeleteRange(pb::DeleteRangeRequest {
            key: bytes(&d.key).into(),
            range_end: d.range_end.as_deref().map(bytes).unwrap_or_default().into(),
            prev_kv: d.prev_kv,
        }),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

fn header_rev(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

fn range_resp(r: &pb::RangeResponse) -> Response {
    let mut resp = Response::range(header_rev(&r.header), r.kvs.iter().map(kv).collect());
    if let Response::Range(x) = &mut resp {
        x.count = r.count;
        x.more = r.more;
    }
    resp
}

fn response_op(r: &pb::ResponseOp) -> Option<ResponseOp> {
    use pb::response_op::Response as R;
    Some(match r.response.as_ref()? {
        R::ResponsePut(p) => ResponseOp::put(header_rev(&p.header)),
        R::ResponseRange(x) => {
            let mut op = ResponseOp::range(header_rev(&x.header), x.kvs.iter().map(kv).collect());
            if let ResponseOp::Range(y) = &mut op {
                y.count = x.count;
                y.more = x.more;
            }
            op
        }
        R::ResponseDeleteRange(d) => ResponseOp::delete(header_rev(&d.header), d.deleted),
        R::ResponseTxn(_) => return None,
    })
}

/// Sends `req` to `kv`; the answer as the history records it.
pub async fn execute(kv: &mut KvClient<Channel>, req: &Request) -> Result<Response, Status> {
    match req {
        Request::Put(p) => {
            let r = kv.put(pb::PutRequest {
                key: bytes(&p.key).into(),
                value: bytes(&p.value).into(),
                ..Default::default()
            });
            Ok(Response::put(header_rev(&r.await?.into_inner().header)))
        }
        Request::Get(_) | Request::Range(_) => {
            let range = req
                .as_range()
                .ok_or_else(|| Status::internal("not a range"))?;
            Ok(range_resp(&kv.range(range_req(&range)).await?.into_inner()))
        }
        Request::Delete(d) => {
            let r = kv.delete_range(pb::DeleteRangeRequest {
                key: bytes(&d.key).into(),
                range_end: d.range_end.as_deref().map(bytes).unwrap_or_default().into(),
                prev_kv: false,
            });
            let r = r.await?.into_inner();
            Ok(Response::delete(header_rev(&r.header), r.deleted))
        }
        Request::Txn(t) => {
            let r = kv.txn(pb::TxnRequest {
                compare: t.compares.iter().map(compare).collect(),
                success: t.success.iter().map(request_op).collect(),
                failure: t.failure.iter().map(request_op).collect(),
            });
            let r = r.await?.into_inner();
            let responses = r.responses.iter().filter_map(response_op).collect();
            Ok(Response::txn(header_rev(&r.header), r.succeeded, responses))
        }
        Request::Compact(c) => {
            let r = kv.compact(pb::CompactionRequest {
                revision: c.revision,
                physical: false,
            });
            Ok(Response::compact(header_rev(&r.await?.into_inner().header)))
        }
    }
}

/// Puts `key=value` attached to `lease`; the answer as the history records a put.
pub async fn leased_put(
    kv: &mut KvClient<Channel>,
    key: &str,
    value: &str,
    lease: i64,
) -> Result<Response, Status> {
    let r = kv.put(pb::PutRequest {
        key: bytes(key).into(),
        value: bytes(value).into(),
        lease,
        ..Default::default()
    });
    Ok(Response::put(header_rev(&r.await?.into_inner().header)))
}

/// Whether a write that failed with `status` certainly did not take effect: etcd rejected it
/// before it reached raft, or the client could not even connect to the member (the request was
/// never sent: a killed, removed or paused-at-accept member). Anything else (timeouts, lost
/// connections, leader changes) leaves the write in doubt.
pub fn write_certainly_failed(status: &Status) -> bool {
    let rejected = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
    );
    let never_sent =
        status.code() == Code::Unavailable && status.message().starts_with("tcp connect error");
    rejected || never_sent
}

/// The history's error text for a status: etcd's `compacted` and `future_rev` keep the names
/// the checker knows.
pub fn error_text(status: &Status) -> String {
    let m = status.message();
    if m.contains("required revision has been compacted") {
        "compacted".to_string()
    } else if m.contains("required revision is a future revision") {
        "future_rev".to_string()
    } else {
        format!("{:?}: {m}", status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rejections_and_failed_connects_are_certain_failures() {
        let certain = [
            Status::invalid_argument("etcdserver: key is not provided"),
            Status::unavailable("tcp connect error"),
        ];
        for s in &certain {
            assert!(write_certainly_failed(s), "certainly not applied: {s:?}");
        }
        let in_doubt = [
            Status::unavailable("etcdserver: request timed out"),
            Status::unknown("transport error"),
            Status::cancelled("Timeout expired"),
            Status::unavailable("connection reset; tcp connect error later"),
        ];
        for s in &in_doubt {
            assert!(!write_certainly_failed(s), "in doubt: {s:?}");
        }
    }
}
