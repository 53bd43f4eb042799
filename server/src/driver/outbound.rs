//! Where the driver's raft messages go. The driver names only this trait; the peer transport
//! ([`crate::peer::Transport`]) implements it, so the dependency points from the peer layer
//! to the driver and never back.

use std::collections::BTreeMap;

use keel_engine::membership::Member;
use keel_engine::raftpb::Message;

/// The peers, as the driver sees them.
pub trait Outbound: Send + Sync + 'static {
    /// Queues each message for its peer; never waits. What cannot be queued is dropped (raft
    /// retransmits).
    fn send(&self, messages: Vec<Message>);

    /// Follows the member table: `member id → peer URL`.
    fn set_peers(&self, peers: BTreeMap<u64, String>);
}

/// member id → the first peer URL, for the transport.
pub fn peer_urls(members: &[Member]) -> BTreeMap<u64, String> {
    members
        .iter()
        .filter_map(|m| m.peer_urls.first().map(|url| (m.id, url.clone())))
        .collect()
}
