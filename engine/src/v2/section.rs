//! The v2 store in a state snapshot: the optional `v2st` section (`keelpb.V2Table`), so a
//! snapshot written before the v2 store existed loads with an empty one.

use keel_proto::keelpb::{V2StoredNode, V2Table};
use prost::Message as _;

use super::history::{event_index, History};
use super::tree::{join, split, Kind, Node};
use super::V2Store;

/// Why a v2 section does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum V2SectionError {
    /// The bytes are not a `V2Table`.
    #[error("v2 section: {0}")]
    Body(String),
    /// A node's parent is missing or a key.
    #[error("v2 section: node {0} has no directory to go in")]
    Orphan(String),
    /// The history is out of order or too long.
    #[error("v2 section: history out of order")]
    History,
}

impl V2Store {
    /// The store as a snapshot section: nodes parents first, then the history.
    pub fn encode_section(&self) -> Vec<u8> {
        let mut nodes = Vec::new();
        let mut stack = vec![("/".to_string(), &self.root)];
        while let Some((path, n)) = stack.pop() {
            if path != "/" {
                nodes.push(V2StoredNode {
                    path: path.clone(),
                    dir: n.is_dir(),
                    value: n.value().to_string(),
                    expiration: n.expiration,
                    created_index: n.created,
                    modified_index: n.modified,
                });
            }
            if let Some(children) = n.children() {
                // Reversed so that the stack pops them in name order.
                stack.extend(children.iter().rev().map(|(k, c)| (join(&path, k), c)));
            }
        }
        V2Table {
            current_index: self.index,
            nodes,
            history: self.history.events().cloned().collect(),
        }
        .encode_to_vec()
    }

    /// The store back from [`V2Store::encode_section`]'s bytes.
    pub fn decode_section(bytes: &[u8]) -> Result<V2Store, V2SectionError> {
        let table = V2Table::decode(bytes).map_err(|e| V2SectionError::Body(e.to_string()))?;
        let mut store = V2Store {
            index: table.current_index,
            ..V2Store::default()
        };
        for stored in table.nodes {
            let node = Node {
                created: stored.created_index,
                modified: stored.modified_index,
                expiration: stored.expiration,
                kind: if stored.dir {
                    Kind::Dir(Default::default())
                } else {
                    Kind::File(stored.value)
                },
            };
            let (parent, name) = split(&stored.path);
            let Some(children) = store.lookup_dir_mut(parent) else {
                return Err(V2SectionError::Orphan(stored.path));
            };
            children.insert(name.to_string(), node);
            if stored.expiration != 0 {
                store.ttls.insert((stored.expiration, stored.path));
            }
        }
        let mut history = History::default();
        let mut last = 0;
        for e in table.history {
            if event_index(&e) <= last {
                return Err(V2SectionError::History);
            }
            last = event_index(&e);
            history.add(e);
        }
        store.history = history;
        Ok(store)
    }

    /// The children of the directory at `path`, if it is one.
    fn lookup_dir_mut(
        &mut self,
        path: &str,
    ) -> Option<&mut std::collections::BTreeMap<String, Node>> {
        let mut cur = &mut self.root;
        for c in super::tree::components(path) {
            cur = cur.children_mut()?.get_mut(c)?;
        }
        cur.children_mut()
    }
}
