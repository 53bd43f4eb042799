//! The engine is pure (DESIGN.md rule 1): its sources never reach for I/O, clocks, threads or
//! OS randomness. clippy's `disallowed-methods` (engine/clippy.toml) catches calls; this test
//! catches the imports and names, including in code clippy would not see (cfg'd out, macros).

use std::path::Path;

const BANNED: &[&str] = &[
    "tokio",
    "madsim",
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "std::env",
    "Instant::now",
    "SystemTime",
    "thread_rng",
    "OsRng",
    "getrandom",
    "HashMap",
    "HashSet",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("engine/src is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Finds banned uses in one source text; comment lines are skipped. The `madsim` cfg flag
/// (simulation builds: `crate::bugs`) is allowed; the madsim crate is not.
fn violations(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line
            .trim_start()
            .replace("cfg(not(madsim))", "")
            .replace("cfg(madsim)", "");
        if code.starts_with("//") {
            continue;
        }
        for banned in BANNED {
            if code.contains(banned) {
                found.push((n + 1, *banned));
            }
        }
    }
    found
}

#[test]
fn engine_sources_hold_no_io_clock_thread_or_os_randomness() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() >= 3,
        "expected engine sources under {}",
        src.display()
    );
    let mut report = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source is readable");
        for (line, what) in violations(&text) {
            report.push(format!("{}:{line}: {what}", file.display()));
        }
    }
    assert!(
        report.is_empty(),
        "the engine must stay pure:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_check_catches_what_it_should() {
    let bad = "use std::time::SystemTime;\nlet t = std::time::Instant::now();\n";
    assert_eq!(violations(bad).len(), 2);
    let bad = "    let mut rng = rand::thread_rng();";
    assert_eq!(violations(bad), vec![(1, "thread_rng")]);
    assert!(violations("// a comment about tokio\nlet x = 1;").is_empty());
}
