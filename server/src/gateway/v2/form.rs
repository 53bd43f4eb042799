//! etcd's `parseKeyRequest`: a `/v2/keys` request's query and form into a
//! `keelpb.V2Request`, refusing bad fields with etcd's codes and causes.

use keel_engine::v2::error::{
    error, INDEX_NAN, INVALID_FIELD, INVALID_FORM, PREV_VALUE_REQUIRED, REFRESH_TTL_REQUIRED,
    REFRESH_VALUE, TTL_NAN,
};
use keel_proto::keelpb::{V2Error, V2Request};

/// A parsed form: every name with its values, in order (Go's `url.Values`).
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Go's `ParseForm`: the body's values (a form-encoded PUT/POST/PATCH) before the query's.
    pub fn parse(query: Option<&str>, body: Option<&[u8]>) -> Result<Form, String> {
        let mut pairs = Vec::new();
        if let Some(body) = body {
            let text =
                std::str::from_utf8(body).map_err(|_| "invalid UTF-8 in form".to_string())?;
            decode_into(text, &mut pairs)?;
        }
        if let Some(q) = query {
            decode_into(q, &mut pairs)?;
        }
        Ok(Form(pairs))
    }

    /// Whether `name` was given at all.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// The first value of `name` ("" if none: Go's `FormValue`).
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn uint(&self, name: &str) -> Result<u64, ()> {
        match self.get(name) {
            None => Ok(0),
            Some(v) => v.parse::<u64>().map_err(|_| ()),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, ()> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => crate::config::etcd_flags::parse_go_bool(v).ok_or(()),
        }
    }
}

/// Go's `url.ParseQuery` into `out`: `&`-separated (`;` is refused by newer Go, ignored
/// here), `+` is a space, `%XX` escapes.
fn decode_into(text: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((unescape(k)?, unescape(v)?));
    }
    Ok(())
}

/// Go's `QueryUnescape`, with its error text.
pub fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    let bad: String = s[i..].chars().take(3).collect();
                    return Err(format!("invalid URL escape {:?}", bad));
                };
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A URL path percent-decoded (Go's `URL.Path`); `+` stays a plus.
pub fn unescape_path(raw: &str) -> String {
    unescape(&raw.replace('+', "%2B")).unwrap_or_else(|_| raw.to_string())
}

fn field(code: u32, cause: &str) -> V2Error {
    error(code, cause, 0)
}

/// The request etcd's `parseKeyRequest` makes of `method`, the key `path` (after
/// `/v2/keys`) and `form`; `now_ns` is this server's clock (a TTL counts from it). The flag
/// beside it is `stream`, which only the HTTP side uses.
pub fn key_request(
    method: &str,
    path: &str,
    form: &Form,
    now_ns: i64,
) -> Result<(V2Request, bool), V2Error> {
    let prev_index = form
        .uint("prevIndex")
        .map_err(|_| field(INDEX_NAN, r#"invalid value for "prevIndex""#))?;
    let since = form
        .uint("waitIndex")
        .map_err(|_| field(INDEX_NAN, r#"invalid value for "waitIndex""#))?;
    let flag = |name: &str| {
        form.bool(name)
            .map_err(|_| field(INVALID_FIELD, &format!(r#"invalid value for "{name}""#)))
    };
    let recursive = flag("recursive")?;
    let sorted = flag("sorted")?;
    let wait = flag("wait")?;
    let dir = flag("dir")?;
    let quorum = flag("quorum")?;
    let stream = flag("stream")?;
    if wait && method != "GET" {
        return Err(field(
            INVALID_FIELD,
            r#""wait" can only be used with GET requests"#,
        ));
    }
    let prev_value = form.value("prevValue");
    if form.has("prevValue") && prev_value.is_empty() {
        return Err(field(PREV_VALUE_REQUIRED, r#""prevValue" cannot be empty"#));
    }
    flag("noValueOnSuccess")?;
    let ttl = if form.value("ttl").is_empty() {
        None
    } else {
        Some(
            form.uint("ttl")
                .map_err(|_| field(TTL_NAN, r#"invalid value for "ttl""#))?,
        )
    };
    let prev_exist = optional_bool(form, "prevExist", "invalid value for prevExist")?;
    let refresh = optional_bool(form, "refresh", "invalid value for refresh")?;
    if refresh == Some(true) {
        if form.has("value") && !form.value("value").is_empty() {
            return Err(field(REFRESH_VALUE, "A value was provided on a refresh"));
        }
        if ttl.is_none() {
            return Err(field(REFRESH_TTL_REQUIRED, "No TTL value set"));
        }
    }
    let expiration = match ttl {
        None => 0,
        Some(ttl) => {
            let ns = i64::try_from(ttl)
                .ok()
                .and_then(|t| t.checked_mul(1_000_000_000));
            match ns.and_then(|ns| now_ns.checked_add(ns)) {
                Some(e) => e,
                None => return Err(field(TTL_NAN, r#"invalid value for "ttl""#)),
            }
        }
    };
    Ok((
        V2Request {
            method: method.to_string(),
            path: path.to_string(),
            val: form.value("value").to_string(),
            dir,
            prev_value: prev_value.to_string(),
            prev_index,
            prev_exist,
            recursive,
            sorted,
            quorum,
            wait,
            since,
            refresh,
            expiration,
            time: now_ns,
        },
        stream,
    ))
}

fn optional_bool(form: &Form, name: &str, cause: &str) -> Result<Option<bool>, V2Error> {
    if !form.has(name) {
        return Ok(None);
    }
    form.bool(name)
        .map(Some)
        .map_err(|_| field(INVALID_FIELD, cause))
}

/// A form that does not parse: etcd's 210.
pub fn invalid_form(cause: String) -> V2Error {
    field(INVALID_FORM, &cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: &str, query: &str) -> Result<V2Request, V2Error> {
        let form = Form::parse(Some(query), None).expect("parses");
        key_request(method, "/k", &form, 0).map(|(r, _)| r)
    }

    #[test]
    fn fields_parse_as_etcds() {
        let r = parse("PUT", "value=a+b%21&ttl=5&prevExist=false").expect("ok");
        assert_eq!(r.val, "a b!", "unescaped");
        assert_eq!(r.expiration, 5_000_000_000, "ttl from now");
        assert_eq!(r.prev_exist, Some(false), "prevExist");
        assert_eq!(parse("PUT", "ttl=x").expect_err("nan").code, TTL_NAN, "ttl");
        assert_eq!(
            parse("PUT", "ttl=-1").expect_err("neg").code,
            TTL_NAN,
            "negative"
        );
        assert_eq!(
            parse("GET", "waitIndex=a").expect_err("nan").code,
            INDEX_NAN,
            "wait"
        );
        assert_eq!(
            parse("GET", "recursive=yes").expect_err("bool").code,
            INVALID_FIELD
        );
        assert_eq!(
            parse("PUT", "wait=true").expect_err("wait").code,
            INVALID_FIELD
        );
        assert_eq!(
            parse("PUT", "prevValue=").expect_err("empty").code,
            PREV_VALUE_REQUIRED
        );
        assert_eq!(
            parse("PUT", "refresh=true").expect_err("ttl").code,
            REFRESH_TTL_REQUIRED
        );
        assert_eq!(
            parse("PUT", "refresh=true&ttl=1&value=x")
                .expect_err("value")
                .code,
            REFRESH_VALUE
        );
        assert!(Form::parse(Some("a=%zz"), None).is_err(), "bad escape");
    }
}
