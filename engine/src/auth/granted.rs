//! Each user's permissions resolved from its roles: whether it holds `root`, and the key
//! ranges it may read and write as sorted, merged intervals. The store keeps one per user and
//! rebuilds it when an auth change touches the user or one of its roles, so a permission check
//! is a map lookup and a binary search instead of a gather-and-sort of every granted range
//! (see benches/README.md, "Auth and TLS: what they cost").

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_proto::authpb::{permission, Role, User};

use super::store::ROOT;
use super::Perm;

/// A half-open interval `[begin, end)` of keys; `None` for no end.
type Interval = (Bytes, Option<Bytes>);

/// What a user may do, resolved from its roles as of the store's revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Granted {
    /// The user holds the `root` role: anything is permitted.
    pub(super) root: bool,
    read: Spans,
    write: Spans,
}

impl Granted {
    /// `user`'s permissions through the roles in `roles` (a role it names that does not
    /// exist grants nothing).
    pub(super) fn of(user: &User, roles: &BTreeMap<String, Role>) -> Granted {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for role in user.roles.iter().filter_map(|r| roles.get(r)) {
            for p in &role.key_permission {
                let iv = || interval(&p.key, &p.range_end);
                match permission::Type::try_from(p.perm_type) {
                    Ok(permission::Type::Readwrite) => {
                        read.push(iv());
                        write.push(iv());
                    }
                    Ok(permission::Type::Read) => read.push(iv()),
                    Ok(permission::Type::Write) => write.push(iv()),
                    Err(_) => {}
                }
            }
        }
        Granted {
            root: user.roles.iter().any(|r| r == ROOT),
            read: Spans::merged(read),
            write: Spans::merged(write),
        }
    }

    /// Whether the granted ranges of kind `perm` cover all of [key, range_end) (etcd's
    /// interval-tree `Contains`: the union must hold the whole range; a point is covered by
    /// any interval holding it).
    pub(super) fn covers(&self, perm: Perm, key: &[u8], range_end: &[u8]) -> bool {
        match perm {
            Perm::Read => self.read.covers(key, range_end),
            Perm::Write => self.write.covers(key, range_end),
        }
    }
}

/// A permission's keys as a half-open interval: an empty range end is the one key
/// `[key, key\0)`, `"\0"` is "to the end of the keyspace".
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    let begin = Bytes::copy_from_slice(key);
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (begin, Some(end.into()))
        }
        [0] => (begin, None),
        end => (begin, Some(Bytes::copy_from_slice(end))),
    }
}

/// Sorted, disjoint intervals with a gap between any two (overlapping and touching ones are
/// merged), so a range is covered by the union exactly when one interval holds all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Spans(Vec<Interval>);

impl Spans {
    fn merged(mut all: Vec<Interval>) -> Spans {
        // An empty or backwards permission grants nothing.
        all.retain(|(b, e)| e.as_ref().is_none_or(|e| e > b));
        all.sort();
        let mut out: Vec<Interval> = Vec::with_capacity(all.len());
        for (begin, end) in all {
            if let Some((_, last)) = out.last_mut() {
                match last {
                    None => break, // the last one runs to the end: it holds the rest
                    Some(l) if begin <= *l => {
                        match end {
                            None => *last = None,
                            Some(e) if e > *l => *last = Some(e),
                            Some(_) => {}
                        }
                        continue;
                    }
                    Some(_) => {}
                }
            }
            out.push((begin, end));
        }
        Spans(out)
    }

    /// Whether one interval holds all of [key, range_end); an empty, `"\0"`-less range end
    /// not after `key` is checked as the one key, as etcd does.
    fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        // The only interval that can hold `key`: the last one beginning at or before it.
        let at = self.0.partition_point(|(b, _)| b.as_ref() <= key);
        let Some((_, end)) = at.checked_sub(1).and_then(|i| self.0.get(i)) else {
            return false;
        };
        let Some(end) = end else {
            return true;
        };
        match range_end {
            [0] => false,
            // One key: held when the interval ends after it (at `key\0` or later).
            [] => end.as_ref() > key,
            want if want <= key => end.as_ref() > key,
            want => end.as_ref() >= want,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(granted: &[(&str, &str)]) -> Spans {
        Spans::merged(
            granted
                .iter()
                .map(|(k, e)| interval(k.as_bytes(), e.as_bytes()))
                .collect(),
        )
    }

    fn covers(s: &Spans, k: &str, e: &str) -> bool {
        s.covers(k.as_bytes(), e.as_bytes())
    }

    #[test]
    fn coverage_of_points_ranges_and_prefixes() {
        let g = spans(&[("c", "e"), ("a", "c"), ("x", "")]);
        assert!(covers(&g, "b", ""), "a point inside");
        assert!(covers(&g, "a", "e"), "two adjacent ranges join");
        assert!(!covers(&g, "a", "f"), "past the end");
        assert!(covers(&g, "x", ""), "a granted point");
        assert!(!covers(&g, "x", "y"), "a point covers no range");
        assert!(!covers(&g, "e", ""), "end is exclusive");
        assert!(!covers(&g, "a", "\0"), "from-key needs an open end");
        assert!(covers(&g, "d", "a"), "a backwards range is its first key");
        assert!(!covers(&g, "f", "a"), "… which must be granted");
        let open = spans(&[("p", "\0")]);
        assert!(covers(&open, "q", "\0"), "from-key covers from-key");
        assert!(covers(&open, "p", ""), "and its first key");
        assert!(!covers(&open, "o", ""), "not before it");
        assert!(!covers(&spans(&[]), "a", ""), "nothing granted");
        assert!(!covers(&spans(&[("b", "a")]), "b", ""), "a backwards grant");
    }

    #[test]
    fn overlapping_and_contained_grants_merge() {
        let g = spans(&[("a", "m"), ("b", "c"), ("k", "q"), ("q", ""), ("q\0", "t")]);
        assert_eq!(g.0.len(), 1, "one interval: {g:?}");
        assert!(covers(&g, "a", "t"), "the union");
        assert!(!covers(&g, "a", "t\0"), "but no further");
        let open = spans(&[("a", "\0"), ("b", "c"), ("", "a")]);
        assert!(covers(&open, "", "\0"), "everything");
    }
}
