//! Waiting v2 clients (`GET /v2/keys/...?wait=true`), keyed by the path they wait on
//! (etcd's `watcherHub`). The driver loop hands every applied v2 change to
//! [`V2Hub::dispatch`], which looks up the waits on the change's key and its parents (and, for
//! a removed directory, the waits under it): a write costs one map lookup per path component
//! and nothing per waiting client elsewhere. A waiting client holds one entry here and one
//! small channel; its [`V2Wait`] removes the entry when the client goes.
//!
//! A wait first asks the store's history (through the node); only if nothing there matches
//! does it register here, from the store index that read answered at. If the hub has
//! dispatched a change past that index meanwhile, registering is refused and the caller
//! reads again, so no change falls between the two.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use keel_proto::keelpb::V2Event;
use tokio::sync::mpsc;

/// Events a streaming wait may have queued before it is dropped (etcd's channel of 100).
pub const STREAM_QUEUE: usize = 100;

struct Waiter {
    recursive: bool,
    stream: bool,
    since: u64,
    tx: mpsc::Sender<V2Event>,
}

#[derive(Default)]
struct Inner {
    waits: BTreeMap<String, BTreeMap<u64, Waiter>>,
    next_id: u64,
    count: usize,
    /// The index of the newest change dispatched.
    last_index: u64,
}

/// The registry of waiting v2 clients.
#[derive(Default)]
pub struct V2Hub {
    inner: Mutex<Inner>,
}

/// One registered wait; dropping it unregisters.
pub struct V2Wait {
    hub: Arc<V2Hub>,
    path: String,
    id: u64,
    /// The changes this wait sees, in order.
    pub events: mpsc::Receiver<V2Event>,
}

impl Drop for V2Wait {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.path, self.id);
    }
}

impl Inner {
    fn remove(&mut self, path: &str, id: u64) {
        if let Some(list) = self.waits.get_mut(path) {
            if list.remove(&id).is_some() {
                self.count -= 1;
            }
            if list.is_empty() {
                self.waits.remove(path);
            }
        }
    }

    /// Sends `e` to the waits on `path` that want it; one-shot waits (and streams that
    /// cannot keep up) leave.
    fn notify(&mut self, path: &str, e: &V2Event, index: u64, want: impl Fn(&Waiter) -> bool) {
        let Some(list) = self.waits.get_mut(path) else {
            return;
        };
        let mut gone = Vec::new();
        for (id, w) in list.iter() {
            if index < w.since || !want(w) {
                continue;
            }
            let sent = w.tx.try_send(e.clone()).is_ok();
            if !sent || !w.stream {
                gone.push(*id);
            }
        }
        for id in gone {
            self.remove(path, id);
        }
    }
}

impl V2Hub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (each step is whole).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many clients wait.
    pub fn count(&self) -> usize {
        self.lock().count
    }

    /// Registers a wait on `path` for changes at or after `since`, if no change after
    /// `read_index` (the store index the history was searched at) has been dispatched yet;
    /// `None` means: search the history again.
    pub fn register(
        self: &Arc<Self>,
        path: &str,
        recursive: bool,
        stream: bool,
        since: u64,
        read_index: u64,
    ) -> Option<V2Wait> {
        let mut inner = self.lock();
        if inner.last_index > read_index {
            return None;
        }
        let (tx, rx) = mpsc::channel(if stream { STREAM_QUEUE } else { 1 });
        inner.next_id += 1;
        let id = inner.next_id;
        let waiter = Waiter {
            recursive,
            stream,
            since,
            tx,
        };
        inner
            .waits
            .entry(path.to_string())
            .or_default()
            .insert(id, waiter);
        inner.count += 1;
        Some(V2Wait {
            hub: Arc::clone(self),
            path: path.to_string(),
            id,
            events: rx,
        })
    }

    /// Hands applied changes (in index order) to the waits that see them (etcd's
    /// `notify`/`notifyWatchers`, hidden keys included).
    pub fn dispatch(&self, events: &[V2Event]) {
        let mut inner = self.lock();
        for e in events {
            let Some(node) = &e.node else {
                continue;
            };
            let index = node.modified_index;
            inner.last_index = inner.last_index.max(index);
            if inner.count == 0 {
                continue;
            }
            let key = node.key.as_str();
            for path in ancestors(key) {
                let original = path == key;
                if !original && is_hidden(&path, key) {
                    continue;
                }
                inner.notify(&path, e, index, |w| w.recursive || original);
            }
            let dir_removed = (e.action == "delete" || e.action == "expire")
                && e.prev_node.as_ref().is_some_and(|p| p.dir);
            if dir_removed {
                let under = format!("{}/", key.trim_end_matches('/'));
                let paths: Vec<String> = inner
                    .waits
                    .range(under.clone()..)
                    .take_while(|(p, _)| p.starts_with(&under))
                    .map(|(p, _)| p.clone())
                    .collect();
                for path in paths {
                    inner.notify(&path, e, index, |_| true);
                }
            }
        }
    }
}

/// "/", "/a", "/a/b" for "/a/b".
fn ancestors(key: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut cur = String::new();
    for c in key.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(c);
        out.push(cur.clone());
    }
    out
}

/// etcd's `isHidden`: a component below the watched path starts with `_`.
fn is_hidden(watch_path: &str, key: &str) -> bool {
    if watch_path.len() > key.len() {
        return false;
    }
    let after = keel_engine::v2::clean(&format!("/{}", &key[watch_path.len()..]));
    after.contains("/_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::keelpb::V2Node;

    fn change(action: &str, key: &str, index: u64, dir: bool) -> V2Event {
        V2Event {
            action: action.into(),
            node: Some(V2Node {
                key: key.into(),
                modified_index: index,
                ..V2Node::default()
            }),
            prev_node: Some(V2Node {
                key: key.into(),
                dir,
                ..V2Node::default()
            }),
            ..V2Event::default()
        }
    }

    #[test]
    fn waits_see_their_changes_once() {
        let hub = Arc::new(V2Hub::default());
        let mut exact = hub.register("/a/b", false, false, 1, 0).expect("registers");
        let mut rec = hub.register("/a", true, false, 1, 0).expect("registers");
        let mut flat = hub.register("/a", false, false, 1, 0).expect("registers");
        let mut under = hub.register("/d/x", false, false, 1, 0).expect("registers");
        assert_eq!(hub.count(), 4, "four waits");
        hub.dispatch(&[change("set", "/a/b", 1, false)]);
        assert!(exact.events.try_recv().is_ok(), "exact");
        assert!(rec.events.try_recv().is_ok(), "recursive");
        assert!(flat.events.try_recv().is_err(), "not recursive");
        assert_eq!(hub.count(), 2, "one-shot waits left");
        hub.dispatch(&[change("delete", "/d", 2, true)]);
        assert!(
            under.events.try_recv().is_ok(),
            "a removed dir wakes waits under it"
        );
        assert!(
            hub.register("/q", false, false, 3, 1).is_none(),
            "behind the hub"
        );
        drop(flat);
        assert_eq!(hub.count(), 0, "dropping a wait unregisters it");
    }

    #[test]
    fn hidden_keys_wake_only_exact_waits() {
        let hub = Arc::new(V2Hub::default());
        let mut rec = hub.register("/a", true, false, 1, 0).expect("registers");
        hub.dispatch(&[change("set", "/a/_h", 1, false)]);
        assert!(rec.events.try_recv().is_err(), "hidden");
    }
}
