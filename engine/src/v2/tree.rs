//! The v2 tree: directories and keys, and how a node looks to a client (etcd's `node` and
//! `NodeExtern`). Nodes do not store their paths; a walk computes them.

use std::collections::BTreeMap;

use keel_proto::keelpb::V2Node;

/// One node of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    /// The index that created it.
    pub created: u64,
    /// The index that last wrote it.
    pub modified: u64,
    /// When it expires, in Unix nanoseconds (0: never).
    pub expiration: i64,
    /// A key's value, or a directory's children.
    pub kind: Kind,
}

/// A key or a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A key and its value.
    File(String),
    /// A directory and its children, by name (so always listed sorted).
    Dir(BTreeMap<String, Node>),
}

impl Node {
    /// A new key.
    pub fn file(value: String, index: u64, expiration: i64) -> Node {
        Node {
            created: index,
            modified: index,
            expiration,
            kind: Kind::File(value),
        }
    }

    /// A new, empty directory.
    pub fn dir(index: u64, expiration: i64) -> Node {
        Node {
            created: index,
            modified: index,
            expiration,
            kind: Kind::Dir(BTreeMap::new()),
        }
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    /// A key's value ("" for a directory).
    pub fn value(&self) -> &str {
        match &self.kind {
            Kind::File(v) => v,
            Kind::Dir(_) => "",
        }
    }

    /// A directory's children.
    pub fn children(&self) -> Option<&BTreeMap<String, Node>> {
        match &self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    /// A directory's children, to change.
    pub fn children_mut(&mut self) -> Option<&mut BTreeMap<String, Node>> {
        match &mut self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    /// The node as a client sees it (etcd's `Repr`): a directory lists its (visible) children
    /// only when `recursive`.
    pub fn repr(&self, path: &str, recursive: bool, now: i64) -> V2Node {
        let mut out = V2Node {
            key: path.to_string(),
            modified_index: self.modified,
            created_index: self.created,
            ..V2Node::default()
        };
        self.set_ttl(&mut out, now);
        match &self.kind {
            Kind::File(v) => out.value = Some(v.clone()),
            Kind::Dir(children) => {
                out.dir = true;
                if recursive {
                    out.nodes = list(children, path, true, now);
                }
            }
        }
        out
    }

    /// The node as a get answers it (etcd's `loadInternalNode`): a directory always lists
    /// its children, expanded further only when `recursive`.
    pub fn load(&self, path: &str, recursive: bool, now: i64) -> V2Node {
        let mut out = V2Node {
            key: path.to_string(),
            modified_index: self.modified,
            created_index: self.created,
            ..V2Node::default()
        };
        match &self.kind {
            Kind::File(v) => out.value = Some(v.clone()),
            Kind::Dir(children) => {
                out.dir = true;
                out.nodes = list(children, path, recursive, now);
            }
        }
        self.set_ttl(&mut out, now);
        out
    }

    /// Fills `expiration` and `ttl` (etcd's `expirationAndTTL`: the TTL is the remaining time
    /// rounded up to whole seconds).
    pub fn set_ttl(&self, out: &mut V2Node, now: i64) {
        if self.expiration == 0 {
            return;
        }
        out.expiration = self.expiration;
        out.ttl = ttl_seconds(self.expiration, now);
    }
}

/// Seconds from `now` to `expiration`, rounded up (Go's truncating division, as etcd).
pub(crate) fn ttl_seconds(expiration: i64, now: i64) -> i64 {
    let left = expiration.saturating_sub(now);
    let mut ttl = left / 1_000_000_000;
    if left % 1_000_000_000 > 0 {
        ttl += 1;
    }
    ttl
}

/// The visible children of a directory at `path`, in key order.
fn list(children: &BTreeMap<String, Node>, path: &str, recursive: bool, now: i64) -> Vec<V2Node> {
    children
        .iter()
        .filter(|(name, _)| !is_hidden_name(name))
        .map(|(name, child)| child.repr(&join(path, name), recursive, now))
        .collect()
}

/// A name starting with `_` is hidden from listings (etcd's hidden nodes).
pub(crate) fn is_hidden_name(name: &str) -> bool {
    name.starts_with('_')
}

/// `dir` + "/" + `name`, for a cleaned `dir`.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Go's `path.Clean(path.Join("/", p))`: rooted, no empty, `.` or `..` components.
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The components of a cleaned path (none for the root).
pub(crate) fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// A cleaned path's parent directory and last name (`("/", "")` for the root).
pub(crate) fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_is_gos() {
        assert_eq!(clean(""), "/", "empty");
        assert_eq!(clean("/a//b/"), "/a/b", "slashes");
        assert_eq!(clean("a/./b/../c"), "/a/c", "dots");
        assert_eq!(clean("/../a"), "/a", "above the root");
        assert_eq!(split("/a/b"), ("/a", "b"), "split");
        assert_eq!(split("/a"), ("/", "a"), "split at the root");
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(ttl_seconds(5_000_000_000, 0), 5, "whole");
        assert_eq!(ttl_seconds(4_000_000_001, 0), 5, "rounded up");
        assert_eq!(ttl_seconds(0, 1), 0, "past: no rounding up");
        assert_eq!(ttl_seconds(0, 1_500_000_000), -1, "past: truncated");
    }
}
