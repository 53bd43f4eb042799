use std::sync::{Arc, Mutex};

use super::*;

#[test]
fn times_are_zaps_iso8601_in_utc() {
    assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso8601_ms(1_796_440_343_606), "2026-12-05T03:12:23.606Z");
    assert_eq!(iso8601_ms(951_868_799_999), "2000-02-29T23:59:59.999Z");
}

#[test]
fn caller_is_the_last_two_path_parts() {
    assert_eq!(
        short_caller("server/src/driver/wal_writer.rs", 88),
        "driver/wal_writer.rs:88"
    );
    assert_eq!(short_caller("src/main.rs", 7), "src/main.rs:7");
    assert_eq!(short_caller("main.rs", 1), "main.rs:1");
}

/// A writer that keeps what is logged, for the subscriber under test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl<'a> MakeWriter<'a> for Captured {
    type Writer = CapturedWriter;

    fn make_writer(&'a self) -> CapturedWriter {
        CapturedWriter(self.0.clone())
    }
}

struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn json_lines_have_etcds_keys_in_etcds_order() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .event_format(EtcdJson)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(member = "n1", index = 42u64, ok = true, took = ?std::time::Duration::from_millis(3), "saved \"snap\"\n");
    });
    let text = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
    assert!(
        text.ends_with("}\n") && text.lines().count() == 1,
        "one line: {text}"
    );
    assert!(
        text.starts_with("{\"level\":\"warn\",\"ts\":\""),
        "level then ts: {text}"
    );
    let value: serde_json::Value = serde_json::from_str(text.trim()).expect("valid JSON");
    assert_eq!(
        value["msg"], "saved \"snap\"\n",
        "the message, escaped and read back"
    );
    assert_eq!(value["member"], "n1");
    assert_eq!(value["index"], 42);
    assert_eq!(value["ok"], true);
    assert_eq!(value["took"], "3ms", "debug values as strings");
    let caller = value["caller"].as_str().expect("a caller");
    assert!(
        caller.starts_with("logging/tests.rs:"),
        "short caller: {caller}"
    );
    let keys: Vec<&str> = ["\"level\"", "\"ts\"", "\"caller\"", "\"msg\"", "\"member\""]
        .into_iter()
        .collect();
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| text.find(k).expect("key present"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "etcd's key order: {text}"
    );
}

#[test]
fn outputs_open_files_and_refuse_the_journal() {
    let dir = std::env::temp_dir().join(format!("keel-log-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("member.log");
    let outputs = Outputs::open(&format!("{}", path.display())).expect("a file opens");
    assert!(
        !outputs.all_terminals(),
        "a file is never a terminal: no colour codes"
    );
    outputs.make_writer().write_all(b"line\n").expect("written");
    assert_eq!(std::fs::read(&path).expect("read back"), b"line\n");
    assert!(
        Outputs::open("systemd/journal").is_err(),
        "the journal is refused by name"
    );
    let missing = dir.join("no/such/dir/x.log");
    assert!(Outputs::open(&missing.display().to_string()).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
