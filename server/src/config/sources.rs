//! Where a member's configuration comes from, with etcd's conventions.
//!
//! - **The command line**, with etcd's flag names. A repeated flag takes its last value, and a
//!   boolean flag also takes Go's `--flag=true|false`, as etcd's do.
//! - **Environment variables**: every flag `--some-flag` is also read from `KEEL_SOME_FLAG` and
//!   from etcd's `ETCD_SOME_FLAG`, so a packaged `/etc/etcd/etcd.conf` works as it stands.
//!   `KEEL_*` wins when both are set; a flag on the command line wins over `KEEL_*`. As in
//!   etcd, an `ETCD_*` variable that a command-line flag shadows stops the start, and an
//!   `ETCD_*` variable that names no flag is warned about.
//! - **etcd's YAML file** (`--config-file`, or `KEEL_CONFIG_FILE`/`ETCD_CONFIG_FILE`). As in
//!   etcd, when a file is given it is the whole configuration: other flags and variables are
//!   ignored, and the log says so.
//!
//! An etcd flag keel does not implement is never silently ignored: wherever it is set (flag,
//! variable or file key), it is accepted only when it asks for etcd's default (`--wal-dir=''`,
//! `ETCD_ENABLE_PPROF=false`), which is what keel does, and refused by name otherwise. A file
//! key that is no etcd flag at all is refused too (etcd ignores it; a typo would then do
//! nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use clap::{ArgAction, CommandFactory as _, FromArgMatches as _};

use super::etcd_flags::{etcd_default, is_bool, is_etcd_default, parse_go_bool};
use super::{yaml, Config, ConfigError};

/// A loaded configuration, with what to log about how it was read once logging is up.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Warnings (etcd's unrecognized variables, ignored sources) and notes.
    pub notes: Vec<Note>,
}

/// Something to log about the configuration's sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Worth a warning.
    Warn(String),
    /// Worth an info line.
    Info(String),
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// clap's own outcome: a usage error, or `--help`/`--version` (call `exit` on it).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// A source names something keel cannot do.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Variables with keel's prefix that are not flags.
const NOT_FLAGS: &[&str] = &["KEEL_LOG"];

/// Loads the configuration from `args` (with the program name first) and `env`.
pub fn load(
    args: impl IntoIterator<Item = OsString>,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Loaded, LoadError> {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| ConfigError::NotUnicode(format!("{a:?}")))
        })
        .collect::<Result<_, _>>()?;
    let env = prefixed_env(env)?;
    let flags = KeelFlags::new();
    let mut notes = Vec::new();
    let cli = scan_command_line(&args, &flags, &mut notes)?;
    let file = cli
        .config_file
        .clone()
        .or_else(|| env.get("KEEL_CONFIG_FILE").cloned())
        .or_else(|| env.get("ETCD_CONFIG_FILE").cloned())
        .filter(|f| !f.is_empty());
    let program = args.first().cloned().unwrap_or_else(|| "keel".into());
    let mut argv = vec![program];
    match file {
        Some(path) => {
            argv.extend(file_args(&path, &flags, &mut notes)?);
            argv.push(format!("--config-file={path}"));
            notes.push(Note::Info(format!(
                "loaded server configuration from {path}; other configuration command line \
                 flags and environment variables are ignored if provided"
            )));
        }
        None => {
            argv.extend(env_args(&env, &cli.set, &flags, &mut notes)?);
            argv.extend(cli.kept);
        }
    }
    let matches = command().try_get_matches_from(argv)?;
    let config = Config::from_arg_matches(&matches)?;
    Ok(Loaded { config, notes })
}

/// keel's command, reading no environment itself: [`load`] does that, with both prefixes.
fn command() -> clap::Command {
    Config::command().mut_args(|arg| arg.env(None))
}

/// The environment variables with keel's or etcd's prefix.
fn prefixed_env(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (key, value) in env {
        let Some(key) = key.to_str() else { continue };
        if !(key.starts_with("KEEL_") || key.starts_with("ETCD_")) {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|v| ConfigError::NotUnicode(format!("{key}={v:?}")))?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// keel's long flags, each with whether it takes a value.
struct KeelFlags(BTreeMap<String, bool>);

impl KeelFlags {
    fn new() -> Self {
        let mut cmd = Config::command();
        cmd.build();
        let flags = cmd
            .get_arguments()
            .filter_map(|a| {
                // A boolean with an optional value (`--flag`, `--flag=false`) is a flag too.
                let optional = a.get_num_args().is_some_and(|n| n.min_values() == 0);
                let takes_value = !optional
                    && !matches!(
                        a.get_action(),
                        ArgAction::SetTrue
                            | ArgAction::SetFalse
                            | ArgAction::Help
                            | ArgAction::HelpLong
                            | ArgAction::HelpShort
                            | ArgAction::Version
                            | ArgAction::Count
                    );
                a.get_long().map(|l| (l.to_string(), takes_value))
            })
            .collect();
        Self(flags)
    }

    /// Whether keel has `flag`, and if so whether it takes a value.
    fn takes_value(&self, flag: &str) -> Option<bool> {
        self.0.get(flag).copied()
    }
}

/// What the command line says, with etcd-only flags taken out.
struct CommandLine {
    /// Arguments for clap, without the program name.
    kept: Vec<String>,
    /// Flags set on the command line (keel's and etcd's).
    set: BTreeSet<String>,
    config_file: Option<String>,
}

fn scan_command_line(
    args: &[String],
    flags: &KeelFlags,
    notes: &mut Vec<Note>,
) -> Result<CommandLine, ConfigError> {
    let mut out = CommandLine {
        kept: Vec::new(),
        set: BTreeSet::new(),
        config_file: None,
    };
    let mut rest = args.iter().skip(1);
    while let Some(token) = rest.next() {
        let Some(body) = token.strip_prefix("--").filter(|b| !b.is_empty()) else {
            out.kept.push(token.clone());
            if token == "--" {
                out.kept.extend(rest.cloned());
                break;
            }
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        match flags.takes_value(name) {
            Some(true) => {
                out.set.insert(name.to_string());
                out.kept.push(token.clone());
                let value = match inline {
                    Some(v) => Some(v),
                    None => rest.next().cloned().inspect(|v| out.kept.push(v.clone())),
                };
                if name == "config-file" {
                    out.config_file = value;
                }
            }
            Some(false) => {
                out.set.insert(name.to_string());
                match inline {
                    None => out.kept.push(token.clone()),
                    Some(v) => match parse_go_bool(&v) {
                        Some(true) => out.kept.push(format!("--{name}")),
                        Some(false) => {}
                        None => return Err(bad_value(&format!("--{name}"), &v)),
                    },
                }
            }
            None if etcd_default(name).is_some() => {
                out.set.insert(name.to_string());
                let value = match inline {
                    Some(v) => v,
                    None if is_bool(name) => "true".into(),
                    None => rest.next().cloned().unwrap_or_default(),
                };
                accept_etcd_default(name, &value, "the command line", notes)?;
            }
            // Neither keel's nor etcd's: clap refuses it with its usual message.
            None => out.kept.push(token.clone()),
        }
    }
    Ok(out)
}

/// An etcd flag keel lacks, set to `value` by `source`: accepted, with a note, only when it
/// asks for etcd's default.
fn accept_etcd_default(
    flag: &str,
    value: &str,
    source: &str,
    notes: &mut Vec<Note>,
) -> Result<(), ConfigError> {
    let default = etcd_default(flag).unwrap_or_default();
    if is_bool(flag) && parse_go_bool(value).is_none() {
        let name = if source.starts_with("ETCD_") || source.starts_with("KEEL_") {
            source.to_string()
        } else {
            format!("--{flag}")
        };
        return Err(bad_value(&name, value));
    }
    if !is_etcd_default(flag, value) {
        return Err(ConfigError::Unsupported {
            flag: flag.to_string(),
            value: value.to_string(),
            origin: source.to_string(),
            default: default.to_string(),
        });
    }
    notes.push(Note::Info(format!(
        "etcd's --{flag}={value:?} from {source} is etcd's default, which is what keel does"
    )));
    Ok(())
}

fn bad_value(var: &str, value: &str) -> ConfigError {
    ConfigError::BadValue {
        name: var.to_string(),
        value: value.to_string(),
    }
}

/// Flags for the `KEEL_*` and `ETCD_*` variables, `KEEL_*` first in precedence.
fn env_args(
    env: &BTreeMap<String, String>,
    on_command_line: &BTreeSet<String>,
    flags: &KeelFlags,
    notes: &mut Vec<Note>,
) -> Result<Vec<String>, ConfigError> {
    let mut chosen: BTreeMap<String, (String, String)> = BTreeMap::new();
    // ETCD_ sorts before KEEL_, so a KEEL_ value replaces an ETCD_ one.
    for (var, value) in env {
        if NOT_FLAGS.contains(&var.as_str()) || var.ends_with("_CONFIG_FILE") {
            continue;
        }
        let is_etcd = var.starts_with("ETCD_");
        let flag = var[5..].to_ascii_lowercase().replace('_', "-");
        if is_etcd && on_command_line.contains(&flag) {
            return Err(ConfigError::EnvConflict(var.clone()));
        }
        if flags.takes_value(&flag).is_some() {
            if !on_command_line.contains(&flag) {
                chosen.insert(flag, (var.clone(), value.clone()));
            }
        } else if etcd_default(&flag).is_some() {
            accept_etcd_default(&flag, value, var, notes)?;
        } else {
            notes.push(Note::Warn(format!(
                "unrecognized environment variable {var}={value}"
            )));
        }
    }
    let mut out = Vec::new();
    for (flag, (var, value)) in chosen {
        if flags.takes_value(&flag) == Some(false) {
            match parse_go_bool(&value) {
                Some(true) => out.push(format!("--{flag}")),
                Some(false) => {}
                None => return Err(bad_value(&var, &value)),
            }
        } else {
            out.push(format!("--{flag}={value}"));
        }
    }
    Ok(out)
}

/// Flags for the settings of the YAML file at `path`.
fn file_args(
    path: &str,
    flags: &KeelFlags,
    notes: &mut Vec<Note>,
) -> Result<Vec<String>, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_string(),
        reason,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot be read: {e}")))?;
    let settings = yaml::settings(&text).map_err(file_error)?;
    let source = format!("config file {path}");
    let mut out = Vec::new();
    for (flag, value) in settings {
        match flags.takes_value(&flag) {
            Some(true) if flag == "config-file" => {}
            Some(true) => out.push(format!("--{flag}={value}")),
            Some(false) => match parse_go_bool(&value) {
                Some(true) => out.push(format!("--{flag}")),
                Some(false) => {}
                None => return Err(bad_value(&format!("{flag} in {source}"), &value)),
            },
            None if etcd_default(&flag).is_some() => {
                accept_etcd_default(&flag, &value, &source, notes)?;
            }
            None => {
                return Err(file_error(format!(
                    "has key {flag:?}, which is no etcd or keel setting"
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
