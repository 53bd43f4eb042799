//! The v2 store's operations (etcd's `v2store.store`): get, create, set, update,
//! compare-and-swap, delete, compare-and-delete, expiry and waits.

use std::collections::{BTreeMap, BTreeSet};

use keel_proto::keelpb::{V2Error, V2Event, V2Node};

use super::error::*;
use super::history::History;
use super::tree::{clean, components, join, split, Kind, Node};
use super::V2Stats;

/// Expirations before 2000-01-01 mean "no TTL" (etcd's `minExpireTime`).
const MIN_EXPIRATION_NS: i64 = 946_684_800 * 1_000_000_000;

/// A write's outcome.
pub(crate) type Outcome = Result<V2Event, V2Error>;

/// The v2 keyspace: the tree, the global index, the TTL schedule and the history.
#[derive(Clone, Debug, PartialEq)]
pub struct V2Store {
    pub(crate) root: Node,
    pub(crate) index: u64,
    /// (expiration, path) of every node with a TTL.
    pub(crate) ttls: BTreeSet<(i64, String)>,
    pub(crate) history: History,
    /// Changes applied since the last [`V2Store::take_events`], for waiting clients.
    pub(crate) outbox: Vec<V2Event>,
    /// This member's counters (soft state: not in snapshots).
    pub(crate) stats: V2Stats,
    /// Only ever set by the simulator's `v2-cas-created-index` bug: compare-and-swap checks
    /// `prevIndex` against the key's `createdIndex`.
    #[cfg(madsim)]
    pub(crate) cas_on_created: bool,
}

impl Default for V2Store {
    fn default() -> V2Store {
        V2Store {
            root: Node::dir(0, 0),
            index: 0,
            ttls: BTreeSet::new(),
            history: History::default(),
            outbox: Vec::new(),
            stats: V2Stats::default(),
            #[cfg(madsim)]
            cas_on_created: false,
        }
    }
}

fn event(action: &str, key: &str, modified: u64, created: u64) -> V2Event {
    V2Event {
        action: action.to_string(),
        node: Some(V2Node {
            key: key.to_string(),
            modified_index: modified,
            created_index: created,
            ..V2Node::default()
        }),
        ..V2Event::default()
    }
}

fn node_of(e: &mut V2Event) -> &mut V2Node {
    e.node.get_or_insert_with(V2Node::default)
}

impl V2Store {
    /// The store's index: the number of changes ever applied.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The earliest expiration of any node (0 if none).
    pub fn earliest_expiration(&self) -> i64 {
        self.ttls.first().map_or(0, |(e, _)| *e)
    }

    /// The changes applied since the last call, oldest first (refreshes excluded: they wake
    /// no one).
    pub fn take_events(&mut self) -> Vec<V2Event> {
        std::mem::take(&mut self.outbox)
    }

    /// The node at a cleaned `path`, or etcd's error for the walk.
    pub(crate) fn node(&self, path: &str) -> Result<&Node, V2Error> {
        let mut cur = &self.root;
        let mut cur_path = "/".to_string();
        for c in components(path) {
            let Some(children) = cur.children() else {
                return Err(error(NOT_DIR, cur_path, self.index));
            };
            let next_path = join(&cur_path, c);
            match children.get(c) {
                Some(n) => cur = n,
                None => return Err(error(KEY_NOT_FOUND, next_path, self.index)),
            }
            cur_path = next_path;
        }
        Ok(cur)
    }

    fn node_mut(&mut self, path: &str) -> &mut Node {
        let mut cur = &mut self.root;
        for c in components(path) {
            let Some(next) = cur.children_mut().and_then(|ch| ch.get_mut(c)) else {
                panic!("v2 node {path} vanished between its lookup and its write");
            };
            cur = next;
        }
        cur
    }

    /// The directory at `dir`, created with its missing parents at `index` (etcd's
    /// `checkDir` walk).
    fn ensure_dir(
        &mut self,
        dir: &str,
        index: u64,
    ) -> Result<&mut BTreeMap<String, Node>, V2Error> {
        let current = self.index;
        let mut cur = &mut self.root;
        let mut cur_path = "/".to_string();
        for c in components(dir) {
            let Kind::Dir(children) = &mut cur.kind else {
                panic!("v2 walk reached a file at {cur_path}");
            };
            cur_path = join(&cur_path, c);
            let child = children
                .entry(c.to_string())
                .or_insert_with(|| Node::dir(index, 0));
            if !child.is_dir() {
                return Err(error(NOT_DIR, cur_path, current));
            }
            cur = child;
        }
        match &mut cur.kind {
            Kind::Dir(children) => Ok(children),
            Kind::File(_) => panic!("v2 walk ended on a file at {dir}"),
        }
    }

    /// Removes the node at `path` with everything under it, and their TTLs.
    fn remove(&mut self, path: &str) -> Option<Node> {
        let (dir, name) = split(path);
        let removed = self.node_mut(dir).children_mut()?.remove(name)?;
        let mut stack = vec![(path.to_string(), &removed)];
        while let Some((p, n)) = stack.pop() {
            if n.expiration != 0 {
                self.ttls.remove(&(n.expiration, p.clone()));
            }
            if let Some(children) = n.children() {
                stack.extend(children.iter().map(|(name, c)| (join(&p, name), c)));
            }
        }
        Some(removed)
    }

    fn set_expiration(&mut self, path: &str, expiration: i64) {
        let node = self.node_mut(path);
        let old = std::mem::replace(&mut node.expiration, expiration);
        if old != 0 {
            self.ttls.remove(&(old, path.to_string()));
        }
        if expiration != 0 {
            self.ttls.insert((expiration, path.to_string()));
        }
    }

    /// Keeps a change in the history and, unless it is a refresh, hands it to the waits.
    fn record(&mut self, mut e: V2Event, refresh: bool) -> V2Event {
        e.refresh = refresh;
        self.history.add(e.clone());
        if !refresh {
            self.outbox.push(e.clone());
        }
        e
    }

    /// etcd's `Get`.
    pub(crate) fn get(&self, path: &str, recursive: bool, now: i64) -> Outcome {
        let path = clean(path);
        let n = self.node(&path)?;
        let mut e = event("get", &path, n.modified, n.created);
        e.node = Some(n.load(&path, recursive, now));
        e.etcd_index = self.index;
        Ok(e)
    }

    /// etcd's `internalCreate`: a new key or directory (`unique`: named by the next index
    /// under `path`); `replace` lets it replace a key.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        unique: bool,
        replace: bool,
        mut expiration: i64,
        action: &str,
        now: i64,
    ) -> Outcome {
        let (current, next) = (self.index, self.index + 1);
        let path = if unique {
            clean(&format!("{path}/{next:020}"))
        } else {
            clean(path)
        };
        if path == "/" {
            return Err(error(ROOT_READ_ONLY, "/", current));
        }
        if expiration < MIN_EXPIRATION_NS {
            expiration = 0;
        }
        let (parent, name) = split(&path);
        let parent = parent.to_string();
        let children = self.ensure_dir(&parent, next)?;
        let mut e = event(action, &path, next, next);
        let existing = children.get(name).map(|n| n.is_dir());
        match existing {
            Some(true) if replace => return Err(error(NOT_FILE, path, current)),
            Some(_) if !replace => return Err(error(NODE_EXIST, path, current)),
            Some(_) => {
                let prev = self.node(&path)?.repr(&path, false, now);
                e.prev_node = Some(prev);
                self.remove(&path);
            }
            None => {}
        }
        let node = if dir {
            node_of(&mut e).dir = true;
            Node::dir(next, expiration)
        } else {
            node_of(&mut e).value = Some(value.to_string());
            Node::file(value.to_string(), next, expiration)
        };
        node.set_ttl(node_of(&mut e), now);
        self.ensure_dir(&parent, next)?
            .insert(name.to_string(), node);
        if expiration != 0 {
            self.ttls.insert((expiration, path.clone()));
        }
        self.index = next;
        e.etcd_index = next;
        Ok(e)
    }

    /// etcd's `Set`: creates or replaces a key (`refresh`: keeps its value, new TTL).
    pub(crate) fn set(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        expiration: i64,
        refresh: bool,
        now: i64,
    ) -> Outcome {
        let path = clean(path);
        let prev = match self.node(&path) {
            Ok(n) => Some((n.repr(&path, false, now), n.value().to_string())),
            Err(e) if e.code == KEY_NOT_FOUND && !refresh => None,
            Err(e) => return Err(e),
        };
        let value = match (&prev, refresh) {
            (Some((_, old)), true) => old.clone(),
            _ => value.to_string(),
        };
        let mut e = self.create(&path, dir, &value, false, true, expiration, "set", now)?;
        e.prev_node = prev.map(|(p, _)| p);
        Ok(self.record(e, refresh))
    }

    /// The `Create` of a POST or `prevExist=false`: a new node only.
    pub(crate) fn create_new(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        unique: bool,
        expiration: i64,
        now: i64,
    ) -> Outcome {
        let e = self.create(path, dir, value, unique, false, expiration, "create", now)?;
        Ok(self.record(e, false))
    }

    /// etcd's `Update`: a key's value and TTL, or a directory's TTL.
    pub(crate) fn update(
        &mut self,
        path: &str,
        value: &str,
        expiration: i64,
        refresh: bool,
        now: i64,
    ) -> Outcome {
        let path = clean(path);
        if path == "/" {
            return Err(error(ROOT_READ_ONLY, "/", self.index));
        }
        let (current, next) = (self.index, self.index + 1);
        let n = self.node(&path)?;
        if n.is_dir() && !value.is_empty() {
            return Err(error(NOT_FILE, path, current));
        }
        let value = if refresh { n.value() } else { value }.to_string();
        let mut e = event("update", &path, next, n.created);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(&path, false, now));
        let node = self.node_mut(&path);
        if let Kind::File(v) = &mut node.kind {
            *v = value.clone();
            node.modified = next;
            node_of(&mut e).value = Some(value);
        } else {
            node_of(&mut e).dir = true;
        }
        self.set_expiration(&path, expiration_or_none(expiration));
        self.node(&path)?.set_ttl(node_of(&mut e), now);
        self.index = next;
        Ok(self.record(e, refresh))
    }

    /// etcd's `CompareAndSwap`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn compare_and_swap(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        value: &str,
        expiration: i64,
        refresh: bool,
        now: i64,
    ) -> Outcome {
        let path = clean(path);
        if path == "/" {
            return Err(error(ROOT_READ_ONLY, "/", self.index));
        }
        let n = self.node(&path)?;
        if n.is_dir() {
            return Err(error(NOT_FILE, path, self.index));
        }
        #[cfg(madsim)]
        if self.cas_on_created && prev_index > 0 {
            // The bug: the compare reads the wrong index of the node.
            let mut wrong = n.clone();
            wrong.modified = n.created;
            compare(&wrong, prev_value, prev_index, self.index)?;
        } else {
            compare(n, prev_value, prev_index, self.index)?;
        }
        #[cfg(not(madsim))]
        compare(n, prev_value, prev_index, self.index)?;
        let value = if refresh { n.value() } else { value }.to_string();
        let next = self.index + 1;
        let mut e = event("compareAndSwap", &path, next, n.created);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(&path, false, now));
        let node = self.node_mut(&path);
        node.kind = Kind::File(value.clone());
        node.modified = next;
        self.set_expiration(&path, expiration_or_none(expiration));
        node_of(&mut e).value = Some(value);
        self.node(&path)?.set_ttl(node_of(&mut e), now);
        self.index = next;
        Ok(self.record(e, refresh))
    }

    /// etcd's `Delete` (`recursive` implies `dir`).
    pub(crate) fn delete(&mut self, path: &str, dir: bool, recursive: bool, now: i64) -> Outcome {
        let path = clean(path);
        if path == "/" {
            return Err(error(ROOT_READ_ONLY, "/", self.index));
        }
        let dir = dir || recursive;
        let n = self.node(&path)?;
        let next = self.index + 1;
        let mut e = event("delete", &path, next, n.created);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(&path, false, now));
        if let Some(children) = n.children() {
            node_of(&mut e).dir = true;
            if !dir {
                return Err(error(NOT_FILE, path, self.index));
            }
            if !children.is_empty() && !recursive {
                return Err(error(DIR_NOT_EMPTY, path, self.index));
            }
        }
        self.remove(&path);
        self.index = next;
        Ok(self.record(e, false))
    }

    /// etcd's `CompareAndDelete`.
    pub(crate) fn compare_and_delete(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        now: i64,
    ) -> Outcome {
        let path = clean(path);
        let n = self.node(&path)?;
        if n.is_dir() {
            return Err(error(NOT_FILE, path, self.index));
        }
        compare(n, prev_value, prev_index, self.index)?;
        let next = self.index + 1;
        let mut e = event("compareAndDelete", &path, next, n.created);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(&path, false, now));
        self.remove(&path);
        self.index = next;
        Ok(self.record(e, false))
    }

    /// etcd's `DeleteExpiredKeys`: every node expired by `cutoff` goes, one index each.
    pub(crate) fn delete_expired(&mut self, cutoff: i64) -> usize {
        let mut expired = 0;
        while let Some((expiration, path)) = self.ttls.first().cloned() {
            if expiration > cutoff {
                break;
            }
            let n = match self.node(&path) {
                Ok(n) => n,
                Err(_) => panic!("v2 TTL of {path} outlived its node"),
            };
            let next = self.index + 1;
            let mut e = event("expire", &path, next, n.created);
            e.etcd_index = next;
            e.prev_node = Some(n.repr(&path, false, cutoff));
            node_of(&mut e).dir = n.is_dir();
            self.remove(&path);
            self.index = next;
            self.record(e, false);
            expired += 1;
        }
        expired
    }

    /// etcd's `Watch` on the history: the first change at or after `since` (0: the next
    /// index) that a wait on `path` sees, or `None` to wait for one.
    pub(crate) fn watch(
        &self,
        path: &str,
        recursive: bool,
        since: u64,
    ) -> Result<Option<V2Event>, V2Error> {
        let path = clean(path);
        let since = if since == 0 { self.index + 1 } else { since };
        match self.history.scan(&path, recursive, since) {
            Ok(Some(e)) => {
                let mut e = e.clone();
                e.etcd_index = self.index;
                Ok(Some(e))
            }
            Ok(None) => Ok(None),
            Err(mut err) => {
                err.index = self.index;
                Err(err)
            }
        }
    }
}

/// An expiration before 2000 means none (etcd's `minExpireTime`).
fn expiration_or_none(expiration: i64) -> i64 {
    if expiration < MIN_EXPIRATION_NS {
        0
    } else {
        expiration
    }
}

/// etcd's `Compare` and the cause it reports.
fn compare(n: &Node, prev_value: &str, prev_index: u64, index: u64) -> Result<(), V2Error> {
    let index_ok = prev_index == 0 || n.modified == prev_index;
    let value_ok = prev_value.is_empty() || n.value() == prev_value;
    let cause = match (value_ok, index_ok) {
        (true, true) => return Ok(()),
        (false, true) => format!("[{prev_value} != {}]", n.value()),
        (true, false) => format!("[{prev_index} != {}]", n.modified),
        (false, false) => format!(
            "[{prev_value} != {}] [{prev_index} != {}]",
            n.value(),
            n.modified
        ),
    };
    Err(error(TEST_FAILED, cause, index))
}
