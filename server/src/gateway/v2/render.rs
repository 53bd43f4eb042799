//! etcd's v2 JSON: events and nodes with Go's field order and `omitempty` rules, errors, and
//! times as Go's `time.Time` marshals them (RFC 3339 with nanoseconds, trailing zeros cut).

use keel_engine::v2::error::message;
use keel_proto::keelpb::{V2Error, V2Event, V2Node};

use crate::gateway::json::go_string;

/// An event as etcd's `json.Encoder` writes it (with the trailing newline); a refresh is
/// not marked (etcd keeps the mark out of its JSON).
pub fn event_json(e: &V2Event) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"action\":");
    out.push_str(&go_string(&e.action));
    if let Some(n) = &e.node {
        out.push_str(",\"node\":");
        node_json(n, &mut out);
    }
    if let Some(n) = &e.prev_node {
        out.push_str(",\"prevNode\":");
        node_json(n, &mut out);
    }
    out.push_str("}\n");
    out
}

/// A node (etcd's `NodeExtern`): key, value, dir, expiration, ttl, nodes, modifiedIndex,
/// createdIndex, each left out when empty. The root's key ("/") is left out, as etcd's
/// trimmed "/1" is.
pub fn node_json(n: &V2Node, out: &mut String) {
    let mut fields: Vec<String> = Vec::new();
    if !n.key.is_empty() && n.key != "/" {
        fields.push(format!("\"key\":{}", go_string(&n.key)));
    }
    if let Some(v) = &n.value {
        fields.push(format!("\"value\":{}", go_string(v)));
    }
    if n.dir {
        fields.push("\"dir\":true".to_string());
    }
    if n.expiration != 0 {
        fields.push(format!("\"expiration\":\"{}\"", rfc3339_nano(n.expiration)));
    }
    if n.ttl != 0 {
        fields.push(format!("\"ttl\":{}", n.ttl));
    }
    if !n.nodes.is_empty() {
        let mut nodes = String::from("\"nodes\":[");
        for (i, child) in n.nodes.iter().enumerate() {
            if i > 0 {
                nodes.push(',');
            }
            node_json(child, &mut nodes);
        }
        nodes.push(']');
        fields.push(nodes);
    }
    if n.modified_index != 0 {
        fields.push(format!("\"modifiedIndex\":{}", n.modified_index));
    }
    if n.created_index != 0 {
        fields.push(format!("\"createdIndex\":{}", n.created_index));
    }
    out.push('{');
    out.push_str(&fields.join(","));
    out.push('}');
}

/// An error as etcd writes it (with the trailing newline).
pub fn error_json(e: &V2Error) -> String {
    let mut out = format!(
        "{{\"errorCode\":{},\"message\":{}",
        e.code,
        go_string(message(e.code))
    );
    if !e.cause.is_empty() {
        out.push_str(&format!(",\"cause\":{}", go_string(&e.cause)));
    }
    out.push_str(&format!(",\"index\":{}}}\n", e.index));
    out
}

/// Unix nanoseconds as Go's `time.Time` JSON (`RFC3339Nano`, UTC).
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Howard Hinnant's days-to-civil: (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_gos() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z", "epoch");
        assert_eq!(
            rfc3339_nano(1_796_452_458_921_916_409),
            "2026-12-05T06:34:18.921916409Z",
            "as etcd printed it"
        );
        assert_eq!(
            rfc3339_nano(951_782_400_500_000_000),
            "2000-02-29T00:00:00.5Z",
            "leap"
        );
    }

    #[test]
    fn events_are_etcds() {
        let e = V2Event {
            action: "set".into(),
            node: Some(V2Node {
                key: "/foo".into(),
                value: Some("bar".into()),
                modified_index: 4,
                created_index: 4,
                ..V2Node::default()
            }),
            ..V2Event::default()
        };
        assert_eq!(
            event_json(&e),
            "{\"action\":\"set\",\"node\":{\"key\":\"/foo\",\"value\":\"bar\",\"modifiedIndex\":4,\"createdIndex\":4}}\n"
        );
        let err = keel_engine::v2::error::error(102, "/dir", 5);
        assert_eq!(
            error_json(&err),
            "{\"errorCode\":102,\"message\":\"Not a file\",\"cause\":\"/dir\",\"index\":5}\n"
        );
    }
}
