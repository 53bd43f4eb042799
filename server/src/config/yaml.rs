//! etcd's YAML configuration file (`--config-file`), read as flag settings.
//!
//! etcd's file uses the flag names as keys (`name`, `data-dir`, `initial-cluster`, ...), lists
//! for the URL and output lists, and two nested maps for TLS: `client-transport-security` and
//! `peer-transport-security`, whose keys are the flags without their `peer-` prefix. Every
//! setting becomes a `(flag, value)` pair, lists joined with commas as on the command line; a
//! key set to null means the flag's default and is left out.

use yaml_rust2::{Yaml, YamlLoader};

/// The `(flag, value)` settings of a configuration file's text, in the file's order.
pub fn settings(text: &str) -> Result<Vec<(String, String)>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("is not valid YAML: {e}"))?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok(Vec::new());
    };
    let map = match doc {
        Yaml::Hash(map) => map,
        Yaml::Null => return Ok(Vec::new()),
        _ => return Err("is not a YAML mapping of setting: value".into()),
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let key = key_text(&key)?;
        match key.as_str() {
            "client-transport-security" => nested(&key, value, &mut out, client_tls_flag)?,
            "peer-transport-security" => nested(&key, value, &mut out, peer_tls_flag)?,
            _ => push(&key, key.clone(), &value, &mut out)?,
        }
    }
    Ok(out)
}

fn key_text(key: &Yaml) -> Result<String, String> {
    match key {
        Yaml::String(s) => Ok(s.clone()),
        other => Err(format!("has a key that is not a string: {other:?}")),
    }
}

/// One of the transport-security maps, each key renamed to its flag.
fn nested(
    key: &str,
    value: Yaml,
    out: &mut Vec<(String, String)>,
    flag: fn(&str) -> String,
) -> Result<(), String> {
    let map = match value {
        Yaml::Hash(map) => map,
        Yaml::Null => return Ok(()),
        _ => return Err(format!("key {key:?} is not a mapping")),
    };
    for (inner, value) in map {
        let inner = key_text(&inner)?;
        push(&format!("{key}.{inner}"), flag(&inner), &value, out)?;
    }
    Ok(())
}

/// `client-transport-security` keys: the client TLS flags' names, with etcd's two renames.
fn client_tls_flag(key: &str) -> String {
    match key {
        "crl-file" => "client-crl-file".into(),
        "allowed-hostname" => "client-cert-allowed-hostname".into(),
        other => other.into(),
    }
}

/// `peer-transport-security` keys: the peer TLS flags' names.
fn peer_tls_flag(key: &str) -> String {
    match key {
        "allowed-cn" => "peer-cert-allowed-cn".into(),
        "allowed-hostname" => "peer-cert-allowed-hostname".into(),
        other => format!("peer-{other}"),
    }
}

fn push(
    key: &str,
    flag: String,
    value: &Yaml,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let text = match value {
        Yaml::Null => return Ok(()),
        Yaml::Array(items) => {
            let parts: Result<Vec<String>, String> = items.iter().map(|v| scalar(key, v)).collect();
            parts?.join(",")
        }
        other => scalar(key, other)?,
    };
    out.push((flag, text));
    Ok(())
}

fn scalar(key: &str, value: &Yaml) -> Result<String, String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Ok(s.clone()),
        Yaml::Integer(i) => Ok(i.to_string()),
        Yaml::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "key {key:?} has a value keel cannot read: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_lists_and_transport_security() {
        let text = "name: n1\nheartbeat-interval: 100\nlog-outputs: [stderr, /tmp/x.log]\n\
                    enable-v2: false\nwal-dir:\nclient-transport-security:\n  cert-file: c.pem\n  \
                    client-cert-auth: true\npeer-transport-security:\n  key-file: k.pem\n  \
                    allowed-cn: peer\n";
        let got = settings(text).expect("reads");
        let want: Vec<(String, String)> = [
            ("name", "n1"),
            ("heartbeat-interval", "100"),
            ("log-outputs", "stderr,/tmp/x.log"),
            ("enable-v2", "false"),
            ("cert-file", "c.pem"),
            ("client-cert-auth", "true"),
            ("peer-key-file", "k.pem"),
            ("peer-cert-allowed-cn", "peer"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            got, want,
            "every setting becomes its flag, null ones left out"
        );
    }

    #[test]
    fn refuses_what_is_not_a_settings_map() {
        assert!(
            settings("- a\n- b\n").is_err(),
            "a list is not a settings map"
        );
        assert!(
            settings("name: [a, {b: c}]\n").is_err(),
            "a map inside a list"
        );
        assert!(settings("name: 'unterminated\n").is_err(), "bad YAML");
        assert_eq!(settings("").expect("empty"), Vec::new(), "an empty file");
    }
}
