//! The server's modules depend on each other one way only: no module of `server/src` reaches,
//! through `crate::`/`super::`/`self::` paths or child-module paths, a module that reaches it
//! back, and the layers point down (`client/` and `peer/` → `driver/` → the engine).
//!
//! Every file is a module (`lib.rs` the root, `x/mod.rs` the module `x`). A path names the
//! deepest module it passes through; naming an item of `lib.rs` (`crate::Foo`) depends on the
//! root, which depends on everything, so only submodules' own paths keep the graph acyclic.
//! Comments and string literals are blanked before paths are read; `#[cfg]`-gated code counts
//! for both builds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path: `[]` is the crate root, `["driver", "handle"]` is `driver/handle.rs`.
type Module = Vec<String>;

/// (from, to): no module at or under `from` may depend on one at or under `to`.
const FORBIDDEN: &[(&str, &str)] = &[
    ("driver", "client"),
    ("driver", "peer"),
    ("peer", "client"),
    ("status", "client"),
    ("status", "peer"),
];

#[test]
fn server_modules_form_no_cycle_and_layers_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = module_files(&src);
    assert!(
        files.len() > 10,
        "expected the server's module files under {}, found {}",
        src.display(),
        files.len()
    );
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let edges = graph.entry(module.clone()).or_default();
        for target in dependencies(module, &text, &modules) {
            if &target != module {
                edges.insert(target);
            }
        }
    }
    let mut broken = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            for (f, t) in FORBIDDEN {
                if from.first().map(String::as_str) == Some(*f)
                    && to.first().map(String::as_str) == Some(*t)
                {
                    broken.push(format!("{} → {}", name(from), name(to)));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependencies against the layering: {broken:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(name).collect();
        panic!("module cycle in server/src: {}", names.join(" → "));
    }
}

#[test]
fn the_check_sees_a_cycle_through_the_root_and_through_super() {
    let modules: BTreeSet<Module> = [vec![], m("a"), m("a::b"), m("c")].into_iter().collect();
    let root = "pub mod a;\npub mod c;\nuse crate::a::b::Thing; // crate::c::Nope\n";
    let a = "mod b;\npub use b::Thing;\nfn f() { let _ = \"crate::c::X\"; }\n";
    let b = "use super::super::Root;\nuse crate::{c::{self, Y}, a};\n";
    assert_eq!(dependencies(&vec![], root, &modules), set(&["a::b"]));
    assert_eq!(dependencies(&m("a"), a, &modules), set(&["a::b"]));
    assert_eq!(dependencies(&m("a::b"), b, &modules), set(&["", "c", "a"]));
    let graph: BTreeMap<Module, BTreeSet<Module>> = [
        (vec![], set(&["a::b"])),
        (m("a"), set(&["a::b"])),
        (m("a::b"), set(&[""])),
    ]
    .into_iter()
    .collect();
    assert!(
        find_cycle(&graph).is_some(),
        "root → a::b → root is a cycle"
    );
    let inline = "mod tests {\n use super::*;\n}\n";
    assert_eq!(
        dependencies(&m("c"), inline, &modules),
        set(&["c"]),
        "an inline module's super is the file itself"
    );
}

/// A cycle in `graph` (its modules in order, the first repeated at the end), if any.
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        at: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(at) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|m| m == at).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(at.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(at.clone(), Mark::Open);
        stack.push(at.clone());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(at.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut marks, &mut Vec::new()))
}

fn m(path: &str) -> Module {
    path.split("::")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn set(paths: &[&str]) -> BTreeSet<Module> {
    paths.iter().map(|p| m(p)).collect()
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// Every `.rs` file of the library under `src`, by module path (`main.rs` is another crate).
fn module_files(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .unwrap_or_else(|e| panic!("{} outside {}: {e}", path.display(), src.display()));
            let mut module: Module = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match module.last().map(String::as_str) {
                Some("main") if module.len() == 1 => continue,
                Some("lib") if module.len() == 1 => module.clear(),
                Some("mod") => {
                    module.pop();
                }
                _ => {}
            }
            out.insert(module, path);
        }
    }
    out
}

/// The modules the file of `module` names.
fn dependencies(module: &Module, text: &str, modules: &BTreeSet<Module>) -> BTreeSet<Module> {
    let tokens = tokens(&blank_literals(text));
    let mut out = BTreeSet::new();
    // Inline modules (`mod tests { .. }`) open at a brace depth; their paths resolve inside them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((tokens[i + 1].clone(), depth));
            }
            _ => {}
        }
        let mut here = module.clone();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        let starts_path = is_ident(t) && (i == 0 || tokens[i - 1] != "::");
        if t == "use" {
            let (paths, next) = use_tree(&tokens, i + 1, Vec::new());
            for path in paths {
                if let Some(target) = resolve(&here, &path, modules) {
                    out.insert(target);
                }
            }
            i = next;
            continue;
        } else if starts_path {
            let mut path = vec![t.to_string()];
            let mut j = i + 1;
            while tokens.get(j).map(String::as_str) == Some("::")
                && tokens.get(j + 1).is_some_and(|s| is_ident(s))
            {
                path.push(tokens[j + 1].clone());
                j += 2;
            }
            if path.len() > 1 {
                if let Some(target) = resolve(&here, &path, modules) {
                    out.insert(target);
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// The paths of one `use` tree starting at `tokens[at]`, under `prefix`; and where it ends.
fn use_tree(tokens: &[String], mut at: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut path = prefix;
    let mut paths = Vec::new();
    while at < tokens.len() {
        match tokens[at].as_str() {
            "::" => at += 1,
            "{" => {
                at += 1;
                loop {
                    if tokens.get(at).map(String::as_str) == Some("}") {
                        at += 1;
                        break;
                    }
                    let (inner, next) = use_tree(tokens, at, path.clone());
                    paths.extend(inner);
                    at = next;
                    match tokens.get(at).map(String::as_str) {
                        Some(",") => at += 1,
                        Some("}") => {
                            at += 1;
                            break;
                        }
                        _ => return (paths, at),
                    }
                }
                return (paths, skip_to_end(tokens, at));
            }
            "*" => {
                paths.push(path);
                return (paths, at + 1);
            }
            "as" => {
                paths.push(path);
                return (paths, at + 2);
            }
            "," | "}" | ";" => {
                paths.push(path);
                return (paths, if tokens[at] == ";" { at + 1 } else { at });
            }
            "self" if !path.is_empty() => at += 1,
            s if is_ident(s) => {
                path.push(s.to_string());
                at += 1;
            }
            _ => return (paths, at + 1),
        }
    }
    (paths, at)
}

fn skip_to_end(tokens: &[String], at: usize) -> usize {
    match tokens.get(at).map(String::as_str) {
        Some(";") => at + 1,
        _ => at,
    }
}

/// The deepest module of the crate that `path`, written in module `here`, passes through.
fn resolve(here: &Module, path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let (mut abs, rest): (Module, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (here.clone(), &path[1..]),
        Some("super") => {
            let mut base = here.clone();
            let mut k = 0;
            while path.get(k).map(String::as_str) == Some("super") {
                base.pop();
                k += 1;
            }
            (base, &path[k..])
        }
        Some(first) => {
            let mut child = here.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None; // another crate, or an item in scope
            }
            (here.clone(), path)
        }
        None => return None,
    };
    // Inline modules are part of their file.
    while !modules.contains(&abs) {
        abs.pop();
    }
    for segment in rest {
        abs.push(segment.clone());
        if !modules.contains(&abs) {
            abs.pop();
            break;
        }
    }
    Some(abs)
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::`, and every other character on its own.
fn tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// `text` with comments, string literals and char literals replaced by spaces.
fn blank_literals(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |k: usize| c[k].is_alphanumeric() || c[k] == '_';
    // `r"..."` or `br"..."`, not the end of an identifier.
    let raw_prefix = |k: usize| match k {
        0 => true,
        _ if c[k - 1] == 'b' => k < 2 || !ident(k - 2),
        _ => !ident(k - 1),
    };
    while i < c.len() {
        let end = if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len())
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            block_comment_end(&c, i)
        } else if c[i] == '"' {
            string_end(&c, i + 1)
        } else if c[i] == 'r' && raw_prefix(i) && raw_string_start(&c, i + 1) {
            raw_string_end(&c, i + 1)
        } else if c[i] == '\'' {
            char_end(&c, i).unwrap_or(i + 1)
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        out.push(' ');
        i = end;
    }
    out
}

fn block_comment_end(c: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut k = start;
    while k + 1 < c.len() {
        if c[k] == '/' && c[k + 1] == '*' {
            depth += 1;
            k += 2;
        } else if c[k] == '*' && c[k + 1] == '/' {
            depth -= 1;
            k += 2;
            if depth == 0 {
                return k;
            }
        } else {
            k += 1;
        }
    }
    c.len()
}

/// After an opening `"` at `k - 1`: the index after the closing one.
fn string_end(c: &[char], mut k: usize) -> usize {
    while k < c.len() {
        match c[k] {
            '\\' => k += 2,
            '"' => return k + 1,
            _ => k += 1,
        }
    }
    c.len()
}

fn raw_string_start(c: &[char], mut k: usize) -> bool {
    while c.get(k) == Some(&'#') {
        k += 1;
    }
    c.get(k) == Some(&'"')
}

/// After the `r` of a raw string at `k - 1`: the index after its closing `"#..`.
fn raw_string_end(c: &[char], mut k: usize) -> usize {
    let mut hashes = 0;
    while c.get(k) == Some(&'#') {
        hashes += 1;
        k += 1;
    }
    k += 1;
    while k < c.len() {
        if c[k] == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#')) {
            return k + 1 + hashes;
        }
        k += 1;
    }
    c.len()
}

/// A char literal at `k` (`'x'`, `'\n'`, `'\u{..}'`): the index after it; `None` for a
/// lifetime.
fn char_end(c: &[char], k: usize) -> Option<usize> {
    if c.get(k + 1) == Some(&'\\') {
        return (k + 3..c.len()).find(|&e| c[e] == '\'').map(|e| e + 1);
    }
    (c.get(k + 2) == Some(&'\'')).then_some(k + 3)
}
