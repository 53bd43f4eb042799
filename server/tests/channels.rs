//! Every channel of the server is bounded, or says where it is created why it cannot be and
//! what bounds it in practice: an `unbounded_channel` must follow a comment that starts
//! with "Unbounded" and says what bounds it "in practice".

use std::path::{Path, PathBuf};

#[test]
fn every_unbounded_channel_says_why_and_what_bounds_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut undocumented = Vec::new();
    let mut found = 0;
    for path in rust_files(&src) {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if !line.contains("unbounded_channel") || line.trim().starts_with("//") {
                continue;
            }
            found += 1;
            let comment: Vec<&str> = lines[..n]
                .iter()
                .rev()
                .map(|l| l.trim())
                .take_while(|l| l.starts_with("//"))
                .collect();
            let comment = comment.into_iter().rev().collect::<Vec<_>>().join(" ");
            let documented = comment
                .trim_start_matches('/')
                .trim()
                .starts_with("Unbounded")
                && comment.contains("in practice");
            if !documented {
                undocumented.push(format!("{}:{}", path.display(), n + 1));
            }
        }
    }
    assert!(
        found > 0,
        "expected the server's unbounded channels under {}",
        src.display()
    );
    assert!(
        undocumented.is_empty(),
        "unbounded channels without an \"Unbounded, because ... in practice ...\" comment: \
         {undocumented:?}"
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
    out
}
