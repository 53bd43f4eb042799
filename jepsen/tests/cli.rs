//! `keel-jepsen check FILE` and `keel-jepsen test` option errors: output and exit codes.
#![allow(clippy::unwrap_used)]
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-jepsen"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

#[test]
fn valid_history_exits_zero() {
    let (code, out) = run(&["check", "tests/data/readme.jsonl"]);
    assert_eq!((code, out.trim()), (0, "valid"));
    let (code, out) = run(&["check", "tests/data/cas-chain.jsonl"]);
    assert_eq!((code, out.trim()), (0, "valid"));
}

#[test]
fn stale_read_exits_one_with_the_explanation() {
    let (code, out) = run(&["check", "tests/data/stale-read.jsonl"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("invalid: RealTime: read at rev 2 by p3 (get x) saw x=1"),
        "{out}"
    );
    assert!(
        out.contains("op 1: p1 put x=2 -> ok rev 3 [t 300..400]"),
        "{out}"
    );
}

#[test]
fn unreadable_history_exits_two() {
    let (code, out) = run(&["check", "tests/data/no-such-file.jsonl"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("unknown:"), "{out}");
}

#[test]
fn test_rejects_bad_options_before_touching_the_network() {
    let (code, out) = run(&[
        "test",
        "--server",
        "keel",
        "--bin",
        "/bin/true",
        "--nodes",
        "4",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--nodes must be 3 or 5"), "{out}");
    let (code, out) = run(&[
        "test",
        "--server",
        "etcd",
        "--bin",
        "/bin/true",
        "--nemesis",
        "flood",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unknown nemesis \"flood\""), "{out}");
    let (code, out) = run(&[
        "test",
        "--server",
        "etcd",
        "--bin",
        "/bin/true",
        "--workload",
        "bank",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("workload \"bank\" is not implemented"),
        "{out}"
    );
}
