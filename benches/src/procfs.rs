//! Resident memory and CPU time of a process, read from Linux's `/proc`.

use anyhow::{bail, Context};

/// Clock ticks per second in `/proc/PID/stat` (USER_HZ: 100 on every Linux architecture we
/// run on; the kernel fixes it for user space whatever its internal HZ).
const USER_HZ: f64 = 100.0;

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// This load generator.
    Myself,
    /// Another process (the server under test).
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Myself => "/proc/self".to_string(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// `VmRSS` (resident set size) in bytes.
pub fn rss_bytes(pid: Pid) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS").map(|kib| kib * 1024)
}

fn status_kib(pid: Pid, field: &str) -> anyhow::Result<u64> {
    let path = format!("{}/status", pid.dir());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, field).with_context(|| format!("no {field} in {path}"))
}

/// Finds `FIELD:   1234 kB` in the text of `/proc/PID/status`.
fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// User plus system CPU seconds the process has used so far (all threads).
pub fn cpu_secs(pid: Pid) -> anyhow::Result<f64> {
    let path = format!("{}/stat", pid.dir());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu_secs(&text).with_context(|| format!("malformed {path}"))
}

/// `utime` and `stime` are fields 14 and 15 of `/proc/PID/stat`; field 2 (the command name, in
/// parentheses) may hold spaces, so counting starts after its closing parenthesis.
fn parse_stat_cpu_secs(text: &str) -> anyhow::Result<f64> {
    let after_name = match text.rfind(')') {
        Some(at) => &text[at + 1..],
        None => bail!("no command name"),
    };
    // After the name come field 3 (state), 4, ...: utime is the 12th of those, stime the 13th.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("only {} fields", fields.len());
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok((utime + stime) as f64 / USER_HZ)
}

/// Bytes as MiB with one decimal, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_in_kib() {
        let text = "Name:\tetcd\nVmHWM:\t  187000 kB\nVmRSS:\t  123456 kB\n";
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(123_456));
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(187_000));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn stat_cpu_skips_a_name_with_spaces() {
        let text = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(parse_stat_cpu_secs(text).expect("parses"), 3.0);
        assert!(parse_stat_cpu_secs("42 (x) S 1").is_err());
    }

    #[test]
    fn reads_this_process() {
        assert!(rss_bytes(Pid::Myself).expect("VmRSS") > 0);
        assert!(cpu_secs(Pid::Myself).expect("cpu") >= 0.0);
    }
}
