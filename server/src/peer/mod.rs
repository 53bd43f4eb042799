//! The peer port: what members say to each other.
//!
//! - [`transport`]: raft messages out to every peer, each on its own bounded queue and task;
//! - [`service`]: the `keelpb.Peer` service that takes them in (and forwarded requests);
//! - [`snapshot`]: streaming a snapshot to a follower in chunks;
//! - [`receive`]: receiving one, straight into a file of the snapshot directory;
//! - `lanes` (tokio build): the peer port's two lanes, raft traffic and snapshot transfers;
//! - [`forward`]: a follower's lease and MemberPromote requests, forwarded to the leader;
//! - [`link`]: what every peer connection shares;
//! - [`stats`]: etcd's raft traffic statistics (`/v2/stats/self`, `/v2/stats/leader`).

pub mod forward;
#[cfg(not(madsim))]
pub mod lanes;
pub mod link;
pub mod receive;
pub mod service;
pub mod snapshot;
pub mod stats;
pub mod transport;

pub use link::LocalIdentity;
pub use service::PeerService;
pub use transport::Transport;
