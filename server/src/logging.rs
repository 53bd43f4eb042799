//! The member's log: etcd's `--logger`, `--log-outputs` and `--log-level`.
//!
//! - `--logger=capnslog` (the default, as in etcd 3.4) writes human-readable lines;
//!   `--logger=zap` writes etcd 3.4's JSON lines: `level`, `ts`, `caller`, `msg`, then the
//!   event's fields, one object per line (see [`EtcdJson`]).
//! - `--log-outputs` is `default`/`stderr`, `stdout`, or file paths (appended to),
//!   comma-separated.
//! - Colour codes are written only when every output is a terminal: never into a file or a pipe.
//! - `KEEL_LOG`, when set, is a full `tracing` filter that replaces `--log-level`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, IsTerminal as _, Write};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Config, ConfigError};

/// Starts logging as `config` asks. Fails on an output that cannot be opened.
pub fn init(config: &Config) -> Result<(), ConfigError> {
    let outputs = Outputs::open(&config.log_outputs)?;
    // etcd's levels: debug, info, warn, error, panic, fatal.
    let level = match config.log_level.as_str() {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},raft=warn")));
    let ansi = outputs.all_terminals();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(outputs);
    if config.logger == "zap" {
        builder.event_format(EtcdJson).init();
    } else {
        builder.with_ansi(ansi).init();
    }
    Ok(())
}

/// One place a log line goes.
#[derive(Clone)]
enum Output {
    Stderr,
    Stdout,
    File(Arc<Mutex<File>>),
}

/// Every output of `--log-outputs`; each log line is written whole to each.
#[derive(Clone)]
pub struct Outputs(Vec<Output>);

impl Outputs {
    /// Opens the outputs of a `--log-outputs` list.
    pub fn open(list: &str) -> Result<Self, ConfigError> {
        let mut outputs = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let err = |reason: String| ConfigError::LogOutput {
                output: item.to_string(),
                reason,
            };
            outputs.push(match item {
                "default" | "stderr" => Output::Stderr,
                "stdout" => Output::Stdout,
                "systemd/journal" => {
                    return Err(err("keel does not write to the systemd journal; use \
                                    stderr, which systemd collects"
                        .into()))
                }
                path => {
                    let file = File::options()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| err(format!("cannot open for appending: {e}")))?;
                    Output::File(Arc::new(Mutex::new(file)))
                }
            });
        }
        if outputs.is_empty() {
            outputs.push(Output::Stderr);
        }
        Ok(Self(outputs))
    }

    /// Whether every output is a terminal, so colour codes are welcome.
    pub fn all_terminals(&self) -> bool {
        self.0.iter().all(|o| match o {
            Output::Stderr => io::stderr().is_terminal(),
            Output::Stdout => io::stdout().is_terminal(),
            Output::File(_) => false,
        })
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = OutputsWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        OutputsWriter(&self.0)
    }
}

/// Writes each buffer to every output (the formatter hands over one whole line at a time).
pub struct OutputsWriter<'a>(&'a [Output]);

impl Write for OutputsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        for output in self.0 {
            // A log line that cannot be written is dropped; there is nowhere to report it.
            let _ = match output {
                Output::Stderr => io::stderr().write_all(buf),
                Output::Stdout => io::stdout().write_all(buf),
                Output::File(file) => match file.lock() {
                    Ok(mut f) => f.write_all(buf),
                    Err(poisoned) => poisoned.into_inner().write_all(buf),
                },
            };
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// etcd 3.4's JSON log line (zap's production encoder as etcd configures it):
/// `{"level":"info","ts":"2026-12-05T03:12:23.606Z","caller":"driver/wal_writer.rs:88",
/// "msg":"...","field":value}`. The caller is the source file's last two path parts and its
/// line, as zap's short caller; span context is not written (etcd has none).
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdJson;

impl<S, N> FormatEvent<S, N> for EtcdJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        writer.write_str(&json_line(event, now))
    }
}

/// The JSON line of `event` at `unix_ms`.
fn json_line(event: &Event<'_>, unix_ms: i64) -> String {
    let meta = event.metadata();
    let level = match *meta.level() {
        Level::TRACE | Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    };
    let mut fields = JsonFields::default();
    event.record(&mut fields);
    let mut line = format!("{{\"level\":\"{level}\",\"ts\":\"{}\"", iso8601_ms(unix_ms));
    if let Some(file) = meta.file() {
        let caller = short_caller(file, meta.line().unwrap_or(0));
        let _ = write!(line, ",\"caller\":{}", json_string(&caller));
    }
    let _ = write!(line, ",\"msg\":{}", json_string(&fields.message));
    line.push_str(&fields.rest);
    line.push_str("}\n");
    line
}

/// zap's short caller: the last two parts of the path, and the line.
fn short_caller(file: &str, line: u32) -> String {
    let parts: Vec<&str> = file.rsplitn(3, '/').collect();
    let short = match parts.as_slice() {
        [name, dir, _] | [name, dir] => format!("{dir}/{name}"),
        _ => file.to_string(),
    };
    format!("{short}:{line}")
}

/// The event's message, and its other fields as `,"name":value` in the order recorded.
#[derive(Default)]
struct JsonFields {
    message: String,
    rest: String,
}

impl JsonFields {
    fn push(&mut self, field: &Field, value: &str) {
        let _ = write!(self.rest, ",{}:{value}", json_string(field.name()));
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.push(field, &json_string(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, &value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, &value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, &value.to_string());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.push(field, &value.to_string());
        } else {
            self.push(field, &json_string(&value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `unix_ms` as zap's ISO 8601 time in UTC with milliseconds: `2026-12-05T03:12:23.606Z`.
fn iso8601_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
