use std::path::PathBuf;

use super::*;

fn load_with(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, LoadError> {
    let mut argv = vec![OsString::from("keel")];
    argv.extend(args.iter().map(OsString::from));
    let env = env
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    load(argv, env)
}

fn config_error(result: Result<Loaded, LoadError>) -> ConfigError {
    match result {
        Err(LoadError::Config(e)) => e,
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(loaded) => panic!("expected a configuration error, got {:?}", loaded.config),
    }
}

#[test]
fn etcd_variables_set_flags_and_keel_ones_win() {
    let loaded = load_with(
        &[],
        &[
            ("ETCD_NAME", "from-etcd"),
            ("ETCD_DATA_DIR", "/var/lib/etcd"),
            ("ETCD_INITIAL_CLUSTER", "from-etcd=http://10.0.0.1:2380"),
            ("ETCD_INITIAL_CLUSTER_STATE", "existing"),
            ("KEEL_DATA_DIR", "/var/lib/keel"),
            ("PATH", "/usr/bin"),
        ],
    )
    .expect("loads");
    let c = loaded.config;
    assert_eq!(c.name, "from-etcd", "ETCD_NAME sets --name");
    assert_eq!(
        c.data_dir,
        PathBuf::from("/var/lib/keel"),
        "KEEL_ wins over ETCD_"
    );
    assert_eq!(c.initial_cluster_state, "existing");
    assert_eq!(c.initial_members().expect("names this member").len(), 1);
    assert!(
        loaded.notes.is_empty(),
        "nothing to warn about: {:?}",
        loaded.notes
    );
}

#[test]
fn the_command_line_wins_over_keel_variables_and_the_last_flag_counts() {
    let c = load_with(
        &["--name", "a", "--name=b", "--snapshot-count", "7"],
        &[("KEEL_NAME", "k"), ("KEEL_SNAPSHOT_COUNT", "9")],
    )
    .expect("loads")
    .config;
    assert_eq!(
        c.name, "b",
        "a repeated flag takes its last value, as Go's flags do"
    );
    assert_eq!(c.snapshot_count, 7, "the command line wins over KEEL_");
}

#[test]
fn an_etcd_variable_shadowed_by_a_flag_stops_the_start_as_in_etcd() {
    let e = config_error(load_with(&["--name", "y"], &[("ETCD_NAME", "x")]));
    assert_eq!(
        e.to_string(),
        "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding \
         command-line flag (either unset environment variable or disable flag)"
    );
}

#[test]
fn unknown_etcd_variables_are_warned_about() {
    let loaded = load_with(&[], &[("ETCD_FOO", "1")]).expect("loads");
    assert_eq!(
        loaded.notes,
        vec![Note::Warn(
            "unrecognized environment variable ETCD_FOO=1".into()
        )]
    );
}

#[test]
fn etcd_flags_keel_lacks_are_accepted_only_at_etcds_default() {
    let loaded = load_with(
        &["--wal-dir=", "--strict-reconfig-check", "--max-wals", "5"],
        &[("ETCD_ENABLE_PPROF", "false"), ("ETCD_DISCOVERY_SRV", "")],
    )
    .expect("etcd's defaults are what keel does");
    assert_eq!(loaded.notes.len(), 5, "each one noted: {:?}", loaded.notes);
    let e = config_error(load_with(&["--wal-dir", "/wal"], &[]));
    assert_eq!(
        e.to_string(),
        "keel does not support etcd's --wal-dir (the command line sets it to \"/wal\"); it \
         accepts only etcd's default \"\""
    );
    let e = config_error(load_with(&[], &[("ETCD_DISCOVERY", "https://d.example/x")]));
    assert!(
        e.to_string()
            .contains("--discovery (ETCD_DISCOVERY sets it"),
        "names the flag and the variable: {e}"
    );
    let e = config_error(load_with(&[], &[("ETCD_ENABLE_PPROF", "yes")]));
    assert_eq!(
        e.to_string(),
        "invalid value \"yes\" for ETCD_ENABLE_PPROF: parse error"
    );
}

#[test]
fn enable_v2_is_a_keel_flag() {
    let off = load_with(&[], &[]).expect("defaults");
    assert!(!off.config.enable_v2, "off by default, as in etcd 3.4");
    let on = load_with(&["--enable-v2"], &[]).expect("a bare flag");
    assert!(on.config.enable_v2, "--enable-v2");
    let on = load_with(&["--enable-v2=true"], &[]).expect("with a value");
    assert!(on.config.enable_v2, "--enable-v2=true");
    let env = load_with(&[], &[("ETCD_ENABLE_V2", "true")]).expect("etcd's variable");
    assert!(env.config.enable_v2, "ETCD_ENABLE_V2");
}

#[test]
fn flags_neither_etcd_nor_keel_has_are_clap_errors() {
    match load_with(&["--bogus-flag"], &[]) {
        Err(LoadError::Usage(e)) => assert!(e.to_string().contains("--bogus-flag"), "{e}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("keel-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        Self(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_config_file_is_the_whole_configuration() {
    let file = TempFile::new(
        "whole.yml",
        "name: fromfile\ndata-dir: /srv/keel\ninitial-cluster: fromfile=http://127.0.0.1:23801\n\
         listen-client-urls: http://127.0.0.1:23791\nlog-outputs: [stderr]\nlogger: zap\n\
         snapshot-count: 500\nenable-v2: false\nproxy: 'off'\n",
    );
    let loaded = load_with(
        &["--config-file", &file.path(), "--name", "ignored"],
        &[("ETCD_NAME", "ignored-too")],
    )
    .expect("loads");
    let c = loaded.config;
    assert_eq!(
        c.name, "fromfile",
        "flags and variables are ignored, as in etcd"
    );
    assert_eq!(c.data_dir, PathBuf::from("/srv/keel"));
    assert_eq!(c.snapshot_count, 500);
    assert_eq!(c.logger, "zap");
    assert_eq!(c.config_file, Some(PathBuf::from(file.path())));
    assert!(
        loaded
            .notes
            .iter()
            .any(|n| matches!(n, Note::Info(t) if t.contains("are ignored if provided"))),
        "the log says other sources are ignored: {:?}",
        loaded.notes
    );
    let from_env = load_with(&[], &[("ETCD_CONFIG_FILE", &file.path())]).expect("loads");
    assert_eq!(
        from_env.config.name, "fromfile",
        "ETCD_CONFIG_FILE names it too"
    );
}

#[test]
fn a_config_file_with_an_unknown_or_unsupported_key_is_refused() {
    let typo = TempFile::new("typo.yml", "nmae: x\n");
    let e = config_error(load_with(&["--config-file", &typo.path()], &[]));
    assert!(
        e.to_string().contains("has key \"nmae\""),
        "names the key: {e}"
    );
    let wal = TempFile::new("wal.yml", "wal-dir: /wal\n");
    let e = config_error(load_with(&["--config-file", &wal.path()], &[]));
    assert!(
        e.to_string().contains("etcd's --wal-dir (config file"),
        "{e}"
    );
    let e = config_error(load_with(&["--config-file", "/no/such/keel.yml"], &[]));
    assert!(e.to_string().contains("cannot be read"), "{e}");
}
